"""Database faults: the outage spool, against a real PostgreSQL server stopped and restarted."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from support.keys import TEST_KEYS
from support.reads import plate_read

from anpr.config.settings import load_settings
from anpr.errors import StoreError
from anpr.policy.engine import Policy
from anpr.policy.gate import PolicyGate
from anpr.records import CountKey, Outcome, Passage, PolicedRead, new_key
from anpr.sinks.catalog import make_sinks
from anpr.storage.spool import LOCK_NAME, MARKER_NAME, ExpiredSpool, Pending, SpooledStore, SpoolInUse, expire_spool
from anpr.storage.store import BATCH_KEY_SECONDS, ReadStore, WrittenBatchRow

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
UNREACHABLE = "postgresql+psycopg://anpr@127.0.0.1:1/none"  # nothing listens on port 1
OUTAGE_SECONDS = 10.0  # the 30 s of the acceptance item are run end to end in test_reliability.py
DAY = 86400.0


@pytest.fixture(scope="module")
def server():
    """A server of this module's own: stopping the session's `postgres` would break other tests."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


class stopped:
    """The server stopped for the block, started again after it whatever happens."""

    def __init__(self, server) -> None:
        self.server = server

    def __enter__(self):
        self.server.stop()

    def __exit__(self, *_exc) -> None:
        self.server.start()


def kept(plate: str, frame: int, delete_after: float) -> PolicedRead:
    return PolicedRead(plate_read(plate, frame), "cam", "parking_fps", "FR-FPS", delete_after, hit=frame % 7 == 0)


