"""Run configuration: a YAML file validated against a schema, then command-line flags.

Configuration is data, kept apart from the processing: the pipeline receives a
validated `Settings` object and never reads files or flags itself. Precedence:
defaults < the file given by `--config` < command-line flags.

Run settings (all optional):

    pipeline:
      batch: 8               # frames of a source per batch (1-256); the detector sees those the stride keeps
      ocr: ppocr             # one of registry.RECOGNISERS (anpr run --help lists them)
      queue: 64              # frames decoded ahead of the detector (2-4096), of those the stride keeps
      min_confidence: 0.0    # reads below this combined confidence are not emitted
      stride: auto           # detect on every n-th frame (1-100); auto: 3 for video and streams, 1 for images
      motion_threshold: 0.0  # skip detection when the frame changed less than this (mean grey level, 0: off)
      settle_reads: auto     # stop reading a tracked plate after n same registrations (0: never; auto: 3 for video)
    detector:
      backend: auto          # auto (the first registered backend that runs on the device), or one of registry.DETECTORS
      confidence: 0.25       # detector score threshold (0-1)
      input_size: 640        # detector input size in pixels (multiple of 32), for still images and whole-frame looks
      device: cpu            # cpu | cuda | cuda:N
      second_pass: auto      # auto (still images only) | tiles | off: a closer look for small plates
      video_search: motion   # motion: look around moving vehicles | whole: the whole frame each time
      window_input_size: 320 # input size of the windows around moving vehicles (multiple of 32)
    stream:                  # live sources (RTSP, HTTP)
      stall_seconds: 10      # no frame for this long counts as a dropped stream
      reconnect_first_delay: 0.5   # seconds before the first reconnection attempt
      reconnect_max_delay: 30      # attempts back off exponentially (with jitter) up to this
    store:
      url: anpr.sqlite       # SQLAlchemy URL, or a path to a SQLite file
      spool_dir: anpr-spool  # allowed reads wait here while the database is down (its own folder per concurrent run)
      spool_max_mb: 256      # spool size limit (1 or more): beyond it new batches are lost, with a warning
      key_file: anpr.key     # the secret key (plate hashes, audit authentication), outside the database
      audit_checkpoints: anpr-audit.checkpoints  # the audit log's checkpoints, appended at every run end
                             # (these two, when relative: from the config's folder if set there, else
                             # next to a SQLite database, else next to the config)
      timeout_seconds: 2     # a database that does not answer within this long counts as down (2-600)

A deployment (required by `anpr run`, see configs/ and docs/deployment-config.md):

    name, description        # free text
    controller: {type, name, jurisdiction}
    cameras: [{id, source, location, purposes: [...]}]
    purposes: {CODE: {legal_basis, safeguards: {...}, retention_days, sinks: [...],
                      hotlist, compliant_plates}}
    sinks: {NAME: {type: one of registry.SINK_TYPES, and the keys of that type}}

The models below set every default; the listing above and docs/run-settings.md restate
them (tests/test_structure.py checks the docs' table against the models).
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from anpr.config.deployment import DEPLOYMENT_KEYS, Count, Deployment, Number
from anpr.errors import ConfigError
from anpr.redact import printable, redact
from anpr.registry import DETECTORS, RECOGNISERS, SINK_TYPES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# What `auto` means for video and streams: detect every third frame, and stop reading a
# tracked plate once the same complete registration was read three times. A vehicle is on
# screen for a second or more, so it is still detected eight times or more. Chosen on the
# development clip (benchmarks/passage_accuracy.py --traffic --dev), measured in
# benchmarks/RESULTS.md (issue 12). Still images are one frame each and not tracked.
VIDEO_STRIDE = 3
VIDEO_SETTLE_READS = 3


def _auto_or_whole(low: int, high: int):
    """A validator for a key that is `auto` or a whole number from `low` to `high` (one error line either way)."""

    def check(value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be auto or a whole number from {low} to {high}")
        return value

    return BeforeValidator(check)


class PipelineSettings(_Section):
    batch: Count = Field(8, ge=1, le=256)
    ocr: str = "ppocr"  # a name in registry.RECOGNISERS
    queue: Count = Field(64, ge=2, le=4096)
    min_confidence: Number = Field(0.0, ge=0.0, le=1.0)
    stride: Annotated[int | Literal["auto"], _auto_or_whole(1, 100)] = "auto"
    motion_threshold: Number = Field(0.0, ge=0.0, le=255.0)
    settle_reads: Annotated[int | Literal["auto"], _auto_or_whole(0, 1000)] = "auto"

    def for_source(self, stills: bool) -> PipelineSettings:
        """These settings with `auto` resolved for a source of still images or of video."""
        auto = {"stride": 1 if stills else VIDEO_STRIDE, "settle_reads": 0 if stills else VIDEO_SETTLE_READS}
        return self.model_copy(update={key: value for key, value in auto.items() if getattr(self, key) == "auto"})

    @property
    def frame_stride(self) -> int:
        """The stride, once resolved (`for_source`); 1 while still `auto`."""
        return 1 if self.stride == "auto" else self.stride

    @property
    def reads_to_settle(self) -> int:
        """The settle count, once resolved (`for_source`); 0 while still `auto`."""
        return 0 if self.settle_reads == "auto" else self.settle_reads

    @field_validator("ocr")
    @classmethod
    def _known_recogniser(cls, value: str) -> str:
        if value not in RECOGNISERS:
            raise ValueError(f"must be {RECOGNISERS.choices()}")
        return value


class DetectorSettings(_Section):
    backend: str = "auto"  # auto, or a name in registry.DETECTORS
    confidence: Number = Field(0.25, gt=0.0, le=1.0)
    input_size: Count = Field(640, ge=64, le=4096)
    device: str = "cpu"
    # Small, distant plates: frames with no plate found are searched again tile by tile at
    # full resolution, and small or unsure boxes are looked at again close up (detect.SecondPass):
    # `auto` does it for still images only, `tiles` for every source, `off` never. Costs one
    # detector call per tile and per closer look on the frames it searches.
    second_pass: Literal["auto", "tiles", "off"] = "auto"
    # Where the detector looks in video and streams (detect.MotionWindows): `motion`, in a
    # window around each moving vehicle, brought to `window_input_size` (the plate then
    # fills about a fifth of it, however far the vehicle is), with a whole-frame look at
    # `input_size` now and then; `whole`, the whole frame at `input_size` every time.
    # Still images are always looked at whole.
    video_search: Literal["motion", "whole"] = "motion"
    window_input_size: Count = Field(320, ge=64, le=4096)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value != "auto" and value not in DETECTORS:
            raise ValueError(f"must be {DETECTORS.choices('auto')}")
        return value

    @field_validator("input_size", "window_input_size")
    @classmethod
    def _multiple_of_stride(cls, value: int) -> int:
        if value % 32:
            raise ValueError("must be a multiple of 32 (the detector's stride)")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "cpu" and not (value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit())):
            raise ValueError("must be 'cpu', 'cuda' or 'cuda:N'")
        return value


class StreamSettings(_Section):
    stall_seconds: Number = Field(10.0, ge=1.0, le=3600.0)
    reconnect_first_delay: Number = Field(0.5, ge=0.05, le=600.0)
    reconnect_max_delay: Number = Field(30.0, ge=0.1, le=3600.0)

    @model_validator(mode="after")
    def _delays_ordered(self) -> StreamSettings:
        if self.reconnect_max_delay < self.reconnect_first_delay:
            raise ValueError("stream.reconnect_max_delay must not be less than stream.reconnect_first_delay")
        return self


# Every call to the database is cut off after this long, and the database then counts as
# down (its batches go to the spool). While the run loop waits, a live camera's frames pile
# up in the frame queue (pipeline.queue, 64 frames the stride keeps: 2.6 s of a 25 fps
# stream at stride 1, 7.7 s at the default stride of 3), so the bound
# must stay below that. 2 s is also the shortest connection timeout libpq honours, so a
# reconnection attempt is held to the same bound.
DATABASE_TIMEOUT_SECONDS = 2.0


class StoreSettings(_Section):
    url: str = Field("anpr.sqlite", min_length=1)  # an empty --db "$UNSET" is a mistake, not the default
    # Relative to the current folder, like the default database and the outputs. A spool
    # is tied to one database and locked by one run: concurrent runs need their own. A
    # non-empty folder that is not a spool is refused (anpr/storage/outbox.py).
    spool_dir: str = Field("anpr-spool", min_length=1)
    spool_max_mb: Count = Field(256, ge=1, le=1_048_576)
    # The deployment's secret key (keys.py), outside the database: keyed plate hashes and
    # the audit log's authentication. Made by the first run; keep a copy elsewhere. This
    # and the checkpoints are found next to the database by default (_with_database_files).
    key_file: str = Field("anpr.key", min_length=1)
    # Authenticated checkpoints of the audit log, appended at every run end (audit.py):
    # keep this file where the database's administrators cannot rewrite it.
    audit_checkpoints: str = Field("anpr-audit.checkpoints", min_length=1)
    timeout_seconds: Number = Field(DATABASE_TIMEOUT_SECONDS, ge=2.0, le=600.0)


class RunSettings(_Section):
    """How to run: every key has a default, and none of them changes what the law allows."""

    pipeline: PipelineSettings = PipelineSettings()
    detector: DetectorSettings = DetectorSettings()
    stream: StreamSettings = StreamSettings()
    store: StoreSettings = StoreSettings()


class Settings(RunSettings):
    """A config file: the run settings, and the deployment (None when the file declares none).

    In the file the deployment's keys sit at the top level beside the run sections; here
    they are one `Deployment`, the only part of a config the policy ever sees.
    """

    deployment: Deployment | None = None

    @model_validator(mode="before")
    @classmethod
    def _gather_deployment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "deployment" in data:
            raise ValueError("unknown key 'deployment' (the deployment's keys go at the top level)")
        data = dict(data)
        declared = {key: data.pop(key) for key in DEPLOYMENT_KEYS if key in data}
        if "controller" in declared:
            data["deployment"] = declared
        elif "cameras" in declared or "purposes" in declared:
            raise ValueError("'cameras' and 'purposes' need a 'controller'")
        return data

    def flat(self) -> dict[str, Any]:
        """The settings as a config file holds them (deployment keys at the top level)."""
        data = self.model_dump()
        data.update(data.pop("deployment") or {})
        return data


# A value quoted in an error message is cut short: a config can hold a huge string or,
# through YAML aliases, a structure whose full repr would not fit in memory.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxset, _SHORT.maxtuple = 2, 4, 4, 4, 4
MAX_PROBLEMS = 10  # listed in one message; the rest are counted
# A config file is read whole and checked key by key, which costs about 10 s and 130 MB per
# MiB: 1 MiB holds some ten thousand cameras, while a file of 100,000 took 41 s and 590 MB
# to check, and /dev/zero would never end.
MAX_CONFIG_BYTES = 1 << 20


def _location(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The key path as the file has it: the deployment's keys at the top level, and no sink
    type name (pydantic's tag of the sink model it tried) inside `sinks.NAME`."""
    if loc[:1] == ("deployment",):
        loc = loc[1:]
    if loc[:1] == ("sinks",) and len(loc) > 2 and loc[2] in SINK_TYPES:
        loc = loc[:2] + loc[3:]
    return loc


