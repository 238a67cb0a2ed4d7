"""The rule table: what French law allows, for whom, for what, kept for how long.

One row per rule of `shared/LEGAL.md` (a model of the law, not legal advice). The
engine picks the first row whose controller types and purpose match; FR-DEFAULT,
last, denies everything else (fail closed). Rows whose source is secondary reporting
carry `verified=False`, and `anpr policy explain` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

ANY = "*"

# Vocabulary of the configs (LEGAL.md "code" identifiers).
CONTROLLER_TYPES = {
    "police_nationale": "Police nationale",
    "gendarmerie": "Gendarmerie nationale",
    "douanes": "Customs (douanes)",
    "municipality": "Municipality (commune)",
    "police_municipale": "Municipal police",
    "parking_operator": "Parking operator (a municipality's contractor)",
    "private_operator": "Private operator",
}

PURPOSES = {
    "criminal_investigation": "Terrorism, organised crime, vehicle theft and receiving, organised customs fraud",
    "public_order_event": "Major event or gathering",
    "law_enforcement_request": "Answering police or gendarmerie requests or requisitions",
    "parking_criminal_offence": "Obstructive or dangerous parking, other criminal-law offences",
    "parking_fps": "Paid on-street parking check (forfait post-stationnement)",
    "zfe_enforcement": "Low-emission zone (ZFE) enforcement",
    "traffic_statistics": "Traffic statistics",
    "access_control": "Barrier of a private car park (allow-list)",
    "city_wide_analytics": "Systematic monitoring of public space",
}

SAFEGUARDS = {
    "dpia_reference": "reference of the data protection impact assessment (GDPR art. 35)",
    "prefect_authorisation": "reference of the prefect's authorisation",
    "administrative_decision": "reference of the administrative decision",
    "human_review": "a human agent confirms every notice (no fully automated decision)",
    "signage": "signs inform the public before capture",
    "cnil_prior_consultation": "reference of the CNIL prior consultation",
    "designated_agents": "the named agents who alone may query the reads",
}


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Minimisation(StrEnum):
    NONE = "none"  # the read is stored as read
    AGGREGATE = "aggregate"  # only a count per camera and hour; no plate text, no hash


# What an allowed purpose keeps, by its rule's minimisation (`anpr policy explain`, the report).
KEPT = {Minimisation.AGGREGATE: "aggregate counts only, no plate text", Minimisation.NONE: "reads"}


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a stored read may be kept."""

    days: float | None  # for a read with no special status; None: the deployment must set it
    max_days: float | None  # the most a deployment may ask for; None: no bound in the rule
    hit_days: float | None = None  # reads matching a flagged-vehicle file (LAPI hits)
    no_hit_query_needs_procedure: bool = False  # LAPI: no-hit reads only for a named procedure
    store_compliant: bool = True  # False: compliant vehicles (ZFE) are never stored
    delete_on_payment: bool = False  # FPS: deleted once matched to a valid payment
    # A data subject's erasure request (`anpr db erase`) leaves a hit: it was passed to a
    # procedure, and the law that made it a hit (not the person's consent) keeps it.
    erasure_keeps_hits: bool = False
    summary: str = ""


NOTHING_STORED = Retention(days=0, max_days=0, summary="nothing stored")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    controllers: frozenset[str] | str  # controller types, or ANY
    purpose: str  # a purpose code, or ANY
    verdict: Verdict
    retention: Retention
    safeguards: frozenset[str]  # required; a missing one turns an allow into a deny
    source: str  # legal reference
    verified: bool
    minimisation: Minimisation = Minimisation.NONE
    jurisdiction: str = "FR"
    # The sink types its reads may go to: the database unless the rule names a recipient
    # the law provides for (a third party gets nothing otherwise).
    sink_types: frozenset[str] = frozenset({"database"})
    # Whether the plate is kept in clear: only where a person must see it (an agent
    # confirms a notice, an investigator reads a hit). Elsewhere only its keyed hash
    # (keys.py) is stored, which still lets a plate be matched and looked up.
    shows_plate: bool = True

    def matches(self, controller: str, purpose: str) -> bool:
        return (self.controllers == ANY or controller in self.controllers) and (
            self.purpose == ANY or self.purpose == purpose
        )


LAPI_RETENTION = Retention(
    days=15,
    max_days=15,
    hit_days=30,
    no_hit_query_needs_procedure=True,
    erasure_keeps_hits=True,
    summary="no hit: 15 days, queryable only for a named procedure; hit: 1 month (30 days) after the hit",
)
LAPI_SOURCE = "CSI L233-1, L233-2; arrêté of 18 May 2009; CNIL deliberation 2023-026"
# Why an erasure request leaves a LAPI hit: criminal-law processing by a competent authority
# (LEGAL.md), whose erasure right yields to the investigation the hit is part of.
ERASURE_EXEMPTION = "Directive (EU) 2016/680 art. 16(3) and art. 15(1)(a): the hit is part of a procedure"
# The authority's own systems (its database, an export or a feed to its investigators: a
# webhook, an MQTT broker).
LAPI_SINKS = frozenset({"database", "jsonl_export", "webhook", "mqtt"})
# Rules whose text sets no period still get a bound, so that no deployment keeps reads
# indefinitely by asking for it: the project's choice, not the law's (labelled so).
PROJECT_MAX_DAYS = 30.0