def blocked(bucket: int = 1_700_000_000 // 3600 * 3600) -> CountKey:
    return CountKey(bucket, "cam", "law_enforcement_request", "FR-MUN-REQ", Outcome.BLOCKED)


def stored_keys(store: ReadStore) -> Counter[str]:
    with store.engine.connect() as connection:
        return Counter(connection.execute(text("select key from reads")).scalars())


def spool_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


def test_postgresql_stopped_mid_run(server, tmp_path, caplog):
    """A writer keeps going through an outage; afterwards every allowed read
    is in the database exactly once, the counters are the sums, and the spool is empty."""
    store = ReadStore(server.new_database(), TEST_KEYS)
    store.check()
    caplog.set_level(logging.INFO, logger="anpr.storage.spool")
    folder = tmp_path / "spool"
    spool = SpooledStore(store, folder, 64 << 20, max_backoff=2.0)
    sent: list[PolicedRead] = []
    counted = 0
    calls: list[tuple[float, float]] = []  # (start, seconds) of every write
    stop, errors = threading.Event(), []

    def run() -> None:
        nonlocal counted
        frame = 0
        try:
            while not stop.is_set():
                reads = [
                    kept(f"AB{frame:03d}CD", frame, time.time() + DAY),
                    kept(f"XY{frame:03d}ZT", frame, time.time() + 2 * DAY),
                ]
                start = time.monotonic()
                spool.write(reads, {blocked(): 3})
                if frame % 10 == 0:
                    spool.purge(time.time())  # the gate purges now and then: never raises while down
                calls.append((start, time.monotonic() - start))
                sent.extend(reads)
                counted += 3
                frame += 1
                time.sleep(0.1)
        except Exception as exc:  # reported below
            errors.append(exc)

    writer = threading.Thread(target=run)
    writer.start()
    try:
        time.sleep(1.5)
        with stopped(server):
            down_from = time.monotonic()
            time.sleep(OUTAGE_SECONDS)
            down_until = time.monotonic()
            assert not spool.status.database_up
            during = spool.pending
        drained_by = time.monotonic() + 30
        while spool.pending.batches and time.monotonic() < drained_by:
            time.sleep(0.2)  # the writer finds the server back and sends the spool, a little per write
        time.sleep(0.5)
    finally:
        stop.set()
        writer.join()
    assert not errors, errors
    assert during.batches > OUTAGE_SECONDS / 0.1 / 2 and during.reads == 2 * during.batches  # the run went on
    assert max(seconds for start, seconds in calls if down_from <= start <= down_until) < 0.5  # never stalled
    assert spool.status.database_up and spool.pending == Pending(0, 0, 0)
    assert spool.flush() == 0
    keys = stored_keys(store)
    assert set(keys) == {r.key for r in sent} and set(keys.values()) == {1}  # none lost, none twice
    assert store.policy_counts() == [(blocked(), counted)]
    assert store.reads(plate="AB000CD") == [sent[0]]  # stored as it was kept, key and deadline included
    status = spool.status
    assert status.lost_batches == 0 and status.spooled_batches == status.flushed_batches + status.duplicate_batches
    warnings = [record.getMessage() for record in caplog.records]
    assert any("keeping allowed reads" in w for w in warnings) and any("reachable again" in w for w in warnings)
    assert sorted(p.name for p in folder.iterdir()) == [MARKER_NAME, LOCK_NAME]
    spool.close()
    assert not folder.exists()  # an empty spool leaves nothing behind
    store.close()


def test_a_batch_whose_acknowledgement_was_lost_is_not_stored_twice(postgres, tmp_path):
    store = ReadStore(postgres.new_database(), TEST_KEYS)
    spool = SpooledStore(store, tmp_path / "spool", 1 << 20)
    reads = [kept("AB123CD", 1, time.time() + DAY), kept("XY987ZT", 2, time.time() + DAY)]
    lost = []

    def lose_acknowledgement(_session) -> None:  # the commit went through; the answer never came back
        if not lost:
            lost.append(True)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    store.check()
    event.listen(Session, "after_commit", lose_acknowledgement)
    try:
        spool.write(reads, {blocked(): 2})
    finally:
        event.remove(Session, "after_commit", lose_acknowledgement)
    assert lost and store.count() == 2  # committed...
    assert spool.pending.batches == 1 and not spool.status.database_up  # ...and spooled all the same
    assert spool.flush() == 0  # recognised by its batch key, skipped whole
    assert spool.status.duplicate_batches == 1 and spool.pending == Pending(0, 0, 0)
    assert sorted(stored_keys(store).items()) == sorted((r.key, 1) for r in reads)
    assert store.policy_counts() == [(blocked(), 2)]  # the increment was not applied twice
    spool.write([kept("QW12ERT", 3, time.time() + DAY)])  # and the run goes on
    assert store.count() == 3 and spool.status.database_up
    spool.close()
    store.close()


def test_batch_keys(postgres):
    store = ReadStore(postgres.new_database(), TEST_KEYS)
    reads = [kept("AB123CD", 1, time.time() + DAY)]
    assert store.write(reads, {blocked(): 1}, key="a" * 32)
    assert not store.write(reads, {blocked(): 1}, key="a" * 32)  # the same batch again
    assert not store.write([], {blocked(): 1}, key="a" * 32)  # a count-only batch is known by its key alone
    with Session(store.engine) as session, session.begin():
        session.query(WrittenBatchRow).delete()  # as if its key had been pruned
        session.add(WrittenBatchRow(key="b" * 32, written_at=int(time.time() - BATCH_KEY_SECONDS - 7200)))
    assert not store.write(reads, {blocked(): 1}, key="a" * 32)  # still known, by its read keys
    assert store.count() == 1 and store.policy_counts() == [(blocked(), 1)]
    assert store.write([], {blocked(): 1})  # a new batch, with a key of its own
    store.purge(time.time())
    with Session(store.engine) as session:
        remaining = session.query(WrittenBatchRow.key).all()
    assert len(remaining) == 1 and remaining[0].key not in ("a" * 32, "b" * 32)  # only the old key was pruned
    store.close()


def test_a_batch_written_concurrently_by_another_run_is_skipped(postgres):
    """Two runs flushing the same batch: the second sees the first's uncommitted key only as
    a conflict at its own insert, and must then skip the batch rather than fail."""
    store = ReadStore(postgres.new_database(), TEST_KEYS)
    reads = [kept("AB123CD", 1, time.time() + DAY)]
    results = []
    with Session(store.engine) as other, other.begin():
        other.add(WrittenBatchRow(key="c" * 32, written_at=0))
        other.flush()  # inserted, not committed: the writer below blocks on it
        writer = threading.Thread(target=lambda: results.append(store.write(reads, {blocked(): 1}, key="c" * 32)))
        writer.start()
        time.sleep(0.5)
    writer.join(10)
    assert results == [False] and store.count() == 0 and store.policy_counts() == []
    store.close()


def test_a_full_spool_loses_batches_with_one_warning_and_no_exception(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="anpr.storage.spool")
    folder = tmp_path / "spool"
    spool = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 4096)
    for frame in range(10):
        spool.write(
            [kept(f"AB{frame:03d}CD", frame, time.time() + DAY), kept("XY987ZT", frame, time.time() + DAY)],
            {blocked(): 1},
        )
    pending, status = spool.pending, spool.status
    assert 0 < pending.batches < 10 and pending.bytes <= 4096
    assert sum(p.stat().st_size for p in spool_files(folder)) == pending.bytes
    assert (status.lost_batches, status.lost_reads) == (10 - pending.batches, 2 * (10 - pending.batches))
    warnings = [record.getMessage() for record in caplog.records]
    assert len([w for w in warnings if "is full" in w]) == 1 and "store.spool_max_mb" in warnings[-1]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in spool_files(folder)} == {0o600}
    spool.close()


