"""Issue 14: a database that hangs, or cannot be written, never stops a run nor aborts it.

A hung PostgreSQL is a real server whose processes are stopped (SIGSTOP): its kernel keeps
the connections open and answers nothing, as a hung host or a network cut without a reset
looks to a client. Every call to the database must give up after store.timeout_seconds
(DATABASE_TIMEOUT_SECONDS), count the database as down, and let the run go on.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import PARKING_CONFIG
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from support.keys import TEST_KEYS
from support.live_run import LiveRun
from support.postgres import PostgresServer
from support.reads import plate_read
from support.rtsp import RtspServer

from anpr.config.settings import DATABASE_TIMEOUT_SECONDS
from anpr.errors import StoreError
from anpr.records import CountKey, Outcome, PolicedRead
from anpr.storage.audit import AuditLog
from anpr.storage.spool import SpooledStore
from anpr.storage.store import DatabaseUnavailable, ReadStore

REPO = Path(__file__).resolve().parent.parent
BOUND = DATABASE_TIMEOUT_SECONDS
SLACK = 0.75  # scheduling on a loaded test machine, on top of the bound
FREEZE_SECONDS = 30.0  # as in the issue: 25-30 s without an answer
DAY = 86400.0


@pytest.fixture(scope="module")
def server():
    """A server of this module's own: the tests freeze and stop it."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def slow_clip(tmp_path_factory, few_photos) -> Path:
    """640x360 H.264 at 5 fps, 2 s per photo. The CPU pipeline keeps up with it, so a live
    run drops no frame unless its loop stops taking them: the frame queue (64) holds 12.8 s,
    much more than the bound, much less than a freeze."""
    from benchmarks.clips import build_clip

    path = tmp_path_factory.mktemp("slow-clip") / "slow.mp4"
    build_clip(few_photos, path, (640, 360), 5, 2.0, "h264")
    return path


def kept(plate: str, frame: int) -> PolicedRead:
    return PolicedRead(plate_read(plate, frame), "cam", "parking_fps", "FR-FPS", time.time() + DAY, hit=False)


def blocked() -> CountKey:
    return CountKey(1_700_000_000 // 3600 * 3600, "cam", "law_enforcement_request", "FR-MUN-REQ", Outcome.BLOCKED)


def stored_keys(store: ReadStore) -> Counter[str]:
    with store.engine.connect() as connection:
        return Counter(connection.execute(text("select key from reads")).scalars())


def stored_at(url: str) -> Counter[str]:
    store = ReadStore(url, TEST_KEYS)
    try:
        return stored_keys(store)
    finally:
        store.close()


# --- the store, the spool and the audit log against a frozen server ---------------------------


def test_a_frozen_server_fails_each_call_within_the_bound_and_the_pool_recovers(server):
    store = ReadStore(server.new_database(), TEST_KEYS)
    store.check()
    audit = AuditLog(store.engine, TEST_KEYS)
    first, last = kept("AB001CD", 1), kept("AB003CD", 3)
    store.write([first])  # a pooled connection, idle when the server stops
    with server.frozen():
        for attempt, call in enumerate([lambda: store.write([kept("AB002CD", 2)]), store.count, store.binding]):
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                call()
            assert time.monotonic() - started < BOUND + SLACK, f"call {attempt} waited too long"
        # The audit log classifies failures as the store does: a run treats both as an outage.
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="cannot write the audit log"):
            audit.append("test.frozen", "pytest", {})
        assert time.monotonic() - started < BOUND + SLACK
    store.write([last])  # thawed: the pool reconnects, no call is refused
    assert sorted(stored_keys(store)) == sorted([first.key, last.key])
    assert [entry.action for entry in audit.entries()] == []
    store.close()


