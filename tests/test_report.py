"""The compliance report (`anpr report`) and its figures (`anpr db summary`), made by the real
command from a database the real command filled, and read back from Debian's headless
Chromium: its figures must equal `anpr db summary`'s, direct SQL counts of the tables, and
what `anpr audit verify` says."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text
from support.browser import page_alone

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "sample.mp4"
MIXED = REPO / "configs" / "mixed-camera.yaml"
PARIS = REPO / "configs" / "paris-fps.yaml"
ME = pwd.getpwuid(os.geteuid()).pw_name
DAY = 86_400


@dataclass
class Made:
    """A database filled by the real command, with what each step said."""

    folder: Path
    config: Path
    db: Path
    plates: set[str]  # every plate text and raw text the run printed
    searched: str  # the plate looked up
    answered_rows: int  # rows the answered search printed
    paid: str  # the plate marked paid
    paid_rows: int  # its reads and passages, counted in SQL before
    deleted: dict[str, int]  # rows each deletion said it deleted: mark-paid, purge
    html: Path
    md: Path
    report_stderr: str
    summary: dict
    summary_text: str
    verified: dict  # `anpr audit verify --json`
    entries_before_report: int

    def anpr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _anpr(self.folder, *args)


def _anpr(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("anpr") or str(Path(sys.executable).parent / "anpr")
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=folder, timeout=600)


def _sql(db: Path, query: str, **params) -> list[tuple]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query), params)]
    finally:
        engine.dispose()


def _held(db: Path, plate: str) -> int:
    [(rows,)] = _sql(
        db,
        "select (select count(*) from reads where plate = :p) + (select count(*) from passages where plate = :p)",
        p=plate,
    )
    return rows


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Made:
    """configs/mixed-camera.yaml (an allowed parking check and a denied police export on one
    camera) with the test's OS account as the parking check's designated agent: the sample
    read; one query answered and one refused; a plate's reads deleted on payment and a
    purge; then the report, the summary and the audit verification."""
    folder = tmp_path_factory.mktemp("report")
    data = yaml.safe_load(MIXED.read_text())
    data["purposes"]["parking_fps"]["safeguards"]["designated_agents"] = [ME]
    config = folder / "mixed.yaml"
    config.write_text(yaml.safe_dump(data))
    db = folder / "anpr.sqlite"
    common = ("--config", str(config), "--db", str(db))

    def ok(*args: str) -> subprocess.CompletedProcess[str]:
        result = _anpr(folder, *args)
        assert result.returncode == 0, (args, result.stderr)
        return result

    reads = [json.loads(line) for line in ok("run", str(SAMPLE), *common, "--jsonl").stdout.splitlines()]
    by_count = [plate for plate, _ in Counter(r["plate"] for r in reads).most_common()]
    searched, paid = by_count[0], by_count[1]
    answered = ok("db", "search", searched, "--purpose", "parking_fps", *common, "--json")
    refused = _anpr(folder, "db", "search", searched, "--purpose", "law_enforcement_request", *common)
    assert refused.returncode == 3, refused.stderr
    paid_rows = _held(db, paid)
    deleted = {"mark-paid": int(ok("db", "mark-paid", paid, *common).stdout.split()[1])}
    deleted["purge"] = int(ok("db", "purge", *common).stdout.splitlines()[-1].split()[1])  # the database's line
    [(entries,)] = _sql(db, "select count(*) from audit_log")
    html, md = folder / "report.html", folder / "report.md"
    report = ok("report", *common, "--html", str(html), "--md", str(md))
    return Made(
        folder=folder,
        config=config,
        db=db,
        plates={r["plate"] for r in reads} | {r["raw_text"] for r in reads},
        searched=searched,
        answered_rows=len(answered.stdout.splitlines()),
        paid=paid,
        paid_rows=paid_rows,
        deleted=deleted,
        html=html,
        md=md,
        report_stderr=report.stderr,
        summary=json.loads(ok("db", "summary", *common, "--json").stdout),
        summary_text=ok("db", "summary", *common).stdout,
        verified=json.loads(ok("audit", "verify", "--db", str(db), "--json").stdout),
        entries_before_report=entries,
    )


def _sql_days(db: Path) -> dict[str, dict[str, int]]:
    """Per UTC day, straight from the tables: reads held (by the day stored) and the hourly
    counters of reads not kept (by outcome)."""
    days: dict[str, Counter[str]] = {}
    for (stored_at,) in _sql(db, "select stored_at from reads"):
        days.setdefault(str(stored_at)[:10], Counter())["kept"] += 1
    outcomes = {"blocked": "blocked", "aggregated": "counted_only", "not_stored": "not_stored"}
    for bucket, outcome, count in _sql(db, "select bucket, outcome, count from policy_counts"):
        day = datetime.fromtimestamp(bucket, UTC).strftime("%Y-%m-%d")
        days.setdefault(day, Counter())[outcomes[outcome]] += count
    return {day: {k: c[k] for k in ("kept", "blocked", "counted_only", "not_stored")} for day, c in days.items()}


def _rows(page, table: str) -> list[list[str]]:
    """The rendered text of a table's body rows, as the browser lays it out."""
    return page.eval_on_selector_all(
        f"#{table} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))"
    )


