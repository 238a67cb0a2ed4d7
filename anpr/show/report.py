"""The compliance report: what a deployment may do, what its database holds, what was done with it.

`gather` collects a `ReportData` from the same computations the other commands show:
each purpose's decision as `anpr policy explain` gives it (Policy.explain) and as `anpr run`
announces it (outputs.decision_lines); the database's counts (reads and passages held,
the hourly counters of blocked and counted reads); the audit log as `anpr audit verify`
finds it (audit.inspect_database), with the deletions and queries it records.
`render_html` (one self-contained page: inline CSS and SVG, nothing fetched, readable
printed) and `render_markdown` write it out; `figures` and `summary_lines` are what
`anpr db summary` prints.

Aggregates only: no plate, no keyed hash of a plate, no time of a read. The database is
opened under the deployment binding (policy/binding.py), like a query. Making a report
writes nothing, as `anpr audit verify` writes nothing: it adds no audit entry (it reads no
plate and changes nothing) and no checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anpr.policy.engine import Policy, describe_safeguard
from anpr.policy.rules import CONTROLLER_TYPES, KEPT
from anpr.records import Outcome
from anpr.run.outputs import decision_lines
from anpr.show.page import CSS, cell_text, esc, html_table, key_value_table, md_cell, md_table
from anpr.storage.audit import AuditEntry, AuditState, inspect_database
from anpr.storage.binding import require_binding

# The audit actions that delete kept rows, and what deleted them.
DELETIONS = {
    "purge": "deadline passed (anpr db purge)",
    "run.end": "deadline passed (purged during a run)",
    "mark-paid": "matched to a valid payment (FPS)",
    "record-finding": "finding recorded by an agent (FPS)",
    "erase": "a data subject's erasure request (anpr db erase)",
}
QUERIES = ("query", "query.refused")
# A data subject's requests (storage/subjects.py), answered or refused: what each is called.
SUBJECT_REQUESTS = {
    "subject-access": "access",
    "subject-access.refused": "access",
    "erase": "erasure",
    "erase.refused": "erasure",
}
# The series of the daily figures, in the chart's and the tables' order: (attribute, label, colour).
SERIES = (
    ("kept", "kept", "#2b6cb0"),
    ("blocked", "blocked", "#c53030"),
    ("counted", "counted only", "#b7791f"),
    ("not_stored", "not stored (exempt)", "#718096"),
)
# Hourly counter outcomes, by the DayCounts attribute they add to.
COUNTED = {Outcome.BLOCKED: "blocked", Outcome.AGGREGATED: "counted", Outcome.NOT_STORED: "not_stored"}
NO_PLATES = (
    "Aggregates only: counts per day, camera and purpose; no plate, no keyed hash of a plate, nothing about any "
    "one read. The verdicts are a model of the rules in LEGAL.md, not legal advice."
)


@dataclass(frozen=True)
class Safeguard:
    name: str
    meaning: str
    required: bool  # by the purpose's rule
    given: str | None  # as declared in the config; None: not given


@dataclass(frozen=True)
class PurposeReport:
    """One purpose of the deployment, as `anpr policy explain` gives it."""

    purpose: str
    meaning: str
    legal_basis: str  # as the config states it
    cameras: list[str]
    verdict: str  # "allow" or "deny"
    rule: str
    legal_reference: str
    verified: bool
    reasons: list[str]
    retention: str  # what the rule says
    retention_days: float | None
    hit_retention_days: float | None
    retention_notes: list[str]
    keeps: str
    sinks: list[str]
    safeguards: list[Safeguard]

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"


@dataclass(frozen=True)
class CameraReport:
    id: str
    location: str
    purposes: list[str]
    announced: list[str]  # what `anpr run` prints for it before reading


@dataclass
class DayCounts:
    """Reads of one day (UTC): kept (still held, by the day stored), blocked, counted only, not stored."""

    day: str
    kept: int = 0
    blocked: int = 0
    counted: int = 0
    not_stored: int = 0


@dataclass
class PurposeCounts:
    """What the database holds and counted for one camera and purpose."""

    camera: str
    purpose: str
    reads_kept: int = 0
    passages_kept: int = 0
    overdue: int = 0  # reads and passages past their deadline, not purged yet
    blocked: int = 0
    counted: int = 0
    not_stored: int = 0


@dataclass(frozen=True)
class Deletion:
    seq: int
    at: float
    actor: str
    action: str
    why: str
    deleted: int | None  # rows (reads and passages); None: not recorded


@dataclass(frozen=True)
class QueryMade:
    seq: int
    at: float
    actor: str
    purpose: str
    procedure: str | None
    passages: bool
    answered: bool
    rows: int | None  # None: not recorded (PostgreSQL's search function records the query, not its rows)
    withheld: int | None
    reason: str | None  # why it was refused


@dataclass(frozen=True)
class SubjectRequest:
    """A data subject's request, as the audit log keeps it: never the plate."""

    seq: int
    at: float
    actor: str
    request: str  # access | erasure
    answered: bool
    records: int | None  # found (access) or deleted (erasure)
    kept: int | None  # left by a rule (erasure)
    reason: str | None  # why it was refused, or the erasure's stated reason


