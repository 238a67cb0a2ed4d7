"""Model files: where each lives and the sha256 it must have.

`models/manifest.json` is the single table of the weights the pipeline loads. A file
that is missing or whose hash differs is refused with an error naming the file, so a
corrupt download or a silently swapped model never produces reads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from anpr.errors import ModelError

MODELS_DIR = Path(os.environ.get("ANPR_MODELS_DIR", Path(__file__).resolve().parents[2] / "models"))


@dataclass(frozen=True, slots=True)
class ModelFile:
    name: str
    path: Path
    sha256: str

    @property
    def identifier(self) -> str:
        """What a stored read records as the model that produced it."""
        return f"{self.name}@{self.sha256[:12]}"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(f"model package '{package}' is not installed (pip install -e . installs it)")
    return Path(spec.origin).parent


@cache
def _manifest() -> dict[str, dict[str, str]]:
    path = MODELS_DIR / "manifest.json"
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"model manifest not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"model manifest {path} is not valid JSON: {exc}") from None
    return {name: entry for name, entry in entries.items() if not name.startswith("_")}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def model_file(name: str) -> ModelFile:
    """The verified file of model `name` (a key of the manifest)."""
    entries = _manifest()
    if name not in entries:
        raise ModelError(f"unknown model '{name}'; the manifest lists: {', '.join(sorted(entries))}")
    entry = entries[name]
    location = entry["location"]
    base = MODELS_DIR if location == "models" else _package_dir(location.removeprefix("package:"))
    path = base / entry["file"]
    if not path.is_file():
        raise ModelError(f"model file missing: {path} (model '{name}')")
    actual = _sha256(path)
    if actual != entry["sha256"]:
        raise ModelError(f"model file {path} has sha256 {actual}, expected {entry['sha256']} (model '{name}')")
    return ModelFile(name=name, path=path, sha256=actual)


def onnx_session(model: ModelFile, threads: int = 0):
    """An ONNX Runtime CPU session for a checked model file.

    Its threads sleep between calls instead of spinning: the pipeline shares the cores
    with the decode thread and a second session, and spinning threads starve both
    (measured: 48-58 against 62-74 frames/s on 2 cores, benchmarks/RESULTS.md).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
