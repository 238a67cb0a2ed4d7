"""The structure's promises: names come from the registries, defaults from the settings
models, one dict form per record, and the engine (not the gate) decides outcomes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from anpr.config.settings import DetectorSettings, PipelineSettings, RunSettings, Settings, load_settings
from anpr.errors import ConfigError
from anpr.policy.engine import Policy
from anpr.records import CountKey, Outcome, PlateRead, PolicedRead
from anpr.registry import DETECTORS, RECOGNISERS, SINK_TYPES
from anpr.storage.spool import _decode

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


# --- the layout: a folder per stage, imports only downwards, no cycle ---------------------------------

# The stages in the order data flows through them; a module may import from its own stage and
# the stages before it (and from the shared top level), never from a later one.
STAGES = ("config", "reading", "policy", "storage", "sinks", "run", "measure", "show", "cli")
PACKAGE = REPO / "anpr"


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node) -> bool:
    import ast

    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(node, modules: dict[str, Path]) -> set[str]:
    """The anpr modules imported anywhere under `node`, but under `if TYPE_CHECKING:`."""
    import ast

    found: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            continue
        if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("anpr"):
            assert child.level == 0, "a relative import"
            for alias in child.names:  # `from anpr.reading import weights` imports a module
                full = f"{child.module}.{alias.name}"
                found.add(full if full in modules else child.module)
        elif isinstance(child, ast.Import):
            found.update(a.name for a in child.names if a.name.startswith("anpr"))
        found |= _imported(child, modules)
    return found


def _imports() -> dict[str, set[str]]:
    """Each anpr module and the anpr modules it imports when it runs, at the top or in a
    function (what only a type checker reads, under `if TYPE_CHECKING:`, is left out)."""
    import ast

    modules = {_module(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {t for t in _imported(ast.parse(path.read_text()), modules) if t in modules and t != name}
        for name, path in modules.items()
    }


def _stage(module: str) -> int:
    """0 for the shared top level, else 1 + the stage's place in STAGES."""
    parts = module.split(".")
    return 0 if len(parts) <= 2 and parts[-1] not in STAGES else 1 + STAGES.index(parts[1])


def test_the_package_is_a_folder_per_stage_with_a_small_shared_top_level():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(STAGES), folders
    for folder in folders:  # each says what it holds and what it may import
        doc = (PACKAGE / folder / "__init__.py").read_text()
        assert doc.startswith('"""') and "Imports " in doc, folder


def test_no_module_imports_from_a_later_stage():
    graph = _imports()
    upward = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if module.split(".")[-1] != "__main__" and _stage(target) > _stage(module)
    ]
    assert not upward, upward


def test_no_import_cycle():
    graph = _imports()
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(graph[module]):
            walk(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        walk(module, [])