@dataclass(frozen=True)
class ReportData:
    made_at: float
    config: str
    database: str
    deployment: str
    description: str
    fingerprint: str
    bound_at: float | None
    bound_by: str | None
    controller_type: str
    controller_meaning: str
    controller_name: str
    jurisdiction: str
    region: list[str]
    cameras: list[CameraReport]
    purposes: list[PurposeReport]
    days: list[DayCounts]
    counts: list[PurposeCounts]
    deletions: list[Deletion]
    queries: list[QueryMade]
    audit: AuditState
    subject_requests: list[SubjectRequest] = field(default_factory=list)
    actions: dict[str, int] = field(default_factory=dict)  # audit entries by action

    @property
    def totals(self) -> DayCounts:
        total = DayCounts("total")
        for day in self.days:
            for name, _, _ in SERIES:
                setattr(total, name, getattr(total, name) + getattr(day, name))
        return total


def gather(
    config: Path, policy: Policy, store, audit, checkpoints: Path | None, now: float | None = None
) -> ReportData:
    """The report of the deployment `policy` (read from `config`) and its database `store`
    (opened, with its audit log): refused (PolicyRefusal) when the database serves another
    deployment. The audit log is verified against `checkpoints` (None: the chain and
    triggers alone), as `anpr audit verify` does."""
    deployment = policy.deployment
    require_binding(store, audit, deployment, store.user(), bind_if_new=False)
    binding = store.binding()
    now = time.time() if now is None else now
    state = inspect_database(store.url, store.keys, checkpoints)
    days, counts = database_counts(policy, store, now)
    controller = deployment.controller
    return ReportData(
        made_at=now,
        config=str(config),
        database=store.safe_url,
        deployment=deployment.name or "(unnamed deployment)",
        description=deployment.description,
        fingerprint=deployment.fingerprint(),
        bound_at=binding.bound_at if binding else None,
        bound_by=binding.bound_by if binding else None,
        controller_type=controller.type,
        controller_meaning=CONTROLLER_TYPES.get(controller.type, "unknown controller type"),
        controller_name=controller.name,
        jurisdiction=controller.jurisdiction,
        region=list(deployment.region),
        cameras=[
            CameraReport(
                camera.id,
                camera.location,
                list(camera.purposes),
                decision_lines(policy.camera_decisions(camera.id), camera.id),
            )
            for camera in deployment.cameras
        ],
        purposes=[_purpose(policy, item) for item in policy.explain()],
        days=days,
        counts=counts,
        deletions=_deletions(state.entries),
        queries=_queries(state.entries),
        subject_requests=_subject_requests(state.entries),
        audit=state,
        actions=dict(Counter(entry.action for entry in state.entries)),
    )


def _purpose(policy: Policy, item: dict[str, Any]) -> PurposeReport:
    declared = policy.deployment.purposes[item["purpose"]]
    rule = policy.purpose(item["purpose"]).rule
    given = declared.safeguards.model_dump()
    names = [name for name in given if name in rule.safeguards or given[name]]
    return PurposeReport(
        purpose=item["purpose"],
        meaning=item["purpose_meaning"],
        legal_basis=declared.legal_basis,
        cameras=item["cameras"],
        verdict=item["verdict"],
        rule=item["rule"],
        legal_reference=item["legal_reference"],
        verified=item["verified"],
        reasons=item["reasons"],
        retention=item["retention"],
        retention_days=item["retention_days"],
        hit_retention_days=item["hit_retention_days"],
        retention_notes=item["retention_notes"],
        keeps=KEPT[item["minimisation"]] if item["verdict"] == "allow" else "nothing: only a count of blocked reads",
        sinks=item["sinks"],
        safeguards=[
            Safeguard(name, describe_safeguard(name), name in rule.safeguards, _given(given[name])) for name in names
        ],
    )


