"""Issue 26, cases 3, 4, 8, 9, 10 and 11: the files anpr writes or trusts, and its audit log.

3.  An export file that another user owns, or that others can read, is refused (it was
    appended to with plates).
4.  A key file of another user is refused (it was accepted: whoever planted it could
    reverse every plate_key).
8.  `--log-json FILE` never follows a symbolic link (it appended to the link's target).
9.  Checkpoints name a database by an id stored in it: a truncation is found however the
    database's URL is spelled (`sqlite:////x/../x/p.sqlite` "agreed with 1 checkpoint").
10. A database knows its key: another key is refused, and the key file and checkpoints are
    found next to the database, not in the working folder (a run from another folder
    made a second key, silently).
11. A checkpoint that cannot be written whole (a full disk) fails loudly and leaves no half
    line, and `audit verify` checks the valid lines and names a damaged one (one half line
    made it fail on every call).

All of them go through one mechanism, anpr/files.py. Real files, real users (the tests
that need another user's file run as root and give it to `nobody`), real databases.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.keys import TEST_KEYS, TEST_SECRET, write_key_file

from anpr.config.settings import load_settings
from anpr.errors import ConfigError, StoreError
from anpr.files import UnsafeFile, append, create, read_private
from anpr.records import PlateRead, PolicedRead
from anpr.run.outputs import StatusLog
from anpr.sinks.jsonl import JsonlExport, JsonlExportSettings, purge_export
from anpr.storage.audit import AuditLog, inspect_database
from anpr.storage.binding import require_key
from anpr.storage.keys import Keys, load_keys
from anpr.storage.store import ReadStore

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "sample.mp4"
PARIS = REPO / "configs" / "paris-fps.yaml"
NOW = 1_800_000_000.0
DAY = 86_400.0
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def a_read(plate: str = "AB123CD", delete_after: float = NOW + DAY) -> PolicedRead:
    read = PlateRead("cam.mp4", 1, 0.5, plate, plate, 0.9, 0.9, 0.9, (0, 0, 10, 5), "d@1", "o@2")
    return PolicedRead(read, "cam", "criminal_investigation", "FR-LAPI-1", delete_after, False)


def planted(folder: Path, what: str) -> Path:
    """Something other than anpr's own private file where anpr will write, or read from."""
    path = folder / f"{what}.file"
    if what == "link":
        (folder / "target").write_bytes(b"")
        path.symlink_to(folder / "target")
    elif what == "fifo":
        os.mkfifo(path, 0o600)
    elif what == "open to others":
        path.write_bytes(b"")
        path.chmod(0o644)
    elif what == "another user's":
        path.write_bytes(b"")
        path.chmod(0o600)
        os.chown(path, nobody(), -1)
    return path


REFUSED = {
    "link": "is a symbolic link, which anpr does not follow",
    "fifo": "is not a regular file",
    "open to others": "can be read by other users or changed by them (mode 0644)",
    "another user's": "belongs to another user (nobody)",
}
PLANTED = [pytest.param(w, marks=as_root) if w == "another user's" else w for w in REFUSED]


# --- the shared rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("what", PLANTED)
def test_anpr_writes_or_trusts_only_a_private_regular_file_of_its_own_user(tmp_path, what):
    path = planted(tmp_path, what)
    before = path.lstat()
    for use in (lambda: append(path, b"AB123CD\n"), lambda: read_private(path)):
        with pytest.raises(UnsafeFile) as refused:
            use()
        assert REFUSED[what] in refused.value.reason and refused.value.strerror.startswith("it ")
    assert create(path, b"x") is False  # something is there: nothing is made
    after = path.lstat()
    assert (after.st_mode, after.st_uid, after.st_size) == (before.st_mode, before.st_uid, before.st_size)
    if what == "link":
        assert (tmp_path / "target").read_bytes() == b""


