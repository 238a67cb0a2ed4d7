"""Passages in the database: stored, spooled, purged, deleted and searched exactly like reads."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from support.keys import TEST_KEYS, write_key_file
from support.reads import plate_read

from anpr.config.settings import Settings, load_settings
from anpr.errors import StoreError
from anpr.policy.engine import Policy
from anpr.records import CountKey, Outcome, Passage, PlateRead, PolicedRead
from anpr.storage.audit import AuditLog
from anpr.storage.binding import require_binding
from anpr.storage.queries import delete_on_payment, search
from anpr.storage.spool import Pending, SpooledStore
from anpr.storage.store import Base, ReadStore, WrittenBatchRow

ME = pwd.getpwuid(os.geteuid()).pw_name

REPO = Path(__file__).resolve().parent.parent
PARIS = REPO / "configs" / "paris-fps.yaml"
DAY = 86400.0
T0 = 1_800_000_000.0  # a fixed "now" for deadlines that do not need the wall clock
FPS = ("parking_fps", "FR-FPS")
LAPI = ("criminal_investigation", "FR-LAPI-1")


def kept_read(plate: str, frame: int, delete_after: float, kind: tuple[str, str] = FPS, hit: bool = False):
    # Untracked, as `plate_read` makes it: the reads table keeps no track (the passages
    # table links a plate's reads). Its time is counted from T0, this file's "now".
    read = replace(plate_read(plate, frame), time=T0 + frame / 25, confidence=0.8123456789)
    return PolicedRead(read, "cam", kind[0], kind[1], delete_after, hit)


def passage(
    plate: str, track: int, delete_after: float, kind: tuple[str, str] = FPS, hit: bool = False, camera: str = "cam"
) -> Passage:
    # Digits beyond what to_dict() rounds to: a passage must come back identical, not rounded.
    return Passage(
        source="cam.mp4",
        camera=camera,
        purpose=kind[0],
        rule_id=kind[1],
        track=track,
        plate=plate,
        confidence=0.912345678901,
        candidates=((plate, 0.912345678901), (plate[:-1], 0.0456789012345)),
        country="FR",
        format="LLDDDLL",
        first_frame=10 * track,
        last_frame=10 * track + 7,
        first_time=T0 + track + 0.123456789,
        last_time=T0 + track + 0.987654321,
        reads=5,
        delete_after=delete_after,
        hit=hit,
    )


def blocked() -> CountKey:
    return CountKey(int(T0 // 3600 * 3600), "cam", "law_enforcement_request", "FR-MUN-REQ", Outcome.BLOCKED)


@pytest.fixture(scope="module")
def server():
    """A PostgreSQL server of this module's own: the outage tests stop and restart it."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[ReadStore]:
    if request.param == "sqlite":
        target = str(tmp_path / "reads.sqlite")
    else:
        target = request.getfixturevalue("server").new_database()
    store = ReadStore(target, TEST_KEYS)
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def outage(request, tmp_path):
    """A real store, and a block during which its database cannot be reached: the SQLite
    file's volume unmounted (its folder moved away), or the PostgreSQL server stopped."""
    if request.param == "sqlite":
        volume = tmp_path / "volume"
        volume.mkdir()
        store = ReadStore(str(volume / "reads.sqlite"), TEST_KEYS)

        @contextlib.contextmanager
        def down() -> Iterator[None]:
            store.close()  # a pooled connection would keep the moved file open
            aside = volume.rename(tmp_path / "unmounted")
            try:
                yield
            finally:
                aside.rename(volume)

    else:
        server = request.getfixturevalue("server")
        store = ReadStore(server.new_database(), TEST_KEYS)

        @contextlib.contextmanager
        def down() -> Iterator[None]:
            server.stop()
            try:
                yield
            finally:
                server.start()

    store.check()
    yield store, down
    store.close()


def spool_documents(folder: Path) -> list[dict]:
    return [json.loads(path.read_bytes()) for path in sorted(folder.glob("*.json"))]


# --- the store ------------------------------------------------------------------------------------