def test_expired_reads_in_the_spool_are_never_written(server, tmp_path):
    now = [time.time()]
    store = ReadStore(server.new_database(), TEST_KEYS)
    store.check()
    folder = tmp_path / "spool"
    soon, later, late = now[0] + 10, now[0] + 30, now[0] + DAY
    with stopped(server):
        spool = SpooledStore(store, folder, 1 << 20, clock=lambda: now[0])
        spool.write([kept("GONE111", 1, soon)])  # all its reads expire: the file goes
        spool.write([kept("GONE222", 2, soon), kept("KEPT333", 2, late)], {blocked(): 1})
        spool.write([kept("GONE444", 3, later), kept("KEPT555", 3, late)])
        assert spool.pending == Pending(3, 5, spool.pending.bytes)
        now[0] = soon  # a deadline is inclusive
        assert spool.purge(now[0]) == 0  # the database is down: no error, the spool is purged
        assert spool.pending.batches == 2 and spool.pending.reads == 3
        content = b"".join(p.read_bytes() for p in folder.iterdir())
        assert b"GONE111" not in content and b"GONE222" not in content and b"KEPT333" in content
        spool.close()  # the run ends during the outage; the next one picks the spool up
    now[0] = later + 1  # GONE444 expires between the runs: the flush drops it
    spool = SpooledStore(store, folder, 1 << 20, clock=lambda: now[0], flush_budget=0)
    assert spool.pending.batches == 2
    spool.write([kept("NEW6666", 4, late)])  # sends one spooled batch (the budget), then queues behind the other
    assert spool.pending.batches == 2 and spool.status.flushed_batches == 1
    assert spool.flush() == 2
    assert [r.read.plate for r in store.reads()] == ["KEPT333", "KEPT555", "NEW6666"]  # in order
    assert store.policy_counts() == [(blocked(), 1)]
    assert spool.status.expired_reads == 1 and spool.pending == Pending(0, 0, 0)
    spool.close()
    store.close()


