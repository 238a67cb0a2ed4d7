"""Gated queries and deletions: who may look up a plate, for which purpose, and what
they see; what an operator may delete, and when.

A query looks up either reads or passages (a tracked plate's reads voted into one
plate, records.Passage); both are gated alike. The user is the authenticated one
(ReadStore.user: the database login, or the operating-system account for a SQLite
file), and only a purpose's designated agents may query it: a purpose that names none
has no one who may. Every query, answered or refused, is written to the audit log with
the user, the purpose, the procedure and the number of rows returned; the plate asked
for is recorded as its keyed hash (keys.py), and a query for a denied purpose records
nothing derived from the plate at all: that list of requests is itself what the law
forbids keeping. For the same reason a purpose typed that is neither the deployment's nor
the rules' is recorded by its length only (`recorded_purpose`). A query never sees a row
past its deadline, even before the purge.
Deletions are audited with their counts only: keeping the plate there would undo the
deletion. How many rows a deletion took says whether the plate was seen: `record-finding`,
an agent's act, is refused (and audited) to anyone who is not a designated agent of a
purpose whose reads go once paid or fined, before the database is looked at.

On PostgreSQL, once `anpr db init-roles` has set the database's roles (roles.py), a query
goes through the database's search function instead, which checks the same things
again itself, so that a login may not read plates but through it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypeVar

from anpr.errors import PolicyRefusal
from anpr.policy.engine import Policy
from anpr.policy.rules import PURPOSES
from anpr.reading.plates import normalise
from anpr.records import Passage, PolicedRead
from anpr.redact import printable
from anpr.storage.binding import require_binding
from anpr.storage.store import FunctionRefused

Row = TypeVar("Row", PolicedRead, Passage)


@dataclass(frozen=True, slots=True)
class QueryResult:
    allowed: bool
    reason: str
    rows: list[PolicedRead] | list[Passage]  # passages when the query asked for them
    withheld: int = 0  # rows that exist but this query may not see (no-hit rows without a procedure)


def recorded_purpose(policy: Policy, purpose: str) -> str:
    """`purpose` as the audit log keeps it: as typed when it names a purpose of the
    deployment or of the rules, else only its length. Anyone may type anything there, a
    plate included, and the log keeps it for good. A keyed digest would not do: plates are
    few enough to try every one with the key, so it would still say which was asked for."""
    if purpose in policy.deployment.purposes or purpose in PURPOSES:
        return purpose
    return f"(not a known purpose: {len(purpose)} characters)"


def _refusal(policy: Policy, purpose: str, user: str, shown: str | None = None) -> str | None:
    """Why `user` may not query `purpose` (None: they may), naming the purpose as `shown`."""
    decision = policy.purpose(purpose)
    if not decision.allowed:
        return (
            f"purpose '{shown or purpose}' is denied for this deployment "
            f"({decision.rule.id}: {decision.legal_reference})"
        )
    if not decision.stores_reads:
        return f"purpose '{purpose}' keeps no plates, only aggregate counts ({decision.rule.id})"
    agents = policy.deployment.purposes[purpose].safeguards.designated_agents
    if not agents:
        return f"purpose '{purpose}' names no designated_agents: nobody may query its reads"
    if user not in agents:
        return f"user '{user}' is not a designated agent for '{purpose}'"
    return None


def search(
    store,
    policy: Policy,
    audit,
    plate: str,
    purpose: str,
    user: str,
    procedure: str | None = None,
    passages: bool = False,
    now: float | None = None,
) -> QueryResult:
    """The reads of `plate` kept for `purpose` that `user` may see (its passages with
    `passages`), or a refusal; audited either way."""
    plate = normalise(plate)
    procedure = None if procedure is None else printable(procedure)  # kept for good: no escape sequence
    refusal = _refusal(policy, purpose, user)
    recorded = recorded_purpose(policy, purpose)
    details: dict[str, object] = {"purpose": recorded}
    if policy.purpose(purpose).allowed:  # of a denied purpose's request, only that it was made
        details.update(plate_key=store.keys.plate_digest(plate), procedure=procedure, passages=passages)
    if refusal:
        audit.append("query.refused", user, {**details, "reason": _refusal(policy, purpose, user, recorded)})
        return QueryResult(False, refusal, [])
    try:
        require_binding(store, audit, policy.deployment, user, bind_if_new=False)
    except PolicyRefusal as exc:  # a config that is not the database's: refused, and audited as such
        audit.append("query.refused", user, {**details, "reason": str(exc)})
        raise
    if store.has_search_function():
        return _search_in_database(store, audit, plate, purpose, user, procedure, passages, details)
    hits_only = policy.purpose(purpose).rule.retention.no_hit_query_needs_procedure and not procedure
    now = time.time() if now is None else now
    rows: list[PolicedRead] | list[Passage]
    if passages:
        rows, withheld = _visible(store.passages(plate=plate, purpose=purpose, alive_at=now), hits_only)
    else:
        rows, withheld = _visible(store.reads(plate=plate, purpose=purpose, alive_at=now), hits_only)
    audit.append("query", user, {**details, "rows": len(rows), "withheld": withheld})
    return QueryResult(True, _answered(withheld, passages), rows, withheld)


def _search_in_database(
    store, audit, plate: str, purpose: str, user: str, procedure: str | None, passages: bool, details: dict
) -> QueryResult:
    """The query asked of the database's search function (PostgreSQL, roles.py), which
    decides who is an agent, the hits-only rule and the deadlines itself (by the database's
    clock), and inserts the query's audit entry, made here with the key, as it answers.
    That entry records the query, not the rows returned, which are not known when it is made."""
    try:
        rows, withheld = audit.append_through(
            lambda entry: store.search_function(entry, plate, purpose, procedure, passages), "query", user, details
        )
    except FunctionRefused as exc:
        reason = f"the database refused the query: {exc}"
        audit.append("query.refused", user, {**details, "reason": reason})
        return QueryResult(False, reason, [])
    return QueryResult(True, _answered(withheld, passages), rows, withheld)


def _answered(withheld: int, passages: bool) -> str:
    if not withheld:
        return "answered"
    kind = "passage(s)" if passages else "read(s)"
    return f"{withheld} no-hit {kind} withheld: they may be queried only for a named procedure (--procedure)"


def _visible(rows: list[Row], hits_only: bool) -> tuple[list[Row], int]:
    """The rows a query may see, and how many it may not. A passage is a hit when any of
    its reads is: one made of no-hit reads only is withheld, as those reads are."""
    if not hits_only:
        return rows, 0
    visible = [r for r in rows if r.hit]
    return visible, len(rows) - len(visible)


def purge(store, audit, user: str, now: float) -> int:
    """Delete every read and passage whose deadline has passed; the number of rows deleted."""
    deleted: int = store.purge(now)
    audit.append("purge", user, {"deleted": deleted})
    return deleted


def payment_rules(policy: Policy) -> list[str]:
    """The rules of the deployment's allowed purposes whose reads go once paid or fined (FPS)."""
    return [d.rule.id for d in policy.decisions.values() if d.allowed and d.rule.retention.delete_on_payment]