def test_passages_come_back_identical(store):
    late = T0 + DAY
    reads = [kept_read("AB123CD", 1, late), kept_read("XY987ZT", 2, late)]
    passages = [passage("AB123CD", 1, late, hit=True), passage("XY987ZT", 2, late + 0.000123)]
    other_purpose = passage("AB123CD", 3, late, kind=LAPI)
    assert store.write(reads, {blocked(): 2}, passages=[*passages, other_purpose])
    assert store.write([], passages=[passage("QW12ERT", 4, late)])  # a batch of passages alone
    assert not store.write([], passages=[])  # an empty one writes nothing
    assert store.count_passages() == 4 and store.count() == 2
    assert store.passages()[:3] == [*passages, other_purpose]  # every field, to the last digit
    assert [p.to_dict(exact=True) for p in store.passages()[:3]] == [
        p.to_dict(exact=True) for p in (*passages, other_purpose)
    ]
    assert store.passages(plate="AB123CD") == [passages[0], other_purpose]
    assert store.passages(plate="AB123CD", purpose="parking_fps") == passages[:1]
    assert store.passages(source="other.mp4") == []
    assert store.reads() == reads and store.policy_counts() == [(blocked(), 2)]


def test_a_batch_sent_twice_stores_its_passages_once(store):
    late = T0 + DAY
    passages = [passage("AB123CD", 1, late), passage("XY987ZT", 2, late)]
    assert store.write([], {blocked(): 1}, key="a" * 32, passages=passages)
    assert not store.write([], {blocked(): 1}, key="a" * 32, passages=passages)  # the same batch again
    with Session(store.engine) as session, session.begin():
        session.query(WrittenBatchRow).delete()  # as if its key had been pruned
    assert not store.write([], {blocked(): 1}, key="a" * 32, passages=passages)  # known by its passage keys
    fresh = passage("QW12ERT", 3, late)
    assert not store.write([], passages=[fresh, passages[1]], key="b" * 32)  # one passage stored: skipped whole
    assert store.passages() == passages and store.policy_counts() == [(blocked(), 1)]
    assert store.write([], passages=[fresh], key="b" * 32)
    assert store.passages() == [*passages, fresh]


def test_purge_deletes_expired_reads_and_passages_and_nothing_else(store):
    plates = ["AB123CD", "XY987ZT", "QW12ERT"]
    reads = [kept_read(plate, n, T0 + n) for n, plate in enumerate(plates)]
    passages = [passage(plate, n, T0 + n) for n, plate in enumerate(plates)]
    store.write(reads, passages=passages)
    assert store.purge(T0 - 0.5) == 0
    assert store.purge(T0 + 1) == 4  # a deadline is inclusive: two reads and two passages
    assert store.reads() == reads[2:] and store.passages() == passages[2:]
    assert store.purge(T0 + 1.5) == 0
    assert store.purge(T0 + 2) == 2 and store.count() == 0 and store.count_passages() == 0


def test_delete_plate_deletes_reads_and_passages_of_that_rule_only(store):
    late = T0 + DAY
    fps = [kept_read("AB123CD", 1, late)], [passage("AB123CD", 1, late), passage("AB123CD", 2, late)]
    lapi = [kept_read("AB123CD", 3, late, LAPI)], [passage("AB123CD", 3, late, LAPI)]
    other_plate = [kept_read("XY987ZT", 4, late)], [passage("XY987ZT", 4, late)]
    store.write(fps[0] + lapi[0] + other_plate[0], passages=fps[1] + lapi[1] + other_plate[1])
    assert store.delete_plate("AB123CD", "FR-FPS") == 3  # one read, two passages
    assert store.reads() == lapi[0] + other_plate[0] and store.passages() == lapi[1] + other_plate[1]
    assert store.delete_plate("AB123CD", "FR-FPS") == 0


