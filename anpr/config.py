"""Run configuration: a YAML file validated against a schema, then command-line flags.

Configuration is data, kept apart from the processing: the pipeline receives a
validated `Settings` object and never reads files or flags itself. Precedence:
defaults < the file given by `--config` < command-line flags.

Run settings (all optional):

    pipeline:
      batch: 8               # frames per detector call (1-256)
      ocr: ppocr             # OCR backend: ppocr | easyocr
      queue: 64              # frames decoded ahead of the detector (2-4096)
      min_confidence: 0.0    # reads below this combined confidence are not emitted
      stride: 1              # detect on every n-th frame (1-100)
      motion_threshold: 0.0  # skip detection when the frame changed less than this (mean grey level, 0: off)
      settle_reads: 0        # stop reading a tracked plate after this many identical reads (0: never)
    detector:
      backend: auto          # auto (onnx on cpu, torch on cuda) | torch | onnx
      confidence: 0.25       # detector score threshold (0-1)
      input_size: 640        # detector input size in pixels (multiple of 32)
      device: cpu            # cpu | cuda | cuda:N
    store:
      url: anpr.sqlite       # SQLAlchemy URL, or a path to a SQLite file

A deployment (required by `anpr run`, see configs/ and README "Deployment config"):

    name, description        # free text
    controller: {type, name, jurisdiction}
    cameras: [{id, source, location, purposes: [...]}]
    purposes: {CODE: {legal_basis, safeguards: {...}, retention_days, sinks: [...],
                      hotlist, compliant_plates}}
    sinks: {NAME: {type: database | jsonl_export | webhook, path, url}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from anpr.errors import ConfigError
from anpr.policy.deployment import Camera, Controller, Purpose, Sink


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineSettings(_Section):
    batch: int = Field(8, ge=1, le=256)
    ocr: Literal["ppocr", "easyocr"] = "ppocr"
    queue: int = Field(64, ge=2, le=4096)
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    stride: int = Field(1, ge=1, le=100)
    motion_threshold: float = Field(0.0, ge=0.0, le=255.0)
    settle_reads: int = Field(0, ge=0, le=1000)


class DetectorSettings(_Section):
    backend: Literal["auto", "torch", "onnx"] = "auto"
    confidence: float = Field(0.25, gt=0.0, le=1.0)
    input_size: int = Field(640, ge=64, le=4096)
    device: str = "cpu"

    @field_validator("input_size")
    @classmethod
    def _multiple_of_stride(cls, value: int) -> int:
        if value % 32:
            raise ValueError("must be a multiple of 32 (the detector's stride)")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "cpu" and not (value == "cuda" or value.startswith("cuda:") and value[5:].isdigit()):
            raise ValueError("must be 'cpu', 'cuda' or 'cuda:N'")
        return value


class StoreSettings(_Section):
    url: str = "anpr.sqlite"


class Settings(_Section):
    pipeline: PipelineSettings = PipelineSettings()
    detector: DetectorSettings = DetectorSettings()
    store: StoreSettings = StoreSettings()
    name: str = ""
    description: str = ""
    controller: Controller | None = None
    cameras: list[Camera] = []
    purposes: dict[str, Purpose] = {}
    sinks: dict[str, Sink] = {"store": Sink(type="database")}

    @property
    def declares_deployment(self) -> bool:
        return self.controller is not None

    @model_validator(mode="after")
    def _deployment_is_whole(self) -> Settings:
        if self.controller is None:
            if self.cameras or self.purposes:
                raise ValueError("'cameras' and 'purposes' need a 'controller'")
            return self
        if not self.cameras:
            raise ValueError("a deployment needs at least one camera under 'cameras'")
        if not self.purposes:
            raise ValueError("a deployment needs at least one entry under 'purposes'")
        for index, camera in enumerate(self.cameras):
            for purpose in camera.purposes:
                if purpose not in self.purposes:
                    raise ValueError(f"cameras[{index}] ({camera.id}) feeds purpose '{purpose}', "
                                     f"which is not declared under 'purposes'")
        for code, purpose in self.purposes.items():
            for sink in purpose.sinks:
                if sink not in self.sinks:
                    raise ValueError(f"purposes.{code} writes to sink '{sink}', which is not declared under 'sinks'")
        if len({c.id for c in self.cameras}) != len(self.cameras):
            raise ValueError("camera ids must be unique")
        return self


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "value_error" and not error["loc"]:
        return str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    return f"key '{key}': {error['msg']} (got {error.get('input')!r})"


def _validate(data: dict[str, Any], origin: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        # Every problem at once, on one line: a typo'd key shows up as both unknown and missing.
        raise ConfigError(f"{origin}: " + "; ".join(_describe(e) for e in exc.errors())) from None


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Input lists named in a config are relative to the config file (outputs stay relative to the cwd)."""
    for purpose in (data.get("purposes") or {}).values():
        if isinstance(purpose, dict):
            for key in ("hotlist", "compliant_plates"):
                if isinstance(purpose.get(key), str):
                    purpose[key] = str(base / purpose[key])
    return data


def load_settings(path: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
    """Settings from an optional YAML file, then `overrides` (section -> key -> value, None skipped)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
        data = _resolve_paths(loaded or {}, path.parent)
    settings = _validate(data, str(path) if path else "defaults")
    flags = {section: {k: v for k, v in keys.items() if v is not None} for section, keys in (overrides or {}).items()}
    if any(flags.values()):
        merged = settings.model_dump()
        for section, keys in flags.items():
            merged[section].update(keys)
        settings = _validate(merged, "command-line option")
    return settings