def test_a_denied_purpose_never_reaches_the_spool(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the deployment's police export would go
    plates = ["AB123CD", "XY987ZT", "QW12ERT", "ZX98CVB"]
    batches = [[plate_read(p, 2 * i), plate_read(p, 2 * i + 1)] for i, p in enumerate(plates)]
    mixed = load_settings(CONFIGS / "mixed-camera.yaml")  # parking_fps allowed, law_enforcement_request denied
    all_denied = load_settings(CONFIGS / "valenciennes-2020.yaml")  # what --demo runs
    store = ReadStore(server.new_database(), TEST_KEYS)
    store.check()
    spools = {}
    with stopped(server):
        for name, settings in (("mixed", mixed), ("denied", all_denied)):
            spool = spools[name] = SpooledStore(store, tmp_path / name, 1 << 20)
            deployment = settings.deployment
            gate = PolicyGate(Policy(deployment), deployment.cameras[0], spool, make_sinks(deployment.sinks, spool))
            for batch in batches:
                gate.write(batch)  # purges too, on the first batch: no error while down
            assert gate.tally.purged == 0
        mixed_files = [json.loads(p.read_bytes()) for p in spool_files(tmp_path / "mixed")]
        assert len(mixed_files) == len(batches)
        reads = [r for f in mixed_files for r in f["reads"]]
        assert len(reads) == 2 * len(plates) and {r["purpose"] for r in reads} == {"parking_fps"}
        counts = [c for f in mixed_files for c in f["counts"]]
        assert {(c["purpose"], c["outcome"]) for c in counts} == {("law_enforcement_request", "blocked")}
        assert all(set(c) == {"bucket", "camera", "purpose", "rule_id", "outcome", "count"} for c in counts)
        denied_bytes = b"".join(p.read_bytes() for p in spool_files(tmp_path / "denied"))
        assert denied_bytes and not any(p.encode() in denied_bytes for p in plates)  # counts only
        assert not any(f["reads"] for f in map(json.loads, map(Path.read_bytes, spool_files(tmp_path / "denied"))))
    for spool in spools.values():
        assert spool.flush() == len(batches)
        spool.close()
    assert {r.purpose for r in store.reads()} == {"parking_fps"} and store.count() == 2 * len(plates)
    assert store.reads(purpose="law_enforcement_request") == []
    assert sum(n for k, n in store.policy_counts() if k.purpose == "law_enforcement_request") == 2 * 2 * len(plates)
    assert not (tmp_path / "police-requisitions.jsonl").exists()
    store.close()


def test_backoff_while_the_database_is_down(tmp_path):
    clock = [0.0]
    spool = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), tmp_path / "spool", 1 << 20, monotonic=lambda: clock[0])
    read = kept("AB123CD", 1, time.time() + DAY)
    attempts = []
    for at in (0.0, 0.5, 1.0, 2.9, 3.0, 6.9, 7.0, 15.0, 31.0, 60.9, 61.0, 90.9, 91.0):
        clock[0] = at
        spool.write([read], {blocked(): 1})
        spool.purge(time.time())  # within the same interval: no second attempt
        attempts.append(spool.status.failed_attempts)
    # Tried at 0, 1, 3, 7, 15, 31 (1 s doubling), then every 30 s: never at the writes in between.
    assert attempts == [1, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 7, 8]
    assert spool.flush() == 0 and spool.status.failed_attempts == 9  # an explicit flush always tries
    assert spool.pending.batches == 13 and spool.status.lost_batches == 0
    spool.close()


def test_spool_folder_is_locked_and_tied_to_its_database(tmp_path):
    folder = tmp_path / "spool"
    first = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
    first.write([kept("AB123CD", 1, time.time() + DAY)])
    with pytest.raises(StoreError, match="in use by another run"):
        SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
    first.close()
    again = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
    assert again.pending.batches == 1 and again.pending.reads == 1  # picked up
    again.close()
    with pytest.raises(StoreError, match=r"holds 1 batch.* for database .*none, not sqlite"):
        SpooledStore(ReadStore(str(tmp_path / "other.sqlite"), TEST_KEYS), folder, 1 << 20)
    assert len(spool_files(folder)) == 1  # left as it was


