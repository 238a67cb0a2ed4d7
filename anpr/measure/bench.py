"""Throughput, measured in one run on one video: the decode limit, the naive pipeline, ours.

Each phase runs in a child process of its own (`python -m anpr.measure.bench PHASE ...`), so its
frames/s and its peak memory are its own and one phase's models do not weigh on another.

- decode: OpenCV decodes every frame and does nothing else: the limit.
- naive: the pipeline of the tutorials on the first `naive_frames` frames: Ultralytics YOLO
  (same weights) on one frame at a time, EasyOCR `readtext` on each detected plate.
- anpr: this project's loop end to end, built from a deployment config like `anpr run`
  (anpr/run/assemble.py), with the policy gate and reads stored in a temporary SQLite.

`--streams N` measures a site instead: N copies of the video as N live cameras of one run
(`streams_phase`), paced at the clip's frame rate, through the real run path (lanes built
by `build_lanes`, the policy gate, the spool, a temporary SQLite); `auto` searches for the
largest N that holds real time.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anpr.config.settings import load_settings
from anpr.errors import AnprError

if TYPE_CHECKING:
    from anpr.reading.source import Stride

REPO = Path(__file__).resolve().parents[2]
BENCH_DEPLOYMENT = REPO / "configs" / "paris-fps.yaml"  # an allowed purpose that stores every read


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def decode_phase(video: str) -> dict[str, float]:
    from anpr.reading.source import open_video_file

    capture = open_video_file(video)
    frames, started = 0, time.perf_counter()
    while capture.grab() and capture.retrieve()[0]:
        frames += 1
    seconds = time.perf_counter() - started
    capture.release()
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "peak_rss_mb": _peak_rss_mb()}


def naive_phase(video: str, frames: int, device: str) -> dict[str, float]:
    import easyocr
    from ultralytics import YOLO

    from anpr.reading.source import open_video_file
    from anpr.reading.weights import model_file

    model = YOLO(str(model_file("plate-yolov8n").path), task="detect")
    reader = easyocr.Reader(
        ["en"],
        gpu=device != "cpu",
        verbose=False,
        model_storage_directory=str(model_file("easyocr-english-g2").path.parent),
        download_enabled=False,
    )
    capture = open_video_file(video)
    done, texts, started = 0, 0, time.perf_counter()
    while done < frames:
        ok, frame = capture.read()
        if not ok:
            break
        prediction: Any = model.predict(frame, device=device, verbose=False)
        for x1, y1, x2, y2 in prediction[0].boxes.xyxy.cpu().numpy().astype(int):
            texts += len(reader.readtext(frame[max(0, y1) : y2, max(0, x1) : x2]))
        done += 1
    seconds = time.perf_counter() - started
    capture.release()
    return {"frames": done, "seconds": seconds, "fps": done / seconds, "texts": texts, "peak_rss_mb": _peak_rss_mb()}


def anpr_phase(video: str, config: str, overrides: str) -> dict[str, Any]:
    from anpr.config.settings import load_settings
    from anpr.policy.engine import Policy
    from anpr.reading.source import open_source
    from anpr.run.assemble import CameraSource, build_lanes, load_models, require_deployment
    from anpr.storage.keys import load_keys
    from anpr.storage.store import ReadStore

    settings = load_settings(Path(config), json.loads(overrides))
    deployment = require_deployment(settings)
    with tempfile.TemporaryDirectory() as work:
        store = ReadStore(str(Path(work) / "bench.sqlite"), load_keys(Path(work) / "anpr.key", create=True))
        lanes = build_lanes(
            settings,
            Policy(deployment),
            [CameraSource(deployment.cameras[0], video)],
            [open_source(video)],
            load_models(settings),
            store,
        )
        lanes.run()
        stats = lanes.lanes[0].stats
        stored = store.count()
        store.close()
    return {
        "frames": stats.frames,
        "seconds": stats.seconds,
        "fps": stats.fps,
        "reads_stored": stored,
        "peak_rss_mb": _peak_rss_mb(),
        "stage_seconds": {str(stage): seconds for stage, seconds in lanes.times.seconds.items()},
    }


# --- a site: N cameras ---------------------------------------------------------------------

# A run holds real time when no frame is dropped and 99 % of frames are stored within this
# long of their capture: one that keeps up holds a frame for about a batch's filling time
# plus a round; one that falls behind holds each frame longer than the one before.
REAL_TIME_LATENCY = 2.0
MAX_STREAMS = 64  # `auto` looks no further


class PacedClip:
    """A video file as a live camera: its frames released at the clip's frame rate, each
    captured (`Frame.captured`) when it is due, so a decoder that falls behind counts in
    the latency; a pipeline that falls behind makes the reader drop frames, as a camera's
    would. Unpaced, frames come as fast as they decode, and none is dropped (the decoder
    waits, as for a file)."""

    def __init__(
        self, path: str, name: str, paced: bool = True, seconds: float | None = None, threads: int = 0
    ) -> None:
        from anpr.reading.source import VideoSource

        self._video = VideoSource(path, live=False, threads=threads)
        self.name, self.live, self.status = name, paced, self._video.status
        self.fps = self._video.fps or 25.0
        self.limit = round(seconds * self.fps) if seconds else None
        self.captured: dict[int, float] = {}  # frame index -> capture time

    def frames(self, stride: Stride | None = None) -> Iterator[Any]:
        from anpr.reading.source import Frame

        started = time.monotonic()
        for frame in self._video.frames(stride):
            if self.limit is not None and frame.index >= self.limit:
                break
            captured = time.monotonic()
            if self.live:
                captured = started + frame.index / self.fps
                if captured > time.monotonic():
                    time.sleep(captured - time.monotonic())
            self.captured[frame.index] = captured
            yield Frame(self.name, frame.index, time.time(), frame.image, frame.covers, captured)

    def close(self) -> None:
        self._video.close()


class _StoredLatency:
    """A sink after the policy gate: when its `write` is called, the gate has stored the reads."""

    def __init__(self, captured: dict[int, float]) -> None:
        self.captured, self.latencies = captured, list[float]()

    def write(self, reads: Sequence[Any]) -> None:
        now = time.monotonic()
        self.latencies += [now - self.captured[read.frame] for read in reads]

    def end_tracks(self, source: str, ends: Sequence[Any]) -> None:
        pass


def _ms(values: Sequence[float], quantile: float) -> float | None:
    return round(float(np.quantile(values, quantile)) * 1000, 1) if len(values) else None


def streams_phase(
    video: str, streams: int, paced: bool, seconds: float | None, config: str, overrides: str
) -> dict[str, Any]:
    from anpr.policy.engine import Policy
    from anpr.reading.source import decode_threads
    from anpr.run.assemble import CameraSource, build_lanes, load_models, require_deployment
    from anpr.storage.keys import load_keys
    from anpr.storage.spool import SpooledStore
    from anpr.storage.store import ReadStore

    settings = load_settings(Path(config), json.loads(overrides))
    deployment = require_deployment(settings)
    camera = deployment.cameras[0]
    models = load_models(settings)  # before the cameras start: loading is no part of the run
    with tempfile.TemporaryDirectory() as work:
        store = ReadStore(str(Path(work) / "bench.sqlite"), load_keys(Path(work) / "anpr.key", create=True))
        spool = SpooledStore(store, Path(work) / "spool", settings.store.spool_max_mb * 2**20)
        names = [f"cam{i + 1}" for i in range(streams)]
        threads = decode_threads(streams)
        sources = [PacedClip(video, name, paced, seconds, threads) for name in names]
        cameras = [CameraSource(camera.model_copy(update={"id": name}), name) for name in names]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu, wall = usage.ru_utime + usage.ru_stime, time.perf_counter()
        lanes = build_lanes(settings, Policy(deployment), cameras, sources, models, spool)  # decoding starts
        stored = []
        for lane, source in zip(lanes.lanes, sources, strict=True):
            lane.stats.latencies = []
            stored.append(_StoredLatency(source.captured))
            lane.pipeline.sinks.append(stored[-1])
        lanes.run()
        wall = time.perf_counter() - wall
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - cpu
        spool.flush()
        reads_stored = store.count()
        spool.close()
        store.close()
    cameras_report: list[dict[str, Any]] = [
        {
            "camera": lane.name,
            "frames": lane.stats.frames,
            "fps": round(lane.stats.fps, 2),
            "dropped": lane.reader.dropped,
            "reads": lane.stats.reads,
            "latency_median_ms": _ms(sink.latencies, 0.5),
            "latency_p99_ms": _ms(sink.latencies, 0.99),
            "frame_latency_median_ms": _ms(lane.stats.latencies or [], 0.5),
            "frame_latency_p99_ms": _ms(lane.stats.latencies or [], 0.99),
        }
        for lane, sink in zip(lanes.lanes, stored, strict=True)
    ]
    frames = sum(c["frames"] for c in cameras_report)
    frame_p99 = [c["frame_latency_p99_ms"] for c in cameras_report]
    return {
        "streams": streams,
        "paced": paced,
        "clip_fps": round(sources[0].fps, 2),
        "seconds": round(wall, 2),
        "frames": frames,
        "fps": round(frames / wall, 2),
        "dropped": sum(c["dropped"] for c in cameras_report),
        "reads_stored": reads_stored,
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_frame": round(1000 * cpu / frames, 2) if frames else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "holds_real_time": paced
        and all(c["dropped"] == 0 for c in cameras_report)
        and all(p is not None and p <= 1000 * REAL_TIME_LATENCY for p in frame_p99),
        "cameras": cameras_report,
    }


def bench_streams(
    video: Path,
    streams: int | None,
    config: Path = BENCH_DEPLOYMENT,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    paced: bool = True,
    seconds: float | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`streams` copies of `video` as live cameras of one run (`streams_phase`, in a process
    of its own); with `streams` None, the largest number that holds real time: doubling
    from 1 until one fails, then halving the gap (each try a run of its own)."""
    load_settings(config, overrides)  # bad values fail here, before any phase runs
    if not video.is_file():
        raise AnprError(f"no such video: {video}")
    if streams is None and not paced:
        raise AnprError("--streams auto searches for what holds real time: it needs paced cameras (no --unpaced)")

    def trial(n: int) -> dict[str, Any]:
        progress(f"{n} camera(s), {'paced' if paced else 'unpaced'} ...")
        args = [str(video), str(n), "paced" if paced else "unpaced", str(seconds or 0), str(config)]
        result = run_phase("streams", *args, json.dumps(overrides or {}))
        progress(
            f"{n} camera(s): {result['fps']:.1f} frames/s in all, {result['dropped']} dropped, "
            f"{'holds' if result['holds_real_time'] else 'does not hold'} real time"
        )
        return result

    if streams is not None:
        return trial(streams)
    tries: dict[int, dict[str, Any]] = {}
    good, bad = 0, None
    n = 1
    while n <= MAX_STREAMS:
        tries[n] = trial(n)
        if not tries[n]["holds_real_time"]:
            bad = n
            break
        good, n = n, n * 2
    while bad is not None and bad - good > 1:
        n = (good + bad) // 2
        tries[n] = trial(n)
        good, bad = (n, bad) if tries[n]["holds_real_time"] else (good, n)
    best = tries.get(good) or tries[min(tries)]
    return {
        **best,
        "max_real_time_streams": good,
        "tries": [
            {k: tries[n][k] for k in ("streams", "fps", "dropped", "holds_real_time")}
            | {"frame_latency_p99_ms": max((c["frame_latency_p99_ms"] or 0) for c in tries[n]["cameras"])}
            for n in sorted(tries)
        ],
    }


