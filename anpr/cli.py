"""The `anpr` command line.

    anpr run SOURCE --config DEPLOYMENT   read plates under a deployment's purpose policy
    anpr eval DATASET                     detection recall and exact-plate accuracy on annotated photos
    anpr demo                             the sample clip under every config in configs/
    anpr policy check|explain CONFIG      what a deployment may and may not do, and why
    anpr db purge|mark-paid|record-finding|search     retention and gated queries
    anpr audit verify                     check the audit log's hash chain

Errors caused by input are printed as one line, `anpr: error: ...`, with exit status 2.
A run stopped by Ctrl-C or SIGTERM drains the frames already decoded, commits and exits 0; a second
signal aborts with status 130.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from anpr.errors import AnprError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Automatic number-plate recognition: read plates from video, RTSP streams and images.",
)

OcrOption = Annotated[Optional[str], typer.Option("--ocr", help="OCR backend: ppocr (default) or easyocr.")]
BatchOption = Annotated[Optional[int], typer.Option("--batch", help="Frames per detector call (default 8).")]
DeviceOption = Annotated[Optional[str], typer.Option("--device", help="cpu (default), cuda or cuda:N.")]
DetectorOption = Annotated[Optional[str], typer.Option(
    "--detector", help="Detector runtime: auto (default: onnx on cpu, torch on cuda), torch or onnx.")]


def _saving(settings):
    from anpr.pipeline import WorkSaving

    return WorkSaving(settings.pipeline.stride, settings.pipeline.motion_threshold, settings.pipeline.settle_reads)


def _detector(settings):
    from anpr.detect import make_detector

    return make_detector(settings.detector.backend, device=settings.detector.device,
                         confidence=settings.detector.confidence, input_size=settings.detector.input_size)


def _quiet_libraries() -> None:
    # Ultralytics and torch print banners and warnings on stdout/stderr that would
    # corrupt --jsonl output and bury our own messages.
    os.environ.setdefault("YOLO_VERBOSE", "False")
    # OpenCV and FFmpeg log decoder complaints (e.g. "moov atom not found") on stderr;
    # the source turns those failures into one clear error of its own.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _ProgressLine:
    """A one-line progress display on stderr, redrawn in place on a terminal: per camera,
    its state, frames and reads; it also feeds the JSON status log."""

    def __init__(self, total: int | None, status_log=None) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty()
        self.status_log = status_log

    def __call__(self, lanes) -> None:
        if self.status_log:
            self.status_log.update(lanes)
        if not self.enabled:
            return
        parts = []
        for lane in lanes:
            status, stats = lane.reader.status, lane.stats
            of_total = f"/{self.total}" if self.total and len(lanes) == 1 else ""
            state = "" if status.state.value == "connected" else f" {status.state.value.upper()}"
            again = f" reconnects {status.reconnects}" if status.reconnects else ""
            dropped = f" dropped {lane.reader.dropped}" if lane.reader.dropped else ""
            name = f"{lane.name}:" if len(lanes) > 1 else ""
            parts.append(f"{name}{state} frames {stats.frames}{of_total} {stats.fps:5.1f}/s reads {stats.reads}"
                         f"{again}{dropped}")
        sys.stderr.write("\r  " + " | ".join(parts) + "   ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


class _PlateTally:
    """Confidence, time and frame of every kept read, by plate text, for the end-of-run summary."""

    def __init__(self) -> None:
        self.by_plate: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)

    def write(self, reads) -> None:
        for policed in reads:
            read = policed.read
            self.by_plate[read.plate][read.frame] = (read.confidence, read.time)


class _JsonLines:
    def write(self, reads) -> None:
        for read in reads:
            sys.stdout.write(json.dumps(read.as_json()) + "\n")
        sys.stdout.flush()


class _Passages:
    """Groups kept reads into passages (one tracker per purpose) and prints each as it closes."""

    def __init__(self, jsonl: bool) -> None:
        from anpr.track import PassageTracker

        self.jsonl = jsonl
        self.trackers: dict[str, PassageTracker] = defaultdict(PassageTracker)
        self.camera: dict[str, str] = {}
        self.printed: list[dict] = []

    def write(self, reads) -> None:
        by_purpose: dict[str, list] = defaultdict(list)
        for policed in reads:
            by_purpose[policed.purpose].append(policed.read)
            self.camera[policed.read.source] = policed.camera
        for purpose, purpose_reads in by_purpose.items():
            self._emit(purpose, self.trackers[purpose].update(purpose_reads))

    def finish(self) -> None:
        for purpose, tracker in self.trackers.items():
            self._emit(purpose, tracker.flush())

    def _emit(self, purpose: str, passages) -> None:
        for passage in passages:
            voted = passage.vote()
            first, last = passage.reads[0], passage.reads[-1]
            record = {
                "source": first.source, "camera": self.camera.get(first.source), "purpose": purpose,
                "plate": voted.plate, "confidence": round(voted.confidence, 4),
                "candidates": [[t, round(p, 4)] for t, p in voted.candidates],
                "country": voted.country, "format": voted.format,
                "first_frame": first.frame, "last_frame": last.frame,
                "first_time": round(first.time, 3), "last_time": round(last.time, 3), "reads": len(passage.reads),
            }
            self.printed.append(record)
            if self.jsonl:
                sys.stdout.write(json.dumps(record) + "\n")
                sys.stdout.flush()


def _install_stop_handler() -> threading.Event:
    """First Ctrl-C (or SIGTERM) asks the loop to stop after its batch; a second one aborts."""
    stop = threading.Event()

    def handler(signum, frame):  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _status("\nanpr: stopping: the frames already read go through; press Ctrl-C again to abort")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _print_summary(tally: _PlateTally, gate_tally, lanes, store_url: str, plate_table: bool) -> None:
    if plate_table and tally.by_plate:
        print(f"{'plate':<12} {'reads':>5} {'best':>5}  {'first s':>8} {'last s':>8}")
        for plate, frames in sorted(tally.by_plate.items(), key=lambda kv: -len(kv[1])):
            confidences = [c for c, _ in frames.values()]
            times = [t for _, t in frames.values()]
            print(f"{plate:<12} {len(frames):>5} {max(confidences):>5.2f}  {min(times):>8.2f} {max(times):>8.2f}")
    for purpose, number in sorted(gate_tally.stored.items()):
        _status(f"anpr: {purpose}: {number} reads kept")
    for (purpose, rule, outcome), number in sorted(gate_tally.counted.items()):
        _status(f"anpr: {purpose}: {number} reads {outcome.value.replace('_', ' ')} ({rule}); only the count is kept")
    for lane in lanes:
        stats, status = lane.stats, lane.reader.status
        name = f"camera {lane.name}: " if len(lanes) > 1 else ""
        _status(f"anpr: {name}{stats.frames} frames in {stats.seconds:.1f} s ({stats.fps:.1f} frames/s)"
                + (f", {lane.reader.dropped} frames dropped" if lane.reader.dropped else "")
                + (f", {status.reconnects} reconnections" if status.reconnects else ""))
        if status.damaged_stretches:
            _status(f"anpr: warning: {name}{lane.reader.source.name} is damaged: {status.damaged_stretches} "
                    f"stretch(es) of undecodable frames skipped")
        if status.unreadable:
            _status(f"anpr: warning: {name}{len(status.unreadable)} image(s) could not be decoded and were skipped: "
                    + ", ".join(Path(p).name for p in status.unreadable[:5]) + (" ..." if len(status.unreadable) > 5 else ""))
    _status(f"anpr: {gate_tally.seen} reads seen, {sum(gate_tally.stored.values())} kept in {store_url}")


def _pick_camera(settings, camera_id: str | None):
    from anpr.errors import ConfigError

    if camera_id is not None:
        for camera in settings.cameras:
            if camera.id == camera_id:
                return camera
        raise ConfigError(f"no camera '{camera_id}' in the config; cameras: {', '.join(c.id for c in settings.cameras)}")
    if len(settings.cameras) > 1:
        raise ConfigError(f"the config has {len(settings.cameras)} cameras: choose one with --camera "
                          f"({', '.join(c.id for c in settings.cameras)})")
    return settings.cameras[0]


def _announce_decisions(decisions, camera: str | None = None) -> None:
    where = f"camera {camera}: " if camera else ""
    for decision in decisions:
        if decision.allowed:
            kept = (f"reads kept {decision.retention_days:g} days" if decision.retention_days is not None
                    else "aggregate counts only")
            _status(f"anpr: {where}purpose {decision.purpose}: allowed by {decision.rule.id} ({kept})")
        else:
            _status(f"anpr: {where}purpose {decision.purpose}: DENIED by {decision.rule.id}: {'; '.join(decision.reasons)} "
                    f"[{decision.legal_reference}]")
        for note in decision.retention_notes:
            _status(f"anpr: warning: {where}purpose {decision.purpose}: {note}")


@app.command()
def run(
    source: Annotated[Optional[str], typer.Argument(
        help="Video file, RTSP URL, image folder or image file (default: the camera's source in the config).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Deployment config (see configs/).")] = None,
    camera_id: Annotated[Optional[str], typer.Option("--camera", help="Camera of the config that SOURCE is.")] = None,
    db: Annotated[Optional[str], typer.Option("--db", help="SQLAlchemy URL or SQLite file path (default anpr.sqlite).")] = None,
    ocr: OcrOption = None,
    batch: BatchOption = None,
    device: DeviceOption = None,
    detector_backend: DetectorOption = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Write one JSON object per kept read to stdout.")] = False,
    passages: Annotated[bool, typer.Option("--passages", help="Group reads of one vehicle into passages: "
                                           "with --jsonl one object per passage, else a passage table.")] = False,
    demo: Annotated[bool, typer.Option("--demo", help="Run even when every purpose is denied, to show the reads blocked.")] = False,
    log_json: Annotated[Optional[Path], typer.Option("--log-json", help="Append JSON status lines (camera states, "
                                                     "reconnects, every 10 s) to this file; '-' for stderr.")] = None,
) -> None:
    """Read plates under a deployment's policy: SOURCE as one camera, or, without SOURCE,
    every camera of the config at once. Files are read to their end; streams until Ctrl-C
    or SIGTERM, reconnecting when they drop."""
    from anpr.audit import AuditLog
    from anpr.config import load_settings
    from anpr.errors import PolicyRefusal
    from anpr.policy.engine import Policy
    from anpr.policy.gate import GateTally, PolicyGate
    from anpr.sinks import make_sinks
    from anpr.source import FrameReader
    from anpr.store import DatabaseUnavailable, ReadStore

    settings = load_settings(config, {"pipeline": {"ocr": ocr, "batch": batch},
                                      "detector": {"device": device, "backend": detector_backend},
                                      "store": {"url": db}})
    if not settings.declares_deployment:
        raise PolicyRefusal("no deployment declared: pass --config with the controller, cameras and purposes "
                            "(examples in configs/); without one no read may be kept")
    policy = Policy(settings)
    cameras = _cameras_to_run(settings, config, source, camera_id)
    decisions_of = {camera.id: policy.camera_decisions(camera.id) for camera, _ in cameras}
    for camera, _ in cameras:
        decisions = decisions_of[camera.id]
        _announce_decisions(decisions, camera.id if len(cameras) > 1 else None)
        if not any(d.allowed for d in decisions) and not demo:
            refused = "; ".join(f"{d.purpose}: {d.rule.id} [{d.legal_reference}]" for d in decisions)
            raise PolicyRefusal(f"every purpose of camera '{camera.id}' is denied ({refused}): refusing to start "
                                f"(--demo runs it and shows every read blocked)")
    status_log = _StatusLog(log_json) if log_json else None
    sources = _open_sources(cameras, settings)  # bad input fails here, before the database is touched
    store = ReadStore(settings.store.url)
    spool = None
    try:
        store.check()
        audit = AuditLog(store.engine)
        from anpr.ocr import make_recogniser
        from anpr.pipeline import Lane, Pipeline, run_lanes
        from anpr.spool import SpooledStore

        # The gate writes through the spool: if the database goes away mid-run, allowed
        # reads wait on disk (with their deadlines) and are sent when it is back.
        spool = SpooledStore(store, settings.store.spool_dir, settings.store.spool_max_mb * 2**20,
                             warn=_status)
        if spool.pending.batches:
            _status(f"anpr: {spool.pending.reads} read(s) left in {spool.directory} by an earlier run "
                    f"while the database was down: sending them first")

        detector = _detector(settings)
        recogniser = make_recogniser(settings.pipeline.ocr)
        tally = _PlateTally()
        passage_output = _Passages(jsonl) if passages else None
        outputs = [tally] + ([passage_output] if passage_output else [_JsonLines()] if jsonl else [])
        sinks = make_sinks(settings, spool)
        lanes, gates = [], []
        for (camera, _), frame_source in zip(cameras, sources):
            gates.append(PolicyGate(policy, camera, spool, sinks, outputs=outputs))
            pipeline = Pipeline(detector, recogniser, [gates[-1]], settings.pipeline.batch,
                                settings.pipeline.min_confidence, _saving(settings))
            lanes.append(Lane(camera.id, FrameReader(frame_source, settings.pipeline.queue), pipeline))
        progress = _ProgressLine(sum(getattr(s, "frame_count", 0) for s in sources) or None, status_log)
        stop = _install_stop_handler()
        audit.append("run.start", "pipeline", {
            "deployment": settings.name, "config": str(config), "cameras": [c.id for c, _ in cameras], "demo": demo,
            "decisions": {camera: {d.purpose: {"verdict": d.verdict.value, "rule": d.rule.id} for d in decisions}
                          for camera, decisions in decisions_of.items()}})
        for camera, location in cameras:
            _status(f"anpr: reading {location} as camera {camera.id}")
        _status(f"anpr: ocr {settings.pipeline.ocr}, batch {settings.pipeline.batch}, "
                f"device {settings.detector.device}, into {store.safe_url}")
        if status_log:
            status_log.event("run.start", cameras={c.id: loc for c, loc in cameras})
            status_log.spool = spool
        run_lanes(lanes, stop=stop, progress=progress)
        progress.done()
        if passage_output:
            passage_output.finish()
        gate_tally = GateTally.combined([gate.tally for gate in gates])
        spool.flush()
        try:
            audit.append("run.end", "pipeline", {
                "cameras": {lane.name: {"frames": lane.stats.frames, "reconnects": lane.reader.status.reconnects}
                            for lane in lanes},
                "reads_seen": gate_tally.seen, "kept": dict(gate_tally.stored), "purged": gate_tally.purged,
                "counted": {f"{p}/{r}/{o.value}": n for (p, r, o), n in gate_tally.counted.items()},
                "spool": {k: v for k, v in spool.status.as_json().items() if k.endswith(("_batches", "_reads"))}})
        except DatabaseUnavailable as exc:
            _status(f"anpr: warning: the run's end is not in the audit log: {exc}")
        if status_log:
            status_log.event("run.end", cameras=_lane_status(lanes), database=spool.as_json())
        if passage_output and not jsonl:
            print(f"{'plate':<12} {'conf':>5} {'reads':>5}  {'first s':>8} {'last s':>8}  country")
            for p in passage_output.printed:
                print(f"{p['plate']:<12} {p['confidence']:>5.2f} {p['reads']:>5}  {p['first_time']:>8.2f} "
                      f"{p['last_time']:>8.2f}  {p['country'] or '-'}")
        _print_summary(tally, gate_tally, lanes, store.safe_url, plate_table=not jsonl and not passages)
        _report_spool(spool, store.safe_url)
        if not any(lane.reader.status.received for lane in lanes):
            from anpr.errors import SourceError

            raise SourceError("no frame could be decoded from " + ", ".join(loc for _, loc in cameras))
    finally:
        if spool is not None:
            spool.close()
        store.close()


def _report_spool(spool, store_url: str) -> None:
    from anpr.errors import StoreError

    status, pending = spool.status, spool.pending
    if status.spooled_batches or status.flushed_batches:
        _status(f"anpr: the database was unreachable for part of the run: {status.spooled_reads} read(s) spooled, "
                f"{status.flushed_reads} sent later" + (f", {status.duplicate_batches} batch(es) found already "
                                                         f"written" if status.duplicate_batches else ""))
    if pending.batches:
        _status(f"anpr: warning: database {store_url} unreachable: {pending.reads} read(s) kept in "
                f"{spool.directory}; the next run with this database sends them (each is deleted when its "
                f"retention ends)")
    if status.lost_reads:
        raise StoreError(f"{status.lost_reads} read(s) lost: the spool was full or not writable "
                         f"(store.spool_max_mb, store.spool_dir)")


def _cameras_to_run(settings, config, source: str | None, camera_id: str | None):
    """(camera, location) pairs: SOURCE as one camera, or every camera of the config with its source."""
    from anpr.errors import ConfigError

    if source is not None or camera_id is not None or len(settings.cameras) == 1:
        camera = _pick_camera(settings, camera_id)
        location = source or camera.source
        if not location:
            raise ConfigError(f"camera '{camera.id}' has no source in {config}: give SOURCE")
        return [(camera, location)]
    missing = [c.id for c in settings.cameras if not c.source]
    if missing:
        raise ConfigError(f"camera(s) {', '.join(missing)} have no source in {config}: "
                          f"give each a source, or run one with SOURCE --camera ID")
    return [(camera, camera.source) for camera in settings.cameras]


def _open_sources(cameras, settings):
    """Every camera's source. With several cameras, a stream that is down now is retried in
    the background (a dead camera must not keep the others from running); if none at all
    can be reached, that is a configuration problem and an error."""
    from anpr.errors import SourceError
    from anpr.source import Reconnect, SourceState, open_source

    reconnect = Reconnect(settings.stream.stall_seconds, settings.stream.reconnect_first_delay,
                          settings.stream.reconnect_max_delay)
    several = len(cameras) > 1
    sources = [open_source(location, reconnect, wait_for_stream=several) for _, location in cameras]
    down = [(camera.id, s.status.last_error) for (camera, _), s in zip(cameras, sources)
            if s.status.state is SourceState.RECONNECTING]
    if several and len(down) == len(sources):
        for s in sources:
            s.close()
        raise SourceError("no camera can be reached: " + "; ".join(f"{c}: {why}" for c, why in down))
    for camera, why in down:
        _status(f"anpr: warning: camera {camera} is down ({why}); retrying in the background")
    return sources


def _lane_status(lanes) -> dict[str, dict]:
    return {lane.name: {**lane.reader.status.as_json(), "processed": lane.stats.frames, "reads": lane.stats.reads,
                        "dropped": lane.reader.dropped} for lane in lanes}


class _StatusLog:
    """JSON lines for monitoring (`--log-json`): run start and end, every change of a camera's
    state, and every camera's status at least every STATUS_EVERY_SECONDS."""

    STATUS_EVERY_SECONDS = 10.0

    def __init__(self, path: Path) -> None:
        from anpr.errors import ConfigError

        try:
            self._out = sys.stderr if str(path) == "-" else path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the JSON log {path}: {exc.strerror or exc}") from None
        self._logged: dict[str, int] = {}  # camera -> state changes already written
        self._next_status = 0.0
        self.spool = None  # the database's state, when the run has a spool

    def event(self, name: str, **fields) -> None:
        import time

        self._out.write(json.dumps({"time": round(time.time(), 3), "event": name, **fields}) + "\n")
        self._out.flush()

    def update(self, lanes) -> None:
        import time

        for lane in lanes:
            changes = lane.reader.status.changes
            for when, state, why in changes[self._logged.get(lane.name, 0):]:
                self.event("camera", camera=lane.name, state=state.value, since=round(when, 3), error=why)
            self._logged[lane.name] = len(changes)
        if time.monotonic() >= self._next_status:
            self._next_status = time.monotonic() + self.STATUS_EVERY_SECONDS
            self.event("status", cameras=_lane_status(lanes),
                       **({"database": self.spool.as_json()} if self.spool else {}))


