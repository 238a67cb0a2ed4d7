"""`anpr policy`, `anpr db`, `anpr audit` and `anpr report`: what a deployment may do, retention, queries,
audit, and the compliance report."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from anpr.redact import printable

policy_app = typer.Typer(no_args_is_help=True, help="What a deployment may and may not do, and why.")
db_app = typer.Typer(no_args_is_help=True, help="Retention and gated queries on the read database.")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
log = logging.getLogger(__name__)

ConfigArgument = Annotated[Path, typer.Argument(help="Deployment config (YAML).")]
ConfigOption = Annotated[Path, typer.Option("--config", help="Deployment config (YAML).")]
DbOption = Annotated[
    str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite path (default: the config's, else anpr.sqlite).")
]


def _echo(line: str, err: bool = False) -> None:
    """One line of a command's output: it quotes outside text (a config's names, a purpose or
    procedure typed by whoever asked, an audit entry), which must not break the line or
    rewrite the terminal (redact.printable)."""
    print(printable(line), file=sys.stderr if err else sys.stdout)


def _deployment(config: Path, db: str | None = None):
    from anpr.config.settings import load_settings
    from anpr.errors import ConfigError
    from anpr.policy.engine import Policy

    settings = load_settings(config, {"store": {"url": db}})
    if settings.deployment is None:
        raise ConfigError(f"{config}: declares no deployment (no 'controller')")
    return settings, Policy(settings.deployment)


@policy_app.command("check")
def policy_check(config: ConfigArgument) -> None:
    """Exit 0 if every purpose is allowed, 3 if any is denied, 2 if the config is invalid."""
    _, policy = _deployment(config)
    for decision in policy.decisions.values():
        verdict = "allowed" if decision.allowed else "DENIED"
        _echo(
            f"{decision.purpose}: {verdict} by {decision.rule.id}: {'; '.join(decision.reasons)} "
            f"[{decision.legal_reference}]"
        )
    if not all(d.allowed for d in policy.decisions.values()):
        _echo(f"{config}: non-compliant", err=True)
        raise typer.Exit(3)
    _echo(f"{config}: compliant", err=True)


@policy_app.command("explain")
def policy_explain(
    config: ConfigArgument, as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False
) -> None:
    """Per purpose: verdict, rule, legal reference, retention, missing safeguards, verified or not."""
    from anpr.policy.engine import describe_safeguard
    from anpr.policy.rules import CONTROLLER_TYPES, KEPT

    _, policy = _deployment(config)
    deployment = policy.deployment
    explained = policy.explain()
    if as_json:
        _echo(
            json.dumps(
                {"config": str(config), "controller": deployment.controller.model_dump(), "purposes": explained},
                ensure_ascii=False,
            )
        )
        return
    controller = deployment.controller
    _echo(f"{config}: {deployment.name or '(unnamed deployment)'}")
    _echo(
        f"controller: {controller.name} ({controller.type}: "
        f"{CONTROLLER_TYPES.get(controller.type, 'unknown controller type')}), jurisdiction {controller.jurisdiction}"
    )
    for item in explained:
        _echo("")
        _echo(f"purpose {item['purpose']} ({item['purpose_meaning']}), cameras: {', '.join(item['cameras']) or '-'}")
        _echo(f"  verdict:    {item['verdict'].upper()} by rule {item['rule']}")
        _echo(f"  why:        {'; '.join(item['reasons'])}")
        _echo(f"  legal ref:  {item['legal_reference']}")
        _echo(f"  rule text:  {'verified' if item['verified'] else 'UNVERIFIED (rests on secondary reporting)'}")
        if item["verdict"] == "allow":
            _echo(
                f"  retention:  {item['retention']}"
                + (f"; here {item['retention_days']:g} days" if item["retention_days"] is not None else "")
            )
            _echo(f"  keeps:      {KEPT[item['minimisation']]} -> {', '.join(item['sinks'])}")
        for note in item["retention_notes"]:
            _echo(f"  warning:    {note}")
        for name in item["missing_safeguards"]:
            _echo(f"  missing:    {name} ({describe_safeguard(name)})")
    _echo("")
    _echo("This is a model of the rules in LEGAL.md, not legal advice.")


@contextmanager
def _database(settings, checkpoint: bool = True) -> Iterator[tuple[Any, Any]]:
    """The config's database (which must exist) and its audit log, with the key file (which
    must exist too: only a run makes one). At the end a checkpoint of the log is written
    (unless not `checkpoint`: a command that adds no entry): the entries of a query or a
    deletion are anchored outside the database at once, not at the next run's end."""
    from anpr.errors import StoreError
    from anpr.storage.audit import AuditLog
    from anpr.storage.binding import require_key
    from anpr.storage.keys import load_keys
    from anpr.storage.store import ReadStore

    store = ReadStore(settings.store.url, lambda: load_keys(settings.store.key_file), settings.store.timeout_seconds)
    try:
        store.check(create=False)
        audit = AuditLog(store.engine, store.keys, settings.store.audit_checkpoints)
        require_key(store, audit, settings.store.key_file, bind_as=None)  # bound by a run, whose login may write
        try:
            yield store, audit
        finally:
            if checkpoint:
                try:
                    audit.checkpoint()
                except StoreError as exc:  # made at the next one; said, not passed over
                    log.warning("no audit checkpoint now: %s", exc)
    finally:
        store.close()


