"""The `anpr` command line.

    anpr run SOURCE --config DEPLOYMENT   read plates under a deployment's purpose policy
    anpr eval DATASET                     detection recall and exact-plate accuracy on annotated photos
    anpr demo                             the sample clip under every config in configs/
    anpr policy check|explain CONFIG      what a deployment may and may not do, and why
    anpr db purge|mark-paid|record-finding|search     retention and gated queries
    anpr audit verify                     check the audit log's hash chain

Errors caused by input are printed as one line, `anpr: error: ...`, with exit status 2.
A run stopped by Ctrl-C or SIGTERM finishes its batch, commits and exits 0; a second
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
    """A one-line progress display on stderr, redrawn in place on a terminal."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty()

    def __call__(self, stats) -> None:  # stats: RunStats
        if not self.enabled:
            return
        of_total = f"/{self.total}" if self.total else ""
        dropped = f"  dropped {stats.dropped}" if stats.dropped else ""
        sys.stderr.write(f"\r  frames {stats.frames}{of_total}  {stats.fps:5.1f} frames/s  reads {stats.reads}{dropped}   ")
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
            self.camera[policed.purpose] = policed.camera
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
                "source": first.source, "camera": self.camera.get(purpose), "purpose": purpose,
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
        _status("\nanpr: stopping after the current batch (press Ctrl-C again to abort)")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _print_summary(tally: _PlateTally, gate_tally, stats, store_url: str, plate_table: bool) -> None:
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
    _status(f"anpr: {stats.frames} frames in {stats.seconds:.1f} s ({stats.fps:.1f} frames/s), "
            f"{gate_tally.seen} reads seen, {sum(gate_tally.stored.values())} kept in {store_url}"
            + (f", {stats.dropped} frames dropped" if stats.dropped else ""))


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


def _announce_decisions(decisions) -> None:
    for decision in decisions:
        if decision.allowed:
            kept = (f"reads kept {decision.retention_days:g} days" if decision.retention_days is not None
                    else "aggregate counts only")
            _status(f"anpr: purpose {decision.purpose}: allowed by {decision.rule.id} ({kept})")
        else:
            _status(f"anpr: purpose {decision.purpose}: DENIED by {decision.rule.id}: {'; '.join(decision.reasons)} "
                    f"[{decision.legal_reference}]")
        for note in decision.retention_notes:
            _status(f"anpr: warning: purpose {decision.purpose}: {note}")


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
) -> None:
    """Read plates from SOURCE under a deployment's policy, to the end of a file or until Ctrl-C."""
    from anpr.audit import AuditLog
    from anpr.config import load_settings
    from anpr.errors import ConfigError, PolicyRefusal
    from anpr.policy.engine import Policy
    from anpr.policy.gate import PolicyGate
    from anpr.sinks import make_sinks
    from anpr.source import FrameReader, open_source
    from anpr.store import ReadStore

    settings = load_settings(config, {"pipeline": {"ocr": ocr, "batch": batch},
                                      "detector": {"device": device, "backend": detector_backend},
                                      "store": {"url": db}})
    if not settings.declares_deployment:
        raise PolicyRefusal("no deployment declared: pass --config with the controller, cameras and purposes "
                            "(examples in configs/); without one no read may be kept")
    policy = Policy(settings)
    camera = _pick_camera(settings, camera_id)
    location = source or camera.source
    if not location:
        raise ConfigError(f"camera '{camera.id}' has no source in {config}: give SOURCE")
    decisions = policy.camera_decisions(camera.id)
    _announce_decisions(decisions)
    if not any(d.allowed for d in decisions) and not demo:
        refused = "; ".join(f"{d.purpose}: {d.rule.id} [{d.legal_reference}]" for d in decisions)
        raise PolicyRefusal(f"every purpose of camera '{camera.id}' is denied ({refused}): refusing to start "
                            f"(--demo runs it and shows every read blocked)")
    frame_source = open_source(location)  # bad input fails here, before the database is touched
    store = ReadStore(settings.store.url)
    try:
        store.check()
        audit = AuditLog(store.engine)
        from anpr.ocr import make_recogniser
        from anpr.pipeline import Pipeline

        detector = _detector(settings)
        recogniser = make_recogniser(settings.pipeline.ocr)
        tally = _PlateTally()
        passage_output = _Passages(jsonl) if passages else None
        outputs = [tally] + ([passage_output] if passage_output else [_JsonLines()] if jsonl else [])
        gate = PolicyGate(policy, camera, store, make_sinks(settings, store), outputs=outputs)
        pipeline = Pipeline(detector, recogniser, [gate], settings.pipeline.batch, settings.pipeline.min_confidence,
                            _saving(settings))
        progress = _ProgressLine(getattr(frame_source, "frame_count", None) or None)
        stop = _install_stop_handler()
        audit.append("run.start", "pipeline", {
            "deployment": settings.name, "config": str(config), "camera": camera.id, "demo": demo,
            "decisions": {d.purpose: {"verdict": d.verdict.value, "rule": d.rule.id} for d in decisions}})
        _status(f"anpr: reading {location} as camera {camera.id} (ocr {settings.pipeline.ocr}, batch "
                f"{settings.pipeline.batch}, device {settings.detector.device}) into {store.safe_url}")
        stats = pipeline.run(FrameReader(frame_source, settings.pipeline.queue), stop=stop, progress=progress)
        progress.done()
        if passage_output:
            passage_output.finish()
        audit.append("run.end", "pipeline", {
            "camera": camera.id, "frames": stats.frames, "reads_seen": gate.tally.seen,
            "kept": dict(gate.tally.stored), "purged": gate.tally.purged,
            "counted": {f"{p}/{r}/{o.value}": n for (p, r, o), n in gate.tally.counted.items()}})
        if passage_output and not jsonl:
            print(f"{'plate':<12} {'conf':>5} {'reads':>5}  {'first s':>8} {'last s':>8}  country")
            for p in passage_output.printed:
                print(f"{p['plate']:<12} {p['confidence']:>5.2f} {p['reads']:>5}  {p['first_time']:>8.2f} "
                      f"{p['last_time']:>8.2f}  {p['country'] or '-'}")
        _print_summary(tally, gate.tally, stats, store.safe_url, plate_table=not jsonl and not passages)
    finally:
        store.close()


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
    _quiet_libraries()
    try:
        app()
    except AnprError as exc:
        _status(f"anpr: error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _status("anpr: aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