def test_a_new_file_is_made_private_whatever_the_umask_and_appends_are_whole_lines(tmp_path):
    old = os.umask(0)
    try:
        assert create(tmp_path / "new", b"one\n") is True
        assert create(tmp_path / "new", b"two\n") is False  # never over an existing one
        append(tmp_path / "log", b"a\n")
    finally:
        os.umask(old)
    for name in ("new", "log"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert (tmp_path / "new").read_bytes() == b"one\n"
    assert {p.name for p in tmp_path.iterdir()} == {"new", "log"}  # no temporary file left
    with (tmp_path / "log").open("ab") as file:
        file.write(b"a line cut sh")  # as a crash mid-write leaves it
    append(tmp_path / "log", b"b\n")
    assert (tmp_path / "log").read_bytes().splitlines() == [b"a", b"a line cut sh", b"b"]


# --- 3: export files ------------------------------------------------------------------------------


def export(path: Path) -> JsonlExport:
    return JsonlExport(JsonlExportSettings(type="jsonl_export", path=path))


@pytest.mark.parametrize("what", PLANTED)
def test_an_export_file_that_is_not_anpr_s_own_private_file_is_refused_before_any_read(tmp_path, what):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # a shared, sticky folder, as /tmp
    path = planted(shared, what)
    with pytest.raises(StoreError, match=re.escape(f"cannot write export {path}: it {REFUSED[what]}")):
        export(path)  # at the run's start: no frame is read for a sink that cannot take it
    assert not (path.is_file() and path.stat().st_size)


@as_root
def test_an_export_pre_created_0666_by_another_user_gets_no_plate(tmp_path):
    path = tmp_path / "requisitions.jsonl"
    path.write_bytes(b"")
    path.chmod(0o666)
    os.chown(path, nobody(), -1)
    with pytest.raises(StoreError, match="belongs to another user"):
        export(path).write([a_read()])
    assert path.read_bytes() == b"" and stat.S_IMODE(path.stat().st_mode) == 0o666


def test_an_export_of_anpr_s_own_is_appended_to_and_a_too_open_one_is_purged_into_a_private_one(tmp_path):
    path = tmp_path / "x.jsonl"
    sink = export(path)
    sink.write([a_read("OLD1", NOW - 1), a_read("KEEP1")])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # opened up by hand: written to no more...
    with pytest.raises(StoreError, match="can be read by other users"):
        sink.write([a_read("NEW1")])
    assert b"NEW1" not in path.read_bytes()
    assert purge_export(path, NOW) == 1  # ...but its expired lines still go, into a private file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [json.loads(line)["plate"] for line in path.read_text().splitlines()] == ["KEEP1"]


# --- 4: the key file ------------------------------------------------------------------------------


@pytest.mark.parametrize("what", PLANTED)
def test_a_key_file_that_is_not_anpr_s_own_private_file_is_refused(tmp_path, what):
    path = planted(tmp_path, what)
    if what in ("open to others", "another user's"):
        path.write_text(TEST_SECRET.hex() + "\n")  # a valid key: refused for where it comes from
        path.chmod(0o644 if what == "open to others" else 0o600)
    with pytest.raises(ConfigError, match=re.escape(f"key file {path} {REFUSED[what]}")):
        load_keys(path)
    with pytest.raises(ConfigError, match=re.escape(f"key file {path} {REFUSED[what]}")):
        load_keys(path, create=True)  # nor replaced by a new key


def test_a_new_key_file_is_whole_private_and_never_replaces_one(tmp_path):
    path = tmp_path / "anpr.key"
    first = load_keys(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text().strip()) == 64
    assert load_keys(path, create=True) == first
    assert [p.name for p in tmp_path.iterdir()] == ["anpr.key"]  # its temporary name is gone


# --- 8: the JSON status log -----------------------------------------------------------------------


@pytest.mark.parametrize("what", ["link", "open to others", pytest.param("another user's", marks=as_root)])
def test_the_json_status_log_is_never_written_through_a_link_or_to_a_file_others_can_read(tmp_path, what):
    path = planted(tmp_path, what)
    with pytest.raises(ConfigError, match=re.escape(f"cannot write the JSON log {path}: it {REFUSED[what]}")):
        StatusLog(path)
    assert not path.read_bytes() if what != "link" else (tmp_path / "target").read_bytes() == b""


def test_dev_stdout_is_refused_with_the_way_to_stderr(tmp_path):
    with pytest.raises(
        ConfigError, match=r"cannot write the JSON log /dev/stdout: it is a symbolic link.*`-` for stderr"
    ):
        StatusLog(Path("/dev/stdout"))


# --- 9 and 10: a database knows itself and its key ------------------------------------------------


def bound(path: Path, keys: Keys = TEST_KEYS, checkpoints: Path | None = None) -> tuple[ReadStore, AuditLog]:
    """A SQLite database as its first run leaves it: its identity bound to `keys`, audited."""
    store = ReadStore(str(path), keys)
    store.check()
    audit = AuditLog(store.engine, keys, checkpoints)
    require_key(store, audit, "anpr.key", bind_as="ann")
    return store, audit


def truncate(path: Path) -> None:
    """The owner's attack: drop the trigger, remove the newest entry, put the trigger back."""
    with sqlite3.connect(path) as db:
        [trigger] = db.execute("select sql from sqlite_master where name = 'audit_log_no_delete'").fetchone()
        db.execute("drop trigger audit_log_no_delete")
        db.execute("delete from audit_log where seq = (select max(seq) from audit_log)")
        db.execute(trigger)
    db.close()


def kinds(problems) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in problems]