@db_app.command("purge")
def db_purge(
    config: ConfigOption,
    db: DbOption = None,
    now: Annotated[float | None, typer.Option("--now", help="Unix time to purge as of (default: now).")] = None,
) -> None:
    """Delete every read and passage whose retention deadline has passed: in the spool folder
    (store.spool_dir), the export files and the webhook and MQTT queues first, even while the
    database is down, then in the database."""
    from anpr.errors import StoreError
    from anpr.storage.queries import purge
    from anpr.storage.spool import SpoolInUse, expire_spool

    settings, policy = _deployment(config, db)
    moment = time.time() if now is None else now
    spool_dir = settings.store.spool_dir
    # The files first, and without the database: reads spooled during an outage reach
    # their deadline while it lasts, and that is when the database cannot purge anything.
    # A folder that cannot be purged stops none of the others: its error is raised after.
    file_errors: list[StoreError] = []
    try:
        expired = expire_spool(spool_dir, moment)
    except SpoolInUse as exc:
        _echo(f"spool: {exc}; not purged here")
    except StoreError as exc:
        file_errors.append(exc)
    else:
        _echo(
            f"purged {expired.reads} read(s) and {expired.passages} passage(s) past their deadline "
            f"from the spool {spool_dir} ({expired.batches} batch file(s) deleted)"
            + (f"; {expired.lost_reads} live read(s) lost with them" if expired.lost_reads else "")
        )
    for name, sink in policy.deployment.sinks.items():
        try:
            purged = sink.purge_files(name, moment)
        except StoreError as exc:
            file_errors.append(exc)
            continue
        if purged is not None:
            _echo(f"purged {purged[0]} read(s) and passage(s) past their deadline from {purged[1]}")
    try:
        with _database(settings) as (store, audit):
            deleted = purge(store, audit, store.user(), moment)
        _echo(f"purged {deleted} read(s) and passage(s) past their deadline from the database")
    except StoreError:
        for error in file_errors:
            log.warning("%s", error)  # the database's error is the one raised: these are not lost
        raise
    for error in file_errors[1:]:
        log.warning("%s", error)
    if file_errors:
        raise file_errors[0]


def _delete_fps(config: Path, db: str | None, plate: str, action: str) -> None:
    from anpr.errors import PolicyRefusal
    from anpr.storage.queries import delete_on_payment, payment_rules

    settings, policy = _deployment(config, db)
    if not payment_rules(policy):
        raise PolicyRefusal(f"{config}: no allowed purpose of this deployment deletes reads on payment or finding")
    with _database(settings) as (store, audit):
        deleted = delete_on_payment(store, policy, audit, plate, store.user(), action)
    _echo(f"deleted {deleted} read(s) and passage(s)")


@db_app.command("mark-paid")
def db_mark_paid(
    plate: Annotated[str, typer.Argument(help="Plate with a valid parking payment.")],
    config: ConfigOption,
    db: DbOption = None,
) -> None:
    """Parking check (FPS): delete the reads and passages of a plate matched to a valid payment
    (audited under the authenticated user: the database login, or the OS account for SQLite)."""
    _delete_fps(config, db, plate, "mark-paid")


@db_app.command("record-finding")
def db_record_finding(
    plate: Annotated[str, typer.Argument(help="Plate whose unpaid parking an agent has recorded.")],
    config: ConfigOption,
    db: DbOption = None,
) -> None:
    """Parking check (FPS): delete the reads and passages of an unpaid plate once an agent has
    recorded the finding (audited under the authenticated user)."""
    _delete_fps(config, db, plate, "record-finding")