def test_a_writer_goes_on_through_a_freeze_and_stores_every_batch_once(server, tmp_path):
    """What the run loop sees: no write waits longer than the bound (the first after the
    freeze and one probe per backoff interval wait that long, the others not at all), the
    batches are spooled, and after the thaw every one is in the database exactly once."""
    store = ReadStore(server.new_database(), TEST_KEYS)
    store.check()
    spool = SpooledStore(store, tmp_path / "spool", 64 << 20, max_backoff=2.0)
    sent: list[PolicedRead] = []
    calls: list[tuple[float, float]] = []  # (start, seconds) of every write
    stop, errors = threading.Event(), []

    def run() -> None:
        frame = 0
        try:
            while not stop.is_set():
                reads = [kept(f"AB{frame:03d}CD", frame)]
                start = time.monotonic()
                spool.write(reads, {blocked(): 1})
                calls.append((start, time.monotonic() - start))
                sent.extend(reads)
                frame += 1
                time.sleep(0.1)
        except Exception as exc:  # reported below
            errors.append(exc)

    writer = threading.Thread(target=run)
    writer.start()
    try:
        time.sleep(1.0)
        with server.frozen():
            frozen_at = time.monotonic()
            time.sleep(10.0)
            assert not spool.status.database_up
            during = spool.pending
        drained_by = time.monotonic() + 30
        while spool.pending.batches and time.monotonic() < drained_by:
            time.sleep(0.2)
    finally:
        stop.set()
        writer.join()
    assert not errors, errors
    # The writer went on while the server was frozen: it waited only for each probe, once per backoff interval.
    assert during.batches >= 10, during
    longest = max(seconds for start, seconds in calls if start >= frozen_at - BOUND)
    assert longest < BOUND + SLACK
    assert spool.status.longest_wait_seconds < BOUND + SLACK
    assert spool.flush() == 0 and spool.pending.batches == 0
    keys = stored_keys(store)
    assert set(keys) == {read.key for read in sent} and set(keys.values()) == {1}
    assert store.policy_counts() == [(blocked(), len(sent))]
    spool.close()
    store.close()
    print(f"\nlongest write during the freeze {longest:.2f} s; {during.batches} batches spooled, all stored once")