def test_a_refused_batch_stays_an_error(postgres, tmp_path):
    store = ReadStore(postgres.new_database(), TEST_KEYS)
    spool = SpooledStore(store, tmp_path / "spool", 1 << 20)
    too_long = PolicedRead(plate_read("AB123CD", 1), "c" * 200, "parking_fps", "FR-FPS", time.time() + DAY, False)
    with pytest.raises(StoreError, match="cannot write to database") as raised:
        spool.write([too_long])
    assert type(raised.value) is StoreError and spool.pending.batches == 0 and spool.status.database_up
    spool.close()
    store.close()


def test_read_keys_round_trip_and_are_made_by_the_gate(tmp_path):
    settings = load_settings(CONFIGS / "paris-fps.yaml")
    store = ReadStore(str(tmp_path / "reads.sqlite"), TEST_KEYS)
    deployment = settings.deployment
    gate = PolicyGate(Policy(deployment), deployment.cameras[0], store, make_sinks(deployment.sinks, store))
    gate.write([plate_read("AB123CD", 1), plate_read("AB123CD", 2)])
    stored = store.reads()
    assert len(stored) == 2 and len({r.key for r in stored}) == 2 and all(len(r.key) == 32 for r in stored)
    assert stored[0].to_dict()["key"] == stored[0].key
    store.close()


# --- what the spool folder may hold, and what anpr touches in it ------------------------------------


def batch_name() -> str:
    return f"{time.time_ns():020d}-{new_key()}.json"


def snapshot(folder: Path) -> dict[str, tuple[bool, bytes | str, int]]:
    """Every entry of a folder: whether it is a link, its content (or target), its mode."""
    return {
        p.name: (p.is_symlink(), os.readlink(p) if p.is_symlink() else p.read_bytes(), p.lstat().st_mode)
        for p in folder.iterdir()
    }


def spooled(folder: Path, *batches: list[PolicedRead], clock=time.time) -> None:
    """A spool left by a run whose database was down throughout."""
    spool = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20, clock=clock)
    for reads in batches:
        spool.write(reads)
    assert spool.pending.batches == len(batches)
    spool.close()


def test_a_folder_that_is_not_a_spool_is_refused_and_left_untouched(tmp_path):
    folder = tmp_path / "home"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "notes.json").write_bytes(b"my notes, not JSON")
    (folder / ".lock").write_bytes(b"someone else's lock")
    (folder / batch_name()).write_bytes(b"named like a batch, but not anpr's")
    before, mode = snapshot(folder), folder.stat().st_mode
    for attempt in (
        lambda: SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20),
        lambda: expire_spool(folder, time.time() + 400 * DAY),
    ):
        with pytest.raises(
            StoreError, match=rf"spool folder {re.escape(str(folder))} holds files but no \.anpr-spool marker"
        ) as raised:
            attempt()
        assert "dedicated folder" in str(raised.value) and "\n" not in str(raised.value)
        assert (
            snapshot(folder) == before and folder.stat().st_mode == mode
        )  # nothing read, written, deleted or chmod-ed


def test_an_existing_empty_folder_is_adopted_without_changing_its_mode_and_is_never_removed(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="anpr.storage.spool")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    spool = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), shared, 1 << 20)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # left as it was...
    assert any("open to other users (mode 0755)" in r.getMessage() for r in caplog.records)  # ...with a warning
    marker = shared / MARKER_NAME
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600 and b"anpr outage spool" in marker.read_bytes()
    spool.close()
    assert sorted(p.name for p in shared.iterdir()) == [MARKER_NAME]  # not made by this run: kept, lock gone
    (shared / LOCK_NAME).write_bytes(b"")  # left by a run that was killed
    again = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), shared, 1 << 20)  # marked: used as it is
    again.close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755 and shared.is_dir()
    # The killed run's lock file was no lock (the kernel's went with it): the run that held it next removed it.
    assert sorted(p.name for p in shared.iterdir()) == [MARKER_NAME]

    made = tmp_path / "made" / "spool"
    spool = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), made, 1 << 20)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700 and (made / MARKER_NAME).is_file()
    spool.close()
    assert not made.exists() and made.parent.is_dir()  # made by this run and empty: removed, and only it