@db_app.command("search")
def db_search(
    plate: Annotated[str, typer.Argument(help="Plate to look up.")],
    purpose: Annotated[str, typer.Option("--purpose", help="The purpose the query serves.")],
    config: ConfigOption,
    procedure: Annotated[str | None, typer.Option("--procedure", help="Criminal or customs procedure id.")] = None,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per row.")] = False,
    passages: Annotated[
        bool, typer.Option("--passages", help="Passages (a tracked plate's reads voted into one) instead of reads.")
    ] = False,
) -> None:
    """Reads (or passages) of PLATE that PURPOSE may see; refused (exit 3) when the purpose or
    the user may not query. The user is the authenticated one: the database login, or the
    operating-system account for a SQLite file; it must be one of the purpose's designated_agents."""
    from anpr.errors import ConfigError, PolicyRefusal
    from anpr.reading.plates import normalise
    from anpr.records import Passage
    from anpr.storage.queries import search

    if not normalise(plate):
        raise ConfigError(f"not a plate: {plate!r} (no letter or digit)")
    settings, policy = _deployment(config, db)
    with _database(settings) as (store, audit):
        result = search(store, policy, audit, plate, purpose, store.user(), procedure, passages)
    if not result.allowed:
        raise PolicyRefusal(f"query refused: {result.reason}")
    for row in result.rows:
        if as_json:
            print(json.dumps(row.to_dict()))
        elif isinstance(row, Passage):
            _echo(
                f"{row.plate:<12} confidence {row.confidence:.2f} reads {row.reads:>4} "
                f"time {row.first_time:>12.2f} to {row.last_time:>12.2f} camera {row.camera:<16} "
                f"purpose {row.purpose} {'HIT ' if row.hit else ''}delete after {_utc(row.delete_after)}"
            )
        else:
            _echo(
                f"{row.read.plate:<12} camera {row.camera:<16} frame {row.read.frame:>6} time {row.read.time:>12.2f} "
                f"purpose {row.purpose} {'HIT ' if row.hit else ''}delete after {_utc(row.delete_after)}"
            )
    _echo(f"{len(result.rows)} row(s); {result.reason}", err=True)


@db_app.command("subject-access")
def db_subject_access(
    plate: Annotated[str, typer.Argument(help="The plate a data subject asks about.")],
    config: ConfigOption,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Write the answer as a letter, one HTML file.")] = None,
    md: Annotated[Path | None, typer.Option("--md", help="Write the answer as a letter, in Markdown.")] = None,
) -> None:
    """A data subject's access request (GDPR art. 15): every read and passage of PLATE held in
    the database, the spool, the export files and the webhook and MQTT queues, with its
    purpose, rule, legal reference and deadline; and the purposes that keep nothing. Only the
    deployment's data-protection officer (controller.dpo) may ask (else exit 3); audited with
    the plate's keyed hash only. Letters are written 0600."""
    from anpr.show.letter import render_letter_html, render_letter_markdown
    from anpr.show.page import write_report
    from anpr.storage.subjects import subject_access

    settings, policy = _deployment(config, db)
    with _database(settings) as (store, audit):
        answer = subject_access(store, policy, audit, plate, store.user(), settings.store.spool_dir)
    if html is not None:
        write_report(html, render_letter_html(answer), "the letter")
    if md is not None:
        write_report(md, render_letter_markdown(answer), "the letter")
    if as_json:
        print(json.dumps(answer.as_json(), ensure_ascii=False))
    elif html is None and md is None:
        for r in answer.records:
            _echo(
                f"{r.when}: {r.kind} camera {r.camera} purpose {r.purpose} rule {r.rule} "
                f"{'plate' if r.plate_in_clear else 'keyed hash'}{' HIT' if r.hit else ''} "
                f"delete after {_utc(r.delete_after)} in {r.where}"
                + (f" (an erasure keeps it: {r.kept_on_erasure})" if r.kept_on_erasure else "")
            )
        for purpose, why in answer.nothing_kept:
            _echo(f"purpose {purpose}: {why}")
    _echo(
        f"{len(answer.records)} record(s) held" if answer.records else "nothing held",
        err=True,
    )
    _echo(f"looked for {', '.join(answer.forms)} in: {'; '.join(answer.places)}", err=True)