def test_a_payment_deletes_the_plates_passages(tmp_path):
    store = ReadStore(str(tmp_path / "fps.sqlite"), TEST_KEYS)
    late = T0 + DAY
    store.write(
        [kept_read("AB123CD", 1, late)],
        passages=[passage("AB123CD", 1, late, camera="scan-car-07"), passage("XY987ZT", 2, late)],
    )
    policy = Policy(load_settings(PARIS).deployment)
    audit = AuditLog(store.engine, TEST_KEYS)
    require_binding(store, audit, policy.deployment, "operator", bind_if_new=True)
    assert delete_on_payment(store, policy, audit, "ab-123-cd", "payment-system", "mark-paid") == 2
    assert store.count() == 0 and [p.plate for p in store.passages()] == ["XY987ZT"]
    assert json.loads(audit.entries()[-1].details)["deleted"] == 2
    store.close()


def test_purged_passages_leave_no_trace_in_the_sqlite_file(tmp_path):
    path = tmp_path / "reads.sqlite"
    store = ReadStore(str(path), TEST_KEYS)
    store.write([], passages=[passage("QW12ERT", 1, T0), passage("ZX98CVB", 2, T0 + 1)])
    assert store.purge(T0 + 1) == 2
    store.close()
    content = path.read_bytes()
    assert b"QW12ER" not in content and b"ZX98CV" not in content  # neither the plate nor its candidates


def test_a_database_without_the_passages_table_gets_one(tmp_path):
    path = tmp_path / "old.sqlite"
    read = kept_read("AB123CD", 1, T0 + DAY)
    ReadStore(str(path), TEST_KEYS).write([read])
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("DROP TABLE passages")  # what anpr before passages left
        connection.commit()
    store = ReadStore(str(path), TEST_KEYS)
    assert store.reads() == [read] and store.passages() == []
    stored = passage("AB123CD", 1, T0 + DAY)
    assert store.write([], passages=[stored])
    assert store.passages() == [stored] and store.reads() == [read]
    store.close()


@pytest.mark.parametrize("table, column", [("reads", "format"), ("passages", "hit")])
def test_a_database_with_missing_columns_is_still_refused(tmp_path, table, column):
    path = tmp_path / "older.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    engine.dispose()
    with pytest.raises(StoreError, match=rf"made by an older anpr \(no column {table}\.{column}\)") as refused:
        ReadStore(str(path), TEST_KEYS).check()
    assert "\n" not in str(refused.value)


# --- the outage spool ----------------------------------------------------------------------------------


def test_passages_are_spooled_while_the_database_is_down_and_sent_when_it_is_back(outage, tmp_path):
    store, down = outage
    folder = tmp_path / "spool"
    late = time.time() + DAY
    reads = [kept_read("AB123CD", 1, late)]
    first = [passage("AB123CD", 1, late, hit=True), passage("XY987ZT", 2, late)]
    second = [passage("QW12ERT", 3, late)]
    with down():
        spool = SpooledStore(store, folder, 1 << 20)
        spool.write(reads, {blocked(): 1}, passages=first)
        spool.write([], passages=second)  # passages alone are a batch too
        assert not spool.status.database_up and spool.pending == Pending(2, 1, spool.pending.bytes)
        on_disk = spool_documents(folder)
        assert [[Passage.from_dict(p) for p in d["passages"]] for d in on_disk] == [first, second]
    assert spool.flush() == 2
    assert store.passages() == [*first, *second] and store.reads() == reads
    assert store.policy_counts() == [(blocked(), 1)]
    assert spool.status.database_up and spool.pending == Pending(0, 0, 0)
    assert spool.flush() == 0 and store.count_passages() == 3  # nothing left to send twice
    spool.close()