def _pairs(page, table: str) -> dict[str, str]:
    return {
        k: v
        for k, v in page.eval_on_selector_all(
            f"#{table} tr", "rows => rows.map(r => [r.cells[0].innerText.trim(), r.cells[1].innerText.trim()])"
        )
    }


@pytest.mark.system
def test_report_renders_in_chromium_and_its_figures_are_the_databases(made, tmp_path):
    sql_days = _sql_days(made.db)
    summary_days = {d["day"]: {k: v for k, v in d.items() if k != "day"} for d in made.summary["days"]}
    assert summary_days == sql_days  # (a) = (b)
    [(kept,)] = _sql(made.db, "select count(*) from reads")
    [(blocked,)] = _sql(made.db, "select sum(count) from policy_counts where outcome = 'blocked'")
    assert kept >= 20 and blocked >= kept  # every read is blocked for the police, some deleted once paid
    assert made.deleted == {"mark-paid": made.paid_rows, "purge": 0} and made.paid_rows > 0
    assert _held(made.db, made.paid) == 0
    [(answerable,)] = _sql(
        made.db,
        "select count(*) from reads where plate = :plate and purpose = 'parking_fps' and delete_after > :now",
        plate=made.searched,
        now=time.time(),
    )
    assert made.answered_rows == answerable > 0
    [(entries,)] = _sql(made.db, "select count(*) from audit_log")
    assert made.verified["entries"] == entries == made.summary["audit"]["entries"]  # (c)
    assert made.verified["intact"] and made.verified["checkpointed"] > 0

    with page_alone(made.html, width=1100) as page:
        assert page.locator("svg rect").count() >= 4 * len(sql_days)  # the chart: a bar per series and day
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert (tmp_path / "report.png").stat().st_size > 10_000

        days = {r[0]: [int(v) for v in r[1:]] for r in _rows(page, "days")}
        for day, figures in sql_days.items():
            assert days[day] == [figures[k] for k in ("kept", "blocked", "counted_only", "not_stored")]
        totals = made.summary["totals"]
        assert days["total"] == [totals[k] for k in ("kept", "blocked", "counted_only", "not_stored")]
        assert days["total"][:2] == [kept, blocked]
        by_purpose = {(r[0], r[1]): [int(v) for v in r[2:]] for r in _rows(page, "by-purpose")}
        for row in made.summary["purposes"]:
            expected = [row[k] for k in ("reads_kept", "passages_kept", "overdue", "blocked", "counted_only")]
            assert by_purpose[(row["camera"], row["purpose"])][:5] == expected
        [(passages,)] = _sql(made.db, "select count(*) from passages")
        assert by_purpose[("vlc-parking-02", "parking_fps")][:2] == [kept, passages]
        assert by_purpose[("vlc-parking-02", "law_enforcement_request")][3] == blocked

        deletions = _rows(page, "deletions-table")
        assert [d[2:5] for d in deletions] == [
            [ME, "mark-paid", str(made.paid_rows)],
            [ME, "purge", "0"],
        ]
        assert [(d["actor"], d["action"], d["deleted"]) for d in made.summary["deletions"]] == [
            (ME, "mark-paid", made.paid_rows),
            (ME, "purge", 0),
        ]
        audited = _sql(
            made.db, "select seq, details from audit_log where action in ('purge', 'mark-paid') order by seq"
        )
        assert [(seq, json.loads(details)["deleted"]) for seq, details in audited] == [
            (int(d[0]), int(d[4])) for d in deletions
        ]

        answered, refused = _rows(page, "queries-table")
        assert answered[2:6] == [ME, "parking_fps", "-", "reads"]
        assert answered[6] == f"answered: {made.answered_rows} row(s)"
        assert refused[2:4] == [ME, "law_enforcement_request"] and refused[6].startswith("refused: ")
        assert [(q["purpose"], q["answered"], q["rows"]) for q in made.summary["queries"]] == [
            ("parking_fps", True, made.answered_rows),
            ("law_enforcement_request", False, None),
        ]
        queried = _sql(made.db, "select seq, action from audit_log where action like 'query%' order by seq")
        assert [(int(answered[0]), "query"), (int(refused[0]), "query.refused")] == queried

        audit = _pairs(page, "audit-state")
        assert int(audit["entries"]) == made.verified["entries"] == entries
        assert int(audit["last entry"]) == made.verified["last_seq"]
        assert audit["chain"] == "intact" and audit["append-only triggers"] == "in place"
        assert audit["checkpoints"].startswith(f"{made.verified['checkpointed']} in ")
        assert "INTACT" in page.inner_text("#audit")

        # Printed: white, and nothing wider than an A4 page's text width (about 700 px at 96 dpi).
        page.emulate_media(media="print")
        page.set_viewport_size({"width": 700, "height": 1000})
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"
        assert page.evaluate("document.documentElement.scrollWidth") <= 700
        assert page.pdf(format="A4")[:4] == b"%PDF"