@db_app.command("erase")
def db_erase(
    plate: Annotated[str, typer.Argument(help="The plate a data subject asks to be erased.")],
    config: ConfigOption,
    db: DbOption = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (kept in the audit log; must not name the plate).")
    ] = None,
) -> None:
    """A data subject's erasure request (GDPR art. 17): delete every record of PLATE that no
    rule obliges the controller to keep, in the database, the spool, the export files and the
    webhook and MQTT queues; says what was kept and under which rule. Asked again, it finds
    nothing. Only the data-protection officer may ask (else exit 3); audited without the plate."""
    from anpr.storage.subjects import erase

    settings, policy = _deployment(config, db)
    with _database(settings) as (store, audit):
        erasure = erase(store, policy, audit, plate, store.user(), settings.store.spool_dir, reason)
    for where, count in erasure.erased.items():
        if count:
            _echo(f"erased {count} record(s) from {where}")
    for r in erasure.kept:
        _echo(f"kept: {r.kind} of {r.when}, purpose {r.purpose}, in {r.where}: {r.kept_on_erasure}")
    for held in erasure.still_held:
        _echo(f"note: {held}", err=True)
    _echo(
        f"erased {erasure.total} record(s) of {', '.join(erasure.forms)}; {len(erasure.kept)} kept by rule",
        err=True,
    )


CheckpointsOption = Annotated[
    Path | None,
    typer.Option(
        "--checkpoints",
        help="Check the audit log against this checkpoint file (default: store.audit_checkpoints, if it exists).",
    ),
]


def _report_data(config: Path, db: str | None, checkpoints: Path | None):
    """The report of a deployment and its database (report.gather): read only, no audit entry."""
    from anpr.show.report import gather
    from anpr.storage.audit import checkpoint_file

    settings, policy = _deployment(config, db)
    with _database(settings, checkpoint=False) as (store, audit):
        return gather(config, policy, store, audit, checkpoint_file(checkpoints, settings.store.audit_checkpoints))


@db_app.command("summary")
def db_summary(
    config: ConfigOption,
    db: DbOption = None,
    checkpoints: CheckpointsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """The figures of `anpr report`: reads per day, deletions, queries, the audit log's state.

    Reads kept, blocked, counted only and not stored per day (UTC) and per camera and purpose,
    the deletions and queries of the audit log, and the log's state as `anpr audit verify`
    finds it. Counts only, never a plate; writes nothing."""
    from anpr.show.report import figures, summary_lines

    data = _report_data(config, db, checkpoints)
    if as_json:
        print(json.dumps(figures(data), ensure_ascii=False))
        return
    for line in summary_lines(data):
        _echo(line)


def report(
    config: ConfigOption,
    db: DbOption = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the report as one HTML file.")] = None,
    md: Annotated[Path | None, typer.Option("--md", help="Write the report as Markdown.")] = None,
    checkpoints: CheckpointsOption = None,
) -> None:
    """Compliance report of a deployment and its database, as HTML (--html) or Markdown (--md).

    The controller; each camera and purpose with its verdict, rule, legal references, whether
    the rule's text is verified, and safeguards; retention in force; reads kept, blocked and
    counted only per day (with a chart); deletions; queries; the audit log's state. Aggregates
    only, never a plate; files written 0600; writes nothing to the database."""
    from anpr.errors import ConfigError
    from anpr.show.page import write_report
    from anpr.show.report import render_html, render_markdown

    if html is None and md is None:
        raise ConfigError("nothing to write: give --html OUT.html, --md OUT.md, or both")
    if html is not None and md is not None and html.resolve() == md.resolve():
        raise ConfigError(f"--html and --md name the same file: {html}")
    data = _report_data(config, db, checkpoints)
    for path, render in ((html, render_html), (md, render_markdown)):
        if path is not None:
            write_report(path, render(data))
            _echo(str(path))
    totals = data.totals
    _echo(
        f"{totals.kept} read(s) held, {totals.blocked} blocked, {totals.counted} counted only, "
        f"{totals.not_stored} not stored; {len(data.deletions)} deletion(s), {len(data.queries)} query(ies); "
        f"audit log: {data.audit.summary()}",
        err=True,
    )
    if data.audit.problems:
        log.warning("the audit log has %d problem(s): see the report", len(data.audit.problems))


# Paragraphs: the help shows each as one, wrapped to the terminal.
INIT_ROLES_HELP = "\n\n".join(
    [
        "PostgreSQL: create the group roles PREFIX_writer, PREFIX_query, PREFIX_auditor and PREFIX_dpo (NOLOGIN) "
        "and give them "
        "exactly the rights below. Run it as the database's owner, and again after every `anpr policy migrate` "
        "(until then every query is refused). Audited.",
        "PREFIX_writer, the pipeline (anpr run): inserts reads, passages and counters, binds a database that serves "
        "no deployment yet, appends to the audit log, deletes what retention deletes. It reads no plate, and "
        "row-level security keeps it to the purposes this deployment allows to keep reads.",
        "PREFIX_query, the designated agents (anpr db search): nothing on reads or passages. They read only through "
        "the function anpr_search, which checks that the login is one of the purpose's designated_agents in this "
        "config, applies the hits-only rule, hides expired rows and writes the query's audit entry in the same "
        "transaction.",
        "PREFIX_auditor (anpr audit verify): reads the audit log, the deployment bindings and the policy counters.",
        "PREFIX_dpo, the data-protection officers (anpr db subject-access, anpr db erase): nothing on reads or "
        "passages. They reach one plate's records only through the functions anpr_subject_records and "
        "anpr_subject_erase, which check that the login is named in controller.dpo and write the request's audit "
        "entry in the same transaction.",
        "Then, as the owner, make the logins and grant them a role: CREATE ROLE pipeline LOGIN PASSWORD '...'; "
        "GRANT anpr_writer TO pipeline; CREATE ROLE alice LOGIN PASSWORD '...'; GRANT anpr_query TO alice (alice "
        "being one of the purpose's designated_agents); CREATE ROLE audit LOGIN PASSWORD '...'; GRANT anpr_auditor "
        "TO audit. Each runs anpr with its own login in --db (or store.url) and with the key file (store.key_file).",
    ]
)


@db_app.command("init-roles", help=INIT_ROLES_HELP)
def db_init_roles(
    config: ConfigOption,
    db: Annotated[
        str | None, typer.Option("--db", help="The database's URL as its owner (default: the config's).")
    ] = None,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Prefix of the role names: one per deployment on a server.")
    ] = "anpr",
) -> None:
    """Create the PostgreSQL roles of the database and their rights (INIT_ROLES_HELP)."""
    from anpr.storage.roles import ROLES, init_roles

    settings, policy = _deployment(config, db)
    with _database(settings) as (store, audit):
        report = init_roles(store, audit, policy, prefix, store.user())
    for role, name in report.roles.items():
        _echo(f"{name}{' (created)' if name in report.created else ''}: {ROLES[role]}")
    _echo(f"the writer may store reads of: {', '.join(report.kept) or 'no purpose'}")
    for purpose, agents in report.agents.items():
        _echo(f"designated agents of {purpose}: {', '.join(agents) or 'none (nobody may query it)'}")
    _echo(f"data-protection officers: {', '.join(report.dpo) or 'none (nobody may answer a data subject)'}")
    for login, role in report.not_ready:
        _echo(f"to do: {login} is no login granted {report.roles[role]} yet", err=True)


