"""Issue 26, cases 3, 4, 8, 9, 10 and 11: the files anpr writes or trusts, and its audit log.

Each attack works in a folder of its own under the target's, on copies of the target's
database, key file and checkpoints where it changes them. Giving a file to another user
(`nobody`) needs root; without it that file is only made open to others.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.attacks.kit import CONFIGS, REPO, ROWS, SAMPLE, Target, anpr, mode, row, said, verified, write_yaml

ROOT = os.geteuid() == 0


def run(target: Target) -> None:
    """Every attack of this group, each adding its row (paths in results shown from the group's folder)."""
    work = target.work / "files-and-audit"
    work.mkdir()
    first = len(ROWS)
    export_of_another_user(work)
    key_of_another_user(work, target)
    status_log_through_a_link(work, target)
    truncation_under_another_spelling(work, target)
    another_working_folder(work, target)
    checkpoint_cut_short(work, target)
    for at in range(first, len(ROWS)):  # the paths of this run's temporary folder, as relative ones
        case, attack, command, result = ROWS[at]
        ROWS[at] = (case, attack, command, _relative(result, work))


def _relative(text: str, work: Path) -> str:
    return text.replace(f"{work}/", "").replace(f"{work.parent}/", "../")


def _shown(result: subprocess.CompletedProcess[str], work: Path) -> subprocess.CompletedProcess[str]:
    """`result` with its paths relative to `work`, so that its quoted line keeps what matters."""
    return subprocess.CompletedProcess(
        result.args, result.returncode, _relative(result.stdout, work), _relative(result.stderr, work)
    )


def _give_away(path: Path) -> str:
    """`path` given to `nobody` (as root), else left to this user: how it was planted."""
    if ROOT:
        os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
        return "owner nobody"
    return "owner: this user (not root: cannot give it away)"


def _copy(target: Target, folder: Path) -> Path:
    """The target's database with its key file and checkpoints, copied into `folder`."""
    folder.mkdir()
    for name in (target.db.name, "anpr.key", "anpr-audit.checkpoints"):
        shutil.copy2(target.work / name, folder / name)
    return folder / target.db.name


def export_of_another_user(work: Path) -> None:
    shared = work / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp
    export = shared / "requisitions.jsonl"
    export.write_bytes(b"")
    export.chmod(0o666)
    owner = _give_away(export)
    data = yaml.safe_load((CONFIGS / "gendarmerie-l233.yaml").read_text())
    data["cameras"][0]["source"] = str(SAMPLE)
    data["purposes"]["criminal_investigation"]["hotlist"] = str(CONFIGS / "data" / "stolen-vehicles.txt")
    data["purposes"]["criminal_investigation"]["sinks"] = ["store", "export"]
    data["sinks"]["export"] = {"type": "jsonl_export", "path": str(export)}
    config = write_yaml(work / "export.yaml", data)
    result = anpr("run", "--config", str(config), "--db", str(work / "export.sqlite"), cwd=work)
    row(
        "26.3",
        f"a `jsonl_export` file pre-created 0666 in a shared sticky folder ({owner})",
        "anpr run --config export.yaml  # export: shared/requisitions.jsonl, 0666",
        f"{said(_shown(result, work))}; the export holds {export.stat().st_size} bytes, mode {mode(export)}",
    )


def key_of_another_user(work: Path, target: Target) -> None:
    planted = work / "planted.key"
    shutil.copy(target.work / "anpr.key", planted)
    planted.chmod(0o600)
    owner = _give_away(planted)
    if not ROOT:
        planted.chmod(0o644)
        owner += ", mode 0644"
    data = yaml.safe_load(target.config.read_text()) | {"store": {"key_file": str(planted)}}
    config = write_yaml(work / "planted-key.yaml", data)
    result = anpr("audit", "verify", "--config", str(config), "--db", str(target.db), cwd=work)
    row(
        "26.4",
        f"the deployment's key file replaced by a copy of mode 0600, {owner}",
        "anpr audit verify --config planted-key.yaml --db p.sqlite  # store.key_file: planted.key",
        said(_shown(result, work)),
    )


def status_log_through_a_link(work: Path, target: Target) -> None:
    victim = work / "victim.txt"
    victim.write_text("someone's file\n")
    victim.chmod(0o644)
    (work / "status.jsonl").symlink_to(victim)
    result = anpr("run", "--config", str(target.config), "--db", str(target.db), "--log-json", "status.jsonl", cwd=work)
    row(
        "26.8",
        "`--log-json` given a symbolic link to another file (mode 0644)",
        "ln -s victim.txt status.jsonl; anpr run --config ... --log-json status.jsonl",
        f"{said(_shown(result, work))}; victim.txt: {victim.stat().st_size} bytes, mode {mode(victim)}",
    )


def _verdict(result: subprocess.CompletedProcess[str]) -> str:
    """`anpr audit verify`'s exit status, the problems it named and its summary line."""
    summary = (result.stderr.strip().splitlines() or [""])[-1]
    return f"{verified(result)} `{summary}`"


def _truncate(db: Path) -> None:
    """The owner's attack: drop the trigger, remove the newest audit entry, put the trigger back."""
    with sqlite3.connect(db) as conn:
        [trigger] = conn.execute("select sql from sqlite_master where name = 'audit_log_no_delete'").fetchone()
        conn.execute("drop trigger audit_log_no_delete")
        conn.execute("delete from audit_log where seq = (select max(seq) from audit_log)")
        conn.execute(trigger)
    conn.close()


def truncation_under_another_spelling(work: Path, target: Target) -> None:
    folder = work / "spelled"
    db = _copy(target, folder)
    _truncate(db)
    other = f"sqlite:///{folder}/../{folder.name}//{db.name}"
    # A command under the other spelling appends an entry at the removed entry's seq, and
    # checkpoints it: before, the log then agreed with "its" checkpoint under that spelling.
    anpr("db", "purge", "--config", str(target.config), "--db", other, cwd=folder)
    result = anpr("audit", "verify", "--db", other, cwd=folder)
    row(
        "26.9",
        "the audit log truncated, then the database used and verified under another spelling of its URL",
        f"anpr db purge --db {other.replace(str(folder), '/x')}; anpr audit verify --db (the same)",
        verified(_shown(result, work)),
    )


def another_working_folder(work: Path, target: Target) -> None:
    folder = work / "moved"
    db = _copy(target, folder)
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    result = anpr("run", "--config", str(target.config), "--db", str(db), cwd=elsewhere)
    with sqlite3.connect(db) as conn:
        [(plates, keys)] = conn.execute("select count(distinct plate), count(distinct plate_key) from reads").fetchall()
    conn.close()
    check = anpr("audit", "verify", "--db", str(db), cwd=elsewhere)
    row(
        "26.10",
        "the same database run from another working folder",
        "cd elsewhere; anpr run --config ... --db ../p.sqlite; anpr audit verify --db ../p.sqlite",
        f"exit {result.returncode}; files made in elsewhere/: {sorted(p.name for p in elsewhere.iterdir())}; "
        f"{plates} plates under {keys} plate_keys; verify {_verdict(_shown(check, work))}",
    )
    wrong = elsewhere / "other.key"
    wrong.write_text(os.urandom(32).hex() + "\n")
    wrong.chmod(0o600)
    data = yaml.safe_load(target.config.read_text()) | {"store": {"key_file": str(wrong)}}
    config = write_yaml(elsewhere / "other-key.yaml", data)
    result = anpr("run", "--config", str(config), "--db", str(db), cwd=elsewhere)
    row(
        "26.10",
        "the same database run with another deployment's key file",
        "anpr run --config other-key.yaml --db ../p.sqlite  # store.key_file: other.key",
        said(_shown(result, work)),
    )


CUT_SHORT = """
import os, resource, signal, sys
from anpr.storage.audit import AuditLog
from anpr.storage.keys import load_keys
from anpr.storage.store import ReadStore

store = ReadStore(sys.argv[1], load_keys("anpr.key"))
audit = AuditLog(store.engine, store.keys, "anpr-audit.checkpoints")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize("anpr-audit.checkpoints") + 100, resource.RLIM_INFINITY))
audit.checkpoint()
"""


def checkpoint_cut_short(work: Path, target: Target) -> None:
    folder = work / "full-disk"
    db = _copy(target, folder)
    checkpoints = folder / "anpr-audit.checkpoints"
    before = checkpoints.stat().st_size
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CUT_SHORT, db.name], capture_output=True, text=True, cwd=folder, env=env, timeout=300
    )
    error = (done.stderr.strip().splitlines() or ["no error"])[-1]  # the exception's line
    check = anpr("audit", "verify", "--db", db.name, cwd=folder)
    row(
        "26.11",
        "a checkpoint written with room for only 100 more bytes in its file (a full disk: a short write)",
        "python -c '...setrlimit(RLIMIT_FSIZE, size + 100); AuditLog(...).checkpoint()'; anpr audit verify",
        f"exit {done.returncode}: `{error[:160]}`; checkpoint file {before} -> {checkpoints.stat().st_size} bytes; "
        f"verify {_verdict(_shown(check, work))}",
    )
    with checkpoints.open("ab") as file:  # a line cut short, as an older anpr or a crash left it
        file.write(checkpoints.read_bytes()[:90])
    _truncate(db)
    check = anpr("audit", "verify", "--db", db.name, cwd=folder)
    lines = len(checkpoints.read_bytes().splitlines())
    row(
        "26.11",
        f"a checkpoint file whose last of {lines} lines is cut short, after a truncation of the log",
        "anpr audit verify --db p.sqlite",
        verified(_shown(check, work)),
    )