def test_expired_passages_are_dropped_from_the_spool(outage, tmp_path):
    store, down = outage
    folder = tmp_path / "spool"
    now = [time.time()]
    soon, later, late = now[0] + 10, now[0] + 30, now[0] + DAY
    with down():
        spool = SpooledStore(store, folder, 1 << 20, clock=lambda: now[0])
        spool.write([], passages=[passage("GONE111", 1, soon)])  # all it holds expires: the file goes
        spool.write(
            [kept_read("KEPT222", 2, late)],
            passages=[passage("GONE333", 3, soon), passage("GONE444", 4, later), passage("KEPT555", 5, late)],
        )
        assert spool.pending.batches == 2
        now[0] = soon  # a deadline is inclusive
        assert spool.purge(now[0]) == 0  # the database is down: the spool alone is purged
        assert spool.pending.batches == 1
        content = b"".join(path.read_bytes() for path in folder.iterdir())
        assert b"GONE111" not in content and b"GONE333" not in content
        assert b"GONE444" in content and b"KEPT555" in content
    now[0] = later  # GONE444 expires before the flush: never written
    assert spool.flush() == 1
    assert [p.plate for p in store.passages()] == ["KEPT555"] and [r.read.plate for r in store.reads()] == ["KEPT222"]
    spool.close()


def test_a_spool_file_without_passages_still_decodes(tmp_path):
    """A file the previous anpr spooled (format 2, no "passages", no "track") is sent as it was."""
    store = ReadStore(str(tmp_path / "reads.sqlite"), TEST_KEYS)
    read = PolicedRead(
        PlateRead("cam.mp4", 1, T0, "AB123CD", "ab123cd", 0.8, 0.9, 0.88, (1.0, 2.0, 3.0, 4.0), "d", "o"),
        "cam",
        "parking_fps",
        "FR-FPS",
        time.time() + DAY,
        False,
    )
    entry = read.to_dict(exact=True)
    del entry["track"]
    document = {
        "format": 2,
        "key": "d" * 32,
        "database": store.safe_url,
        "spooled_at": time.time(),
        "reads": [entry],
        "counts": [{**blocked().to_dict(), "count": 2}],
    }
    folder = tmp_path / "spool"
    folder.mkdir()
    data = json.dumps(document).encode()
    (folder / f"{time.time_ns():020d}-{'d' * 32}.json").write_bytes(data)
    spool = SpooledStore(store, folder, 1 << 20)
    assert spool.pending == Pending(1, 1, len(data))
    assert spool.flush() == 1 and spool.status.lost_batches == 0
    assert store.reads() == [read] and store.count_passages() == 0 and store.policy_counts() == [(blocked(), 2)]
    spool.close()
    store.close()


# --- gated search -----------------------------------------------------------------------------------------


def lapi_policy(tmp_path: Path) -> Policy:
    hotlist = tmp_path / "hot.txt"
    hotlist.write_text("AB123CD\n")
    settings = Settings.model_validate(
        {
            "controller": {"type": "gendarmerie", "name": "test controller", "jurisdiction": "FR"},
            "cameras": [{"id": "cam", "purposes": ["criminal_investigation"]}],
            "purposes": {
                "criminal_investigation": {
                    "safeguards": {"designated_agents": ["agent-1"]},
                    "hotlist": str(hotlist),
                    "sinks": ["store"],
                }
            },
            "sinks": {"store": {"type": "database"}},
        }
    )
    assert settings.deployment is not None
    return Policy(settings.deployment)