def _without_secrets(value: Any, depth: int = 0) -> Any:
    """The quoted value with every URL's credentials hidden (a source or webhook URL
    echoed back must not print its password), as far down as `_SHORT` shows it: a copy
    of a few items per level, so a huge or aliased structure costs nothing."""
    if isinstance(value, str):
        return redact(value)
    if depth > _SHORT.maxlevel:
        return value
    if isinstance(value, dict):
        return {k: _without_secrets(v, depth + 1) for k, v in islice(value.items(), _SHORT.maxdict + 1)}
    if isinstance(value, list | tuple):
        return type(value)(_without_secrets(v, depth + 1) for v in islice(value, _SHORT.maxlist + 1))
    return value


def _describe(error: Mapping[str, Any]) -> str:
    loc = _location(tuple(error["loc"]))
    error = {**error, "loc": loc}
    key = ".".join(str(part) for part in loc) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")  # pydantic's prefix for our own checks
    if error["type"] == "value_error" and not error["loc"]:
        return message
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    return f"key '{key}': {message} (got {_SHORT.repr(_without_secrets(error.get('input')))})"


def _validate(data: dict[str, Any], origin: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        # Every problem at once, on one line: a typo'd key shows up as both unknown and missing.
        problems = [_describe(e) for e in exc.errors()]
        if len(problems) > MAX_PROBLEMS:
            problems[MAX_PROBLEMS:] = [f"and {len(problems) - MAX_PROBLEMS} more problem(s)"]
        raise ConfigError(printable(f"{origin}: " + "; ".join(problems))) from None


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Input lists named in a config are relative to the config file (outputs stay relative to the cwd)."""
    purposes = data.get("purposes")
    for purpose in purposes.values() if isinstance(purposes, dict) else ():  # else validation says what is wrong
        if isinstance(purpose, dict):
            for key in ("hotlist", "compliant_plates"):
                if isinstance(purpose.get(key), str):
                    purpose[key] = str(base / purpose[key])
    sinks = data.get("sinks")
    for sink in sinks.values() if isinstance(sinks, dict) else ():
        for key in ("ca_file", "cert_file", "key_file"):  # a webhook's or MQTT sink's certificates
            if isinstance(sink, dict) and isinstance(sink.get(key), str):
                sink[key] = str(base / sink[key])
    return data


class _Loader(yaml.SafeLoader):
    """Safe YAML, with two differences: a key given twice in a mapping is an error (PyYAML
    silently keeps the last, so a second `pipeline:` section would drop the first), and
    dates stay text (no setting is a date, while a reference such as 2021-05-12 is text;
    an impossible date such as 2021-02-30 would otherwise fail inside the parser)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _as_text(loader: _Loader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _as_text)


def _yaml_problem(exc: Exception) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        return exc.problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_settings(path: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
    """Settings from an optional YAML file, then `overrides` (section -> key -> value, None skipped)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as file:
                raw = file.read(MAX_CONFIG_BYTES + 1)
            if len(raw) > MAX_CONFIG_BYTES:
                raise ConfigError(
                    f"{path}: config file larger than {MAX_CONFIG_BYTES // 2**20} MiB ({MAX_CONFIG_BYTES} bytes), "
                    f"the most anpr reads (some ten thousand cameras fit in it)"
                )
            text = raw.decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        except OSError as exc:  # a folder, no permission...
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        try:
            loaded = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
        except Exception as exc:  # whatever the parser raises on this text, the text is at fault
            raise ConfigError(printable(f"{path}: not valid YAML: {_yaml_problem(exc)}")) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
        data = _resolve_paths(loaded or {}, path.parent)
    settings = _validate(data, str(path) if path else "defaults")
    flags = {section: {k: v for k, v in keys.items() if v is not None} for section, keys in (overrides or {}).items()}
    if any(flags.values()):
        merged = settings.flat()
        for section, keys in flags.items():
            merged[section].update(keys)
        settings = _validate(merged, "command-line option")
    return _with_database_files(settings, data.get("store"), path)


# The files that belong with one database: found from the working folder, the same
# database run from another folder would get a second key, and its checkpoints go astray.
DATABASE_FILES = ("key_file", "audit_checkpoints")


def _with_database_files(settings: Settings, given: Any, config: Path | None) -> Settings:
    """store.key_file and store.audit_checkpoints anchored: one given relative in the config
    file is relative to that file's folder (as its other files are); a default one is next
    to the database when it is a SQLite file, else next to the config file, else in the
    working folder. Absolute ones are left as they are."""
    given = given if isinstance(given, dict) else {}
    database = _sqlite_folder(settings.store.url)
    anchored = {}
    for key in DATABASE_FILES:
        path = Path(getattr(settings.store, key)).expanduser()
        if config is not None and key in given:
            base: Path | None = config.parent
        else:
            base = database or (config.parent if config is not None else None)
        if base is not None and not path.is_absolute():
            anchored[key] = str(base / path)
    return settings.model_copy(update={"store": settings.store.model_copy(update=anchored)}) if anchored else settings


def _sqlite_folder(url: str) -> Path | None:
    """The folder of the SQLite file `url` (store.url: a URL or a path) names; None for another database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if "://" not in url:
        return Path(url).expanduser().resolve().parent
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None  # reported where the database is opened
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve().parent
