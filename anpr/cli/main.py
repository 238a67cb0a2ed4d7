"""The `anpr` command line: it parses, calls the library, and prints.

    anpr run SOURCE --config DEPLOYMENT   read plates under a deployment's purpose policy
    anpr eval DATASET                     detection recall and exact-plate accuracy on annotated photos
    anpr bench VIDEO                      frames/s: decoding alone, the naive pipeline, anpr
    anpr demo                             the sample clip under every config in configs/
    anpr policy check|explain CONFIG      what a deployment may and may not do, and why
    anpr db purge|mark-paid|record-finding|search     retention and gated queries
    anpr db summary --config DEPLOYMENT   the report's figures: reads per day, deletions, queries
    anpr audit verify                     check the audit log's hash chain
    anpr report --config DEPLOYMENT --html OUT.html   compliance report (also --md)

What runs is built by anpr/run/assemble.py from the settings; backend and sink names come
from anpr/registry.py, defaults from the settings models of anpr/config/settings.py. The
library reports through `logging`; this module shows those messages as `anpr: ...`
(`anpr: warning: ...` for warnings) on stderr.

Errors caused by input are printed as one line, `anpr: error: ...`, with exit status 2.
A run stopped by Ctrl-C or SIGTERM drains the frames already decoded, commits and exits 0; a second
signal aborts with status 130.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from anpr.config.settings import DetectorSettings, PipelineSettings
from anpr.errors import AnprError
from anpr.redact import printable
from anpr.registry import DETECTORS, RECOGNISERS


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


# Before the help texts below read the registries, which imports OpenCV: its log level is
# read when it loads.
_quiet_libraries()

from anpr.show.annotate import Mask  # noqa: E402 (it imports OpenCV)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Automatic number-plate recognition: read plates from video, RTSP streams and images.",
)

_PIPELINE, _DETECTOR = PipelineSettings(), DetectorSettings()
OcrOption = Annotated[
    str | None, typer.Option("--ocr", help=f"OCR backend: {RECOGNISERS.choices()} (default {_PIPELINE.ocr}).")
]
BatchOption = Annotated[
    int | None, typer.Option("--batch", help=f"Frames per detector call (default {_PIPELINE.batch}).")
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help=f"cpu, cuda or cuda:N (default {_DETECTOR.device}).")
]
DetectorOption = Annotated[
    str | None,
    typer.Option(
        "--detector",
        help=f"Detector runtime: {DETECTORS.choices('auto')} (default {_DETECTOR.backend}: the first "
        f"that runs on the device, {DETECTORS.for_device('cpu').name} on cpu).",
    ),
]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="Deployment config (see configs/).")]


def _flags(
    ocr: str | None = None,
    batch: int | None = None,
    device: str | None = None,
    backend: str | None = None,
    **more: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Command-line values as `load_settings` overrides (None: not given); `more` adds keys by section."""
    overrides: dict[str, dict[str, Any]] = {
        "pipeline": {"ocr": ocr, "batch": batch},
        "detector": {"device": device, "backend": backend},
    }
    for section, keys in more.items():
        overrides.setdefault(section, {}).update(keys)
    return overrides


def _say(lines: str | Iterable[str]) -> None:
    # A message quotes outside text (a file name, a purpose, a stream's error): a line break
    # or an escape sequence in it must not forge a line of its own or rewrite the terminal.
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"anpr: {printable(line)}", file=sys.stderr, flush=True)


class _OperatorMessages(logging.Formatter):
    """The library's log records as the CLI's own lines."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = "anpr: warning: " if record.levelno >= logging.WARNING else "anpr: "
        return prefix + printable(record.getMessage())  # one line, as _say's


def _show_library_messages() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OperatorMessages())
    logger = logging.getLogger("anpr")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _install_stop_handler() -> threading.Event:
    """First Ctrl-C (or SIGTERM) asks the loop to stop after its batch; a second one aborts."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            "\nanpr: stopping: the frames already read go through; press Ctrl-C again to abort",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


