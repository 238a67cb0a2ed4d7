"""Issue 26, cases 12, 13, 14 and 16, and two things found beside them: faults.

12. The SQLite database file deleted (or replaced) mid-run: said as such, and the reads of
    the rest of the run kept in the spool for the next run, not lost behind "attempt to
    write a readonly database".
13. A run killed (SIGKILL) leaves its spool folder's lock file: the lock is the kernel's
    (flock), gone with the process, so the next run uses the folder as its own and removes
    it once empty.
14. A run refused because another holds the spool folder changes nothing in it (it used to
    mark the folder "adopted" first, so that it was never removed).
16. `anpr db record-finding PLATE` is gated like a query: refused (and audited) to anyone
    who is not a designated agent, with an answer that does not depend on the plate; the
    count of `mark-paid` is told to the designated agents only.
Also: the run's summary counts the reads lost to a full or unwritable spool as lost, and a
config file above the size cap is refused at once.

Real parts throughout: the `anpr` command in a subprocess (a real run of the bundled
sample), real processes killed for real, real OS locks.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.keys import TEST_KEYS
from support.live_run import LiveRun

from anpr.storage.spool import LOCK_NAME, MARKER_NAME, SpooledStore, SpoolInUse
from anpr.storage.store import ReadStore

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "sample.mp4"
PARIS = REPO / "configs" / "paris-fps.yaml"
ME = pwd.getpwuid(os.geteuid()).pw_name
UNREACHABLE = "postgresql+psycopg://anpr@127.0.0.1:1/none"  # nothing listens on port 1


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every entry of a folder: its content and mode."""
    return {p.name: (p.read_bytes(), p.lstat().st_mode) for p in folder.iterdir()}


# --- 13: a killed run's lock ---------------------------------------------------------------------

HOLDER = """
import sys, time
from support.keys import TEST_KEYS
from anpr.storage.spool import SpooledStore
from anpr.storage.store import ReadStore
spool = SpooledStore(ReadStore(sys.argv[2], TEST_KEYS), sys.argv[1], 1 << 20)
print("holding", flush=True)
time.sleep(600)
"""


def _holder(folder: Path, database: str) -> subprocess.Popen[str]:
    """A process that holds `folder` as its spool until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), database],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO / "tests",
        env={**os.environ, "PYTHONPATH": str(REPO / "tests")},
    )
    assert process.stdout is not None and process.stdout.readline() == "holding\n"
    return process


def test_a_killed_run_s_spool_folder_is_used_and_removed_by_the_next_run(tmp_path):
    folder = tmp_path / "spool"
    holder = _holder(folder, UNREACHABLE)
    with pytest.raises(SpoolInUse):  # the lock holds while its process lives...
        SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert sorted(p.name for p in folder.iterdir()) == [MARKER_NAME, LOCK_NAME]  # what the kill left
    again = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)  # ...and not after it
    again.close()
    assert not folder.exists()  # made by anpr and empty: removed, stale lock file and all


# --- 14: a refused run changes nothing -------------------------------------------------------------


def test_a_run_refused_by_the_folder_s_lock_changes_nothing_in_it(tmp_path):
    folder = tmp_path / "spool"
    folder.mkdir()
    # Another run has taken the folder's lock and not yet marked it: a refused run must not mark it.
    with open(folder / LOCK_NAME, "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        before = snapshot(folder)
        with pytest.raises(SpoolInUse, match="in use by another run"):
            SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
        assert snapshot(folder) == before


def test_two_runs_on_one_spool_folder_the_refused_one_leaves_it_to_the_other(tmp_path):
    folder = tmp_path / "made" / "spool"
    first = SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
    before = snapshot(folder)
    with pytest.raises(SpoolInUse):
        SpooledStore(ReadStore(UNREACHABLE, TEST_KEYS), folder, 1 << 20)
    assert snapshot(folder) == before
    first.close()
    assert not folder.exists() and folder.parent.is_dir()


RACER = """
import sys, time
from support.keys import TEST_KEYS
from anpr.storage.spool import SpooledStore, SpoolInUse
from anpr.storage.store import ReadStore
folder, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    pass
try:
    spool = SpooledStore(ReadStore(sys.argv[3], TEST_KEYS), folder, 1 << 20)
