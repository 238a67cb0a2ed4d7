"""Issue 26, cases 12, 13, 14 and 16, and two things found beside them: faults.

The database file deleted under a run; a run killed with SIGKILL; two runs on one spool
folder; `record-finding` asked by someone who may not query; reads lost to the spool;
a config file of 100,000 cameras. Every run is a real `anpr run` of the bundled sample.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.attacks.kit import CONFIGS, SAMPLE, Target, anpr, paris_with_agents, row, said, write_yaml

SPOOL = "anpr-spool"  # store.spool_dir's default, in the run's folder
MARKER, LOCK = ".anpr-spool", ".anpr-spool.lock"


def run(target: Target) -> None:
    """Every attack of this group, each adding its row."""
    database_deleted(target)
    killed_run(target)
    shared_spool(target)
    record_finding(target)
    big_config(target)


class _LiveRun:
    """`anpr run ... --jsonl` in the background: its reads line by line, its stderr in a file."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.errors = folder / f"stderr-{time.monotonic_ns()}.txt"
        with self.errors.open("w") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "anpr", "run", *args, "--jsonl"],
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                cwd=folder,
            )
        self.reads: list[dict] = []

    def first_read(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the run ended before its first read: {self.errors.read_text()[-500:]}")
        self.reads.append(json.loads(line))
        return self.reads[0]

    def end(self) -> subprocess.CompletedProcess[str]:
        assert self.process.stdout is not None
        rest = self.process.stdout.read()  # through the buffer `first_read` filled (communicate would skip it)
        self.process.wait(timeout=900)
        self.reads += [json.loads(line) for line in rest.splitlines()]
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, rest, self.errors.read_text())


def _folder(target: Target, name: str) -> tuple[Path, Path]:
    folder = target.work / name
    folder.mkdir()
    return folder, paris_with_agents(folder)


def _keys(db: Path) -> set[str]:
    connection = sqlite3.connect(db)
    try:
        return {key for (key,) in connection.execute("select key from reads")}
    finally:
        connection.close()