def test_unreadable_spool_files_are_set_aside_and_nothing_else_is_touched(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="anpr.storage.spool")
    folder = tmp_path / "spool"
    spooled(folder, [kept("AB123CD", 1, time.time() + DAY)])
    broken, cut = batch_name(), batch_name()
    (folder / broken).write_bytes(b'{"format": 9, "reads": ["written by a newer anpr"]}')
    (folder / f".{cut}.tmp").write_bytes(b'{"format":2,"key":"')  # a write cut short
    others = {"notes.json": b"not JSON", ".lock": b"anpr before the marker", "x.json.tmp": b"not anpr's"}
    for name, data in others.items():
        (folder / name).write_bytes(data)
    spool = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
    assert spool.pending.batches == 1 and spool.status.lost_batches == 2
    spool.close()
    assert not (folder / broken).exists() and not (folder / f".{cut}.tmp").exists()
    assert (folder / f"{broken}.unreadable").read_bytes() == b'{"format": 9, "reads": ["written by a newer anpr"]}'
    assert (folder / f".{cut}.tmp.unreadable").read_bytes() == b'{"format":2,"key":"'
    assert all((folder / name).read_bytes() == data for name, data in others.items())
    warnings = [r.getMessage() for r in caplog.records if "unreadable spool file" in r.getMessage()]
    assert len(warnings) == 2 and "unknown spool format 9" in warnings[0] + warnings[1]
    (batch,) = [p for p in spool_files(folder) if p.name != "notes.json"]
    before = snapshot(folder)
    assert expire_spool(folder, time.time() + 2 * DAY) == ExpiredSpool(reads=1, batches=1)
    after = snapshot(folder)
    assert set(before) - set(after) == {batch.name} and all(after[n] == before[n] for n in after)  # only it went


def test_a_spool_of_an_anpr_before_the_marker_is_marked_and_picked_up(tmp_path):
    """A folder holding nothing but batch files (and the old lock) can only be anpr's: refusing
    it would strand the reads an upgrade found spooled."""
    folder = tmp_path / "spool"
    spooled(folder, [kept("AB123CD", 1, time.time() + DAY)])
    (folder / MARKER_NAME).unlink()
    (folder / ".lock").write_bytes(b"")
    spool = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
    assert spool.pending.batches == 1 and (folder / MARKER_NAME).is_file()
    spool.close()
    assert (folder / ".lock").is_file()  # not this anpr's lock: left
    (folder / "mine.txt").write_bytes(b"")
    (folder / MARKER_NAME).unlink()
    with pytest.raises(StoreError, match=r"no \.anpr-spool marker"):  # anything else in it: not a spool
        SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)


def test_no_symbolic_link_is_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    for attempt in (
        lambda: SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), link, 1 << 20),
        lambda: expire_spool(link, time.time()),
    ):
        with pytest.raises(StoreError, match=rf"spool folder {re.escape(str(link))} is a symbolic link"):
            attempt()
        assert list(real.iterdir()) == []
    folder = tmp_path / "spool"
    spooled(folder, [kept("AB123CD", 1, time.time() + 10)])
    victim = tmp_path / "victim.json"
    victim.write_bytes(b"someone's file, outside the spool")
    linked, linked_temp = batch_name(), f".{batch_name()}.tmp"
    (folder / linked).symlink_to(victim)
    (folder / linked_temp).symlink_to(victim)
    spool = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
    assert spool.pending.batches == 1 and spool.status.lost_batches == 0  # the links are not batches
    spool.close()
    assert expire_spool(folder, time.time() + DAY) == ExpiredSpool(reads=1, batches=1)
    assert victim.read_bytes() == b"someone's file, outside the spool"  # neither read, zeroed nor deleted
    assert (folder / linked).is_symlink() and (folder / linked_temp).is_symlink()  # nor the links removed
    assert spool_files(folder) == [folder / linked]


