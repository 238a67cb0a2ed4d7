"""One setup path: a run built from the settings.

`anpr run`, `anpr demo`, `anpr bench` and `anpr eval` all build what they need here,
so every command honours the config (detector backend, recogniser, device, batch,
work savings) the same way:

    load_models(settings)                   the detector and the recogniser, on the run's device
    cameras_to_run(deployment, ...)         which cameras, reading what
    open_sources(cameras, settings.stream)  their frame sources
    build_lanes(...)                        per camera: reader -> pipeline -> policy gate -> sinks
    DeploymentRun                           all of it with the database, the spool and the audit log

Messages for the operator go through `logging` (logger `anpr`); the CLI shows them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event

from anpr.config.deployment import Camera, Deployment
from anpr.config.settings import DetectorSettings, RunSettings, Settings, StreamSettings
from anpr.errors import ConfigError, PolicyRefusal, SourceError
from anpr.policy.engine import Policy, PurposeDecision
from anpr.policy.gate import DatabaseSink, GateTally, PassageSink, PolicedSink, PolicyGate
from anpr.reading.detect import MotionWindows, PlateDetector, SecondPass, make_detector
from anpr.reading.ocr import PlateRecogniser, make_recogniser
from anpr.reading.source import (
    FrameReader,
    FrameSource,
    ImageSource,
    Reconnect,
    SourceState,
    decode_threads,
    open_source,
)
from anpr.reading.track import PlateTracker
from anpr.redact import printable, redact
from anpr.run.pipeline import BoxObserver, Lane, Pipeline, ReadSink, StageTimes, run_lanes
from anpr.sinks.catalog import close_sinks, make_sinks
from anpr.storage.audit import AuditLog
from anpr.storage.binding import require_binding, require_key
from anpr.storage.keys import load_keys
from anpr.storage.spool import SpooledStore
from anpr.storage.store import DatabaseUnavailable, ReadStore

log = logging.getLogger("anpr")
Progress = Callable[[Sequence[Lane]], None]  # called with every camera's lane after each batch


# --- models ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Models:
    """The two networks of a run, shared by all its cameras."""

    detector: PlateDetector
    recogniser: PlateRecogniser


def load_recogniser(settings: RunSettings) -> PlateRecogniser:
    return make_recogniser(settings.pipeline.ocr, settings.detector.device)


def load_models(settings: RunSettings) -> Models:
    return Models(make_detector(settings.detector), load_recogniser(settings))


# --- cameras and sources -----------------------------------------------------------------


@dataclass(frozen=True)
class CameraSource:
    """A camera of the deployment and where its frames come from in this run."""

    camera: Camera
    location: str  # as given, credentials and all: for opening the source only

    @property
    def shown(self) -> str:
        """The location with its credentials hidden, for messages and logs."""
        return redact(self.location)


def require_deployment(settings: Settings) -> Deployment:
    if settings.deployment is None:
        raise PolicyRefusal(
            "no deployment declared: pass --config with the controller, cameras and purposes "
            "(examples in configs/); without one no read may be kept"
        )
    return settings.deployment


def cameras_to_run(
    deployment: Deployment, source: str | None, camera_id: str | None, config: Path | None
) -> list[CameraSource]:
    """SOURCE as one camera of the deployment, or every camera with its own source."""
    if source is not None or camera_id is not None or len(deployment.cameras) == 1:
        camera = _pick_camera(deployment, camera_id)
        location = source or camera.source
        if not location:
            raise ConfigError(f"camera '{camera.id}' has no source in {config}: give SOURCE")
        return [CameraSource(camera, location)]
    missing = [c.id for c in deployment.cameras if not c.source]
    if missing:
        raise ConfigError(
            f"camera(s) {', '.join(missing)} have no source in {config}: "
            f"give each a source, or run one with SOURCE --camera ID"
        )
    return [CameraSource(camera, camera.source or "") for camera in deployment.cameras]


def _pick_camera(deployment: Deployment, camera_id: str | None) -> Camera:
    ids = ", ".join(c.id for c in deployment.cameras)
    if camera_id is not None:
        camera = deployment.camera(camera_id)
        if camera is None:
            raise ConfigError(f"no camera '{camera_id}' in the config; cameras: {ids}")
        return camera
    if len(deployment.cameras) > 1:
        raise ConfigError(f"the config has {len(deployment.cameras)} cameras: choose one with --camera ({ids})")
    return deployment.cameras[0]


def refuse_denied_camera(camera: str, decisions: Sequence[PurposeDecision], demo: bool) -> None:
    """A camera whose every purpose is denied does not start (unless `demo`, to show the blocks)."""
    if not any(d.allowed for d in decisions) and not demo:
        refused = "; ".join(f"{d.purpose}: {d.rule.id} [{d.legal_reference}]" for d in decisions)
        raise PolicyRefusal(
            f"every purpose of camera '{camera}' is denied ({refused}): refusing to start "
            f"(--demo runs it and shows every read blocked)"
        )


def open_sources(cameras: Sequence[CameraSource], stream: StreamSettings) -> list[FrameSource]:
    """Every camera's source. With several cameras, a stream that is down now is retried in
    the background (a dead camera must not keep the others from running); if none at all
    can be reached, that is a configuration problem and an error."""
    several = len(cameras) > 1
    threads = decode_threads(len(cameras))
    sources = [open_source(c.location, Reconnect.of(stream), several, threads) for c in cameras]
    down = [
        (c.camera.id, s.status.last_error)
        for c, s in zip(cameras, sources, strict=True)
        if s.status.state is SourceState.RECONNECTING
    ]
    if several and len(down) == len(sources):
        for s in sources:
            s.close()
        raise SourceError("no camera can be reached: " + "; ".join(f"{c}: {why}" for c, why in down))
    for camera, why in down:
        log.warning("camera %s is down (%s); retrying in the background", camera, why)
    return sources


# --- lanes ---------------------------------------------------------------------------------


def with_second_pass(detector: PlateDetector, settings: DetectorSettings, stills: bool) -> PlateDetector:
    """The detector with a second look for small plates (tiles, closer looks) where the
    settings ask for it, and, for video, looking where things move (`video_search`)."""
    if not stills and settings.video_search == "motion":
        detector = MotionWindows(detector, settings)
    if settings.second_pass == "tiles" or (settings.second_pass == "auto" and stills):
        return SecondPass(detector, settings)
    return detector


def read_lane(
    name: str,
    source: FrameSource,
    settings: RunSettings,
    models: Models,
    sinks: Sequence[ReadSink],
    regions: Sequence[str] = (),
    observer: BoxObserver | None = None,
) -> Lane:
    """A camera's frames through the pipeline into `sinks`, with no policy gate (for reads
    that are gated later, as `anpr demo` does); `regions` are the deployment's plate regions.
    Video and streams are tracked (passages), and `observer` sees the tracked boxes; still
    images are not tracked."""
    stills = isinstance(source, ImageSource)
    detector = with_second_pass(models.detector, settings.detector, stills=stills)
    work = settings.pipeline.for_source(stills)
    tracker = None if stills else PlateTracker(settings.detector.confidence, work.frame_stride)
    pipeline = Pipeline(detector, models.recogniser, sinks, work, tuple(regions), tracker, observer)
    # A live camera's queue absorbs the loop's pauses (a slow database call) without losing
    # frames; a file waits for the loop instead, so two batches ahead keep the detector fed,
    # and a longer queue would only hold decoded frames in memory (6 MB each at 1080p).
    queue = settings.pipeline.queue if source.live else min(settings.pipeline.queue, 2 * work.batch)
    return Lane(name, FrameReader(source, queue, work.frame_stride), pipeline)


@dataclass
class Lanes:
    """Every camera of a run: its lane (reader and pipeline) and the policy gate it ends in."""

    lanes: list[Lane]
    gates: list[PolicyGate]
    sinks: Mapping[str, PolicedSink] = field(default_factory=dict)  # the deployment's, shared by the gates
    times: StageTimes = field(default_factory=StageTimes)  # seconds in each stage, all cameras together

    def tally(self) -> GateTally:
        return GateTally.combined([gate.tally for gate in self.gates])

    def run(self, stop: Event | None = None, progress: Progress | None = None) -> None:
        run_lanes(self.lanes, stop=stop, progress=progress, times=self.times)


def build_lanes(
    settings: RunSettings,
    policy: Policy,
    cameras: Sequence[CameraSource],
    sources: Sequence[FrameSource],
    models: Models,
    database: DatabaseSink,
    outputs: Sequence[PolicedSink] = (),
    passage_outputs: Sequence[PassageSink] = (),
    observers: Mapping[str, BoxObserver] | None = None,
) -> Lanes:
    """Per camera: its reader, a pipeline with the shared models, and a policy gate that
    writes to the deployment's sinks (the database sinks through `database`); `observers`:
    by camera id, what sees that camera's tracked boxes (the annotated video)."""
    sinks = make_sinks(policy.deployment.sinks, database)
    lanes: list[Lane] = []
    gates = []
    try:
        for camera, source in zip(cameras, sources, strict=True):
            gate = PolicyGate(policy, camera.camera, database, sinks, outputs=outputs, passage_outputs=passage_outputs)
            gates.append(gate)
            observer = (observers or {}).get(camera.camera.id)
            lanes.append(
                read_lane(camera.camera.id, source, settings, models, [gate], policy.deployment.region, observer)
            )
    except BaseException:
        # Each lane's reader is decoding in a thread of its own already.
        for lane in lanes:
            lane.reader.close()
        raise
    return Lanes(lanes, gates, sinks)