def _utc(moment: float) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(moment))} UTC"


@policy_app.command("migrate")
def policy_migrate(
    config: ConfigArgument,
    db: DbOption = None,
) -> None:
    """Bind the database to this config's deployment, replacing the one it served (audited
    with the authenticated user): needed before a changed deployment may run or query."""
    from anpr.storage.binding import migrate

    settings, policy = _deployment(config, db)
    with _database(settings) as (store, audit):
        old, new = migrate(store, audit, policy.deployment, store.user())
    if old == new:
        _echo(f"{store.safe_url} already serves this deployment ({new[:12]})")
    else:
        _echo(
            f"{store.safe_url} now serves {policy.deployment.name or config} ({new[:12]}), was {(old or 'none')[:12]}"
        )


@audit_app.command("verify")
def audit_verify(
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite path.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Take the database from this config.")] = None,
    checkpoints: CheckpointsOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: entries, intact, problems, checkpoints.")
    ] = False,
) -> None:
    """Check the audit log: its authenticated chain, its append-only triggers and its
    checkpoints; names every edited, deleted, reordered, truncated or rewritten entry (exit 1)."""
    from anpr.config.settings import load_settings
    from anpr.storage.audit import checkpoint_file, inspect_database
    from anpr.storage.keys import load_keys

    store = load_settings(config, {"store": {"url": db}}).store
    state = inspect_database(
        store.url, lambda: load_keys(store.key_file), checkpoint_file(checkpoints, store.audit_checkpoints)
    )
    if as_json:
        print(json.dumps(state.to_dict(), ensure_ascii=False))
    else:
        for problem in state.problems:
            _echo(f"{problem.kind}: {problem.message}")
    _echo(f"audit log: {state.summary()}", err=True)
    if state.problems:
        raise typer.Exit(1)