def payment_agents(policy: Policy) -> frozenset[str]:
    """The designated agents of the allowed purposes whose reads go once paid or fined: the
    only users who may learn whether a plate was seen there, since they may query it. How
    many rows a deletion took says just that, and "deleted 0" that it was not seen."""
    purposes = policy.deployment.purposes
    return frozenset(
        agent
        for d in policy.decisions.values()
        if d.allowed and d.rule.retention.delete_on_payment
        for agent in purposes[d.purpose].safeguards.designated_agents
    )


@dataclass(frozen=True, slots=True)
class PaymentDeletion:
    """Who may ask for a deletion on payment or finding."""

    agents_only: bool  # else whoever may write the database (its owner: who can read every row anyway)


PAYMENT_DELETIONS = {
    # A payment system matches payments: it is no agent, and the law wants those reads gone.
    "mark-paid": PaymentDeletion(agents_only=False),
    # Only an agent records a finding: anyone else asking is probing whether the plate was seen.
    "record-finding": PaymentDeletion(agents_only=True),
}


def delete_on_payment(store, policy: Policy, audit, plate: str, user: str, action: str) -> int:
    """Parking check (FPS): delete a plate's reads and passages once matched to a payment
    (`mark-paid`) or once an agent has recorded the finding (`record-finding`); the number
    of rows deleted. PolicyRefusal, audited (with nothing of the plate) and before the
    database is looked at, when `action` is for the designated agents and `user` is none."""
    rules = payment_rules(policy)
    if PAYMENT_DELETIONS[action].agents_only and user not in payment_agents(policy):
        reason = (
            f"user '{user}' is not a designated agent of a purpose whose reads go once paid or fined, and only they may"
            if payment_agents(policy)
            else "no purpose whose reads go once paid or fined names designated_agents, and only they may"
        )
        audit.append(f"{action}.refused", user, {"rules": rules, "reason": reason})
        raise PolicyRefusal(f"{action} refused: {reason}")
    require_binding(store, audit, policy.deployment, user, bind_if_new=False)
    deleted = sum(store.delete_plate(normalise(plate), rule) for rule in rules)
    audit.append(action, user, {"rules": rules, "deleted": deleted})
    return int(deleted)