@app.command("eval")
def evaluate_command(
    dataset: Annotated[Path, typer.Argument(help="Folder of images with NAME.txt annotations (openalpr layout).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")] = False,
    ocr: OcrOption = None,
    batch: BatchOption = None,
    device: DeviceOption = None,
    detector_backend: DetectorOption = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML settings file.")] = None,
) -> None:
    """Measure plate detection recall and exact-plate accuracy on an annotated folder."""
    from anpr.config import load_settings
    from anpr.eval import evaluate, load_annotations

    settings = load_settings(config, {"pipeline": {"ocr": ocr, "batch": batch},
                                      "detector": {"device": device, "backend": detector_backend}})
    load_annotations(dataset)  # a malformed dataset fails before the models load

    from anpr.ocr import make_recogniser

    detector = _detector(settings)
    recogniser = make_recogniser(settings.pipeline.ocr)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\r  images {done}/{total}")
            sys.stderr.flush()

    report = evaluate(dataset, detector, recogniser, settings.pipeline.batch, progress)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    summary = report.summary()
    if as_json:
        print(json.dumps(summary))
        return
    print(f"dataset           {dataset}")
    print(f"ocr backend       {settings.pipeline.ocr}")
    print(f"images            {summary['images']}")
    print(f"detection recall  {summary['detection_recall']:.3f}  (IoU >= 0.3)")
    print(f"exact plates      {summary['exact']:.3f}")
    print(f"right in top 3    {summary['top3']:.3f}")
    print(f"ms per image      {summary['ms_per_image']:.1f}")