@app.command()
def run(
    source: Annotated[
        str | None,
        typer.Argument(
            help="Video file, RTSP URL, image folder or image file (default: the camera's source in the config)."
        ),
    ] = None,
    config: ConfigOption = None,
    camera_id: Annotated[str | None, typer.Option("--camera", help="Camera of the config that SOURCE is.")] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite file path (default anpr.sqlite).")
    ] = None,
    ocr: OcrOption = None,
    batch: BatchOption = None,
    device: DeviceOption = None,
    detector_backend: DetectorOption = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Write one JSON object per kept read to stdout.")] = False,
    passages: Annotated[
        bool,
        typer.Option(
            "--passages",
            help="Group reads of one vehicle into passages: with --jsonl one object per passage, else a passage table.",
        ),
    ] = False,
    demo: Annotated[
        bool, typer.Option("--demo", help="Run even when every purpose is denied, to show the reads blocked.")
    ] = False,
    log_json: Annotated[
        Path | None,
        typer.Option(
            "--log-json",
            help="Append JSON status lines (camera states, reconnects, every 10 s) to this file; '-' for stderr.",
        ),
    ] = None,
    show_plates: Annotated[
        bool | None,
        typer.Option(
            "--show-plates/--no-show-plates",
            help="End with the table of plates read (default: only on a terminal; a service's journal gets counts).",
        ),
    ] = None,  # None: decided by whether stdout is a terminal
    annotate: Annotated[
        Path | None,
        typer.Option(
            "--annotate",
            help="Also write the video (a video file SOURCE) to this .mp4, each tracked plate boxed and labelled "
            "with its voted plate, for the reads a purpose kept.",
        ),
    ] = None,
    mask: Annotated[
        Mask | None,
        typer.Option(
            "--mask",
            help="With --annotate, what is blurred: everything but the labelled plates (outside, the default), "
            "every plate (plates), or only the plates no purpose kept (none; they are blurred in every mask).",
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="Spread the cameras over a Ray cluster: its address (HOST:PORT of the head), or auto (the local "
            "Ray instance, started if none runs). Needs pip install 'anpr[cluster]', live streams and PostgreSQL.",
        ),
    ] = None,
) -> None:
    """Read plates under a deployment's policy: SOURCE as one camera, or, without SOURCE,
    every camera of the config at once. Files are read to their end; streams until Ctrl-C
    or SIGTERM, reconnecting when they drop. With --cluster, the cameras run on the nodes
    of a Ray cluster, and a lost node's cameras start again on the others."""
    from anpr.config.settings import load_settings
    from anpr.errors import SourceError
    from anpr.policy.engine import Policy
    from anpr.policy.gate import PassageSink, PolicedSink
    from anpr.run.assemble import DeploymentRun, cameras_to_run, refuse_denied_camera, require_deployment
    from anpr.run.outputs import (
        JsonLines,
        PassageOutput,
        PlateTally,
        ProgressLine,
        StatusLog,
        decision_lines,
        lane_status,
        summary_lines,
    )
    from anpr.show.annotate import VideoAnnotation

    # First: SIGTERM's default action kills the process at once (status 143), and a service
    # manager may send it while the run is still being set up.
    stop = _install_stop_handler()
    _check_run_options(annotate, mask, cluster)
    settings = load_settings(config, _flags(ocr, batch, device, detector_backend, store={"url": db}))
    policy = Policy(require_deployment(settings))
    cameras = cameras_to_run(policy.deployment, source, camera_id, config)
    # Checked before anything is opened: a wrong OUT must not cost a whole run.
    annotation = (
        VideoAnnotation.for_run(annotate, mask or Mask.OUTSIDE, cameras, policy.deployment.region) if annotate else None
    )
    decisions = {}  # announced, checked and audited once
    for camera in cameras:
        decisions[camera.camera.id] = policy.camera_decisions(camera.camera.id)
        _say(decision_lines(decisions[camera.camera.id], camera.camera.id if len(cameras) > 1 else None))
        refuse_denied_camera(camera.camera.id, decisions[camera.camera.id], demo)
    if stop.is_set():  # before anything is opened: nothing to drain, nothing to write
        _say("stopped before the run started: nothing was read or written")
        return
    if cluster is not None:
        _run_on_cluster(
            settings, policy, decisions, cameras, cluster, stop, jsonl, passages, log_json, show_plates, config, demo
        )
        return
    status_log = StatusLog(log_json) if log_json else None
    tally = PlateTally()
    passage_output = PassageOutput(sys.stdout if jsonl else None) if passages else None
    outputs: list[PolicedSink] = [tally, *([JsonLines()] if jsonl and not passages else [])]
    passage_outputs: list[PassageSink] = [passage_output] if passage_output else []
    if annotation:  # it is shown the tracked boxes, and only the reads and passages the gate lets through
        outputs.append(annotation)
        passage_outputs.append(annotation)
    observers = {cameras[0].camera.id: annotation} if annotation else None
    with DeploymentRun(
        settings, policy, decisions, cameras, outputs, passage_outputs, config=config, demo=demo, observers=observers
    ) as deployment_run:
        progress = ProgressLine(deployment_run.frame_count, status_log)
        if status_log:
            status_log.event("run.start", cameras={c.camera.id: c.shown for c in cameras})
            status_log.database = deployment_run.spool
        report = deployment_run.run(stop, progress)
        progress.done()
        if status_log:
            status_log.event("run.end", cameras=lane_status(report.lanes), database=report.spool.as_json())
        # A service's stdout is kept by its journal, for longer than any purpose's retention.
        plates_shown = sys.stdout.isatty() if show_plates is None else show_plates
        if passage_output and not jsonl and plates_shown:
            print("\n".join(passage_output.lines()))
        if not jsonl and not passages and tally.by_plate and plates_shown:
            print("\n".join(tally.lines()))
        _say(summary_lines(report.tally, report.lanes, report.store_url, report.spool.as_json()))
        _report_spool(report.spool, report.store_url)
        if not report.frames_received and not stop.is_set():
            raise SourceError("no frame could be decoded from " + ", ".join(c.shown for c in cameras))
    if annotation and stop.is_set():
        _say("stopped: the annotated video was not written (it needs the run to read the whole file)")
    elif annotation:
        video = annotation.render()
        _say(f"annotated video {video.path}: {video.frames} frames, {video.seconds:.2f} s, mask {video.mask.value}")