RULES: tuple[Rule, ...] = (
    Rule(
        "FR-LAPI-1",
        frozenset({"police_nationale", "gendarmerie", "douanes"}),
        "criminal_investigation",
        Verdict.ALLOW,
        LAPI_RETENTION,
        frozenset({"designated_agents"}),
        LAPI_SOURCE,
        verified=True,
        sink_types=LAPI_SINKS,
    ),
    Rule(
        "FR-LAPI-2",
        frozenset({"police_nationale", "gendarmerie"}),
        "public_order_event",
        Verdict.ALLOW,
        LAPI_RETENTION,
        frozenset({"designated_agents", "administrative_decision"}),
        "CSI L233-1 al. 2",
        verified=True,
        sink_types=LAPI_SINKS,
    ),
    Rule(
        "FR-MUN-REQ",
        ANY,
        "law_enforcement_request",
        Verdict.DENY,
        NOTHING_STORED,
        frozenset(),
        "CNIL warning to Valenciennes, 12 May 2021; CE Commune de Gujan-Mestras, n° 385091, 27 June 2016; "
        "CSI L233-1, L251-2",
        verified=True,
    ),
    Rule(
        "FR-MUN-CRIM",
        frozenset({"municipality", "police_municipale"}),
        "parking_criminal_offence",
        Verdict.DENY,
        NOTHING_STORED,
        frozenset(),
        "CNIL formal notices to four communes, August 2020 (press)",
        verified=False,
    ),
    Rule(
        "FR-FPS",
        frozenset({"municipality", "parking_operator"}),
        "parking_fps",
        Verdict.ALLOW,
        Retention(
            days=None,
            max_days=PROJECT_MAX_DAYS,
            delete_on_payment=True,
            summary="deleted when matched to a valid payment; if unpaid, once an agent has recorded "
            "the finding; never later than the deployment's retention_days (at most 30 days: "
            "a bound set by anpr, the rule gives none)",
        ),
        frozenset({"human_review", "signage"}),
        "CGCT L2333-87; CNIL recommendation of 14 Nov 2017 (detail from secondary reporting)",
        verified=False,
    ),
    Rule(
        "FR-ZFE",
        frozenset({"police_nationale", "gendarmerie", "police_municipale"}),
        "zfe_enforcement",
        Verdict.ALLOW,
        Retention(
            days=8,
            max_days=8,
            store_compliant=False,
            summary="compliant vehicles: never stored; offending vehicles: 8 days unless a procedure starts",
        ),
        frozenset({"prefect_authorisation"}),
        "CGCT L2213-4-2 (8-day figure from secondary reporting)",
        verified=False,
    ),
    Rule(
        "FR-STATS",
        frozenset({"municipality"}),
        "traffic_statistics",
        Verdict.ALLOW,
        Retention(days=None, max_days=None, summary="aggregate counts only, never plate text"),
        frozenset(),
        "GDPR art. 5(1)(c), 25; CE JCDecaux, n° 393714, 8 Feb 2017 (a keyed hash is still personal data)",
        verified=True,
        minimisation=Minimisation.AGGREGATE,
    ),
    Rule(
        "FR-ACCESS",
        frozenset({"private_operator"}),
        "access_control",
        Verdict.ALLOW,
        Retention(days=1, max_days=1, summary="short: only what the barrier decision needs (1 day at most here)"),
        frozenset({"signage"}),
        "Swiss FDPIC guidance (analogy; not verified for France)",
        verified=False,
        shows_plate=False,  # the barrier matches the allow-list by keyed hash; nobody reads the plate
    ),
    Rule(
        "FR-ANALYTICS",
        ANY,
        "city_wide_analytics",
        Verdict.ALLOW,
        Retention(
            days=None,
            max_days=PROJECT_MAX_DAYS,
            summary="set by the deployment, at most 30 days (a bound set by anpr, the rule gives none)",
        ),
        frozenset({"dpia_reference", "cnil_prior_consultation"}),
        "GDPR art. 35(3)(c); loi Informatique et Libertés art. 87, 90; CNIL warning to Valenciennes, 12 May 2021",
        verified=True,
        shows_plate=False,  # analytics need to tell vehicles apart, not to read them
    ),
    Rule(
        "FR-DEFAULT",
        ANY,
        ANY,
        Verdict.DENY,
        NOTHING_STORED,
        frozenset(),
        "GDPR art. 5(1)(b) purpose limitation (fail closed)",
        verified=True,
    ),
)

RULES_BY_ID = {rule.id: rule for rule in RULES}


def matching_rule(jurisdiction: str, controller: str, purpose: str) -> Rule:
    """The first rule of the table that covers (controller, purpose); FR-DEFAULT at worst."""
    for rule in RULES:
        if rule.jurisdiction == jurisdiction and rule.matches(controller, purpose):
            return rule
    return RULES_BY_ID["FR-DEFAULT"]