REPO = Path(__file__).resolve().parent.parent


@app.command()
def bench(
    video: Annotated[Path, typer.Argument(help="Video to measure on (e.g. from benchmarks/make_clip.py).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    naive_frames: Annotated[int, typer.Option("--naive-frames", min=1, help="Frames the naive pipeline runs on.")] = 100,
    batch: BatchOption = None,
    input_size: Annotated[int, typer.Option("--input-size", help="Detector input size.")] = 640,
    detector_backend: DetectorOption = None,
    stride: Annotated[int, typer.Option("--stride", min=1, help="Detect on every n-th frame.")] = 1,
    settle: Annotated[int, typer.Option("--settle", min=0, help="Stop reading a plate after n identical reads.")] = 0,
    motion: Annotated[float, typer.Option("--motion", min=0.0, help="Skip still frames (mean grey change).")] = 0.0,
) -> None:
    """Frames/s of decoding alone, of the naive pipeline and of anpr, measured in one run."""
    from anpr.bench import benchmark

    result = benchmark(video, naive_frames=naive_frames, batch=batch or 8, input_size=input_size, device=device,
                       detector=detector_backend or "auto", stride=stride, settle=settle, motion=motion,
                       progress=lambda m: _status(f"anpr bench: {m}"))
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:<20} {value}")


class _Collect:
    def __init__(self) -> None:
        self.reads: list = []

    def write(self, reads) -> None:
        self.reads.extend(reads)


@app.command()
def demo(
    configs: Annotated[Path, typer.Option("--configs", help="Folder of deployment configs.")] = REPO / "configs",
    sample: Annotated[Path, typer.Option("--sample", help="Clip to read.")] = REPO / "samples" / "sample.mp4",
    keep: Annotated[Optional[Path], typer.Option("--keep", help="Keep each config's database in this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per table row.")] = False,
) -> None:
    """Run the sample under every config in configs/ and show, per purpose, what was kept and blocked.

    The clip is read once; its reads then pass each deployment's policy gate into a
    database of their own, exactly as `anpr run --config ... --demo` would.
    """
    import tempfile

    from anpr.config import load_settings
    from anpr.detect import make_detector
    from anpr.ocr import make_recogniser
    from anpr.pipeline import Pipeline
    from anpr.policy.engine import Policy
    from anpr.policy.gate import Outcome, PolicyGate
    from anpr.sinks import make_sinks
    from anpr.source import FrameReader, open_source
    from anpr.store import ReadStore

    paths = sorted(configs.glob("*.yaml"))
    if not paths:
        raise AnprError(f"no *.yaml configs in {configs}")
    deployments = [(path, load_settings(path)) for path in paths]  # an invalid config fails before reading
    collected = _Collect()
    frame_source = open_source(str(sample))
    _status(f"anpr: reading {sample} once for {len(paths)} configs")
    Pipeline(make_detector(), make_recogniser("ppocr"), [collected]).run(FrameReader(frame_source))
    workdir = Path(keep or tempfile.mkdtemp(prefix="anpr-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, settings in deployments:
        policy = Policy(settings)
        store = ReadStore(str(workdir / f"{path.stem}.sqlite"))
        # Exports go to the work folder, never into the current directory.
        settings = settings.model_copy(update={"sinks": {
            name: sink.model_copy(update={"path": workdir / f"{path.stem}-{name}.jsonl"}) if sink.path else sink
            for name, sink in settings.sinks.items()}})
        sinks = make_sinks(settings, store)
        for camera in settings.cameras:
            gate = PolicyGate(policy, camera, store, sinks)
            gate.write(collected.reads)
            for code in camera.purposes:
                decision = policy.purpose(code)
                counted = {o: gate.tally.counted_for(code, o) for o in Outcome}
                rows.append({"config": path.name, "purpose": code, "verdict": decision.verdict.value,
                             "rule": decision.rule.id, "seen": gate.tally.seen, "stored": gate.tally.stored[code],
                             "blocked": counted[Outcome.BLOCKED], "counted_only": counted[Outcome.AGGREGATED],
                             "not_stored": counted[Outcome.NOT_STORED]})
        store.close()
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    header = f"{'config':<32} {'purpose':<26} {'verdict':<7} {'rule':<12} {'seen':>5} {'stored':>6} {'blocked':>7}  other"
    print(header)
    print("-" * len(header))
    for row in rows:
        other = ", ".join(f"{row[k]} {k.replace('_', ' ')}" for k in ("counted_only", "not_stored") if row[k])
        print(f"{row['config']:<32} {row['purpose']:<26} {row['verdict']:<7} {row['rule']:<12} {row['seen']:>5} "
              f"{row['stored']:>6} {row['blocked']:>7}  {other}")
    _status(f"anpr: databases in {workdir}")


from anpr.cli_admin import audit_app, db_app, policy_app  # noqa: E402

app.add_typer(policy_app, name="policy")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")


def main() -> None:
    from typer._click import exceptions as click  # typer vendors Click; its errors are not exported

    _quiet_libraries()
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "")
        sys.exit(2)
    except click.UsageError as exc:  # a bad flag or argument: one line, like every other input error
        _status(f"anpr: error: {exc.format_message()}")
        sys.exit(2)
    except typer.Abort:
        _status("anpr: aborted")
        sys.exit(130)
    except AnprError as exc:
        _status(f"anpr: error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _status("anpr: aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