except SpoolInUse:
    print("refused")
else:
    time.sleep(float(sys.argv[4]))
    spool.close()
    print("ran")
"""


def test_runs_started_or_ended_at_the_same_moment_never_leave_the_folder_behind(tmp_path):
    """Pairs of processes that open one new spool folder at the same instant (one then holds
    it 0.2 s or not at all, so that starts meet ends too): whoever wins, no folder is left,
    marked or not, and nothing but the folder is left in its parent."""
    for number in range(8):
        folder = tmp_path / f"spool-{number}"
        start = time.time() + 1.0
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, str(folder), str(start), UNREACHABLE, str(hold)],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO / "tests")},
            )
            for hold in ((0.2, 0.2) if number % 2 else (0.0, 0.0))
        ]
        said = sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)
        assert said in (["ran", "ran"], ["ran", "refused"]), said
        assert not folder.exists(), (said, [p.name for p in folder.iterdir()])
    assert list(tmp_path.iterdir()) == []


# --- 12 and the summary: the database file deleted mid-run -----------------------------------------


def _config(folder: Path, agents: list[str] | None = None) -> Path:
    """Paris FPS on the bundled sample; `agents`: its designated agents (None: as shipped, none)."""
    data = yaml.safe_load(PARIS.read_text())
    data["cameras"][0]["source"] = str(SAMPLE)
    if agents is not None:
        data["purposes"]["parking_fps"]["safeguards"]["designated_agents"] = agents
    path = folder / "paris.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _keys(db: Path) -> set[str]:
    connection = sqlite3.connect(db)
    try:
        return {key for (key,) in connection.execute("select key from reads")}
    finally:
        connection.close()


def _lose_the_database(folder: Path, *, spool_too: bool) -> tuple[LiveRun, Path]:
    """A run of the sample whose database file is deleted at its first read (with
    `spool_too`, its spool folder as well); the run, once ended, and a link that kept the
    deleted file's content (what the run had written there before)."""
    config, db = _config(folder, [ME]), folder / "p.sqlite"
    run = LiveRun("--config", str(config), "--db", str(db), "--jsonl", cwd=folder)
    run.wait_for(lambda read: True, 300, "a first read")
    os.link(db, folder / "deleted.sqlite")  # the path is gone for anpr as for SQLite; the content stays here
    db.unlink()
    if spool_too:
        shutil.rmtree(folder / "anpr-spool")
    run.process.wait(timeout=600)
    run.stop()  # collects the rest of its output (it has ended: no signal is sent)
    return run, folder / "deleted.sqlite"


def _summary(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if " reads seen, " in line]
    return line


