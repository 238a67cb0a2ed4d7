"""`anpr policy`, `anpr db` and `anpr audit`: what a deployment may do, retention, queries, audit."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

policy_app = typer.Typer(no_args_is_help=True, help="What a deployment may and may not do, and why.")
db_app = typer.Typer(no_args_is_help=True, help="Retention and gated queries on the read database.")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
log = logging.getLogger(__name__)

ConfigArgument = Annotated[Path, typer.Argument(help="Deployment config (YAML).")]
ConfigOption = Annotated[Path, typer.Option("--config", help="Deployment config (YAML).")]
KEPT = {"aggregate": "aggregate counts only, no plate text", "none": "reads"}  # by the rule's minimisation
DbOption = Annotated[
    str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite path (default: the config's, else anpr.sqlite).")
]


def _deployment(config: Path, db: str | None = None):
    from anpr.config import load_settings
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
        print(
            f"{decision.purpose}: {verdict} by {decision.rule.id}: {'; '.join(decision.reasons)} "
            f"[{decision.legal_reference}]"
        )
    if not all(d.allowed for d in policy.decisions.values()):
        print(f"{config}: non-compliant", file=sys.stderr)
        raise typer.Exit(3)
    print(f"{config}: compliant", file=sys.stderr)


@policy_app.command("explain")
def policy_explain(
    config: ConfigArgument, as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False
) -> None:
    """Per purpose: verdict, rule, legal reference, retention, missing safeguards, verified or not."""
    from anpr.policy.engine import describe_safeguard
    from anpr.policy.rules import CONTROLLER_TYPES

    _, policy = _deployment(config)
    deployment = policy.deployment
    explained = policy.explain()
    if as_json:
        print(
            json.dumps(
                {"config": str(config), "controller": deployment.controller.model_dump(), "purposes": explained},
                ensure_ascii=False,
            )
        )
        return
    controller = deployment.controller
    print(f"{config}: {deployment.name or '(unnamed deployment)'}")
    print(
        f"controller: {controller.name} ({controller.type}: "
        f"{CONTROLLER_TYPES.get(controller.type, 'unknown controller type')}), jurisdiction {controller.jurisdiction}"
    )
    for item in explained:
        print()
        print(f"purpose {item['purpose']} ({item['purpose_meaning']}), cameras: {', '.join(item['cameras']) or '-'}")
        print(f"  verdict:    {item['verdict'].upper()} by rule {item['rule']}")
        print(f"  why:        {'; '.join(item['reasons'])}")
        print(f"  legal ref:  {item['legal_reference']}")
        print(f"  rule text:  {'verified' if item['verified'] else 'UNVERIFIED (rests on secondary reporting)'}")
        if item["verdict"] == "allow":
            print(
                f"  retention:  {item['retention']}"
                + (f"; here {item['retention_days']:g} days" if item["retention_days"] is not None else "")
            )
            print(f"  keeps:      {KEPT[item['minimisation']]} -> {', '.join(item['sinks'])}")
        for note in item["retention_notes"]:
            print(f"  warning:    {note}")
        for name in item["missing_safeguards"]:
            print(f"  missing:    {name} ({describe_safeguard(name)})")
    print()
    print("This is a model of the rules in LEGAL.md, not legal advice.")


def _store(settings):
    from anpr.store import ReadStore

    return ReadStore(settings.store.url)


@db_app.command("purge")
def db_purge(
    config: ConfigOption,
    db: DbOption = None,
    now: Annotated[float | None, typer.Option("--now", help="Unix time to purge as of (default: now).")] = None,
) -> None:
    """Delete every read and passage whose retention deadline has passed: in the spool folder
    (store.spool_dir) first, then in the database."""
    from anpr.audit import AuditLog
    from anpr.errors import StoreError
    from anpr.policy.queries import purge
    from anpr.spool import SpoolInUse, expire_spool

    settings, _ = _deployment(config, db)
    moment = time.time() if now is None else now
    spool_dir = settings.store.spool_dir
    # The spool first, and without the database: reads spooled during an outage reach
    # their deadline while it lasts, and that is when the database cannot purge anything.
    spool_error: StoreError | None = None
    try:
        expired = expire_spool(spool_dir, moment)
    except SpoolInUse as exc:
        print(f"spool: {exc}; not purged here")
    except StoreError as exc:
        spool_error = exc  # the database's retention still applies: purged below, the error raised after
    else:
        print(
            f"purged {expired.reads} read(s) and {expired.passages} passage(s) past their deadline "
            f"from the spool {spool_dir} ({expired.batches} batch file(s) deleted)"
            + (f"; {expired.lost_reads} live read(s) lost with them" if expired.lost_reads else "")
        )
    store = _store(settings)
    try:
        deleted = purge(store, AuditLog(store.engine), moment)
        print(f"purged {deleted} read(s) and passage(s) past their deadline from the database")
    except StoreError:
        if spool_error is not None:
            log.warning("%s", spool_error)  # the database's error is the one raised: this one is not lost
        raise
    finally:
        store.close()
    if spool_error is not None:
        raise spool_error


def _delete_fps(config: Path, db: str | None, plate: str, user: str, action: str) -> None:
    from anpr.audit import AuditLog
    from anpr.errors import PolicyRefusal
    from anpr.policy.queries import delete_on_payment, payment_rules

    settings, policy = _deployment(config, db)
    if not payment_rules(policy):
        raise PolicyRefusal(f"{config}: no allowed purpose of this deployment deletes reads on payment or finding")
    store = _store(settings)
    try:
        deleted = delete_on_payment(store, policy, AuditLog(store.engine), plate, user, action)
        print(f"deleted {deleted} read(s) and passage(s)")
    finally:
        store.close()


@db_app.command("mark-paid")
def db_mark_paid(
    plate: Annotated[str, typer.Argument(help="Plate with a valid parking payment.")],
    config: ConfigOption,
    db: DbOption = None,
    user: Annotated[str, typer.Option("--user", help="Who records the payment.")] = "payment-system",
) -> None:
    """Parking check (FPS): delete the reads and passages of a plate matched to a valid payment."""
    _delete_fps(config, db, plate, user, "mark-paid")


@db_app.command("record-finding")
def db_record_finding(
    plate: Annotated[str, typer.Argument(help="Plate whose unpaid parking an agent has recorded.")],
    config: ConfigOption,
    user: Annotated[str, typer.Option("--user", help="The agent who recorded the finding.")],
    db: DbOption = None,
) -> None:
    """Parking check (FPS): delete the reads and passages of an unpaid plate once an agent has recorded the finding."""
    _delete_fps(config, db, plate, user, "record-finding")


@db_app.command("search")
def db_search(
    plate: Annotated[str, typer.Argument(help="Plate to look up.")],
    purpose: Annotated[str, typer.Option("--purpose", help="The purpose the query serves.")],
    user: Annotated[str, typer.Option("--user", help="Who asks (written to the audit log).")],
    config: ConfigOption,
    procedure: Annotated[str | None, typer.Option("--procedure", help="Criminal or customs procedure id.")] = None,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per row.")] = False,
    passages: Annotated[
        bool, typer.Option("--passages", help="Passages (a tracked plate's reads voted into one) instead of reads.")
    ] = False,
) -> None:
    """Reads (or passages) of PLATE that PURPOSE may see; refused (exit 3) when the purpose or user may not query."""
    from anpr.audit import AuditLog
    from anpr.errors import ConfigError, PolicyRefusal
    from anpr.plates import normalise
    from anpr.policy.queries import search
    from anpr.records import Passage

    if not normalise(plate):
        raise ConfigError(f"not a plate: {plate!r} (no letter or digit)")
    settings, policy = _deployment(config, db)
    store = _store(settings)
    try:
        result = search(store, policy, AuditLog(store.engine), plate, purpose, user, procedure, passages)
    finally:
        store.close()
    if not result.allowed:
        raise PolicyRefusal(f"query refused: {result.reason}")
    for row in result.rows:
        if as_json:
            print(json.dumps(row.to_dict()))
        elif isinstance(row, Passage):
            print(
                f"{row.plate:<12} confidence {row.confidence:.2f} reads {row.reads:>4} "
                f"time {row.first_time:>12.2f} to {row.last_time:>12.2f} camera {row.camera:<16} "
                f"purpose {row.purpose} {'HIT ' if row.hit else ''}delete after {_utc(row.delete_after)}"
            )
        else:
            print(
                f"{row.read.plate:<12} camera {row.camera:<16} frame {row.read.frame:>6} time {row.read.time:>12.2f} "
                f"purpose {row.purpose} {'HIT ' if row.hit else ''}delete after {_utc(row.delete_after)}"
            )
    print(f"{len(result.rows)} row(s); {result.reason}", file=sys.stderr)


def _utc(moment: float) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(moment))} UTC"


@audit_app.command("verify")
def audit_verify(
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite path.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Take the database from this config.")] = None,
) -> None:
    """Check the audit log's hash chain; names every edited, deleted or reordered entry (exit 1)."""
    from anpr.audit import verify_database
    from anpr.config import load_settings

    url = load_settings(config, {"store": {"url": db}}).store.url
    problems = verify_database(url)
    for problem in problems:
        print(f"{problem.kind}: {problem.message}")
    if problems:
        print(f"audit log: {len(problems)} problem(s)", file=sys.stderr)
        raise typer.Exit(1)
    print("audit log: chain intact", file=sys.stderr)
