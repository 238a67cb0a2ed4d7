"""The structure's promises: names come from the registries, defaults from the settings
models, one dict form per record, and the engine (not the gate) decides outcomes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from anpr.config import DetectorSettings, PipelineSettings, RunSettings, Settings, load_settings
from anpr.errors import ConfigError
from anpr.policy.engine import Policy
from anpr.records import CountKey, Outcome, PlateRead, PolicedRead
from anpr.registry import DETECTORS, RECOGNISERS, SINK_TYPES
from anpr.spool import _decode

REPO = Path(__file__).resolve().parent.parent
READ = PlateRead(
    "cam.mp4",
    7,
    0.28,
    "AB123CD",
    "AB-123-CD",
    0.81234567,
    0.9,
    0.9,
    (1.25, 2.5, 30.0, 12.75),
    "d@1",
    "o@2",
    (("AB123CD", 0.9), ("AB123C0", 0.05)),
    "FR/SK/PL/IT/HR",
    "LLDDDLL",
)


def _deployment(purpose: str = "parking_fps", controller: str = "municipality", **sinks: dict) -> dict:
    return {
        "controller": {"type": controller, "name": "test"},
        "cameras": [{"id": "cam", "purposes": [purpose]}],
        "purposes": {
            purpose: {
                "safeguards": {"human_review": True, "signage": True},
                "retention_days": 1,
                "sinks": ["store", *sinks],
            }
        },
        "sinks": {"store": {"type": "database"}, **sinks},
    }


def test_config_accepts_exactly_the_registered_names():
    for name in DETECTORS.names():
        assert DetectorSettings(backend=name).backend == name
    for name in RECOGNISERS.names():
        assert PipelineSettings(ocr=name).ocr == name
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"detector": {"backend": "tesseract"}})
    assert all(name in str(refused.value) for name in ("auto", *DETECTORS.names()))
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"pipeline": {"ocr": "tesseract"}})
    assert all(name in str(refused.value) for name in RECOGNISERS.names())


def test_every_registered_sink_type_has_its_own_config_keys(tmp_path):
    examples = {
        "database": {},
        "jsonl_export": {"path": str(tmp_path / "x.jsonl")},
        "webhook": {"url": "https://x"},
        "mqtt": {"host": "broker.example"},
    }
    assert set(SINK_TYPES.names()) == set(examples)  # a new sink type adds its example here
    for name, keys in examples.items():
        deployment = Settings.model_validate(_deployment(extra={"type": name, **keys})).deployment
        assert deployment is not None
        assert isinstance(deployment.sinks["extra"], SINK_TYPES.get(name).settings)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(_deployment(extra={"type": "jsonl_export"})))
    with pytest.raises(ConfigError, match=r"missing key 'sinks\.extra\.path'"):
        load_settings(path)


def test_auto_takes_the_first_backend_that_runs_on_the_device():
    assert DETECTORS.for_device("cpu").name == "onnx-int8"  # it keeps FP32's recall, twice as fast (issue 15)
    assert DETECTORS.for_device("cuda:1").name == "torch"


def test_run_settings_and_deployment_are_apart():
    settings = load_settings(REPO / "configs" / "paris-fps.yaml", {"pipeline": {"batch": 4}})
    assert isinstance(settings, RunSettings) and settings.pipeline.batch == 4
    assert settings.deployment is not None and settings.deployment.cameras[0].id == "scan-car-07"
    assert not hasattr(settings.deployment, "pipeline")  # the policy is given the deployment alone
    assert load_settings(None).deployment is None
    with pytest.raises(ValidationError, match="'cameras' and 'purposes' need a 'controller'"):
        Settings.model_validate({"cameras": [{"id": "c", "purposes": ["p"]}]})


def test_a_read_has_one_dict_form_for_output_spool_and_database():
    policed = PolicedRead(READ, "cam", "parking_fps", "FR-FPS", 1_800_000_000.123456, True)
    exact = policed.to_dict(exact=True)
    assert PolicedRead.from_dict(exact) == policed
    shown = policed.to_dict()
    assert list(shown) == list(exact) and shown["confidence"] == 0.8123 and shown["rule"] == "FR-FPS"
    assert json.loads(json.dumps(shown))["candidates"] == [["AB123CD", 0.9], ["AB123C0", 0.05]]
    key = CountKey(3600, "cam", "p", "R", Outcome.BLOCKED)
    assert CountKey.from_dict(key.to_dict()) == key


def test_a_spool_file_of_the_format_before_the_records_module_is_still_read():
    policed = PolicedRead(READ, "cam", "parking_fps", "FR-FPS", 1_800_000_000.5, False, "k" * 32)
    old_read = {**READ.to_dict(exact=True), "box": list(READ.box), "candidates": [list(c) for c in READ.candidates]}
    old = {
        "format": 1,
        "key": "b" * 32,
        "database": "sqlite:///x",
        "spooled_at": 1.0,
        "reads": [
            {
                "key": policed.key,
                "camera": "cam",
                "purpose": "parking_fps",
                "rule_id": "FR-FPS",
                "delete_after": policed.delete_after,
                "hit": False,
                "read": old_read,
            }
        ],
        "counts": [{"bucket": 3600, "camera": "cam", "purpose": "p", "rule_id": "R", "outcome": "blocked", "count": 2}],
    }
    batch = _decode(json.dumps(old).encode())
    assert batch.reads == [policed] and batch.database == "sqlite:///x"
    assert batch.counts == {CountKey(3600, "cam", "p", "R", Outcome.BLOCKED): 2}


@pytest.mark.parametrize(
    ("purpose", "controller", "outcome"),
    [
        ("parking_fps", "municipality", Outcome.STORED),
        ("law_enforcement_request", "municipality", Outcome.BLOCKED),
        ("traffic_statistics", "municipality", Outcome.AGGREGATED),
    ],
)
def test_the_engine_decides_each_reads_outcome(purpose, controller, outcome):
    deployment = Settings.model_validate(_deployment(purpose, controller)).deployment
    assert deployment is not None
    assert Policy(deployment).decide(READ, purpose, now=0.0).outcome is outcome


def _docs() -> str:
    """The reference pages (docs/), where the README sends readers for every key."""
    return "\n".join(page.read_text() for page in sorted((REPO / "docs").glob("*.md")))


def test_the_docs_state_the_models_defaults():
    rows = re.findall(r"^\| `(\w+)\.(\w+)` \| .* \| `?([^`|]+?)`? \|$", _docs(), re.M)
    assert len(rows) >= 15
    defaults = RunSettings()
    for section, key, stated in rows:
        value = getattr(getattr(defaults, section), key)
        assert (float(stated) if isinstance(value, int | float) else stated) == value, f"{section}.{key}"


def test_the_docs_document_every_sink_key():
    rows = re.findall(r"^\| `(\w+)` \| `?(\w*)`? \| .* \| ([^|]*) \|$", _docs(), re.M)
    documented: dict[str, dict[str, str]] = {}
    for sink_type, key, default in rows:
        documented.setdefault(sink_type, {})[key] = default.strip()
    for entry in SINK_TYPES.entries():
        fields = {name: info for name, info in entry.settings.model_fields.items() if name != "type"}
        assert set(documented.get(entry.name, {})) - {""} == set(fields), entry.name
        for name, info in fields.items():
            if isinstance(info.default, int | float) and not isinstance(info.default, bool):
                assert float(documented[entry.name][name]) == info.default, f"{entry.name}.{name}"
