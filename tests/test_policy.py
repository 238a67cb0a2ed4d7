"""The purpose-policy layer: rules, the gate, retention, gated queries."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.keys import TEST_KEYS

from anpr.config.deployment import Deployment
from anpr.config.settings import Settings, load_settings
from anpr.policy.engine import DAY, Policy, decide, decide_purpose
from anpr.policy.gate import PolicyGate
from anpr.policy.rules import CONTROLLER_TYPES, PURPOSES, SAFEGUARDS, Verdict
from anpr.reading.track import TrackEnd
from anpr.records import Outcome, PlateRead
from anpr.storage.audit import AuditLog
from anpr.storage.binding import require_binding
from anpr.storage.queries import search
from anpr.storage.store import ReadStore

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
T0 = 1_800_000_000.0  # a fixed "now" for every deadline


def deployment(
    controller: str, purpose: str, safeguards: dict | None = None, retention: float | None = None, **purpose_keys
) -> Deployment:
    settings = Settings.model_validate(
        {
            "controller": {"type": controller, "name": "test controller", "jurisdiction": "FR"},
            "cameras": [{"id": "cam", "purposes": [purpose]}],
            "purposes": {
                purpose: {
                    "safeguards": safeguards or {},
                    "retention_days": retention,
                    "sinks": ["store"],
                    **purpose_keys,
                }
            },
        }
    )
    assert settings.deployment is not None
    return settings.deployment


def read(plate: str, frame: int = 0) -> PlateRead:
    return PlateRead("clip.mp4", frame, frame / 25, plate, plate, 0.8, 0.9, 0.9, (1.0, 2.0, 30.0, 12.0), "d", "o")


FULL = {
    "human_review": True,
    "signage": True,
    "dpia_reference": "DPIA-1",
    "prefect_authorisation": "AP-1",
    "administrative_decision": "AD-1",
    "cnil_prior_consultation": "CNIL-1",
    "designated_agents": ["agent"],
}

# LEGAL.md's rule table, row by row: (controller, purpose, safeguards given, retention) -> (verdict, rule).
# Each allow row is also tried with one required safeguard missing, and with a controller it does not list.
CASES = [
    ("gendarmerie", "criminal_investigation", {"designated_agents": ["a"]}, None, "allow", "FR-LAPI-1"),
    ("douanes", "criminal_investigation", {"designated_agents": ["a"]}, None, "allow", "FR-LAPI-1"),
    ("gendarmerie", "criminal_investigation", {}, None, "deny", "FR-LAPI-1"),
    ("municipality", "criminal_investigation", FULL, 15, "deny", "FR-DEFAULT"),
    (
        "police_nationale",
        "public_order_event",
        {"designated_agents": ["a"], "administrative_decision": "AD"},
        None,
        "allow",
        "FR-LAPI-2",
    ),
    ("police_nationale", "public_order_event", {"designated_agents": ["a"]}, None, "deny", "FR-LAPI-2"),
    ("douanes", "public_order_event", FULL, None, "deny", "FR-DEFAULT"),
    ("municipality", "law_enforcement_request", FULL, 21, "deny", "FR-MUN-REQ"),
    ("police_municipale", "law_enforcement_request", FULL, 21, "deny", "FR-MUN-REQ"),
    ("private_operator", "law_enforcement_request", FULL, 21, "deny", "FR-MUN-REQ"),
    ("municipality", "parking_criminal_offence", FULL, 10, "deny", "FR-MUN-CRIM"),
    ("police_municipale", "parking_criminal_offence", FULL, 10, "deny", "FR-MUN-CRIM"),
    ("municipality", "parking_fps", {"human_review": True, "signage": True}, 1, "allow", "FR-FPS"),
    ("parking_operator", "parking_fps", {"human_review": True, "signage": True}, 1, "allow", "FR-FPS"),
    ("municipality", "parking_fps", {"signage": True}, 1, "deny", "FR-FPS"),
    ("municipality", "parking_fps", {"human_review": True, "signage": True}, None, "deny", "FR-FPS"),  # no retention
    ("private_operator", "parking_fps", FULL, 1, "deny", "FR-DEFAULT"),
    ("police_municipale", "zfe_enforcement", {"prefect_authorisation": "AP"}, None, "allow", "FR-ZFE"),
    ("police_municipale", "zfe_enforcement", {}, None, "deny", "FR-ZFE"),
    ("municipality", "zfe_enforcement", FULL, None, "deny", "FR-DEFAULT"),
    ("municipality", "traffic_statistics", {}, None, "allow", "FR-STATS"),
    ("gendarmerie", "traffic_statistics", FULL, None, "deny", "FR-DEFAULT"),
    ("private_operator", "access_control", {"signage": True}, 1, "allow", "FR-ACCESS"),
    ("private_operator", "access_control", {}, 1, "deny", "FR-ACCESS"),
    ("municipality", "access_control", FULL, 1, "deny", "FR-DEFAULT"),
    (
        "municipality",
        "city_wide_analytics",
        {"dpia_reference": "D", "cnil_prior_consultation": "C"},
        30,
        "allow",
        "FR-ANALYTICS",
    ),
    ("municipality", "city_wide_analytics", {"dpia_reference": "D"}, 30, "deny", "FR-ANALYTICS"),
    ("municipality", "face_matching", FULL, 1, "deny", "FR-DEFAULT"),  # unknown purpose
    ("security_company", "parking_fps", FULL, 1, "deny", "FR-DEFAULT"),  # unknown controller type
]


@pytest.mark.parametrize("controller, purpose, safeguards, retention, verdict, rule", CASES)
def test_rule_table_row(controller, purpose, safeguards, retention, verdict, rule):
    decision = decide_purpose(deployment(controller, purpose, safeguards, retention), purpose)
    assert (decision.verdict.value, decision.rule.id) == (verdict, rule), decision.reasons
    assert decision.legal_reference


def test_other_jurisdiction_is_denied():
    settings = deployment("gendarmerie", "criminal_investigation", FULL)
    settings = settings.model_copy(update={"controller": settings.controller.model_copy(update={"jurisdiction": "DE"})})
    decision = decide_purpose(settings, "criminal_investigation")
    assert decision.verdict is Verdict.DENY and "jurisdiction" in decision.reasons[0]


def test_retention_is_clamped_to_the_rule_and_said_so():
    decision = decide_purpose(deployment("gendarmerie", "criminal_investigation", FULL, 40), "criminal_investigation")
    assert decision.allowed and decision.retention_days == 15 and "clamped to 15" in decision.retention_notes[0]


def test_decide_gives_deadline_and_minimisation():
    fps = deployment("municipality", "parking_fps", {"human_review": True, "signage": True}, 2)
    allowed = decide(fps, read("AB123CD"), "parking_fps", now=T0)
    assert allowed.store and allowed.delete_after == T0 + 2 * DAY and allowed.rule_id == "FR-FPS"
    stats = decide(deployment("municipality", "traffic_statistics"), read("AB123CD"), "traffic_statistics", now=T0)
    assert stats.verdict is Verdict.ALLOW and not stats.store and stats.minimisation.value == "aggregate"
    denied = decide(
        deployment("municipality", "law_enforcement_request", FULL, 21),
        read("AB123CD"),
        "law_enforcement_request",
        now=T0,
    )
    assert denied.verdict is Verdict.DENY and not denied.store and denied.delete_after is None


# --- the gate, against a real database --------------------------------------------------------


def gate_for(deployment: Deployment, store: ReadStore, clock=lambda: T0) -> PolicyGate:
    from anpr.sinks.catalog import make_sinks

    return PolicyGate(
        Policy(deployment), deployment.cameras[0], store, make_sinks(deployment.sinks, store), clock=clock
    )


# LEGAL.md's allow rows, restated here independently of anpr/policy/rules.py:
# (controller types, purpose, required safeguards).
ALLOW_ROWS = [
    ({"police_nationale", "gendarmerie", "douanes"}, "criminal_investigation", {"designated_agents"}),
    ({"police_nationale", "gendarmerie"}, "public_order_event", {"designated_agents", "administrative_decision"}),
    ({"municipality", "parking_operator"}, "parking_fps", {"human_review", "signage"}),
    ({"police_nationale", "gendarmerie", "police_municipale"}, "zfe_enforcement", {"prefect_authorisation"}),
    ({"private_operator"}, "access_control", {"signage"}),
    ({"municipality"}, "traffic_statistics", set()),  # allowed, but only as counts: no read is stored
    (set(CONTROLLER_TYPES), "city_wide_analytics", {"dpia_reference", "cnil_prior_consultation"}),
]
SAFEGUARD_VALUES = {"human_review": True, "signage": True, "designated_agents": ["agent"]}


def _in_allow_rows(controller: str, purpose: str, given: set[str]) -> bool:
    return any(controller in who and purpose == what and needed <= given for who, what, needed in ALLOW_ROWS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    controller=st.sampled_from([*sorted(CONTROLLER_TYPES), "mayor", "", "Municipality"]),
    purpose=st.sampled_from([*sorted(PURPOSES), "face_matching", "marketing"]),
    given_safeguards=st.sets(st.sampled_from(sorted(SAFEGUARDS))),
    retention=st.one_of(st.none(), st.floats(0.5, 60)),
)
def test_nothing_outside_the_allow_rows_is_ever_stored(
    tmp_path_factory, controller, purpose, given_safeguards, retention
):
    safeguards = {name: SAFEGUARD_VALUES.get(name, f"ref-{name}") for name in given_safeguards}
    try:
        settings_ = deployment(controller or "x", purpose, safeguards, retention)
    except Exception:  # an empty controller type is a schema error: nothing runs at all
        return
    store = ReadStore(str(tmp_path_factory.mktemp("prop") / "db.sqlite"), TEST_KEYS)
    gate = gate_for(settings_, store)
    gate.write([read("AB123CD", 0), read("ZZ999ZZ", 1)])
    stored = store.count()
    counts = store.policy_counts()
    store.close()
    if not _in_allow_rows(controller, purpose, given_safeguards):
        assert stored == 0
        assert all(key.outcome is Outcome.BLOCKED for key, _ in counts) and sum(n for _, n in counts) == 2
    elif purpose == "traffic_statistics":
        assert stored == 0
        assert [(key.outcome, n) for key, n in counts] == [(Outcome.AGGREGATED, 2)]
    else:
        assert stored in (0, 2)  # 0 only when the rule needs a retention the deployment did not set


def test_denied_purpose_leaves_only_a_count(tmp_path):
    store = ReadStore(str(tmp_path / "db.sqlite"), TEST_KEYS)
    settings_ = load_settings(CONFIGS / "mixed-camera.yaml").deployment
    settings_ = settings_.model_copy(
        update={
            "sinks": {
                **settings_.sinks,
                "police_export": settings_.sinks["police_export"].model_copy(
                    update={"path": tmp_path / "export.jsonl"}
                ),
            }
        }
    )
    gate = gate_for(settings_, store)
    gate.write([read("AB123CD", 0), read("XY456ZT", 1)])
    assert [(r.purpose, r.read.plate) for r in store.reads()] == [
        ("parking_fps", "AB123CD"),
        ("parking_fps", "XY456ZT"),
    ]
    assert not (tmp_path / "export.jsonl").exists()
    [(key, number)] = store.policy_counts()
    assert (key.purpose, key.rule_id, key.outcome, number) == (
        "law_enforcement_request",
        "FR-MUN-REQ",
        Outcome.BLOCKED,
        2,
    )
    assert key.bucket % 3600 == 0
    store.close()


def test_retention_purge_with_a_controlled_clock(tmp_path):
    store = ReadStore(str(tmp_path / "db.sqlite"), TEST_KEYS)
    hotlist = tmp_path / "hot.txt"
    hotlist.write_text("# flagged\nHIT123\n")
    lapi = deployment("gendarmerie", "criminal_investigation", {"designated_agents": ["a"]}, hotlist=hotlist)
    clock = [T0]
    gate = gate_for(lapi, store, clock=lambda: clock[0])
    gate.write([read("HIT123", 0), read("NOHIT1", 1)])
    deadlines = {r.read.plate: (r.delete_after, r.hit) for r in store.reads()}
    assert deadlines == {"HIT123": (T0 + 30 * DAY, True), "NOHIT1": (T0 + 15 * DAY, False)}
    assert store.purge(T0 + 15 * DAY - 1) == 0
    assert store.purge(T0 + 15 * DAY) == 1 and [r.read.plate for r in store.reads()] == ["HIT123"]
    # The running pipeline purges too: the gate's next batch after the deadline removes the hit.
    clock[0] = T0 + 30 * DAY
    gate.write([])
    assert store.count() == 0 and gate.tally.purged == 1
    store.close()


def test_zfe_never_stores_compliant_vehicles(tmp_path):
    store = ReadStore(str(tmp_path / "db.sqlite"), TEST_KEYS)
    compliant = tmp_path / "ok.txt"
    compliant.write_text("GREEN1\n")
    zfe = deployment(
        "police_municipale", "zfe_enforcement", {"prefect_authorisation": "AP"}, compliant_plates=compliant
    )
    gate_for(zfe, store).write([read("GREEN1", 0), read("DIESEL9", 1)])
    assert [(r.read.plate, r.delete_after) for r in store.reads()] == [("DIESEL9", T0 + 8 * DAY)]
    assert [(k.outcome, n) for k, n in store.policy_counts()] == [(Outcome.NOT_STORED, 1)]
    store.close()


def test_statistics_keep_counts_and_no_plate(tmp_path):
    path = tmp_path / "db.sqlite"
    store = ReadStore(str(path), TEST_KEYS)
    gate_for(load_settings(CONFIGS / "traffic-stats.yaml").deployment, store).write(
        [read("AB123CD", 0), read("XY456ZT", 1)]
    )
    assert store.count() == 0
    assert [(k.outcome, n) for k, n in store.policy_counts()] == [(Outcome.AGGREGATED, 2)]
    store.close()
    content = path.read_bytes()
    assert b"AB123CD" not in content and b"XY456ZT" not in content


def test_gated_queries_are_filtered_and_audited(tmp_path):
    store = ReadStore(str(tmp_path / "db.sqlite"), TEST_KEYS)
    hotlist = tmp_path / "hot.txt"
    hotlist.write_text("HIT123\n")
    lapi = deployment("gendarmerie", "criminal_investigation", {"designated_agents": ["agent-1"]}, hotlist=hotlist)
    policy = Policy(lapi)
    gate_for(lapi, store).write([read("HIT123", 0), read("NOHIT1", 1), read("NOHIT1", 2)])
    audit = AuditLog(store.engine, TEST_KEYS)
    require_binding(store, audit, lapi, "operator", bind_if_new=True)  # as the run writing them would

    stranger = search(store, policy, audit, "NOHIT1", "criminal_investigation", "mayor")
    assert not stranger.allowed and "not a designated agent" in stranger.reason
    without_procedure = search(store, policy, audit, "nohit-1", "criminal_investigation", "agent-1")
    assert without_procedure.allowed and without_procedure.rows == [] and without_procedure.withheld == 2
    hit = search(store, policy, audit, "HIT123", "criminal_investigation", "agent-1")
    assert [r.read.plate for r in hit.rows] == ["HIT123"]
    with_procedure = search(store, policy, audit, "NOHIT1", "criminal_investigation", "agent-1", "PV-2026-118")
    assert [r.read.frame for r in with_procedure.rows] == [1, 2]
    other_purpose = search(store, policy, audit, "HIT123", "law_enforcement_request", "agent-1")
    assert not other_purpose.allowed

    entries = audit.entries()[1:]  # after the binding
    assert [e.action for e in entries] == ["query.refused", "query", "query", "query", "query.refused"]
    assert [e.actor for e in entries] == ["mayor", "agent-1", "agent-1", "agent-1", "agent-1"]
    assert '"procedure":"PV-2026-118"' in entries[3].details and audit.verify() == []
    store.close()


def tracked(plate: str, frame: int, track: int, x: float) -> PlateRead:
    return PlateRead(
        "clip.mp4", frame, frame / 25, plate, plate, 0.8, 0.9, 0.9, (x, 500.0, x + 60, 515.0), "d", "o",
        candidates=((plate, 1.0),), track=track,
    )  # fmt: skip


class _Passages:
    def __init__(self) -> None:
        self.seen: list = []

    def write_passages(self, passages) -> None:
        self.seen.extend(passages)


def test_a_track_becomes_a_stored_passage_when_it_ends_and_goes_with_its_reads(tmp_path):
    store = ReadStore(str(tmp_path / "db.sqlite"), TEST_KEYS)
    parking = deployment("municipality", "parking_fps", {"human_review": True, "signage": True}, retention=1)
    output = _Passages()
    gate = PolicyGate(
        Policy(parking), parking.cameras[0], store, {"store": store}, clock=lambda: T0, passage_outputs=[output]
    )
    gate.write([tracked("AB123CD", f, 4, 100 + 80 * f) for f in range(3)])
    assert store.passages() == [] and output.seen == []  # the track goes on
    gate.write([tracked("AB123CD", 3, 4, 340), tracked("ZZ999ZZ", 3, 5, 900)])
    gate.end_tracks("clip.mp4", [TrackEnd(4, 5, 5 / 25)])  # seen once more, not read (settled)
    (passage,) = store.passages()
    assert output.seen == [passage]  # emitted as the track ended, not at the end of the run
    # It spans the track, to the last frame the plate was seen in.
    assert (passage.plate, passage.reads, passage.first_frame, passage.last_frame) == ("AB123CD", 4, 0, 5)
    assert passage.last_time == 5 / 25
    assert (passage.purpose, passage.rule_id, passage.delete_after) == ("parking_fps", "FR-FPS", T0 + DAY)
    gate.end_tracks("clip.mp4", [TrackEnd(5, 3, 3 / 25)])  # read once: dropped, and counted
    assert len(store.passages()) == 1 and gate.tally.dropped_tracks == {"too few reads": 1}
    assert gate.tally.passages == {"parking_fps": 1}
    assert store.purge(T0 + DAY) == 5 + 1 and store.passages() == []  # reads and passage go together
    store.close()


def test_a_denied_purpose_makes_no_passage(tmp_path):
    store = ReadStore(str(tmp_path / "db.sqlite"), TEST_KEYS)
    municipal_requests = deployment("municipality", "law_enforcement_request", FULL)
    output = _Passages()
    gate = PolicyGate(
        Policy(municipal_requests),
        municipal_requests.cameras[0],
        store,
        {"store": store},
        clock=lambda: T0,
        passage_outputs=[output],
    )
    gate.write([tracked("AB123CD", f, 1, 100 + 80 * f) for f in range(5)])
    gate.end_tracks("clip.mp4", [TrackEnd(1, 4, 4 / 25)])
    assert store.passages() == [] and store.count() == 0 and output.seen == []
    assert gate.tally.passages == {} and gate.tally.dropped_tracks == {}
    store.close()
