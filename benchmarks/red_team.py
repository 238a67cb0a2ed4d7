"""The red-team passes of issues 13 and 26, replayed: each attack as a user with bad
intent would try it, and each fault as a failing machine would cause it, against the
`anpr` command and its files, and what happened.

    python benchmarks/red_team.py > /tmp/red-team.md      # about two minutes on 2 cores

Prints one Markdown table (SECURITY.md holds the last one). Each row is run, not
written: the result column is what the command said and did this time. Needs the
model weights (one run of the bundled sample) and, for the PostgreSQL rows, the
PostgreSQL server binaries (scripts/system-deps.sh), as the tests do. Issue 13's attacks
are below; issue 26's are in `benchmarks/attacks/`, one module per group.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Run as a script, the repository must be on the path before the kit is imported.
from benchmarks.attacks.kit import (
    CONFIGS,
    ME,
    REPO,
    ROWS,
    SAMPLE,
    Target,
    anpr,
    mode,
    paris_with_agents,
    row,
    said,
    search,
    verified,
    write_yaml,
)

# Issue 26's groups of attacks and faults, each a module of benchmarks/attacks with run(target).
ISSUE_26_GROUPS = ("secrets_and_text", "files_and_audit", "faults", "transports")


def case_1(work: Path, db: Path, config: Path) -> None:
    data = yaml.safe_load((CONFIGS / "valenciennes-2020.yaml").read_text())
    purpose = data["purposes"].pop("law_enforcement_request")
    purpose.update(safeguards={"human_review": True, "signage": True}, retention_days=36525)
    data["purposes"]["parking_fps"] = purpose
    data["cameras"][0]["purposes"] = ["parking_fps"]
    renamed = write_yaml(work / "renamed.yaml", data)
    row(
        "1",
        "Valenciennes with its purpose renamed `parking_fps`, `human_review: true`, 36525 days, export to the police",
        f"anpr policy check {renamed.name}",
        said(anpr("policy", "check", str(renamed), cwd=work)),
    )
    data = yaml.safe_load((CONFIGS / "paris-fps.yaml").read_text())
    data["purposes"]["parking_fps"]["retention_days"] = 36525
    long = write_yaml(work / "long.yaml", data)
    explained = json.loads(anpr("policy", "explain", str(long), "--json", cwd=work).stdout)["purposes"][0]
    row(
        "1",
        "FPS asking for 36525 days",
        "anpr policy explain long.yaml --json",
        f"retention_days {explained['retention_days']:g}; `{explained['retention_notes'][0]}`",
    )
    for value in (" ", "TODO"):
        data = yaml.safe_load((CONFIGS / "city-analytics.yaml").read_text())
        data["purposes"]["city_wide_analytics"].setdefault("safeguards", {}).update(
            dpia_reference=value, cnil_prior_consultation="CNIL-2026-0042"
        )
        path = write_yaml(work / "placeholder.yaml", data)
        row(
            "1",
            f"safeguard reference {value!r}",
            "anpr policy check placeholder.yaml",
            said(anpr("policy", "check", str(path), cwd=work)),
        )
    data = yaml.safe_load(config.read_text())
    data["purposes"]["parking_fps"]["safeguards"]["designated_agents"] = [""]
    path = write_yaml(work / "blank-agent.yaml", data)
    row(
        "1",
        '`designated_agents: [""]`',
        "anpr policy check blank-agent.yaml",
        said(anpr("policy", "check", str(path), cwd=work)),
    )


def case_2(work: Path, db: Path, config: Path, plate: str) -> None:
    data = yaml.safe_load(config.read_text())
    data["purposes"]["parking_fps"]["safeguards"]["designated_agents"] = [ME, "mallory"]
    forged = write_yaml(work / "mallory.yaml", data)
    row(
        "2",
        "a hand-written config naming `mallory` as an agent, pointed at the deployment's database",
        f"anpr db search {plate} --purpose parking_fps --config mallory.yaml --db p.sqlite",
        said(search(work, plate, "parking_fps", forged, db)),
    )
    row(
        "2",
        "`--user` typed by whoever asks",
        f"anpr db search {plate} --purpose parking_fps --user adj-martin ...",
        said(search(work, plate, "parking_fps", config, db, "--user", "adj-martin")),
    )
    plain = yaml.safe_load(config.read_text())
    del plain["purposes"]["parking_fps"]["safeguards"]["designated_agents"]
    nobody = write_yaml(work / "no-agents.yaml", plain)
    fresh = work / "fresh.sqlite"
    fresh.write_bytes(db.read_bytes())
    anpr("policy", "migrate", str(nobody), "--db", str(fresh), cwd=work)  # the operator rebinds it (audited)
    row(
        "2",
        "a purpose with query rights and no `designated_agents`",
        f"anpr db search {plate} --purpose parking_fps --config no-agents.yaml",
        said(search(work, plate, "parking_fps", nobody, fresh)),
    )
    connection = sqlite3.connect(db)
    indexes = [
        r[0] for r in connection.execute("select sql from sqlite_master where type = 'index' and tbl_name = 'reads'")
    ]
    connection.close()
    row(
        "2",
        "the SQLite file read directly (`sqlite3 FILE 'select plate from reads'`) by another account; "
        "plates indexed in clear",
        "stat p.sqlite; sqlite3 p.sqlite .indexes",
        f"mode {mode(db)} (owner only); indexed columns: "
        + ", ".join(sorted({s.split("(")[1].rstrip(")") for s in indexes if s})),
    )
    access = yaml.safe_load((CONFIGS / "private-car-park.yaml").read_text())
    access["cameras"][0]["source"] = str(SAMPLE)
    car_park = write_yaml(work / "car-park.yaml", access)
    park_db = work / "park.sqlite"
    anpr("run", "--config", str(car_park), "--db", str(park_db), cwd=work)
    stored = sqlite3.connect(park_db).execute("select count(*), count(plate) from reads").fetchone()
    row(
        "2",
        "plates at rest where no one must read them (private car park, FR-ACCESS)",
        "anpr run --config car-park.yaml; select count(*), count(plate) from reads",
        f"{stored[0]} reads stored, {stored[1]} with a clear plate (keyed hash only)",
    )


def _forge(db: Path, delete_seq: int) -> None:
    connection = sqlite3.connect(db)
    connection.execute("drop trigger audit_log_no_update")
    connection.execute("drop trigger audit_log_no_delete")
    connection.execute("delete from audit_log where seq = ?", (delete_seq,))
    prev = connection.execute("select entry_hash from audit_log where seq = ?", (delete_seq - 1,)).fetchone()[0]
    for seq, at, actor, action, details in connection.execute(
        "select seq, at, actor, action, details from audit_log where seq > ? order by seq", (delete_seq,)
    ).fetchall():
        payload = "\n".join([prev, str(seq - 1), format(at, ".6f"), actor, action, details])
        new = hashlib.sha256(payload.encode()).hexdigest()
        connection.execute(
            "update audit_log set seq = ?, prev_hash = ?, entry_hash = ? where seq = ?", (seq - 1, prev, new, seq)
        )
        prev = new
    connection.commit()
    connection.close()


def in_place(work: Path, db: Path, attack: Callable[[], object]) -> str:
    """What `anpr audit verify` says of the deployment's own database once `attack` has
    changed it in place (the checkpoints name the database by its URL); the database is
    put back afterwards, for the next attack."""
    saved = db.read_bytes()
    try:
        attack()
        return verified(anpr("audit", "verify", "--db", str(db), cwd=work))
    finally:
        db.write_bytes(saved)


def _truncate(db: Path) -> None:
    connection = sqlite3.connect(db)
    connection.execute("drop trigger audit_log_no_delete")
    connection.execute("delete from audit_log where seq = (select max(seq) from audit_log)")
    connection.execute(
        "create trigger audit_log_no_delete before delete on audit_log begin select raise(abort, 'x'); end"
    )
    connection.commit()
    connection.close()


def _drop_and_start_again(work: Path, db: Path, config: Path, plate: str) -> None:
    connection = sqlite3.connect(db)
    connection.execute("drop table audit_log")
    connection.commit()
    connection.close()
    search(work, plate, "parking_fps", config, db)


def case_3(work: Path, db: Path, config: Path, plate: str) -> None:
    row(
        "3",
        "SQLite: drop the triggers, delete entry 2, renumber and recompute every later hash (SHA-256)",
        "sqlite3 p.sqlite ...; anpr audit verify --db p.sqlite",
        in_place(work, db, lambda: _forge(db, 2)),
    )
    row(
        "3",
        "SQLite: delete the newest entry and put the trigger back",
        "sqlite3 p.sqlite ...; anpr audit verify --db p.sqlite",
        in_place(work, db, lambda: _truncate(db)),
    )
    row(
        "3",
        "SQLite: `DROP TABLE audit_log`; the next command starts a fresh chain",
        "sqlite3 p.sqlite 'drop table audit_log'; anpr db search ...; anpr audit verify --db p.sqlite",
        in_place(work, db, lambda: _drop_and_start_again(work, db, config, plate)),
    )
    _postgres_rows(work)


def _postgres_rows(work: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from support.postgres import PostgresServer
    except ImportError as exc:  # pragma: no cover - reported in the table
        row("3", "PostgreSQL", "-", f"not run: {exc}")
        return
    from sqlalchemy import create_engine, text

    from anpr.storage.audit import AuditLog
    from anpr.storage.keys import load_keys

    with PostgresServer() as server:
        url = server.new_database()
        keys = load_keys(work / "anpr.key")
        engine = create_engine(url)
        log = AuditLog(engine, keys, work / "pg.checkpoints")
        for n in range(1, 6):
            log.append("query", ME, {"n": n})
        log.checkpoint()
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            conn.execute(text("DELETE FROM audit_log WHERE seq >= 4"))
            conn.execute(text("UPDATE audit_log SET actor = 'nobody' WHERE seq = 2"))
            conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
        engine.dispose()
        row(
            "3",
            "PostgreSQL: the owner disables the triggers, edits entry 2, deletes 4-5, re-enables",
            "ALTER TABLE audit_log DISABLE TRIGGER USER; ...; anpr audit verify --db URL --checkpoints pg.checkpoints",
            verified(anpr("audit", "verify", "--db", url, "--checkpoints", str(work / "pg.checkpoints"), cwd=work)),
        )


def case_4_and_5(work: Path, db: Path, config: Path, plate: str) -> None:
    expired = work / "expired.sqlite"
    expired.write_bytes(db.read_bytes())
    connection = sqlite3.connect(expired)
    connection.execute("update reads set delete_after = ? where plate = ?", (time.time() - 60, plate))
    connection.execute("update passages set delete_after = ? where plate = ?", (time.time() - 60, plate))
    connection.commit()
    connection.close()
    row(
        "4",
        "search for reads past their deadline, before any purge",
        f"anpr db search {plate} --purpose parking_fps --config ... --db expired.sqlite",
        said(search(work, plate, "parking_fps", config, expired)),
    )
    result = anpr("run", "--config", str(config), "--db", str(work / "piped.sqlite"), cwd=work)
    row(
        "4",
        "the end-of-run summary of a service (stdout to a journal, not a terminal)",
        "anpr run --config paris-agents.yaml | cat",
        f"exit {result.returncode}; lines on stdout: {sum(1 for line in result.stdout.splitlines() if line.strip())}",
    )
    data = yaml.safe_load((CONFIGS / "valenciennes-2020.yaml").read_text())
    data["sinks"]["police_export"]["path"] = str(work / "requisitions.jsonl")
    data["cameras"][0]["source"] = str(SAMPLE)
    (work / "requisitions.jsonl").write_text(
        json.dumps({"plate": "OLD111", "delete_after": time.time() - 1})
        + "\n"
        + json.dumps({"plate": "NEW222", "delete_after": time.time() + 999})
        + "\n"
    )
    exports = write_yaml(work / "export.yaml", data)
    result = anpr(
        "db", "purge", "--config", str(exports), "--db", "postgresql+psycopg://anpr@127.0.0.1:1/anpr", cwd=work
    )
    left = (work / "requisitions.jsonl").read_text()
    row(
        "4",
        "expired lines of an export file, the database being down",
        "anpr db purge --config export.yaml --db postgresql+psycopg://anpr@127.0.0.1:1/anpr",
        f"exit {result.returncode}; `{next((x for x in result.stdout.splitlines() if 'export' in x), '')}`; "
        f"OLD111 left: {'OLD111' in left}, NEW222 left: {'NEW222' in left}",
    )
    refused = search(work, plate, "law_enforcement_request", config, db, "--procedure", "PV-2026-7")
    last = sqlite3.connect(db).execute("select action, details from audit_log order by seq desc limit 1").fetchone()
    row(
        "5",
        "a police request to the municipality (a denied purpose), as the audit log keeps it",
        f"anpr db search {plate} --purpose law_enforcement_request --procedure PV-2026-7; last audit entry",
        f"exit {refused.returncode}; `{last[0]} {last[1][:160]}`",
    )


def case_6_to_9(work: Path, config: Path) -> None:
    shared = work / "shared-folder"
    shared.mkdir(mode=0o755)
    (shared / "report.json").write_text("{not json")
    (shared / ".lock").write_text("another program's lock")
    data = yaml.safe_load(config.read_text())
    data["store"] = {"spool_dir": str(shared)}
    spool = write_yaml(work / "spool.yaml", data)
    result = anpr("run", "--config", str(spool), "--db", str(work / "s.sqlite"), cwd=work)
    row(
        "6",
        "`store.spool_dir` pointed at a folder of other files (as `/tmp`)",
        "anpr run --config spool.yaml  # spool_dir: shared-folder",
        said(result) + f"; left: {sorted(p.name for p in shared.iterdir())}, mode {mode(shared)}",
    )
    result = anpr(
        "run", "rtsp://admin:s3cret@127.0.0.1:1/live", "--config", str(config), "--db", str(work / "r.sqlite"), cwd=work
    )
    row(
        "7",
        "a camera URL with its password",
        "anpr run rtsp://admin:s3cret@127.0.0.1:1/live --config ...",
        said(result) + f"; `s3cret` in output: {'s3cret' in result.stderr + result.stdout}",
    )
    files = [work / name for name in ("p.sqlite", "anpr.key", "anpr-audit.checkpoints")]
    row(
        "8",
        "file modes under umask 022",
        "stat p.sqlite anpr.key anpr-audit.checkpoints",
        ", ".join(f"{p.name} {mode(p)}" for p in files),
    )
    for url, what in (
        ("file:///etc/passwd", "a `file://` webhook"),
        ("http://example.org/hook", "a plain-HTTP webhook"),
    ):
        data = yaml.safe_load((CONFIGS / "gendarmerie-l233.yaml").read_text())
        data["purposes"]["criminal_investigation"]["hotlist"] = str(CONFIGS / "data" / "stolen-vehicles.txt")
        data["purposes"]["criminal_investigation"]["sinks"] = ["store", "hook"]
        data["sinks"]["hook"] = {"type": "webhook", "url": url}
        hook = write_yaml(work / "hook.yaml", data)
        row("9", what, f"anpr policy check hook.yaml  # url: {url}", said(anpr("policy", "check", str(hook), cwd=work)))
    data["sinks"]["hook"] = {"type": "webhook", "url": "http://127.0.0.1:1/hook", "allow_http_hosts": ["127.0.0.1"]}
    data["cameras"][0]["source"] = str(SAMPLE)
    hook = write_yaml(work / "hook.yaml", data)
    result = anpr("run", "--config", str(hook), "--db", str(work / "h.sqlite"), cwd=work)
    queued = sum(1 for _ in (work / "anpr-webhook-hook").glob("*.json")) if (work / "anpr-webhook-hook").exists() else 0
    row(
        "9",
        "a webhook endpoint that is down",
        "anpr run --config hook.yaml  # url: http://127.0.0.1:1/hook",
        f"exit {result.returncode}; {queued} batch file(s) queued on disk",
    )


def valenciennes(work: Path) -> None:
    folder = work / "valenciennes"
    folder.mkdir()
    data = yaml.safe_load((CONFIGS / "valenciennes-2020.yaml").read_text())
    data["cameras"][0]["source"] = str(SAMPLE)
    config = write_yaml(folder / "v.yaml", data)
    result = anpr("run", "--config", str(config), "--demo", "--jsonl", "--log-json", "status.jsonl", cwd=folder)
    plates = {json.loads(line)["plate"] for line in (work / "plates.jsonl").read_text().splitlines()}
    blob = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file()) + (result.stdout + result.stderr).encode()
    found = [p for p in plates if p.encode() in blob]
    row(
        "demo",
        "Valenciennes (FR-MUN-REQ) run with --demo: every file it wrote, stdout and stderr",
        "anpr run --config v.yaml --demo --jsonl --log-json status.jsonl",
        f"exit {result.returncode}; files: {sorted(p.name for p in folder.rglob('*') if p.is_file())}; "
        f"{len(found)} of the {len(plates)} plates read on this clip found in them",
    )


def prepare(work: Path) -> Target:
    """The deployment's config, its database after one run of the sample, and a plate it stored."""
    config = paris_with_agents(work)
    db = work / "p.sqlite"
    result = anpr("run", "--config", str(config), "--db", str(db), "--jsonl", cwd=work)
    if result.returncode:
        raise SystemExit(f"the sample run failed: {result.stderr}")
    (work / "plates.jsonl").write_text(result.stdout)
    return Target(work, config, db, json.loads(result.stdout.splitlines()[0])["plate"])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="anpr-red-team-") as tmp:
        work = Path(tmp)
        os.umask(0o022)
        target = prepare(work)
        db, config, plate = target.db, target.config, target.plate
        steps: list[Callable[[], None]] = [
            lambda: case_1(work, db, config),
            lambda: case_2(work, db, config, plate),
            lambda: case_3(work, db, config, plate),
            lambda: case_4_and_5(work, db, config, plate),
            lambda: case_6_to_9(work, config),
            lambda: valenciennes(work),
        ]
        for step in steps:
            step()
        # Issue 13's attacks leave the database and its checkpoints as they attacked them:
        # each group of issue 26 starts from a deployment of its own, as a fresh one is.
        for group in ISSUE_26_GROUPS:
            module = importlib.import_module(f"benchmarks.attacks.{group}")
            folder = work / f"issue-26-{group}"
            folder.mkdir()
            module.run(prepare(folder))
    print(f"Run {time.strftime('%Y-%m-%d')} on {os.uname().nodename}: `python benchmarks/red_team.py`\n")
    print("| case | attack | command | result |")
    print("|---|---|---|---|")
    for case, attack, command, outcome in ROWS:
        cells = [  # paths in the run's own folder, relative to it
            c.replace(f"{work}/", "").replace("|", "\\|").replace("\n", " ")
            for c in (case, attack, f"`{command}`", outcome)
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