@pytest.mark.system
def test_report_and_summary_hold_no_plate_and_write_nothing(made):
    hashes = {key for (key,) in _sql(made.db, "select plate_key from reads union select plate_key from passages")}
    for (details,) in _sql(made.db, "select details from audit_log where action like 'query%'"):
        hashes |= {json.loads(details).get("plate_key")} - {None}
    assert hashes and made.plates
    for made_text in (made.html.read_text(), made.md.read_text(), made.summary_text, json.dumps(made.summary)):
        assert [p for p in made.plates if len(p) >= 4 and p in made_text] == []
        assert [h for h in hashes if h in made_text or h[:12] in made_text] == []
    for path in (made.html, made.md):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Read only, as `anpr audit verify`: no entry for the report, the summaries or the verification.
    [(entries,)] = _sql(made.db, "select count(*) from audit_log")
    assert entries == made.entries_before_report == made.verified["entries"]


@pytest.mark.system
def test_markdown_report_holds_the_same_figures(made):
    md = made.md.read_text()
    totals = made.summary["totals"]
    assert (
        f"| total | {totals['kept']} | {totals['blocked']} | {totals['counted_only']} | {totals['not_stored']} |" in md
    )
    for day in made.summary["days"]:
        assert f"| {day['day']} | {day['kept']} | {day['blocked']} |" in md
    assert f"| {ME} | mark-paid | {made.paid_rows} |" in md and f"| {ME} | purge | 0 |" in md
    assert f"| {ME} | parking_fps | - | reads | answered: {made.answered_rows} row(s) |" in md
    assert f"| entries | {made.verified['entries']} |" in md and "**INTACT**" in md
    for code, rule in (("parking_fps", "FR-FPS"), ("law_enforcement_request", "FR-MUN-REQ")):
        assert f"| {code} |" in md and f"| {rule} |" in md
    assert "UNVERIFIED (rests on secondary reporting)" in md  # FR-FPS
    assert f"designated_agents: {ME}" in md and "human_review (required): yes" in md
    text = made.summary_text
    [total] = [line.split()[1:] for line in text.splitlines() if line.startswith("total ")]
    assert [int(n) for n in total] == [totals[k] for k in ("kept", "blocked", "counted_only", "not_stored")]
    assert f"audit log: {made.verified['entries']} entries, chain intact" in text
    assert f"{totals['kept']} read(s) held, {totals['blocked']} blocked" in made.report_stderr


@pytest.mark.system
def test_report_of_another_deployments_database_is_refused(made, tmp_path):
    out = tmp_path / "other.html"
    result = made.anpr("report", "--config", str(PARIS), "--db", str(made.db), "--html", str(out))
    assert result.returncode == 3 and "anpr policy migrate" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    result = made.anpr("db", "summary", "--config", str(MIXED), "--db", str(made.db))  # no agent: another fingerprint
    assert result.returncode == 3 and "serves deployment" in result.stderr


@pytest.mark.system
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --html OUT.html, --md OUT.md, or both"),
        (("--html", "same.out", "--md", "same.out"), "--html and --md name the same file"),
        (("--html", "no/such/folder/r.html"), "cannot write the report no/such/folder/r.html"),
    ],
)
def test_report_bad_arguments_are_one_line_errors(made, args, message):
    result = made.anpr("report", "--config", str(made.config), "--db", str(made.db), *args)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.system