def test_a_truncation_is_found_however_the_database_url_is_spelled(tmp_path):
    db, checkpoints = tmp_path / "p.sqlite", tmp_path / "checkpoints"
    store, audit = bound(db, checkpoints=checkpoints)
    audit.append("run.start", "pipeline", {})
    audit.checkpoint()  # of entry 2
    store.close()
    truncate(db)
    # A command run with another spelling of the same database appends an entry at the same
    # seq, and checkpoints it: the log then "agreed with 1 checkpoint" under that spelling.
    other = f"sqlite:///{tmp_path}/../{tmp_path.name}//p.sqlite"
    again = ReadStore(other, TEST_KEYS)
    AuditLog(again.engine, TEST_KEYS, checkpoints).append("purge", "ann", {})
    AuditLog(again.engine, TEST_KEYS, checkpoints).checkpoint()
    again.close()
    for spelling in (str(db), f"sqlite:///{db}", other):
        state = inspect_database(spelling, TEST_KEYS, checkpoints)
        assert (2, "rewritten") in kinds(state.problems), spelling
    lines = [json.loads(line) for line in checkpoints.read_text().splitlines()]
    assert len({line["database"] for line in lines}) == 1  # one name for one database


def test_checkpoints_from_before_the_database_was_bound_still_count(tmp_path):
    db, checkpoints = tmp_path / "p.sqlite", tmp_path / "checkpoints"
    store = ReadStore(str(db), TEST_KEYS)
    old = AuditLog(store.engine, TEST_KEYS, checkpoints)  # an anpr before identities: no binding
    for n in range(3):
        old.append("query", "ann", {"n": n})
    old.checkpoint()
    assert "#" not in json.loads(checkpoints.read_text())["database"]  # named by its URL alone
    require_key(store, old, "anpr.key", bind_as="ann")  # its next run binds it (entry 4)
    old.checkpoint()
    store.close()
    assert inspect_database(str(db), TEST_KEYS, checkpoints).problems == []
    truncate(db)
    truncate(db)  # entries 3 and 4: the first checkpoint, from before the binding, sees it too
    found = kinds(inspect_database(f"sqlite:///{tmp_path}/./p.sqlite", TEST_KEYS, checkpoints).problems)
    assert (3, "truncated") in found and (4, "truncated") in found


def test_a_fresh_database_put_in_the_place_of_another_is_found_by_the_checkpoints(tmp_path):
    db, checkpoints = tmp_path / "p.sqlite", tmp_path / "checkpoints"
    store, audit = bound(db, checkpoints=checkpoints)
    audit.append("run.start", "pipeline", {})
    audit.checkpoint()
    store.close()
    db.unlink()
    store, audit = bound(db, checkpoints=checkpoints)  # a new database, same key, same place
    audit.append("run.start", "pipeline", {})
    audit.checkpoint()
    store.close()
    problems = inspect_database(str(db), TEST_KEYS, checkpoints).problems
    assert [p.kind for p in problems] == ["rewritten"] and "this one replaced it" in problems[0].message