def test_search_for_passages_is_gated_like_reads(tmp_path):
    store = ReadStore(str(tmp_path / "lapi.sqlite"), TEST_KEYS)
    late = T0 + DAY
    hit, no_hit = passage("AB123CD", 1, late, LAPI, hit=True), passage("AB123CD", 2, late, LAPI)
    read = kept_read("AB123CD", 1, late, LAPI, hit=True)
    store.write([read], passages=[hit, no_hit, passage("XY987ZT", 3, late, LAPI)])
    policy = lapi_policy(tmp_path)
    audit = AuditLog(store.engine, TEST_KEYS)
    require_binding(store, audit, policy.deployment, "operator", bind_if_new=True)

    without_procedure = search(
        store, policy, audit, "ab-123-cd", "criminal_investigation", "agent-1", passages=True, now=T0
    )
    assert without_procedure.allowed and without_procedure.rows == [hit] and without_procedure.withheld == 1
    assert "1 no-hit passage(s) withheld" in without_procedure.reason
    procedure = search(
        store, policy, audit, "AB123CD", "criminal_investigation", "agent-1", "PV-1", passages=True, now=T0
    )
    assert procedure.rows == [hit, no_hit] and procedure.withheld == 0
    reads = search(store, policy, audit, "AB123CD", "criminal_investigation", "agent-1", "PV-1", now=T0)
    assert reads.rows == [read]  # without the flag: reads, as before
    stranger = search(store, policy, audit, "AB123CD", "criminal_investigation", "mayor", passages=True, now=T0)
    assert not stranger.allowed and stranger.rows == [] and "not a designated agent" in stranger.reason
    denied = search(store, policy, audit, "AB123CD", "law_enforcement_request", "agent-1", passages=True, now=T0)
    assert not denied.allowed and denied.rows == [] and "denied" in denied.reason

    entries = audit.entries()[1:]  # after the binding
    assert [e.action for e in entries] == ["query", "query", "query", "query.refused", "query.refused"]
    details = [json.loads(e.details) for e in entries]
    assert [d.get("passages") for d in details] == [True, True, False, True, None]
    # The refusal of an agent is kept with the plate's keyed hash; the request of a denied
    # purpose leaves nothing derived from the plate (nor the flag of what was asked).
    assert details[3]["plate_key"] == TEST_KEYS.plate_digest("AB123CD")
    assert details[4] == {"purpose": "law_enforcement_request", "reason": denied.reason}
    assert "AB123CD" not in json.dumps(details)
    assert [d.get("rows") for d in details[:3]] == [1, 2, 1] and details[0]["withheld"] == 1
    assert audit.verify() == []
    store.close()


def test_cli_db_search_passages(anpr_cli, tmp_path):
    db = tmp_path / "fps.sqlite"
    store = ReadStore(str(db), TEST_KEYS)
    late = time.time() + DAY
    read = PolicedRead(kept_read("AB123CD", 1, late).read, "scan-car-07", "parking_fps", "FR-FPS", late, False)
    found = passage("AB123CD", 1, late, camera="scan-car-07")
    store.write([read], passages=[found, passage("XY987ZT", 2, late, camera="scan-car-07")])
    # The database serves a deployment naming this test's OS account as its agent; the
    # CLI finds its key where a run would have made it (next to the database).
    deployment = yaml.safe_load(PARIS.read_text())
    deployment["purposes"]["parking_fps"]["safeguards"]["designated_agents"] = [ME]
    config = tmp_path / "paris-agents.yaml"
    config.write_text(yaml.safe_dump(deployment))
    require_binding(store, AuditLog(store.engine, TEST_KEYS), load_settings(config).deployment, ME, bind_if_new=True)
    store.close()
    write_key_file(tmp_path)
    query = ["db", "search", "ab-123-cd", "--purpose", "parking_fps", "--config", str(config), "--db", str(db)]

    text = anpr_cli(*query, "--passages")
    assert text.returncode == 0, text.stderr
    [line] = text.stdout.splitlines()
    assert line.split()[0] == "AB123CD"
    for shown in ("confidence 0.91", "reads    5", f"{found.first_time:.2f}", f"{found.last_time:.2f}"):
        assert shown in line, (shown, line)
    assert "camera scan-car-07" in line and "purpose parking_fps" in line
    assert "1 row(s); answered" in text.stderr

    as_json = anpr_cli(*query, "--passages", "--json")
    assert as_json.returncode == 0 and [json.loads(x) for x in as_json.stdout.splitlines()] == [found.to_dict()]
    reads = anpr_cli(*query, "--json")  # reads, unchanged
    assert reads.returncode == 0 and [json.loads(x) for x in reads.stdout.splitlines()] == [read.to_dict()]

    denied = [*query[:3], "--purpose", "law_enforcement_request", *query[5:]]
    refused = anpr_cli(*denied, "--passages")
    assert refused.returncode == 3 and "query refused" in refused.stderr and refused.stdout == ""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        details = [json.loads(d) for (d,) in connection.execute("select details from audit_log order by seq")]
    assert [d.get("passages") for d in details[1:]] == [True, True, False, None]  # after the binding