def test_report_of_a_missing_database_is_an_error(tmp_path):
    result = _anpr(tmp_path, "report", "--config", str(MIXED), "--db", str(tmp_path / "none.sqlite"), "--md", "r.md")
    assert result.returncode == 2 and "database not found" in result.stderr and not (tmp_path / "r.md").exists()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_counts_per_day_and_purpose(dialect, tmp_path, request):
    """The report's figures from a database written directly: reads held by the day stored
    (those past their deadline counted as awaiting purge), counters by the day of their hour,
    and a camera the config no longer has, kept apart."""
    from support.keys import TEST_KEYS
    from support.reads import plate_read

    from anpr.config.settings import load_settings
    from anpr.policy.engine import Policy
    from anpr.records import CountKey, Outcome, PolicedRead
    from anpr.show.report import database_counts
    from anpr.storage.store import ReadStore

    url = str(tmp_path / "c.sqlite") if dialect == "sqlite" else request.getfixturevalue("postgres").new_database()
    store = ReadStore(url, TEST_KEYS)
    now = time.time()
    kept = [
        PolicedRead(plate_read("AB123CD", frame), "vlc-parking-02", "parking_fps", "FR-FPS", deadline, False)
        for frame, deadline in ((1, now + DAY), (2, now + DAY), (3, now - 1))
    ]
    yesterday, today = int(now // 3600 * 3600) - DAY, int(now // 3600 * 3600)
    counts = {
        CountKey(yesterday, "vlc-parking-02", "law_enforcement_request", "FR-MUN-REQ", Outcome.BLOCKED): 5,
        CountKey(today, "vlc-parking-02", "law_enforcement_request", "FR-MUN-REQ", Outcome.BLOCKED): 7,
        CountKey(today, "old-camera", "traffic_statistics", "FR-STATS", Outcome.AGGREGATED): 4,
    }
    store.write(kept, counts)
    days, by_purpose = database_counts(Policy(load_settings(MIXED).deployment), store, now)
    store.close()
    day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
    before = datetime.fromtimestamp(yesterday, UTC).strftime("%Y-%m-%d")
    assert [(d.day, d.kept, d.blocked, d.counted, d.not_stored) for d in days] == [
        (before, 0, 5, 0, 0),
        (day, 3, 7, 4, 0),
    ]
    assert [(c.camera, c.purpose, c.reads_kept, c.overdue, c.blocked, c.counted) for c in by_purpose] == [
        ("vlc-parking-02", "parking_fps", 3, 1, 0, 0),
        ("vlc-parking-02", "law_enforcement_request", 0, 0, 12, 0),
        ("old-camera", "traffic_statistics", 0, 0, 0, 4),
    ]


def test_chart_scales_and_labels_days():
    from anpr.show.report import DayCounts, _nice_step, day_chart_svg

    assert [_nice_step(n) for n in (0, 3, 34, 68, 250, 9_999)] == [1, 1, 10, 20, 50, 2000]
    assert "No read was kept or counted" in day_chart_svg([])
    month = [DayCounts(f"2026-01-{d:02d}", kept=d, blocked=2 * d) for d in range(1, 31)]
    svg = day_chart_svg(month)
    assert svg.count("<rect") == 4 * 30 + 4  # a bar per series and day, and the legend
    assert ">2026-01-01</text>" in svg and ">2026-01-04</text>" in svg  # every third day labelled
    assert ">2026-01-02</text>" not in svg
    assert ">60</text>" in svg  # the top tick covers the largest figure


@pytest.mark.system
def test_report_of_a_tampered_audit_log_shows_what_audit_verify_finds(made, tmp_path):
    # A copy: the checkpoints name the original's path, and are left behind.
    for name in ("anpr.sqlite", "anpr.key", "mixed.yaml"):
        shutil.copy(made.folder / name, tmp_path / name)
    db = tmp_path / "anpr.sqlite"
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("drop trigger audit_log_no_update"))
        conn.execute(text("update audit_log set actor = 'nobody' where action = 'purge'"))
    engine.dispose()
    verify = _anpr(tmp_path, "audit", "verify", "--db", str(db), "--json")
    assert verify.returncode == 1
    verified = json.loads(verify.stdout)
    assert {p["kind"] for p in verified["problems"]} == {"edited", "unprotected"}
    report = _anpr(tmp_path, "report", "--config", "mixed.yaml", "--db", str(db), "--md", "r.md")
    assert report.returncode == 0
    assert f"the audit log has {len(verified['problems'])} problem(s)" in report.stderr
    md = (tmp_path / "r.md").read_text()
    assert f"**{len(verified['problems'])} PROBLEM(S)**" in md
    for problem in verified["problems"]:
        assert f"| {problem['seq']} | {problem['kind']} | {problem['message']} |" in md
    assert "| chain | 1 edited |" in md and "| append-only triggers | missing or disabled |" in md
    assert "| checkpoints | no checkpoint file given |" in md