def _given(value: Any) -> str | None:
    if not value:
        return None
    if value is True:
        return "yes"
    return ", ".join(value) if isinstance(value, list) else str(value)


def database_counts(policy: Policy, store, now: float) -> tuple[list[DayCounts], list[PurposeCounts]]:
    """Per day and per camera and purpose: reads and passages held now, and the hourly
    counters of reads not kept. Every camera and purpose of the config is listed, with
    those the database holds rows of besides (e.g. from before a migration)."""
    days: dict[str, DayCounts] = {}
    counts = {
        (camera.id, code): PurposeCounts(camera.id, code)
        for camera in policy.deployment.cameras
        for code in camera.purposes
    }

    def of(camera: str, purpose: str) -> PurposeCounts:
        return counts.setdefault((camera, purpose), PurposeCounts(camera, purpose))

    for row in store.kept_counts(now):
        days.setdefault(row.day, DayCounts(row.day)).kept += row.rows
        of(row.camera, row.purpose).reads_kept += row.rows
        of(row.camera, row.purpose).overdue += row.overdue
    for row in store.kept_counts(now, passages=True):
        of(row.camera, row.purpose).passages_kept += row.rows
        of(row.camera, row.purpose).overdue += row.overdue
    for key, number in store.policy_counts():
        name = COUNTED.get(key.outcome)
        if name is None:
            continue
        day = _day(key.bucket)
        day_counts = days.setdefault(day, DayCounts(day))
        setattr(day_counts, name, getattr(day_counts, name) + number)
        purpose_counts = of(key.camera, key.purpose)
        setattr(purpose_counts, name, getattr(purpose_counts, name) + number)
    return [days[d] for d in sorted(days)], list(counts.values())