# --- a whole run ---------------------------------------------------------------------------


@dataclass
class RunReport:
    """How a run ended, for the summary."""

    lanes: list[Lane]
    tally: GateTally
    store_url: str
    spool: SpooledStore  # its status, and what it still holds
    frames_received: int = 0


@dataclass(frozen=True)
class DeploymentDatabase:
    """A deployment's database as a run opens it: bound to the deployment, with its audit
    log, and the outage spool the run writes through."""

    store: ReadStore
    user: str  # who runs, as the database knows them
    audit: AuditLog
    spool: SpooledStore


def open_database(settings: RunSettings, policy: Policy) -> DeploymentDatabase:
    """The run's database (a wrong URL, or one that cannot be written, fails here), bound to
    the deployment, and its spool, whose leftovers from an earlier run are sent first.
    Closed again on any error."""
    # The key is loaded (made, by a first run) once the database is found usable: its file
    # is beside the database by default, and a database that cannot be used is the error to report.
    store = ReadStore(
        settings.store.url, lambda: load_keys(settings.store.key_file, create=True), settings.store.timeout_seconds
    )
    spool: SpooledStore | None = None
    try:
        store.check()
        user = store.user()
        audit = AuditLog(store.engine, store.keys, settings.store.audit_checkpoints)
        # A database serves the deployment it was first run for, with the key it was first
        # run with; another is refused here, before any frame is read (policy/binding.py).
        require_key(store, audit, settings.store.key_file, bind_as=user)
        require_binding(store, audit, policy.deployment, user, bind_if_new=True)
        # The gate writes through the spool: if the database goes away mid-run, allowed
        # reads wait on disk (with their deadlines) and are sent when it is back.
        spool = SpooledStore(store, settings.store.spool_dir, settings.store.spool_max_mb * 2**20, audit=audit)
        spool.send_left_over()
    except BaseException:
        if spool is not None:
            spool.close()
        store.close()
        raise
    return DeploymentDatabase(store, user, audit, spool)