def run_phase(*args: str) -> dict[str, Any]:
    env = {**os.environ, "YOLO_VERBOSE": "False", "OPENCV_LOG_LEVEL": "OFF"}
    command = [sys.executable, "-m", "anpr.measure.bench", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise AnprError(f"benchmark phase {args[0]} failed: {lines[-1] if lines else result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def benchmark(
    video: Path,
    config: Path = BENCH_DEPLOYMENT,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    naive_frames: int = 100,
    progress: Callable[[str], None] = print,
) -> dict[str, object]:
    """The three phases on `video`, each by `run_phase`; anpr's with `config` and `overrides`
    (as `load_settings` takes them). The figures report the settings that were measured."""
    settings = load_settings(config, overrides)  # bad values fail here, before any phase runs
    if not video.is_file():
        raise AnprError(f"no such video: {video}")
    device = settings.detector.device
    progress("decode only ...")
    decode = run_phase("decode", str(video))
    progress(f"decode: {decode['fps']:.1f} frames/s; naive pipeline on {naive_frames} frames ...")
    naive = run_phase("naive", str(video), str(naive_frames), device)
    progress(f"naive: {naive['fps']:.2f} frames/s; anpr ...")
    ours = run_phase("anpr", str(video), str(config), json.dumps(overrides or {}))
    progress(f"anpr: {ours['fps']:.1f} frames/s")
    pipeline, detector = settings.pipeline.for_source(stills=False), settings.detector
    return {
        "video": str(video),
        "config": str(config),
        "device": device,
        "detector": detector.backend,
        "ocr": pipeline.ocr,
        "batch": pipeline.batch,
        "input_size": detector.input_size,
        "video_search": detector.video_search,
        "window_input_size": detector.window_input_size,
        "stride": pipeline.stride,
        "settle": pipeline.settle_reads,
        "motion": pipeline.motion_threshold,
        "frames": ours["frames"],
        "naive_frames": naive["frames"],
        "reads_stored": ours["reads_stored"],
        "decode_fps": round(decode["fps"], 2),
        "naive_fps": round(naive["fps"], 3),
        "fps": round(ours["fps"], 2),
        "speedup_vs_naive": round(ours["fps"] / naive["fps"], 2),
        "fraction_of_decode": round(ours["fps"] / decode["fps"], 4),
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "naive_peak_rss_mb": round(naive["peak_rss_mb"], 1),
        # Each stage's frames/s had it run alone (the video's frames over its seconds), and
        # the seconds the loop waited on decoding: where the time of the `fps` above went.
        "stage_fps": {
            stage: round(ours["frames"] / seconds, 2)
            for stage, seconds in ours["stage_seconds"].items()
            if stage != "wait"
            and seconds > 0  # pipeline.Stage.WAIT (not imported: it would load the models' libraries)
        },
        "wait_seconds": round(ours["stage_seconds"].get("wait", 0.0), 2),
    }


PHASES: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "decode": lambda a: decode_phase(a[0]),
    "naive": lambda a: naive_phase(a[0], int(a[1]), a[2]),
    "anpr": lambda a: anpr_phase(a[0], a[1], a[2]),
    "streams": lambda a: streams_phase(a[0], int(a[1]), a[2] == "paced", float(a[3]) or None, a[4], a[5]),
}
if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(json.dumps(PHASES[sys.argv[1]](sys.argv[2:])))