def _details(entry: AuditEntry) -> dict[str, Any]:
    try:
        details = json.loads(entry.details)
    except (TypeError, ValueError):
        return {}  # an edited entry: verification reports it
    return details if isinstance(details, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _deletions(entries: Iterable[AuditEntry]) -> list[Deletion]:
    deletions = []
    for entry in entries:
        if entry.action not in DELETIONS:
            continue
        details = _details(entry)
        deleted = _int(details.get("purged" if entry.action == "run.end" else "deleted"))
        if entry.action == "run.end" and not deleted:
            continue  # a run that deleted nothing is no deletion
        deletions.append(Deletion(entry.seq, entry.at, entry.actor, entry.action, DELETIONS[entry.action], deleted))
    return deletions


def _subject_requests(entries: Iterable[AuditEntry]) -> list[SubjectRequest]:
    # The keyed hash of the plate asked about (request_key) in a request's details is never taken.
    requests = []
    for entry in entries:
        if entry.action not in SUBJECT_REQUESTS:
            continue
        details = _details(entry)
        refused = entry.action.endswith(".refused")
        found = details.get("deleted" if entry.action == "erase" else "records")
        reason = details.get("reason")
        requests.append(
            SubjectRequest(
                entry.seq,
                entry.at,
                entry.actor,
                SUBJECT_REQUESTS[entry.action],
                not refused,
                _int(found),
                _int(details.get("kept")),
                None if reason is None else str(reason),
            )
        )
    return requests


def _queries(entries: Iterable[AuditEntry]) -> list[QueryMade]:
    # The plate's keyed hash (plate_key) in a query's details is never taken.
    queries = []
    for entry in entries:
        if entry.action in ("subject-access", "subject-access.refused"):  # a query of every purpose at once
            details = _details(entry)
            answered = entry.action == "subject-access"
            reason = None if answered else str(details.get("reason", ""))
            purpose = "(every purpose: a data subject's access request)"
            queries.append(
                QueryMade(
                    entry.seq,
                    entry.at,
                    entry.actor,
                    purpose,
                    None,
                    False,
                    answered,
                    _int(details.get("records")),
                    None,
                    reason,
                )
            )
            continue
        if entry.action not in QUERIES:
            continue
        details = _details(entry)
        procedure = details.get("procedure")
        queries.append(
            QueryMade(
                entry.seq,
                entry.at,
                entry.actor,
                str(details.get("purpose", "")),
                None if procedure is None else str(procedure),
                bool(details.get("passages", False)),
                entry.action == "query",
                _int(details.get("rows")),
                _int(details.get("withheld")),
                None if entry.action == "query" else str(details.get("reason", "")),
            )
        )
    return queries


def _day(moment: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(moment))


def _utc(moment: float | None) -> str:
    return "-" if moment is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def _days(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


# --- figures: `anpr db summary` ------------------------------------------------------------------


def figures(data: ReportData) -> dict[str, Any]:
    """The report's figures as one JSON object (`anpr db summary --json`)."""
    return {
        "deployment": data.deployment,
        "fingerprint": data.fingerprint,
        "database": data.database,
        "made_at": round(data.made_at, 3),
        "days": [_day_dict(day) for day in data.days],
        "totals": {k: v for k, v in _day_dict(data.totals).items() if k != "day"},
        "purposes": [_counts_dict(c) for c in data.counts],
        "deletions": [asdict(d) for d in data.deletions],
        "queries": [asdict(q) for q in data.queries],
        "subject_requests": [asdict(r) for r in data.subject_requests],
        "audit": data.audit.to_dict(),
    }


def _day_dict(day: DayCounts) -> dict[str, Any]:
    return {
        "day": day.day,
        "kept": day.kept,
        "blocked": day.blocked,
        "counted_only": day.counted,
        "not_stored": day.not_stored,
    }


def _counts_dict(counts: PurposeCounts) -> dict[str, Any]:
    values = asdict(counts)
    values["counted_only"] = values.pop("counted")
    return values


def summary_lines(data: ReportData) -> list[str]:
    """The report's figures as text (`anpr db summary`)."""
    lines = [
        f"deployment {data.deployment} ({data.fingerprint[:12]}), database {data.database}",
        f"{'day':<10} {'kept':>8} {'blocked':>8} {'counted only':>13} {'not stored':>11}",
    ]
    for day in [*data.days, data.totals]:
        lines.append(f"{day.day:<10} {day.kept:>8} {day.blocked:>8} {day.counted:>13} {day.not_stored:>11}")
    for c in data.counts:
        lines.append(
            f"camera {c.camera}, purpose {c.purpose}: {c.reads_kept} read(s) and {c.passages_kept} passage(s) held"
            f" ({c.overdue} past their deadline), {c.blocked} blocked, {c.counted} counted only,"
            f" {c.not_stored} not stored"
        )
    lines.append(f"deletions: {len(data.deletions)}")
    lines += [
        f"  entry {d.seq} {_utc(d.at)} {d.actor} {d.action}: {_rows(d.deleted)} deleted, {d.why}"
        for d in data.deletions
    ]
    lines.append(f"queries: {len(data.queries)}")
    lines += [f"  entry {q.seq} {_utc(q.at)} {q.actor} {_query_text(q)}" for q in data.queries]
    lines.append(f"data-subject requests: {len(data.subject_requests)}")
    lines += [f"  entry {r.seq} {_utc(r.at)} {r.actor} {_subject_text(r)}" for r in data.subject_requests]
    lines.append(f"audit log: {data.audit.summary()}")
    lines += [f"  {p.kind}: {p.message}" for p in data.audit.problems]
    return lines


def _rows(number: int | None) -> str:
    return "? rows" if number is None else f"{number} row(s)"


def _subject_text(r: SubjectRequest) -> str:
    return f"{r.request}: {_subject_answer(r)}"


def _subject_answer(r: SubjectRequest) -> str:
    if not r.answered:
        return f"refused ({r.reason})"
    why = f" ({r.reason})" if r.reason else ""
    if r.records is None:  # answered through the database's function, which logs the request, not the answer
        return "answered (through the database's function)" if r.request == "access" else f"erased{why}"
    if r.request == "access":
        return f"answered, {_rows(r.records)} found"
    return f"{_rows(r.records)} deleted, {r.kept if r.kept is not None else '?'} kept by rule{why}"


def _query_text(q: QueryMade) -> str:
    what = "passages" if q.passages else "reads"
    head = f"purpose {q.purpose}, procedure {q.procedure or '-'}, {what}: "
    if not q.answered:
        return head + f"refused ({q.reason})"
    rows = "rows not recorded" if q.rows is None else f"{q.rows} row(s)"
    withheld = f", {q.withheld} withheld" if q.withheld else ""
    return head + f"answered, {rows}{withheld}"


# --- writing ---------------------------------------------------------------------------------------


# --- Markdown --------------------------------------------------------------------------------------


def render_markdown(data: ReportData) -> str:
    """The report as Markdown: the same figures, the chart as a table of days."""
    out = [f"# Compliance report: {md_cell(data.deployment)}", "", f"*{NO_PLATES}*", ""]
    out += md_table(["", ""], _identity_rows(data))
    out += ["## Controller", ""]
    out += md_table(["type", "name", "jurisdiction", "plate region"], [_controller_row(data)])
    out += ["## Cameras and purposes", ""]
    for camera in data.cameras:
        out += [f"### Camera {md_cell(camera.id)}" + (f" ({md_cell(camera.location)})" if camera.location else "")]
        out += ["", "As `anpr run` announces it:", ""] + [f"- {md_cell(line)}" for line in camera.announced] + [""]
    out += md_table(
        ["purpose", "cameras", "verdict", "rule", "legal references", "rule text", "safeguards"],
        [
            (
                f"{p.purpose} ({p.meaning})" + (f"; stated basis: {p.legal_basis}" if p.legal_basis else ""),
                ", ".join(p.cameras) or "-",
                f"{_verdict(p)}: {'; '.join(p.reasons)}",
                p.rule,
                p.legal_reference,
                _verified(p),
                "; ".join(_safeguard_text(s) for s in p.safeguards) or "none required",
            )
            for p in data.purposes
        ],
    )
    out += ["## Retention in force", ""]
    out += md_table(
        ["purpose", "verdict", "days", "hit days", "what the rule says", "keeps", "notes"],
        [_retention_row(p) for p in data.purposes],
    )
    out += ["## Reads per day (UTC)", "", _DAYS_NOTE, ""]
    out += md_table(["day", *(label for _, label, _ in SERIES)], _day_rows(data))
    out += ["### By camera and purpose", ""]
    out += md_table(_COUNTS_HEADER, _counts_rows(data))
    out += ["## Deletions", ""]
    out += md_table(_DELETION_HEADER, _deletion_rows(data)) if data.deletions else ["None recorded.", ""]
    out += ["## Queries", ""]
    out += md_table(_QUERY_HEADER, _query_rows(data)) if data.queries else ["None recorded.", ""]
    out += ["## Data-subject requests", "", _SUBJECTS_NOTE, ""]
    out += md_table(_SUBJECT_HEADER, _subject_rows(data)) if data.subject_requests else ["None recorded.", ""]
    out += ["## Audit log", "", f"**{_audit_verdict(data.audit)}**: {md_cell(data.audit.summary())}", ""]
    out += md_table(["", ""], _audit_rows(data.audit))
    if data.audit.problems:
        out += md_table(["entry", "problem", "what"], [(p.seq, p.kind, p.message) for p in data.audit.problems])
    out += md_table(["action", "entries"], sorted(data.actions.items()))
    return "\n".join(out)


# --- shared table content ---------------------------------------------------------------------------

_DAYS_NOTE = (
    "Kept: reads held now for an allowed purpose, by the day they were stored (those deleted since are under "
    "Deletions). Blocked, counted only, not stored: the hourly counters of reads a purpose did not keep, by the "
    "day they were read; nothing else of those reads exists."
)
_COUNTS_HEADER = [
    "camera",
    "purpose",
    "reads held",
    "passages held",
    "past deadline, awaiting purge",
    "blocked",
    "counted only",
    "not stored",
]
_DELETION_HEADER = ["entry", "time", "who", "action", "rows deleted", "why"]
_QUERY_HEADER = ["entry", "time", "who", "purpose", "procedure", "looked up", "answer"]


def _identity_rows(data: ReportData) -> list[tuple[str, str]]:
    bound = f"{_utc(data.bound_at)} by {data.bound_by}" if data.bound_at is not None else "-"
    rows = [
        ("made", _utc(data.made_at)),
        ("config", data.config or "-"),
        ("database", data.database),
        ("deployment fingerprint", data.fingerprint),
        ("database bound to it", bound),
    ]
    return rows + ([("description", data.description)] if data.description else [])


def _controller_row(data: ReportData) -> tuple[str, ...]:
    return (
        f"{data.controller_type} ({data.controller_meaning})",
        data.controller_name,
        data.jurisdiction,
        ", ".join(data.region) or "any",
    )


def _verdict(p: PurposeReport) -> str:
    return "ALLOWED" if p.allowed else "DENIED"


def _verified(p: PurposeReport) -> str:
    return "verified" if p.verified else "UNVERIFIED (rests on secondary reporting)"


def _safeguard_text(s: Safeguard) -> str:
    state = f"{s.given}" if s.given is not None else "MISSING"
    return f"{s.name}{' (required)' if s.required else ''}: {state}"


def _retention_row(p: PurposeReport) -> tuple[str, ...]:
    sinks = f" -> {', '.join(p.sinks)}" if p.sinks else ""
    return (
        p.purpose,
        _verdict(p),
        _days(p.retention_days),
        _days(p.hit_retention_days),
        p.retention,
        p.keeps + sinks,
        "; ".join(p.retention_notes) or "-",
    )


def _day_rows(data: ReportData) -> list[tuple[Any, ...]]:
    return [(d.day, *(getattr(d, name) for name, _, _ in SERIES)) for d in [*data.days, data.totals]]


def _counts_rows(data: ReportData) -> list[tuple[Any, ...]]:
    return [
        (c.camera, c.purpose, c.reads_kept, c.passages_kept, c.overdue, c.blocked, c.counted, c.not_stored)
        for c in data.counts
    ]


def _deletion_rows(data: ReportData) -> list[tuple[Any, ...]]:
    return [
        (d.seq, _utc(d.at), d.actor, d.action, "-" if d.deleted is None else d.deleted, d.why) for d in data.deletions
    ]


_SUBJECTS_NOTE = (
    "Access and erasure requests of data subjects (anpr db subject-access, anpr db erase), answered by the "
    "data-protection officer; the plate asked about is never recorded."
)
_SUBJECT_HEADER = ["entry", "time", "user", "request", "answer"]


def _subject_rows(data: ReportData) -> list[tuple[Any, ...]]:
    return [(r.seq, _utc(r.at), r.actor, r.request, _subject_answer(r)) for r in data.subject_requests]


def _query_rows(data: ReportData) -> list[tuple[Any, ...]]:
    rows = []
    for q in data.queries:
        if not q.answered:
            answer = f"refused: {q.reason}"
        else:
            answer = f"answered: {'rows not recorded' if q.rows is None else f'{q.rows} row(s)'}"
            answer += f", {q.withheld} withheld" if q.withheld else ""
        rows.append(
            (q.seq, _utc(q.at), q.actor, q.purpose, q.procedure or "-", "passages" if q.passages else "reads", answer)
        )
    return rows


def _audit_verdict(state: AuditState) -> str:
    return "INTACT" if state.intact else f"{len(state.problems)} PROBLEM(S)"


def _audit_rows(state: AuditState) -> list[tuple[str, Any]]:
    kinds = Counter(p.kind for p in state.problems)
    return [
        ("entries", len(state.entries)),
        ("last entry", state.last_seq),
        ("chain", "intact" if not {"edited", "deleted", "reordered"} & set(kinds) else _kinds(kinds)),
        ("append-only triggers", "missing or disabled" if kinds["unprotected"] else "in place"),
        (
            "checkpoints",
            f"{state.checkpointed} in {state.checkpoints}" if state.checkpoints else "no checkpoint file given",
        ),
        (
            "against the checkpoints",
            "-"
            if not state.checkpoints
            else (_kinds(kinds, ("truncated", "rewritten", "checkpoint")) or "agrees (not truncated, not rewritten)"),
        ),
    ]


def _kinds(kinds: Counter[str], only: Sequence[str] = ("edited", "deleted", "reordered")) -> str:
    return ", ".join(f"{kinds[k]} {k}" for k in only if kinds[k])


# --- HTML ----------------------------------------------------------------------------------------


def _purpose_rows(data: ReportData, camera: CameraReport) -> str:
    by_code = {p.purpose: p for p in data.purposes}
    rows = []
    for code in camera.purposes:
        p = by_code[code]
        safeguards = "".join(
            f"<li{' class=missing' if s.given is None else ''}>{cell_text(s.name)}"
            f"{' (required)' if s.required else ''}: {cell_text(s.given or 'MISSING')}"
            f"<br><small>{cell_text(s.meaning)}</small></li>"
            for s in p.safeguards
        )
        rows.append(
            "<tr>"
            f"<td><b>{cell_text(p.purpose)}</b><br><small>{cell_text(p.meaning)}</small>"
            + (f"<br><small>stated basis: {cell_text(p.legal_basis)}</small>" if p.legal_basis else "")
            + "</td>"
            f'<td><span class="{p.verdict}">{_verdict(p)}</span>'
            f"<br><small>{cell_text('; '.join(p.reasons))}</small></td>"
            f"<td>{cell_text(p.rule)}</td>"
            f"<td>{cell_text(p.legal_reference)}</td>"
            f'<td class="{"ok" if p.verified else "bad"}">{cell_text(_verified(p))}</td>'
            f"<td>{f'<ul>{safeguards}</ul>' if safeguards else 'none required'}</td>"
            "</tr>"
        )
    header = "".join(
        f'<th scope="col">{h}</th>'
        for h in ("purpose", "verdict", "rule", "legal references", "rule text", "safeguards")
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML page: inline CSS and SVG, no script, nothing fetched."""
    parts = [
        f"<h1>Compliance report: {esc(data.deployment)}</h1>",
        f'<p class="notice">{esc(NO_PLATES)}</p>',
        key_value_table(_identity_rows(data), "identity"),
        '<section id="controller"><h2>Controller</h2>',
        html_table(
            ["type", "name", "jurisdiction", "plate region"], [_controller_row(data)], table_id="controller-table"
        ),
        '</section><section id="cameras"><h2>Cameras and purposes</h2>',
    ]
    for camera in data.cameras:
        where = f" <small>({esc(camera.location)})</small>" if camera.location else ""
        parts.append(f"<h3>Camera {esc(camera.id)}{where}</h3>")
        parts.append(_purpose_rows(data, camera))
        parts.append(
            "<p>As <code>anpr run</code> announces it:</p><ul class=announced>"
            + "".join(f"<li>{esc(line)}</li>" for line in camera.announced)
            + "</ul>"
        )
    unfed = [p for p in data.purposes if not p.cameras]
    if unfed:
        parts.append(f"<p>Purposes no camera feeds: {esc(', '.join(p.purpose for p in unfed))}.</p>")
    parts += [
        '</section><section id="retention"><h2>Retention in force</h2>',
        html_table(
            ["purpose", "verdict", "days", "hit days", "what the rule says", "keeps", "notes"],
            [_retention_row(p) for p in data.purposes],
            numeric=(2, 3),
            table_id="retention-table",
        ),
        '</section><section id="reads"><h2>Reads per day (UTC)</h2>',
        f"<p>{esc(_DAYS_NOTE)}</p>",
        day_chart_svg(data.days),
        html_table(
            ["day", *(label for _, label, _ in SERIES)], _day_rows(data), numeric=(1, 2, 3, 4), table_id="days"
        ).replace("<tr><td>total</td>", '<tr class="total"><td>total</td>'),
        "<h3>By camera and purpose</h3>",
        html_table(_COUNTS_HEADER, _counts_rows(data), numeric=range(2, 8), table_id="by-purpose"),
        '</section><section id="deletions"><h2>Deletions</h2>',
        html_table(_DELETION_HEADER, _deletion_rows(data), numeric=(0, 4), table_id="deletions-table")
        if data.deletions
        else "<p>None recorded.</p>",
        '</section><section id="queries"><h2>Queries</h2>',
        html_table(_QUERY_HEADER, _query_rows(data), numeric=(0,), table_id="queries-table")
        if data.queries
        else "<p>None recorded.</p>",
        '</section><section id="subject-requests"><h2>Data-subject requests</h2>',
        f"<p>{esc(_SUBJECTS_NOTE)}</p>",
        html_table(_SUBJECT_HEADER, _subject_rows(data), numeric=(0,), table_id="subject-requests-table")
        if data.subject_requests
        else "<p>None recorded.</p>",
        '</section><section id="audit"><h2>Audit log</h2>',
        f'<p><span class="{"ok" if data.audit.intact else "bad"}">{_audit_verdict(data.audit)}</span>: '
        f"{esc(data.audit.summary())}</p>",
        key_value_table(_audit_rows(data.audit), "audit-state"),
    ]
    if data.audit.problems:
        parts.append(
            html_table(
                ["entry", "problem", "what"],
                [(p.seq, p.kind, p.message) for p in data.audit.problems],
                table_id="audit-problems",
            )
        )
    parts += [
        "<h3>Entries by action</h3>",
        html_table(["action", "entries"], sorted(data.actions.items()), numeric=(1,), table_id="actions"),
        "</section>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        # Nothing may be fetched: the page is one file, and a browser that tried would say so.
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>Compliance report: {esc(data.deployment)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


# --- the chart --------------------------------------------------------------------------------------

_WIDTH, _HEIGHT = 760, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 36, 44


def _nice_step(largest: float, ticks: int = 5) -> int:
    """A round step (1, 2 or 5 times a power of ten) that covers `largest` in about `ticks` steps."""
    raw = max(largest, 1) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return int(next(m * power for m in (1, 2, 5, 10) if m * power >= raw) if power >= 1 else 1)


def day_chart_svg(days: Sequence[DayCounts]) -> str:
    """Grouped bars per day (kept, blocked, counted only, not stored), as inline SVG."""
    if not days:
        return "<p>No read was kept or counted.</p>"
    largest = max(getattr(d, name) for d in days for name, _, _ in SERIES)
    step = _nice_step(largest)
    top = max(step, math.ceil(largest / step) * step)
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    group = plot_w / len(days)
    bar = min(22.0, group * 0.8 / len(SERIES))
    label_every = max(1, math.ceil(len(days) / 12))

    def y(value: float) -> float:
        return _TOP + plot_h - value / top * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {_HEIGHT}" width="{_WIDTH}" '
        f'height="{_HEIGHT}" role="img" aria-labelledby="chart-title" font-family="sans-serif" font-size="12">',
        '<title id="chart-title">Reads kept, blocked, counted only and not stored, per day (UTC)</title>',
    ]
    for tick in range(0, top + 1, step):
        out.append(
            f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e2e8f0"/>'
            f'<text x="{_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" fill="#2d3748">{tick}</text>'
        )
    for index, day in enumerate(days):
        start = _LEFT + index * group + (group - bar * len(SERIES)) / 2
        for series, (name, label, colour) in enumerate(SERIES):
            value = getattr(day, name)
            x = start + series * bar
            out.append(
                f'<rect x="{x:.1f}" y="{y(value):.1f}" width="{bar:.1f}" height="{y(0) - y(value):.1f}" '
                f'fill="{colour}"><title>{esc(day.day)}: {value} {esc(label)}</title></rect>'
            )
            if len(days) <= 10:
                out.append(
                    f'<text x="{x + bar / 2:.1f}" y="{y(value) - 3:.1f}" text-anchor="middle" font-size="10" '
                    f'fill="#2d3748">{value}</text>'
                )
        if index % label_every == 0:
            out.append(
                f'<text x="{_LEFT + (index + 0.5) * group:.1f}" y="{_HEIGHT - _BOTTOM + 16}" text-anchor="middle" '
                f'fill="#2d3748">{esc(day.day)}</text>'
            )
    out.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#4a5568"/>')
    for series, (_, label, colour) in enumerate(SERIES):
        x = _LEFT + series * 170
        out.append(
            f'<rect x="{x}" y="10" width="12" height="12" fill="{colour}"/>'
            f'<text x="{x + 17}" y="20" fill="#2d3748">{esc(label)}</text>'
        )
    out.append(f'<text x="{_WIDTH / 2}" y="{_HEIGHT - 6}" text-anchor="middle" fill="#4a5568">day (UTC)</text>')
    out.append("</svg>")
    return (
        '<figure><div role="presentation">'
        + "".join(out)
        + "</div><figcaption>Reads per day: the same figures as the table below.</figcaption></figure>"
    )