def record_run_end(audit: AuditLog, spool: SpooledStore, details: dict[str, object]) -> None:
    """The run's end in the audit log, then a checkpoint; with the database down, the entry
    waits in the spool for the next run with this database."""
    ended = time.time()
    try:
        audit.append("run.end", "pipeline", details, at=ended)
    except DatabaseUnavailable as exc:
        # The run's report must not be lost with the database: it waits with the reads.
        kept = spool.append_audit_later("run.end", "pipeline", details, ended)
        log.warning(
            "the run's end (audit entry run.end) is not in the audit log yet: %s; %s",
            exc,
            f"it waits in {spool.directory} for the next run with this database" if kept else "it is lost",
        )
        return
    try:
        audit.checkpoint()  # the anchor outside the database (audit.py)
    except DatabaseUnavailable as exc:
        log.warning("no audit checkpoint at the run's end: %s", exc)


class DeploymentRun:
    """A deployment's cameras read into its database: sources, store, spool, models, audit.

    Opening order is what makes bad input cheap: the sources first (a wrong path fails
    before the database is touched), then the database (a wrong URL, or one that cannot
    be written, fails before the models load), then the models, and last the readers,
    whose decoding threads start at once. Use as a context manager: it stops the readers
    and closes the sinks, the spool and the database on every exit, so that no error
    leaves a decoding thread running into the interpreter's shutdown (FFmpeg's threads
    abort the process there).
    """

    def __init__(
        self,
        settings: RunSettings,
        policy: Policy,
        decisions: Mapping[str, Sequence[PurposeDecision]],
        cameras: Sequence[CameraSource],
        outputs: Sequence[PolicedSink] = (),
        passage_outputs: Sequence[PassageSink] = (),
        *,
        config: Path | None = None,
        demo: bool = False,
        observers: Mapping[str, BoxObserver] | None = None,
    ) -> None:
        """`decisions`: each camera's purpose decisions, as announced before the run (audited as such);
        `observers`: by camera id, what sees its tracked boxes (`build_lanes`)."""
        self.settings, self.policy, self.decisions, self.cameras = settings, policy, decisions, list(cameras)
        self.config, self.demo = config, demo
        self.sources = open_sources(self.cameras, settings.stream)
        self.spool: SpooledStore | None = None
        try:
            database = open_database(settings, policy)
        except BaseException:
            for source in self.sources:
                source.close()
            raise
        self.store, self.user, self.audit, self.spool = database.store, database.user, database.audit, database.spool
        try:
            self.models = load_models(settings)
            self.lanes = build_lanes(
                settings,
                policy,
                self.cameras,
                self.sources,
                self.models,
                self.spool,
                outputs,
                passage_outputs,
                observers,
            )
        except BaseException:
            self.close()
            raise

    @property
    def frame_count(self) -> int | None:
        return sum(getattr(s, "frame_count", 0) for s in self.sources) or None

    def run(self, stop: Event | None = None, progress: Progress | None = None) -> RunReport:
        assert self.spool is not None, "run() after close()"
        self.audit.append(
            "run.start",
            "pipeline",
            {
                "deployment": self.policy.deployment.name,
                "fingerprint": self.policy.deployment.fingerprint(),
                "user": self.user,
                "config": printable(str(self.config)),  # the audit log is UTF-8; a file name may not be
                "cameras": [c.camera.id for c in self.cameras],
                "demo": self.demo,
                "decisions": {
                    camera: {d.purpose: {"verdict": d.verdict.value, "rule": d.rule.id} for d in ds}
                    for camera, ds in self.decisions.items()
                },
            },
        )
        for camera in self.cameras:
            log.info("reading %s as camera %s", camera.shown, camera.camera.id)
        pipeline = self.settings.pipeline
        log.info(
            "ocr %s, batch %d, device %s, into %s",
            pipeline.ocr,
            pipeline.batch,
            self.settings.detector.device,
            self.store.safe_url,
        )
        self.lanes.run(stop, progress)
        tally = self.lanes.tally()
        self.spool.flush()
        lanes = self.lanes.lanes
        report = RunReport(
            lanes,
            tally,
            self.store.safe_url,
            self.spool,
            frames_received=sum(lane.reader.status.received for lane in lanes),
        )
        details = {
            "cameras": {
                lane.name: {"frames": lane.stats.frames, "reconnects": lane.reader.status.reconnects} for lane in lanes
            },
            "reads_seen": tally.seen,
            "kept": dict(tally.stored),
            "purged": tally.purged,
            "counted": {f"{p}/{r}/{o.value}": n for (p, r, o), n in tally.counted.items()},
            "spool": {k: v for k, v in self.spool.status.as_json().items() if k.endswith(("_batches", "_reads"))},
        }
        record_run_end(self.audit, self.spool, details)
        return report

    def close(self) -> None:
        try:
            # The readers first (again, after a run: it is idempotent): nothing must keep decoding.
            if hasattr(self, "lanes"):
                for lane in self.lanes.lanes:
                    lane.reader.close()
            else:
                for source in self.sources:
                    source.close()
        finally:
            try:
                if hasattr(self, "lanes"):  # sinks next: a webhook's last delivery attempt is part of the run
                    close_sinks(self.lanes.sinks.values(), self.spool)
            finally:
                if self.spool is not None:
                    self.spool.close()
                    self.spool = None
                self.store.close()

    def __enter__(self) -> DeploymentRun:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
