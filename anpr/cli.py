"""The `anpr` command line.

    anpr run SOURCE     read plates from a video file, an RTSP URL, an image folder or image
    anpr eval DATASET   measure detection recall and exact-plate accuracy on annotated photos

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
    """Confidence and time of every read, by plate text, for the end-of-run summary."""

    def __init__(self) -> None:
        self.by_plate: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def write(self, reads) -> None:
        for read in reads:
            self.by_plate[read.plate].append((read.confidence, read.time))


class _JsonLines:
    def write(self, reads) -> None:
        for read in reads:
            sys.stdout.write(json.dumps(read.as_json()) + "\n")
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


def _print_summary(reads_by_plate: dict[str, list[tuple[float, float]]], stats, store_url: str) -> None:
    if reads_by_plate:
        print(f"{'plate':<12} {'reads':>5} {'best':>5}  {'first s':>8} {'last s':>8}")
        for plate, confidences_times in sorted(reads_by_plate.items(), key=lambda kv: -len(kv[1])):
            confidences = [c for c, _ in confidences_times]
            times = [t for _, t in confidences_times]
            print(f"{plate:<12} {len(confidences):>5} {max(confidences):>5.2f}  {min(times):>8.2f} {max(times):>8.2f}")
    _status(f"anpr: {stats.frames} frames in {stats.seconds:.1f} s ({stats.fps:.1f} frames/s), "
            f"{stats.reads} reads stored in {store_url}"
            + (f", {stats.dropped} frames dropped" if stats.dropped else ""))


@app.command()
def run(
    source: Annotated[str, typer.Argument(help="Video file, RTSP URL, image folder or image file.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML settings file (see configs/).")] = None,
    db: Annotated[Optional[str], typer.Option("--db", help="SQLAlchemy URL or SQLite file path (default anpr.sqlite).")] = None,
    ocr: OcrOption = None,
    batch: BatchOption = None,
    device: DeviceOption = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Write one JSON object per read to stdout.")] = False,
) -> None:
    """Read plates from SOURCE to the end of a file, or until Ctrl-C on a live stream."""
    from anpr.config import load_settings
    from anpr.source import FrameReader, open_source
    from anpr.store import ReadStore

    settings = load_settings(config, {"pipeline": {"ocr": ocr, "batch": batch}, "detector": {"device": device},
                                      "store": {"url": db}})
    frame_source = open_source(source)  # bad input fails here, before the database is touched
    store = ReadStore(settings.store.url)
    try:
        store.check()
        from anpr.detect import YoloPlateDetector
        from anpr.ocr import make_recogniser
        from anpr.pipeline import Pipeline

        detector = YoloPlateDetector(confidence=settings.detector.confidence,
                                     input_size=settings.detector.input_size, device=settings.detector.device)
        recogniser = make_recogniser(settings.pipeline.ocr)
        tally = _PlateTally()
        sinks = [store, tally] + ([_JsonLines()] if jsonl else [])
        pipeline = Pipeline(detector, recogniser, sinks, settings.pipeline.batch, settings.pipeline.min_confidence)
        progress = _ProgressLine(getattr(frame_source, "frame_count", None) or None)
        stop = _install_stop_handler()
        _status(f"anpr: reading {source} (ocr {settings.pipeline.ocr}, batch {settings.pipeline.batch}, "
                f"device {settings.detector.device}) into {store.safe_url}")
        stats = pipeline.run(FrameReader(frame_source, settings.pipeline.queue), stop=stop, progress=progress)
        progress.done()
        if not jsonl:
            _print_summary(tally.by_plate, stats, store.safe_url)
        else:
            _status(f"anpr: {stats.frames} frames, {stats.reads} reads, {stats.fps:.1f} frames/s")
    finally:
        store.close()


@app.command("eval")
def evaluate_command(
    dataset: Annotated[Path, typer.Argument(help="Folder of images with NAME.txt annotations (openalpr layout).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")] = False,
    ocr: OcrOption = None,
    batch: BatchOption = None,
    device: DeviceOption = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML settings file.")] = None,
) -> None:
    """Measure plate detection recall and exact-plate accuracy on an annotated folder."""
    from anpr.config import load_settings
    from anpr.eval import evaluate, load_annotations

    settings = load_settings(config, {"pipeline": {"ocr": ocr, "batch": batch}, "detector": {"device": device}})
    load_annotations(dataset)  # a malformed dataset fails before the models load

    from anpr.detect import YoloPlateDetector
    from anpr.ocr import make_recogniser

    detector = YoloPlateDetector(confidence=settings.detector.confidence,
                                 input_size=settings.detector.input_size, device=settings.detector.device)
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
    print(f"ms per image      {summary['ms_per_image']:.1f}")


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