def passage(plate: str, delete_after: float) -> Passage:
    return Passage(
        "cam.mp4",
        "cam",
        "parking_fps",
        "FR-FPS",
        1,
        plate,
        0.9,
        ((plate, 0.9),),
        "FR",
        "LLDDDLL",
        10,
        17,
        0.4,
        0.7,
        5,
        delete_after,
    )


def test_expire_spool_applies_retention_without_the_database(tmp_path):
    t0 = time.time()
    missing = tmp_path / "missing"
    assert expire_spool(missing, t0) == ExpiredSpool() and not missing.exists()  # nothing to purge, nothing made
    empty = tmp_path / "empty"
    empty.mkdir()
    assert expire_spool(empty, t0) == ExpiredSpool() and list(empty.iterdir()) == []  # not adopted either

    folder = tmp_path / "spool"
    spool = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20, clock=lambda: t0)
    spool.write([kept("GONE111", 1, t0 + 10)], passages=[passage("GONE111", t0 + 10)])
    spool.write([kept("GONE222", 2, t0 + 10), kept("KEPT333", 2, t0 + DAY)], {blocked(): 1})
    spool.write([], passages=[passage("KEPT444", t0 + DAY)])
    database = json.loads(spool_files(folder)[0].read_bytes())["database"]
    before = snapshot(folder)
    with pytest.raises(SpoolInUse, match=r"in use by another run: that run purges it itself every minute"):
        expire_spool(folder, t0 + 10)
    assert snapshot(folder) == before  # the run holding it is left to it
    spool.close()

    assert expire_spool(folder, t0 + 10) == ExpiredSpool(reads=2, passages=1, batches=1)  # a deadline is inclusive
    documents = [json.loads(p.read_bytes()) for p in spool_files(folder)]
    content = b"".join(p.read_bytes() for p in folder.iterdir())
    assert b"GONE111" not in content and b"GONE222" not in content and b"KEPT333" in content and b"KEPT444" in content
    assert [d["database"] for d in documents] == [database, database]  # still sent to the database it was for
    assert [len(d["reads"]) for d in documents] == [1, 0] and documents[0]["counts"]
    assert expire_spool(folder, t0 + 10) == ExpiredSpool()  # done once
    again = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
    assert again.pending.batches == 2 and again.pending.reads == 1 and again.status.lost_batches == 0
    again.close()


def test_db_purge_purges_the_spool_even_while_the_database_is_down(tmp_path):
    t0 = time.time()
    folder = tmp_path / "spool"
    spooled(folder, [kept("GONE111", 1, t0 + 10), kept("KEPT222", 1, t0 + DAY)], clock=lambda: t0)
    config = yaml.safe_load((CONFIGS / "paris-fps.yaml").read_text())
    config["store"] = {"spool_dir": str(folder)}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    unreachable = "postgresql+psycopg://anpr@127.0.0.1:1/anpr"  # not the database the spool was written for
    command = ["db", "purge", "--config", str(tmp_path / "config.yaml"), "--db", unreachable, "--now", str(t0 + 20)]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}  # this tree's anpr, whatever is installed
    done = subprocess.run(
        [sys.executable, "-m", "anpr", *command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=120,
    )
    assert "purged 1 read(s) and 0 passage(s) past their deadline from the spool" in done.stdout, done.stderr
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("anpr: error: cannot open database postgresql+psycopg://anpr@127.0.0.1:1/anpr")
    assert len(done.stderr.strip().splitlines()) == 1
    files = [p for p in folder.iterdir() if p.is_file()]
    assert not any(b"GONE111" in p.read_bytes() for p in files) and any(b"KEPT222" in p.read_bytes() for p in files)