def _line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The first line of stderr holding every one of `words`, quoted."""
    found = next((line for line in result.stderr.splitlines() if all(w in line for w in words)), None)
    return f"`{found.strip()}`" if found else f"no line with {' / '.join(words)}"


def _names(folder: Path) -> str:
    return ", ".join(sorted(p.name for p in folder.iterdir())) if folder.exists() else "(gone)"


def database_deleted(target: Target) -> None:
    """Case 12, and the summary's count: the database file deleted at the run's first read;
    then also its spool folder."""
    for spool_too in (False, True):
        folder, config = _folder(target, "deleted-spool-too" if spool_too else "deleted")
        db = folder / "p.sqlite"
        live = _LiveRun(folder, "--config", str(config), "--db", str(db))
        live.first_read()
        os.link(db, folder / "deleted.sqlite")  # what the run wrote there before, kept for the count
        db.unlink()
        if spool_too:
            shutil.rmtree(folder / SPOOL)
        result = live.end()
        before = len(_keys(folder / "deleted.sqlite"))
        summary = _line(result, "reads seen")
        if not spool_too:
            row(
                "26.12",
                "the SQLite database file deleted at the run's first read",
                "anpr run --config paris-agents.yaml --db p.sqlite --jsonl  # rm p.sqlite at the first read",
                f"exit {result.returncode}: {_line(result, 'database file')}; "
                f"{_line(result, 'read(s) kept in')}; {len(live.reads)} reads printed, {before} in the deleted file",
            )
            again = anpr("run", "--config", str(config), "--db", str(db), cwd=folder)
            sent = len({r["key"] for r in live.reads} & _keys(db)) if db.exists() else 0
            row(
                "26.12",
                "the next run, with a new database at that path",
                "anpr run --config paris-agents.yaml --db p.sqlite",
                f"exit {again.returncode}: {_line(again, 'left in')}; {sent} of the first run's reads in the new "
                f"database, {before} in the deleted one, of {len(live.reads)} printed; "
                f"spool folder: {_names(folder / SPOOL)}",
            )
            row("26 (also)", "the summary of that run", "(the first run above)", summary)
        else:
            row(
                "26 (also)",
                "the database file and the spool folder deleted at the run's first read: the summary",
                "anpr run ... --db p.sqlite --jsonl  # rm -r p.sqlite anpr-spool at the first read",
                f"exit {result.returncode}: {summary}; {_line(result, 'error:')}; "
                f"{len(live.reads)} reads printed, {before} in the deleted file",
            )


def killed_run(target: Target) -> None:
    """Case 13: a run killed with SIGKILL mid-run, then the next run."""
    folder, config = _folder(target, "killed")
    db = folder / "p.sqlite"
    live = _LiveRun(folder, "--config", str(config), "--db", str(db))
    live.first_read()
    live.process.send_signal(signal.SIGKILL)
    live.end()
    left = _names(folder / SPOOL)
    again = anpr("run", "--config", str(config), "--db", str(db), cwd=folder)
    row(
        "26.13",
        "a run killed with SIGKILL at its first read, then the next run",
        "kill -9 $(pidof anpr run ...); anpr run --config paris-agents.yaml --db p.sqlite",
        f"the kill left the spool folder with {left}; next run: {said(again)}; "
        f"spool folder after it: {_names(folder / SPOOL)}",
    )


def shared_spool(target: Target) -> None:
    """Case 14: a second run on the spool folder the first holds; then a run started while
    another has taken a new folder's lock and not yet marked it."""
    folder, config = _folder(target, "shared")
    first = _LiveRun(folder, "--config", str(config), "--db", str(folder / "a.sqlite"))
    first.first_read()
    spool = folder / SPOOL
    before = {p.name: p.read_bytes() for p in spool.iterdir()}
    second = anpr("run", "--config", str(config), "--db", str(folder / "b.sqlite"), cwd=folder)
    changed = {p.name: p.read_bytes() for p in spool.iterdir()} != before
    ended = first.end()
    row(
        "26.14",
        "a second run on the spool folder a first run holds",
        "anpr run --config C --db a.sqlite & anpr run --config C --db b.sqlite  # same store.spool_dir",
        f"second: {said(second)}; folder changed by it: {'yes' if changed else 'no'}; first: exit "
        f"{ended.returncode}; spool folder after both: {_names(spool)}",
    )
    racing = folder / "racing"
    racing.mkdir()
    data = yaml.safe_load(config.read_text())
    data["store"] = {"spool_dir": str(racing)}
    racing_config = write_yaml(folder / "racing.yaml", data)
    with (racing / LOCK).open("wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a run that made the folder and has not marked it yet
        refused = anpr("run", "--config", str(racing_config), "--db", str(folder / "c.sqlite"), cwd=folder)
        after = _names(racing)
    row(
        "26.14",
        "a run started while another holds the lock of a folder it has not marked yet",
        "anpr run --config racing.yaml  # spool_dir locked by another process (flock), no marker yet",
        f"{said(refused)}; folder after: {after}",
    )


def record_finding(target: Target) -> None:
    """Case 16: `record-finding` by a user who is no designated agent (here nobody is: Paris
    FPS as shipped), for a plate the run stored and one it never saw."""
    folder = target.work / "unqueried"
    folder.mkdir()
    data = yaml.safe_load((CONFIGS / "paris-fps.yaml").read_text())
    data["cameras"][0]["source"] = str(SAMPLE)
    config = write_yaml(folder / "paris.yaml", data)
    db = folder / "p.sqlite"
    result = anpr("run", "--config", str(config), "--db", str(db), "--jsonl", cwd=folder)
    seen = json.loads(result.stdout.splitlines()[0])["plate"]
    held = len(_keys(db))
    answers = [
        anpr("db", "record-finding", plate, "--config", str(config), "--db", str(db), cwd=folder)
        for plate in (seen, "ZZ999ZZ")
    ]
    same = answers[0].stdout == answers[1].stdout and answers[0].stderr == answers[1].stderr
    row(
        "26.16",
        "`record-finding` by a user who may not query, for a plate seen and one never seen",
        "anpr db record-finding PLATE --config paris-fps.yaml --db p.sqlite  # names no designated agent",
        f"{said(answers[0])}; the same answer for both plates: {'yes' if same else 'no'}; "
        f"reads deleted: {held - len(_keys(db))} of {held}",
    )


def big_config(target: Target) -> None:
    """Also found: a config file of 100,000 cameras (some MB), and one with no end."""
    data = yaml.safe_load((CONFIGS / "paris-fps.yaml").read_text())
    camera = data["cameras"][0]
    data["cameras"] = [
        {"id": f"car-{n:06d}", "source": camera["source"], "purposes": ["parking_fps"]} for n in range(100_000)
    ]
    big = write_yaml(target.work / "big.yaml", data)
    for path, what in (
        (big, f"a config of 100,000 cameras ({big.stat().st_size / 1e6:.1f} MB)"),
        (Path("/dev/zero"), "/dev/zero as the config"),
    ):
        started = time.monotonic()
        result = anpr("policy", "check", str(path), cwd=target.work)
        row(
            "26 (also)", what, f"anpr policy check {path.name}", f"{said(result)} in {time.monotonic() - started:.1f} s"
        )