def _check_run_options(annotate: Path | None, mask: Mask | None, cluster: str | None) -> None:
    """Options of `anpr run` that only go together, checked before anything is opened."""
    if mask is not None and annotate is None:
        raise AnprError("--mask says what --annotate blurs: give --annotate OUT.mp4 too")
    if annotate is not None and cluster is not None:
        raise AnprError("--annotate reads a video file again after the run: it does not go with --cluster")


def _run_on_cluster(
    settings: Any,
    policy: Any,
    decisions: dict[str, Any],
    cameras: list[Any],
    address: str,
    stop: threading.Event,
    jsonl: bool,
    passages: bool,
    log_json: Path | None,
    show_plates: bool | None,
    config: Path | None,
    demo: bool,
) -> None:
    """`anpr run --cluster`: the cameras on a Ray cluster's nodes (anpr/run/cluster.py), shown here."""
    from anpr.errors import StoreError
    from anpr.run.cluster import ClusterRun
    from anpr.run.outputs import JsonLines, PassageOutput, ProgressLine, StatusLog, cluster_summary_lines

    status_log = StatusLog(log_json) if log_json else None
    reads = JsonLines() if jsonl and not passages else None
    passage_output = PassageOutput(sys.stdout if jsonl else None) if passages else None
    with ClusterRun(
        settings,
        policy,
        decisions,
        cameras,
        address,
        reads=reads,
        passages=passage_output,
        status_log=status_log,
        config=config,
        demo=demo,
    ) as cluster_run:
        progress = ProgressLine(None)
        report = cluster_run.run(stop, progress)
        progress.done()
        if status_log:
            status_log.event(
                "run.end",
                cameras=report.cameras,
                nodes=report.nodes,
                restarts=report.restarts,
                database=report.spool.as_json(),
            )
        plates_shown = sys.stdout.isatty() if show_plates is None else show_plates
        if passage_output and not jsonl and plates_shown:
            print("\n".join(passage_output.lines()))
        _say(cluster_summary_lines(report.tally, report.cameras, report.nodes, report.restarts, report.store_url))
        _report_spool(report.spool, report.store_url)
    lost = sum((node.get("database") or {}).get("lost_reads", 0) for node in report.nodes.values())
    if lost:
        raise StoreError(
            f"{lost} read(s) lost on the nodes: a spool was full or not writable (store.spool_max_mb, store.spool_dir)"
        )