def test_a_database_refuses_a_key_that_is_not_the_one_it_was_bound_with(tmp_path):
    db = tmp_path / "p.sqlite"
    store, audit = bound(db)
    audit.append("run.start", "pipeline", {})
    store.close()
    with sqlite3.connect(db) as conn:
        [(fingerprint, details)] = conn.execute(
            "select key_fingerprint, details from database_identity, audit_log where action = 'database.bind'"
        ).fetchall()
    conn.close()
    assert fingerprint == TEST_KEYS.fingerprint() and TEST_SECRET.hex() not in details  # audited, never the key
    other = Keys.from_secret(b"\x07" * 32)
    for bind_as in ("bob", None):  # a run, a query
        store = ReadStore(str(db), other)
        with pytest.raises(ConfigError, match=r"key file k2 is not the key of database .*first run with key "):
            require_key(store, AuditLog(store.engine, other), "k2", bind_as=bind_as)
        store.close()
    with pytest.raises(StoreError, match="is not the key of database"):
        inspect_database(str(db), other)  # not "every entry was edited"


def test_a_database_from_before_fingerprints_is_bound_at_its_next_run_if_its_key_authenticates_its_log(tmp_path):
    db = tmp_path / "p.sqlite"
    store = ReadStore(str(db), TEST_KEYS)
    AuditLog(store.engine, TEST_KEYS).append("run.start", "pipeline", {})  # no identity: an older anpr's
    store.close()
    other = Keys.from_secret(b"\x07" * 32)
    store = ReadStore(str(db), other)
    with pytest.raises(ConfigError, match="does not authenticate the audit log's newest entry"):
        require_key(store, AuditLog(store.engine, other), "k2", bind_as="bob")
    store.close()
    store = ReadStore(str(db), TEST_KEYS)
    audit = AuditLog(store.engine, TEST_KEYS)
    require_key(store, audit, "anpr.key", bind_as=None)  # a query leaves it unbound
    assert [e.action for e in audit.entries()] == ["run.start"]
    require_key(store, audit, "anpr.key", bind_as="ann")  # a run binds it, audited
    assert [(e.action, e.actor) for e in audit.entries()] == [("run.start", "pipeline"), ("database.bind", "ann")]
    assert audit.verify() == []
    store.close()


def test_the_key_file_and_checkpoints_are_found_next_to_the_database_not_in_the_working_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "data").mkdir()
    for url in (str(tmp_path / "data" / "p.sqlite"), f"sqlite:///{tmp_path}/data/p.sqlite"):
        store = load_settings(None, {"store": {"url": url}}).store
        assert (store.key_file, store.audit_checkpoints) == (
            str(tmp_path / "data" / "anpr.key"),
            str(tmp_path / "data" / "anpr-audit.checkpoints"),
        )
    config = tmp_path / "conf" / "city.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({"store": {"url": "postgresql+psycopg://anpr@db/anpr", "key_file": "k/city.key"}}))
    store = load_settings(config).store
    assert store.key_file == str(tmp_path / "conf" / "k" / "city.key")  # set in the config: from its folder
    assert store.audit_checkpoints == str(tmp_path / "conf" / "anpr-audit.checkpoints")  # default: beside it
    assert load_settings(config, {"store": {"url": "x.sqlite"}}).store.audit_checkpoints == str(
        elsewhere / "anpr-audit.checkpoints"
    )  # --db x.sqlite: next to that database, whose folder here is the working one
    absolute = tmp_path / "keys" / "a.key"
    config.write_text(yaml.safe_dump({"store": {"key_file": str(absolute)}}))
    assert load_settings(config).store.key_file == str(absolute)


