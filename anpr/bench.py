"""Throughput, measured in one run on one video: the decode limit, the naive pipeline, ours.

Each phase runs in a child process of its own (`python -m anpr.bench PHASE ...`), so its
frames/s and its peak memory are its own and one phase's models do not weigh on another.

- decode: OpenCV decodes every frame and does nothing else: the limit.
- naive: the pipeline of the tutorials on the first `naive_frames` frames: Ultralytics YOLO
  (same weights) on one frame at a time, EasyOCR `readtext` on each detected plate.
- anpr: this project's loop end to end, built from a deployment config like `anpr run`
  (anpr/assemble.py), with the policy gate and reads stored in a temporary SQLite.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anpr.config import load_settings
from anpr.errors import AnprError

REPO = Path(__file__).resolve().parent.parent
BENCH_DEPLOYMENT = REPO / "configs" / "paris-fps.yaml"  # an allowed purpose that stores every read


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def decode_phase(video: str) -> dict[str, float]:
    from anpr.source import open_video_file

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

    from anpr.source import open_video_file
    from anpr.weights import model_file

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
    from anpr.assemble import CameraSource, build_lanes, load_models, require_deployment
    from anpr.config import load_settings
    from anpr.keys import load_keys
    from anpr.policy.engine import Policy
    from anpr.source import open_source
    from anpr.store import ReadStore

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
    }


def run_phase(*args: str) -> dict[str, Any]:
    env = {**os.environ, "YOLO_VERBOSE": "False", "OPENCV_LOG_LEVEL": "OFF"}
    result = subprocess.run([sys.executable, "-m", "anpr.bench", *args], capture_output=True, text=True, env=env)
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
    }


PHASES: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "decode": lambda a: decode_phase(a[0]),
    "naive": lambda a: naive_phase(a[0], int(a[1]), a[2]),
    "anpr": lambda a: anpr_phase(a[0], a[1], a[2]),
}
if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(json.dumps(PHASES[sys.argv[1]](sys.argv[2:])))