def _report_spool(spool: Any, store_url: str) -> None:
    from anpr.errors import StoreError

    status, pending = spool.status, spool.pending
    if status.spooled_batches or status.flushed_batches:
        _say(
            f"the database was unreachable for part of the run: {status.spooled_reads} read(s) spooled, "
            f"{status.flushed_reads} sent later"
            + (f", {status.duplicate_batches} batch(es) found already written" if status.duplicate_batches else "")
        )
    if pending.batches:
        _say(
            f"warning: database {store_url} unreachable: {pending.reads} read(s) kept in {spool.directory}; "
            f"the next run with this database sends them (each is deleted when its retention ends)"
        )
    if status.lost_reads:
        raise StoreError(
            f"{status.lost_reads} read(s) lost: the spool was full or not writable "
            f"(store.spool_max_mb, store.spool_dir)"
        )


@app.command("eval")
def evaluate_command(
    datasets: Annotated[
        list[Path],
        typer.Argument(
            help="Annotated folder(s): scenes (NAME.jpg + NAME.txt, openalpr layout) or crops (labels.csv); "
            "several are measured one after the other with the same models."
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print exactly one JSON object (with several sets: {'sets': [...]}).")
    ] = False,
    split: Annotated[
        str, typer.Option("--split", help="Crop sets: the split to measure, test (default), train or all.")
    ] = "test",
    errors: Annotated[
        Path | None,
        typer.Option(
            "--errors",
            help="Write one JSON line per image: expected, read, candidates, confidence (and dataset, with several).",
        ),
    ] = None,
    region: Annotated[
        list[str] | None,
        typer.Option(
            "--region",
            help="Plate region(s) whose layouts are preferred, as a deployment's `region` (FR, US, BR, US-CA...); "
            "repeat for several. Default: the config's deployment region, else every layout.",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a PNG chart: accuracy per set and the top character confusions."),
    ] = None,
    scenes: Annotated[
        Path | None,
        typer.Option(
            "--scenes",
            help="Crop sets: also read each crop through the detector, set into a scene of this scene set "
            "(in place of its plate, at a camera's size, tilt and blur; seeded), and report both.",
        ),
    ] = None,
    ocr: OcrOption = None,
    batch: BatchOption = None,
    device: DeviceOption = None,
    detector_backend: DetectorOption = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML settings file.")] = None,
) -> None:
    """Measure exact-plate accuracy (and, on scenes, plate detection recall) on annotated folders."""
    from anpr.config.deployment import region_codes
    from anpr.config.settings import load_settings
    from anpr.errors import ConfigError, DatasetError
    from anpr.measure.eval import SPLITS, EvalReport, check_sets, evaluate_sets

    settings = load_settings(config, _flags(ocr, batch, device, detector_backend))
    try:
        regions = tuple(region_codes(region) if region else settings.deployment.region if settings.deployment else ())
    except ValueError as exc:
        raise ConfigError(f"--region: {exc}") from None
    if split not in (*SPLITS, "all"):
        raise DatasetError(f"--split must be {', '.join(SPLITS)} or all, not {split!r}")
    chosen_split = None if split == "all" else split
    crops = check_sets(datasets, chosen_split, scenes)  # a malformed set fails before the models load
    if plot is not None:
        _check_writable(plot)
    summaries: list[dict[str, Any]] = []

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\r  images {done}/{total}" + ("\n" if done == total else ""))
            sys.stderr.flush()

    lines: list[str] = []  # --errors: written at the end as anpr's private file (it holds plates)

    def measured(dataset: Path, how: str, report: EvalReport) -> None:
        several = len(datasets) > 1 or scenes is not None
        if errors:
            extra = {"dataset": str(dataset), "via": how} if several else {}
            lines.extend(json.dumps(result.to_dict() | extra) + "\n" for result in report.results)
        set_split = split if crops[dataset] else None
        summaries.append({"dataset": str(dataset), "split": set_split, "via": how, **report.summary()})

    evaluate_sets(datasets, crops, settings, chosen_split, regions, progress, measured, scenes)
    if errors:
        from anpr.show.page import write_report

        write_report(errors, "".join(lines), "the errors file")
    if plot is not None:
        from anpr.measure.plots import plot_eval

        plot_eval(summaries, plot)
    if as_json:
        one = {k: v for k, v in summaries[0].items() if k not in ("dataset", "split", "via")}
        print(json.dumps(one if len(summaries) == 1 else {"sets": summaries}))
        return
    for summary in summaries:
        _print_eval(summary, settings.pipeline.ocr, regions)


def _print_eval(summary: dict[str, Any], ocr: str, regions: tuple[str, ...]) -> None:
    recall = summary["detection_recall"]
    confused = ", ".join(f"{a or '-'}>{b or '-'} {n}" for a, b, n in summary["confusions"]) or "-"
    split = summary["split"]
    print(f"dataset           {summary['dataset']}" + (f" (crops, split {split})" if split else ""))
    print(f"read              {summary['via']}")
    print(f"ocr backend       {ocr}")
    print(f"region            {', '.join(regions) or 'any (every layout)'}")
    print(f"images            {summary['images']}")
    print(
        "detection recall  " + ("n/a (crops: nothing to detect)" if recall is None else f"{recall:.3f}  (IoU >= 0.3)")
    )
    print(f"exact plates      {summary['exact']:.3f}")
    print(f"right in top 3    {summary['top3']:.3f}")
    print(f"ms per image      {summary['ms_per_image']:.1f}")
    print(f"confusions        {confused}  (expected>read, '-' nothing)")


def _check_writable(path: Path) -> None:
    """Fail before the work when an output file could not be written (its folder missing, say)."""
    from anpr.errors import ConfigError

    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder")


@app.command()
def bench(
    video: Annotated[Path, typer.Argument(help="Video to measure on (e.g. from benchmarks/make_clip.py).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Deployment and run settings for the anpr phase (default configs/paris-fps.yaml)."
        ),
    ] = None,
    device: DeviceOption = None,
    naive_frames: Annotated[
        int, typer.Option("--naive-frames", min=1, help="Frames the naive pipeline runs on.")
    ] = 100,
    ocr: OcrOption = None,
    batch: BatchOption = None,
    input_size: Annotated[
        int | None, typer.Option("--input-size", help=f"Detector input size (default {_DETECTOR.input_size}).")
    ] = None,
    detector_backend: DetectorOption = None,
    stride: Annotated[
        int | None,
        typer.Option("--stride", help=f"Detect on every n-th frame (default {_PIPELINE.stride}: 3 for video)."),
    ] = None,
    settle: Annotated[
        int | None,
        typer.Option(
            "--settle",
            help=f"Stop reading a tracked plate after n identical registrations (default {_PIPELINE.settle_reads}: 3).",
        ),
    ] = None,
    motion: Annotated[
        float | None,
        typer.Option(
            "--motion", help=f"Skip still frames (mean grey change; default {_PIPELINE.motion_threshold:g}: off)."
        ),
    ] = None,
    streams: Annotated[
        str | None,
        typer.Option(
            "--streams",
            help="Measure a site instead: N copies of VIDEO as N live cameras of one run, paced at its frame "
            "rate; `auto`: the largest N that holds real time.",
        ),
    ] = None,
    unpaced: Annotated[
        bool, typer.Option("--unpaced", help="With --streams N: frames as fast as they decode, none dropped.")
    ] = False,
    seconds: Annotated[
        float | None,
        typer.Option("--seconds", min=0.1, help="With --streams: each camera reads this much of VIDEO (default all)."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a PNG chart: frames/s of each stage against the decode limit."),
    ] = None,
) -> None:
    """Frames/s of decoding alone, of the naive pipeline and of anpr, measured in one run;
    with --streams, per camera frames/s, drops and latency of N cameras at once."""
    from anpr.measure.bench import BENCH_DEPLOYMENT, bench_streams, benchmark

    overrides = _flags(
        ocr,
        batch,
        device,
        detector_backend,
        pipeline={"stride": stride, "settle_reads": settle, "motion_threshold": motion},
        detector={"input_size": input_size},
    )

    def progress(message: str) -> None:
        print(f"anpr bench: {message}", file=sys.stderr, flush=True)

    if plot is not None:
        if streams is not None:
            raise AnprError("--plot charts the stages of one video: it does not go with --streams")
        _check_writable(plot)
    if streams is not None:
        if streams != "auto" and not (streams.isdigit() and 1 <= int(streams) <= 256):
            raise AnprError(f"--streams must be a number of cameras from 1 to 256, or auto: not {streams!r}")
        count = None if streams == "auto" else int(streams)
        site = bench_streams(
            video, count, config or BENCH_DEPLOYMENT, overrides, paced=not unpaced, seconds=seconds, progress=progress
        )
        if as_json:
            print(json.dumps(site))
            return
        _print_site(site)
        return
    result = benchmark(video, config or BENCH_DEPLOYMENT, overrides, naive_frames=naive_frames, progress=progress)
    if plot is not None:
        from anpr.measure.plots import plot_bench

        plot_bench(result, plot)
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:<20} {value}")


def _print_site(site: dict[str, Any]) -> None:
    """`anpr bench --streams` as a table: the run's figures, then one row per camera (and per try)."""
    for key, value in site.items():
        if key not in ("cameras", "tries"):
            print(f"{key:<20} {value}")
    columns = list(site["cameras"][0]) if site["cameras"] else []
    rows = [columns] + [["-" if c[k] is None else str(c[k]) for k in columns] for c in site["cameras"]]
    for key in ("tries",):
        if key in site:
            tried = list(site[key][0])
            rows += [[]] + [tried] + [[str(t[k]) for k in tried] for t in site[key]]
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(max(map(len, rows)))]
    print()
    for row in rows:
        print("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)).rstrip())


REPO = Path(__file__).resolve().parents[2]


@app.command()
def demo(
    configs: Annotated[Path, typer.Option("--configs", help="Folder of deployment configs.")] = REPO / "configs",
    sample: Annotated[Path, typer.Option("--sample", help="Clip to read.")] = REPO / "samples" / "sample.mp4",
    keep: Annotated[Path | None, typer.Option("--keep", help="Keep each config's database in this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per table row.")] = False,
) -> None:
    """Run the sample under every config in configs/ and show, per purpose, what was kept and blocked.

    The clip is read once (once per distinct set of run settings among the configs); its
    reads then pass each deployment's policy gate into a database of their own, exactly as
    `anpr run --config ... --demo` would.
    """
    import tempfile

    from anpr.show.demo import gate_sample

    workdir = Path(keep or tempfile.mkdtemp(prefix="anpr-demo-"))
    rows = gate_sample(configs, sample, workdir)
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    header = (
        f"{'config':<32} {'purpose':<26} {'verdict':<7} {'rule':<12} {'seen':>5} {'stored':>6} {'blocked':>7}  other"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        other = ", ".join(f"{row[k]} {k.replace('_', ' ')}" for k in ("counted_only", "not_stored") if row[k])
        print(
            f"{row['config']:<32} {row['purpose']:<26} {row['verdict']:<7} {row['rule']:<12} {row['seen']:>5} "
            f"{row['stored']:>6} {row['blocked']:>7}  {other}"
        )
    _say(f"databases in {workdir}")


from anpr.cli.admin import audit_app, db_app, policy_app, report  # noqa: E402

app.command("report")(report)
app.add_typer(policy_app, name="policy")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")


def main() -> None:
    from typer._click import exceptions as click  # typer vendors Click; its errors are not exported

    _show_library_messages()
    # Everything anpr writes (database, WAL, exports, logs, key, spool) is for its owner
    # only, whatever umask the service was started with.
    os.umask(0o077)
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "")
        sys.exit(2)
    except click.UsageError as exc:  # a bad flag or argument: one line, like every other input error
        _say(f"error: {exc.format_message()}")
        sys.exit(2)
    except typer.Abort:
        _say("aborted")
        sys.exit(130)
    except AnprError as exc:
        _say(f"error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _say("aborted")
        sys.exit(130)


if __name__ == "__main__":
    main()