@pytest.mark.system
def test_a_run_from_another_working_folder_uses_the_database_s_key(anpr_cli, tmp_path):
    data = yaml.safe_load(PARIS.read_text())
    data["cameras"][0]["source"] = str(SAMPLE)
    config = tmp_path / "paris.yaml"
    config.write_text(yaml.safe_dump(data))
    db = tmp_path / "p.sqlite"
    first = anpr_cli("run", "--config", str(config), "--db", str(db), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    other = tmp_path / "other"
    other.mkdir()
    second = anpr_cli("run", "--config", str(config), "--db", str(db), cwd=other)
    assert second.returncode == 0, second.stderr
    assert list(other.iterdir()) == []  # no second key, no stray checkpoints
    with sqlite3.connect(db) as conn:
        [(plates, keys)] = conn.execute("select count(distinct plate), count(distinct plate_key) from reads").fetchall()
    conn.close()
    assert plates == keys > 0  # one plate_key per plate: a deletion finds every row
    verify = anpr_cli("audit", "verify", "--db", str(db), cwd=other)
    assert verify.returncode == 0 and "agrees with the 2 checkpoint(s)" in verify.stderr, verify.stderr
    # A key file of another deployment given by mistake: refused, the database untouched.
    planted_key = write_key_file(other, "other.key")
    planted_key.write_text(os.urandom(32).hex() + "\n")
    data["store"] = {"key_file": str(planted_key)}
    (other / "mistake.yaml").write_text(yaml.safe_dump(data))
    size = db.stat().st_size
    refused = anpr_cli("run", "--config", str(other / "mistake.yaml"), "--db", str(db), cwd=other)
    assert refused.returncode == 2 and "is not the key of database" in refused.stderr, refused.stderr
    assert db.stat().st_size == size


# --- 11: checkpoints written whole, read line by line ---------------------------------------------

CUT_SHORT = """
import os, resource, signal, sys
from support.keys import TEST_KEYS
from anpr.storage.audit import AuditLog
from anpr.errors import StoreError
from anpr.storage.store import ReadStore

store = ReadStore(sys.argv[1], TEST_KEYS)
audit = AuditLog(store.engine, TEST_KEYS, sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
# Room for part of a checkpoint line: os.write writes that part and returns a short count.
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(sys.argv[2]) + 100, resource.RLIM_INFINITY))
try:
    audit.checkpoint()
except StoreError as exc:
    print(exc)
    sys.exit(2)
"""


@pytest.mark.system
def test_a_checkpoint_that_a_full_disk_cuts_short_fails_loudly_and_leaves_no_half_line(tmp_path):
    db, checkpoints = tmp_path / "p.sqlite", tmp_path / "checkpoints"
    store, audit = bound(db, checkpoints=checkpoints)
    audit.append("run.start", "pipeline", {})
    audit.checkpoint()
    store.close()
    before = checkpoints.read_bytes()
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    command = [sys.executable, "-c", CUT_SHORT, str(db), str(checkpoints)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "cannot write audit checkpoint" in done.stdout and "File too large" in done.stdout
    assert checkpoints.read_bytes() == before  # what was written of the line was taken back
    assert inspect_database(str(db), TEST_KEYS, checkpoints).problems == []


def test_verify_checks_the_valid_checkpoints_and_names_the_damaged_line(tmp_path):
    db, checkpoints = tmp_path / "p.sqlite", tmp_path / "checkpoints"
    store, audit = bound(db, checkpoints=checkpoints)
    audit.checkpoint()  # line 1, of entry 1
    with checkpoints.open("ab") as file:
        file.write(checkpoints.read_bytes()[:90])  # line 2: a checkpoint cut short (an older anpr, a crash)
    audit.append("run.start", "pipeline", {})
    audit.checkpoint()  # line 3: on a line of its own, not joined onto line 2
    store.close()
    state = inspect_database(str(db), TEST_KEYS, checkpoints)
    assert [(p.kind, p.message) for p in state.problems] == [
        (
            "checkpoint",
            f"{checkpoints}: line 2 is damaged, not a checkpoint (a write cut short, or an edit); "
            "the other lines were checked",
        )
    ]
    assert state.checkpointed == 2
    truncate(db)  # and what the valid lines show is still found
    assert (2, "truncated") in kinds(inspect_database(str(db), TEST_KEYS, checkpoints).problems)


@pytest.mark.system
def test_audit_verify_names_the_damaged_line_and_exits_1_not_2(tmp_path):
    db, checkpoints = tmp_path / "p.sqlite", tmp_path / "checkpoints"
    store, audit = bound(db, checkpoints=checkpoints)
    audit.checkpoint()
    store.close()
    checkpoints.write_bytes(checkpoints.read_bytes() + b'{"database": "sqlite:///x", "seq"\n')
    write_key_file(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "anpr", "audit", "verify", "--db", str(db), "--checkpoints", str(checkpoints)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "line 2 is damaged" in done.stdout and "1 problem(s)" in done.stderr