def test_a_lock_held_elsewhere_and_a_slow_statement_are_cut_by_the_server(server):
    """A server that answers, but late: its own limits (statement_timeout, lock_timeout,
    set at connection) end the wait before the client would cut the connection."""
    store = ReadStore(server.new_database(), TEST_KEYS)
    store.check()
    read = kept("AB001CD", 1)
    with store.engine.connect() as holder:
        holder.execute(text("LOCK TABLE written_batches IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="lock timeout"):
            store.write([read])
        assert time.monotonic() - started < BOUND
        holder.rollback()
    started = time.monotonic()
    with pytest.raises(OperationalError, match="statement timeout"), store.engine.connect() as connection:
        connection.execute(text("SELECT pg_sleep(30)"))
    assert time.monotonic() - started < BOUND
    store.write([read])  # the connection stayed usable
    assert list(stored_keys(store)) == [read.key]
    store.close()


def test_a_sqlite_writer_waits_for_another_ones_lock_no_longer_than_the_bound(tmp_path):
    path = tmp_path / "busy.sqlite"
    store = ReadStore(str(path), TEST_KEYS)
    store.check()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="locked"):
        store.write([kept("AB001CD", 1)])
    assert BOUND - 0.5 < time.monotonic() - started < BOUND + SLACK
    other.execute("ROLLBACK")
    other.close()
    store.write([kept("AB001CD", 1)])
    assert store.count() == 1
    store.close()


def test_an_audit_entry_kept_in_the_spool_is_appended_once_with_its_time(tmp_path):
    """The run's end that the database could not take waits in the spool; the next run's
    spool appends it, in its place in the chain, once."""
    db, folder = str(tmp_path / "reads.sqlite"), tmp_path / "spool"
    store = ReadStore(db, TEST_KEYS)
    store.check()
    audit = AuditLog(store.engine, TEST_KEYS)
    audit.append("run.start", "pipeline", {})
    spool = SpooledStore(store, folder, 1 << 20, audit=audit)
    assert spool.append_audit_later("run.end", "pipeline", {"reads_seen": 3}, 1_700_000_000.25)
    assert spool.pending.batches == 1 and not audit.entries()[1:]
    spool.close()

    later = SpooledStore(store, folder, 1 << 20, audit=audit)  # the next run
    assert later.flush() == 1 and later.flush() == 0
    later.close()
    entries = audit.entries()
    assert [(e.action, e.at, json.loads(e.details)) for e in entries[1:]] == [
        ("run.end", 1_700_000_000.25, {"reads_seen": 3})
    ]
    assert audit.verify() == [] and not folder.exists()
    store.close()


# --- whole runs ---------------------------------------------------------------------------------


def _config(tmp_path: Path, source: str) -> str:
    config = yaml.safe_load(PARKING_CONFIG.read_text())
    config["cameras"][0]["source"] = source
    config["store"] = {
        "spool_dir": str(tmp_path / "spool"),
        "key_file": str(tmp_path / "anpr.key"),
        "audit_checkpoints": str(tmp_path / "checkpoints"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_postgresql_frozen_for_30_s_neither_stops_a_live_run_nor_drops_a_frame(server, slow_clip, tmp_path):
    """Issue 14, acceptance (a): reads keep coming (spooled) while the server answers
    nothing; no frame is dropped; the status log keeps its pace and shows the database
    down; after the thaw every read printed is stored exactly once."""
    url, log = server.new_database(), tmp_path / "status.jsonl"
    with (
        RtspServer(slow_clip, loop=True) as stream,
        LiveRun("--config", _config(tmp_path, stream.url), "--db", url, "--jsonl", "--log-json", str(log)) as run,
    ):
        run.wait_for(lambda o: True, 120, "a first read")
        with server.frozen():
            frozen = time.time()
            # Before the bound, the run loop hung in its first write until the thaw.
            run.wait_for(lambda o: o["time"] > frozen + BOUND, FREEZE_SECONDS - 5, "a read while frozen")
            time.sleep(max(0.0, frozen + FREEZE_SECONDS - time.time()))
        thawed = time.time()
        run.wait_for(lambda o: o["time"] > thawed + 2, 60, "a read after the thaw")
        run.stop(signal.SIGTERM)
    assert run.process.returncode == 0, run.stderr
    events = _events(log)
    end = events[-1]
    assert end["event"] == "run.end"
    camera, database = end["cameras"]["scan-car-07"], end["database"]
    assert camera["dropped"] == 0, camera
    assert database["database_up"] and database["pending_batches"] == 0, database
    assert database["spooled_reads"] > 0 and database["longest_wait_seconds"] < BOUND + SLACK, database
    statuses = [e for e in events if e["event"] == "status"]
    assert any(not e["database"]["database_up"] for e in statuses if frozen < e["time"] < thawed)
    times = [e["time"] for e in statuses if frozen - 10 < e["time"] < thawed + 10]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and max(gaps) < 10 + BOUND + 2, times  # one every 10 s, give or take a bounded call
    reported = [o["key"] for o in run.objects]
    during = [o for o in run.objects if frozen < o["time"] < thawed]
    assert during
    stored = stored_at(url)
    assert set(stored) == set(reported) and set(stored.values()) == {1}, "a read is missing or stored twice"
    assert not (tmp_path / "spool").exists()
    print(
        f"\n{len(reported)} reads reported, {len(during)} during the {FREEZE_SECONDS:.0f} s freeze, "
        f"all stored once; dropped frames {camera['dropped']}; longest wait on the database "
        f"{database['longest_wait_seconds']:.2f} s; status lines at most {max(gaps):.1f} s apart"
    )


def test_the_database_down_at_the_end_of_a_run_leaves_the_spool_and_a_complete_report(server, slow_clip, tmp_path):
    """Issue 14, acceptance (b): SIGTERM with the database down ends the run as usual (exit
    0): the summary, the spool's warning and a complete run.end status line. The run's end
    audit entry, which could not be written, waits in the spool (a warning says so) and the
    next run writes it, with its time, after the reads it kept there."""
    url, log = server.new_database(), tmp_path / "status.jsonl"
    with (
        RtspServer(slow_clip, loop=True) as stream,
        LiveRun("--config", _config(tmp_path, stream.url), "--db", url, "--jsonl", "--log-json", str(log)) as run,
    ):
        run.wait_for(lambda o: True, 120, "a first read")
        server.stop()
        try:
            stopped = time.time()
            run.wait_for(lambda o: o["time"] > stopped, 60, "a read while the database is down")
            took = run.stop(signal.SIGTERM)
        finally:
            server.start()
    assert run.process.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert not [line for line in lines if line.startswith("anpr: error:")], run.stderr
    assert any("reads seen" in line for line in lines), run.stderr  # the summary
    assert any(line.startswith("anpr: warning: database ") and "read(s) kept in" in line for line in lines)
    assert any(line.startswith("anpr: warning:") and "run.end" in line for line in lines), run.stderr
    end = _events(log)[-1]
    assert end["event"] == "run.end" and end["cameras"]["scan-car-07"]["processed"] > 0
    assert not end["database"]["database_up"] and end["database"]["pending_reads"] > 0
    reported = {o["key"] for o in run.objects}
    spooled = {
        read["key"] for path in (tmp_path / "spool").glob("*.json") for read in json.loads(path.read_bytes())["reads"]
    }
    stored = set(stored_at(url))
    assert spooled and not spooled & stored and spooled | stored == reported  # each read in one place
    assert took < 30
    ended = time.time()

    config = str(tmp_path / "config.yaml")  # the same deployment, key and spool
    second = _anpr("run", str(slow_clip), "--config", config, "--db", url, cwd=tmp_path, as_root=True)
    assert second.returncode == 0, second.stderr
    store = ReadStore(url, TEST_KEYS)
    keys, entries = stored_keys(store), AuditLog(store.engine, TEST_KEYS).entries()
    store.close()
    assert reported <= set(keys) and set(keys.values()) == {1}
    ends = [(entry.at, json.loads(entry.details)) for entry in entries if entry.action == "run.end"]
    # Sent before the second run began: the first run's end is in its place in the log.
    # The database is bound to its key (database.bind) and its deployment before the first run starts.
    assert [entry.action for entry in entries] == [
        "database.bind",
        "deployment.bind",
        "run.start",
        "run.end",
        "run.start",
        "run.end",
    ]
    late_at, late = ends[0]
    assert late_at < ended and late["cameras"]["scan-car-07"]["frames"] == end["cameras"]["scan-car-07"]["processed"]
    assert late["spool"]["spooled_reads"] == len(spooled)
    assert not (tmp_path / "spool").exists()
    verify = _anpr("audit", "verify", "--config", config, "--db", url, cwd=tmp_path, as_root=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr  # the late entry is a link of the chain


def test_an_error_after_the_readers_started_leaves_no_thread_running(server, slow_clip, tmp_path):
    """The run's first audit entry cannot be written (the database went away after the
    checks): the error goes up, and every decoding thread is stopped on the way."""
    from anpr.config.settings import load_settings
    from anpr.policy.engine import Policy
    from anpr.run.assemble import DeploymentRun, cameras_to_run

    overrides = {
        "store": {
            "url": server.new_database(),
            "spool_dir": str(tmp_path / "spool"),
            "key_file": str(tmp_path / "anpr.key"),
            "audit_checkpoints": str(tmp_path / "checkpoints"),
        }
    }
    settings = load_settings(PARKING_CONFIG, overrides)
    assert settings.deployment is not None
    policy = Policy(settings.deployment)
    before = set(threading.enumerate())
    with RtspServer(slow_clip, loop=True) as stream:  # a live source: it never ends by itself
        cameras = cameras_to_run(policy.deployment, stream.url, None, PARKING_CONFIG)
        decisions = {c.camera.id: policy.camera_decisions(c.camera.id) for c in cameras}
        try:
            with DeploymentRun(settings, policy, decisions, cameras) as deployment_run:
                assert set(threading.enumerate()) - before  # its reader is decoding
                server.stop()
                with pytest.raises(StoreError, match="audit log"):
                    deployment_run.run()
        finally:
            server.start()
    # The database watchdog stays, idle, for the process's next database call.
    left = [t.name for t in set(threading.enumerate()) - before if t.name != "anpr-database-watchdog"]
    assert not left


@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_read_only_sqlite_database_is_one_line_and_exit_2(tmp_path, slow_clip, where):
    """Issue 14, acceptance (c): a database made by an earlier run, now read-only (the file,
    or the folder its journal goes in): refused before any frame is read, exit 2, one
    line, and the process ends at once (no decoding thread left to abort it)."""
    folder = tmp_path / "db"
    folder.mkdir()
    db = folder / "reads.sqlite"
    first = _anpr("run", str(slow_clip), "--config", str(PARKING_CONFIG), "--db", str(db), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = db.read_bytes()
    (db if where == "file" else folder).chmod(0o444 if where == "file" else 0o555)
    try:
        started = time.monotonic()
        result = _anpr("run", str(slow_clip), "--config", str(PARKING_CONFIG), "--db", str(db), cwd=tmp_path)
        took = time.monotonic() - started
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr  # not 134: aborted by a thread left running
    assert lines[-1].startswith("anpr: error: cannot write to database ") and "readonly" in lines[-1], lines
    assert sum(line.startswith("anpr: error:") for line in lines) == 1 and "Traceback" not in result.stderr
    assert db.read_bytes() == before and not (folder / "reads.sqlite-journal").exists()
    assert took < 30


def _anpr(*args: str, cwd: Path, as_root: bool = False) -> subprocess.CompletedProcess:
    """The command line, unless `as_root` as a user without the right to override file
    permissions (root, running the tests, would write a read-only file regardless)."""
    command = [sys.executable, "-m", "anpr", *args]
    if os.geteuid() == 0 and not as_root:
        command = ["setpriv", "--bounding-set", "-dac_override", *command]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300, env=env)