@pytest.mark.system
def test_a_database_file_deleted_mid_run_is_said_and_the_rest_of_the_run_waits_in_the_spool(tmp_path):
    run, deleted = _lose_the_database(tmp_path, spool_too=False)
    assert run.process.returncode == 0, run.stderr
    db = tmp_path / "p.sqlite"
    assert f"database file {db} was deleted while anpr was using it" in run.stderr
    assert "readonly database" not in run.stderr
    printed = {read["key"] for read in run.objects}
    before = _keys(deleted)
    waiting = len(printed) - len(before)
    assert before < printed and waiting > 0
    assert f"{waiting} read(s) kept in anpr-spool" in run.stderr
    # The summary says where the reads went, not that they all are in the database.
    assert _summary(run.stderr).endswith(
        f"{len(printed)} reads seen, {len(printed)} allowed: {len(before)} kept in sqlite:///{db}, "
        f"{waiting} waiting in the spool for it"
    )
    # The next run with a database at that path (a new one here) sends them before its own.
    again = subprocess.run(
        [sys.executable, "-m", "anpr", "run", "--config", str(tmp_path / "paris.yaml"), "--db", str(db)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert printed - before <= _keys(db) and not before & _keys(db)  # each read once, none lost
    assert not (tmp_path / "anpr-spool").exists()


@pytest.mark.system
def test_reads_lost_to_the_spool_are_counted_as_lost_in_the_summary(tmp_path):
    run, deleted = _lose_the_database(tmp_path, spool_too=True)
    assert run.process.returncode == 2
    printed, before = len(run.objects), len(_keys(deleted))
    lost = printed - before
    assert lost > 0 and f"anpr: error: {lost} read(s) lost" in run.stderr
    assert _summary(run.stderr).endswith(
        f"{printed} reads seen, {printed} allowed: {before} kept in sqlite:///{tmp_path / 'p.sqlite'}, "
        f"{lost} lost (the spool was full or not writable)"
    )


# --- 16: record-finding is an agent's --------------------------------------------------------------


@pytest.fixture(scope="module")
def unqueried(tmp_path_factory) -> tuple[Path, list[str]]:
    """A run of the sample under Paris FPS as shipped (no designated agent: nobody may query
    its reads): its folder (config, database, key) and the plates it stored."""
    folder = tmp_path_factory.mktemp("unqueried")
    config = _config(folder)
    result = subprocess.run(
        [sys.executable, "-m", "anpr", "run", "--config", str(config), "--db", str(folder / "p.sqlite"), "--jsonl"],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return folder, sorted({json.loads(line)["plate"] for line in result.stdout.splitlines()})


def _stored(db: Path) -> dict[str, int]:
    connection = sqlite3.connect(db)
    try:
        return dict(connection.execute("select plate, count(*) from reads group by plate"))
    finally:
        connection.close()


@pytest.mark.system
def test_record_finding_is_refused_to_a_non_agent_with_one_answer_whatever_the_plate(unqueried, tmp_path):
    folder, plates = unqueried
    for item in folder.iterdir():
        if item.is_file():
            shutil.copy2(item, tmp_path / item.name)
    db, config = tmp_path / "p.sqlite", tmp_path / "paris.yaml"
    stored = _stored(db)
    seen, never = plates[0], "ZZ999ZZ"
    assert stored[seen] > 0 and never not in stored

    def record(plate: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "anpr", "db", "record-finding", plate, "--config", str(config), "--db", str(db)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
        )

    answers = [record(seen), record(never)]
    assert [a.returncode for a in answers] == [3, 3], answers[0].stderr
    assert answers[0].stdout == answers[1].stdout == ""
    assert answers[0].stderr == answers[1].stderr  # says nothing of whether the plate was seen
    assert "record-finding refused" in answers[0].stderr and "designated_agents" in answers[0].stderr
    assert _stored(db) == stored  # nothing deleted
    connection = sqlite3.connect(db)
    entries = connection.execute("select action, actor, details from audit_log order by seq").fetchall()
    connection.close()
    refused = [(actor, details) for action, actor, details in entries if action == "record-finding.refused"]
    assert [actor for actor, _ in refused] == [ME, ME]  # audited, under the authenticated user...
    assert refused[0][1] == refused[1][1] and seen not in refused[0][1]  # ...and nothing of the plate


# --- also found: a config file's size ---------------------------------------------------------------


def test_a_config_file_over_the_size_cap_is_refused_at_once(tmp_path):
    from anpr.config.settings import load_settings
    from anpr.errors import ConfigError

    padded = tmp_path / "padded.yaml"  # valid YAML, just over the cap (1 MiB): a comment
    padded.write_text(PARIS.read_text() + ("#" * 99 + "\n") * ((1 << 20) // 100 + 1))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"padded\.yaml: config file larger than 1 MiB \(1048576 bytes\)"):
        load_settings(padded)
    assert time.monotonic() - started < 5
    assert load_settings(PARIS).deployment is not None  # a config of ordinary size is read as before
