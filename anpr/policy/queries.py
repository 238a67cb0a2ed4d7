"""Gated queries and deletions: who may look up a plate, for which purpose, and what
they see; what an operator may delete, and when.

Every query, answered or refused, is written to the audit log with the user, the
purpose, the procedure and the number of rows returned. Deletions are audited with
their counts only: keeping the plate there would undo the deletion.
"""

from __future__ import annotations

from dataclasses import dataclass

from anpr.plates import normalise
from anpr.policy.engine import Policy
from anpr.records import PolicedRead


@dataclass(frozen=True, slots=True)
class QueryResult:
    allowed: bool
    reason: str
    rows: list[PolicedRead]
    withheld: int = 0  # rows that exist but this query may not see (no-hit reads without a procedure)


def _refusal(policy: Policy, purpose: str, user: str) -> str | None:
    decision = policy.purpose(purpose)
    if not decision.allowed:
        return f"purpose '{purpose}' is denied for this deployment ({decision.rule.id}: {decision.legal_reference})"
    if not decision.stores_reads:
        return f"purpose '{purpose}' keeps no plates, only aggregate counts ({decision.rule.id})"
    agents = policy.deployment.purposes[purpose].safeguards.designated_agents
    if agents and user not in agents:
        return f"user '{user}' is not a designated agent for '{purpose}'"
    return None


def search(
    store, policy: Policy, audit, plate: str, purpose: str, user: str, procedure: str | None = None
) -> QueryResult:
    plate = normalise(plate)
    refusal = _refusal(policy, purpose, user)
    details = {"plate": plate, "purpose": purpose, "procedure": procedure}
    if refusal:
        audit.append("query.refused", user, {**details, "reason": refusal})
        return QueryResult(False, refusal, [])
    rows = store.reads(plate=plate, purpose=purpose)
    withheld = 0
    reason = "answered"
    if policy.purpose(purpose).rule.retention.no_hit_query_needs_procedure and not procedure:
        visible = [r for r in rows if r.hit]
        withheld = len(rows) - len(visible)
        rows = visible
        if withheld:
            reason = f"{withheld} no-hit read(s) withheld: they may be queried only for a named procedure (--procedure)"
    audit.append("query", user, {**details, "rows": len(rows), "withheld": withheld})
    return QueryResult(True, reason, rows, withheld)


def purge(store, audit, now: float) -> int:
    """Delete every read whose deadline has passed; the number deleted."""
    deleted: int = store.purge(now)
    audit.append("purge", "operator", {"deleted": deleted})
    return deleted


def payment_rules(policy: Policy) -> list[str]:
    """The rules of the deployment's allowed purposes whose reads go once paid or fined (FPS)."""
    return [d.rule.id for d in policy.decisions.values() if d.allowed and d.rule.retention.delete_on_payment]


def delete_on_payment(store, policy: Policy, audit, plate: str, user: str, action: str) -> int:
    """Parking check (FPS): delete a plate's reads once matched to a payment (`mark-paid`) or
    once an agent has recorded the finding (`record-finding`); the number deleted."""
    rules = payment_rules(policy)
    deleted = sum(store.delete_plate(normalise(plate), rule) for rule in rules)
    audit.append(action, user, {"rules": rules, "deleted": deleted})
    return int(deleted)
