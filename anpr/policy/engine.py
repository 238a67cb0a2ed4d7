"""Decisions: may this deployment use this read for this purpose, and for how long?

A purpose's decision depends only on the deployment (controller, purpose, safeguards,
requested retention), so it is made once per run (`decide_purpose`). The per-read part
adds what depends on the plate: a hit on a flagged-vehicle file, a compliant vehicle in
a low-emission zone, and the deletion deadline. Every path that is not an explicit
allow of the rule table is a deny.

The engine sees only the deployment (never the run settings), and it alone decides a
read's `Outcome` for a purpose; the gate (gate.py) routes the read by that outcome.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anpr.config.deployment import Deployment
from anpr.errors import ConfigError
from anpr.policy.rules import (
    CONTROLLER_TYPES,
    PURPOSES,
    RULES_BY_ID,
    SAFEGUARDS,
    Minimisation,
    Rule,
    Verdict,
    matching_rule,
)
from anpr.reading.plates import normalise
from anpr.records import Outcome, PlateRead

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class PurposeDecision:
    """The verdict of the rule table for one purpose of one deployment."""

    purpose: str
    verdict: Verdict
    rule: Rule
    reasons: tuple[str, ...]  # why, one line each
    missing_safeguards: tuple[str, ...]
    retention_days: float | None  # for an ordinary stored read; None when nothing is stored
    hit_days: float | None
    retention_notes: tuple[str, ...]  # e.g. a requested retention clamped to the rule's maximum

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @property
    def minimisation(self) -> Minimisation:
        return self.rule.minimisation if self.allowed else Minimisation.AGGREGATE

    @property
    def legal_reference(self) -> str:
        return self.rule.source

    @property
    def stores_reads(self) -> bool:
        return self.allowed and self.rule.minimisation is Minimisation.NONE


@dataclass(frozen=True, slots=True)
class ReadDecision:
    """The decision for one read and one purpose."""

    purpose: PurposeDecision
    outcome: Outcome  # STORED: the read goes to the purpose's sinks; else only a count is kept
    hit: bool  # the plate is on the purpose's flagged-vehicle file
    delete_after: float | None  # Unix time; None when nothing is stored

    @property
    def store(self) -> bool:
        return self.outcome is Outcome.STORED

    @property
    def verdict(self) -> Verdict:
        return self.purpose.verdict

    @property
    def rule_id(self) -> str:
        return self.purpose.rule.id

    @property
    def legal_reference(self) -> str:
        return self.purpose.legal_reference

    @property
    def minimisation(self) -> Minimisation:
        return self.purpose.minimisation


def _deny(purpose: str, rule: Rule, *reasons: str, missing: tuple[str, ...] = ()) -> PurposeDecision:
    return PurposeDecision(purpose, Verdict.DENY, rule, reasons, missing, None, None, ())


def decide_purpose(deployment: Deployment, purpose: str) -> PurposeDecision:
    default = RULES_BY_ID["FR-DEFAULT"]
    controller = deployment.controller
    if controller is None:
        return _deny(purpose, default, "no deployment declared (no controller)")
    if controller.type not in CONTROLLER_TYPES:
        return _deny(purpose, default, f"unknown controller type '{controller.type}'")
    if purpose not in PURPOSES:
        return _deny(purpose, default, f"unknown purpose '{purpose}'")
    declared = deployment.purposes.get(purpose)
    if declared is None:
        return _deny(purpose, default, f"purpose '{purpose}' is not declared in the deployment")
    rule = matching_rule(controller.jurisdiction, controller.type, purpose)
    if rule.jurisdiction != controller.jurisdiction:
        return _deny(purpose, default, f"no rules for jurisdiction '{controller.jurisdiction}'")
    if rule.verdict is Verdict.DENY:
        return _deny(
            purpose, rule, f"{CONTROLLER_TYPES[controller.type]} may not process reads for '{purpose}' ({rule.id})"
        )
    missing = tuple(sorted(rule.safeguards - declared.safeguards.present()))
    if missing:
        return _deny(purpose, rule, "missing required safeguard(s): " + ", ".join(missing), missing=missing)
    forbidden = [
        f"'{name}' ({deployment.sinks[name].type})"
        for name in declared.sinks
        if deployment.sinks[name].type not in rule.sink_types
    ]
    if forbidden:
        return _deny(
            purpose,
            rule,
            f"{rule.id} lets reads go only to {', '.join(sorted(rule.sink_types))}, not to sink(s) "
            + ", ".join(forbidden),
        )

    retention = rule.retention
    requested = declared.retention_days
    notes: list[str] = []
    if rule.minimisation is not Minimisation.NONE:
        days = None  # no read is stored: only aggregates
    elif requested is None and retention.days is None:
        return _deny(
            purpose,
            rule,
            f"{rule.id} sets no retention period: the deployment must set purposes.{purpose}.retention_days",
        )
    else:
        days = requested if requested is not None else retention.days
        if retention.max_days is not None and days is not None and days > retention.max_days:
            notes.append(
                f"requested retention {requested:g} days exceeds the {retention.max_days:g} days "
                f"{rule.id} allows: clamped to {retention.max_days:g}"
            )
            days = retention.max_days
    return PurposeDecision(
        purpose, Verdict.ALLOW, rule, (f"allowed by {rule.id}",), (), days, retention.hit_days, tuple(notes)
    )


def _plate_set(path: Path | None, what: str) -> frozenset[str]:
    if path is None:
        return frozenset()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {what} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # e.g. a NUL character in the path
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc}") from None
    return frozenset(normalise(line) for line in lines if line.strip() and not line.lstrip().startswith("#"))


class Policy:
    """The decisions of one deployment, made once, applied to every read."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.decisions = {code: decide_purpose(deployment, code) for code in deployment.purposes}
        self._hotlists = {code: _plate_set(p.hotlist, "hotlist") for code, p in deployment.purposes.items()}
        self._compliant = {
            code: _plate_set(p.compliant_plates, "compliant plate list") for code, p in deployment.purposes.items()
        }

    def purpose(self, code: str) -> PurposeDecision:
        return self.decisions.get(code) or decide_purpose(self.deployment, code)

    def decide(self, read: PlateRead, purpose: str, now: float | None = None) -> ReadDecision:
        decision = self.purpose(purpose)
        if not decision.allowed:
            return ReadDecision(decision, Outcome.BLOCKED, hit=False, delete_after=None)
        if decision.rule.minimisation is not Minimisation.NONE:
            return ReadDecision(decision, Outcome.AGGREGATED, hit=False, delete_after=None)
        retention = decision.rule.retention
        if not retention.store_compliant and read.plate in self._compliant.get(purpose, ()):
            return ReadDecision(decision, Outcome.NOT_STORED, hit=False, delete_after=None)
        hit = read.plate in self._hotlists.get(purpose, ())
        days = decision.hit_days if hit and decision.hit_days is not None else decision.retention_days
        now = time.time() if now is None else now
        return ReadDecision(decision, Outcome.STORED, hit=hit, delete_after=now + float(days or 0) * DAY)

    def explain(self) -> list[dict[str, Any]]:
        """Per purpose: verdict, rule, reasons, retention, missing safeguards, what is kept and where."""
        explained = []
        for decision in self.decisions.values():
            explained.append(
                {
                    "purpose": decision.purpose,
                    "purpose_meaning": PURPOSES.get(decision.purpose, "unknown purpose"),
                    "cameras": [c.id for c in self.deployment.cameras if decision.purpose in c.purposes],
                    "verdict": decision.verdict.value,
                    "rule": decision.rule.id,
                    "legal_reference": decision.legal_reference,
                    "verified": decision.rule.verified,
                    "reasons": list(decision.reasons),
                    "retention": decision.rule.retention.summary,
                    "retention_days": decision.retention_days,
                    "hit_retention_days": decision.hit_days if decision.allowed else None,
                    "retention_notes": list(decision.retention_notes),
                    "missing_safeguards": list(decision.missing_safeguards),
                    "minimisation": decision.rule.minimisation.value,
                    "sinks": self.deployment.purposes[decision.purpose].sinks if decision.allowed else [],
                }
            )
        return explained

    def camera_decisions(self, camera_id: str) -> list[PurposeDecision]:
        camera = self.deployment.camera(camera_id)
        if camera is None:
            raise KeyError(f"no camera '{camera_id}' in the deployment")
        return [self.purpose(code) for code in camera.purposes]


def decide(deployment: Deployment, read: PlateRead, purpose: str, now: float | None = None) -> ReadDecision:
    """The decision for one read and one purpose of a deployment."""
    return Policy(deployment).decide(read, purpose, now)


def describe_safeguard(name: str) -> str:
    return SAFEGUARDS.get(name, name)
