"""Throughput, measured in one run on one video: the decode limit, the naive pipeline, ours.

Each phase runs in a child process of its own (`python -m anpr.bench PHASE ...`), so its
frames/s and its peak memory are its own and one phase's models do not weigh on another.

- decode: OpenCV decodes every frame and does nothing else: the limit.
- naive: the pipeline of the tutorials on the first `naive_frames` frames: Ultralytics YOLO
  (same weights) on one frame at a time, EasyOCR `readtext` on each detected plate.
- anpr: this project's loop end to end, with the policy gate and reads stored in SQLite.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anpr.errors import AnprError

REPO = Path(__file__).resolve().parent.parent
BENCH_DEPLOYMENT = REPO / "configs" / "paris-fps.yaml"  # an allowed purpose that stores every read


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def decode_phase(video: str) -> dict[str, float]:
    import cv2

    capture = cv2.VideoCapture(video, cv2.CAP_FFMPEG)
    frames, started = 0, time.perf_counter()
    while capture.grab() and capture.retrieve()[0]:
        frames += 1
    seconds = time.perf_counter() - started
    capture.release()
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "peak_rss_mb": _peak_rss_mb()}


def naive_phase(video: str, frames: int, device: str) -> dict[str, float]:
    import cv2
    import easyocr
    from ultralytics import YOLO

    from anpr.weights import model_file

    model = YOLO(str(model_file("plate-yolov8n").path), task="detect")
    reader = easyocr.Reader(["en"], gpu=device != "cpu", verbose=False,
                            model_storage_directory=str(model_file("easyocr-english-g2").path.parent),
                            download_enabled=False)
    capture = cv2.VideoCapture(video, cv2.CAP_FFMPEG)
    done, texts, started = 0, 0, time.perf_counter()
    while done < frames:
        ok, frame = capture.read()
        if not ok:
            break
        for x1, y1, x2, y2 in model.predict(frame, device=device, verbose=False)[0].boxes.xyxy.cpu().numpy().astype(int):
            texts += len(reader.readtext(frame[max(0, y1):y2, max(0, x1):x2]))
        done += 1
    seconds = time.perf_counter() - started
    capture.release()
    return {"frames": done, "seconds": seconds, "fps": done / seconds, "texts": texts, "peak_rss_mb": _peak_rss_mb()}


def anpr_phase(video: str, batch: int, input_size: int, device: str, detector: str, stride: int = 1,
               settle: int = 0, motion: float = 0.0) -> dict[str, float]:
    from anpr.config import load_settings
    from anpr.detect import make_detector
    from anpr.ocr import make_recogniser
    from anpr.pipeline import Pipeline, WorkSaving
    from anpr.policy.engine import Policy
    from anpr.policy.gate import PolicyGate
    from anpr.sinks import make_sinks
    from anpr.source import FrameReader, open_source
    from anpr.store import ReadStore

    settings = load_settings(BENCH_DEPLOYMENT)
    with tempfile.TemporaryDirectory() as work:
        store = ReadStore(str(Path(work) / "bench.sqlite"))
        gate = PolicyGate(Policy(settings), settings.cameras[0], store, make_sinks(settings, store))
        pipeline = Pipeline(make_detector(detector, device=device, input_size=input_size), make_recogniser("ppocr"),
                            [gate], batch_size=batch, saving=WorkSaving(stride, motion, settle))
        stats = pipeline.run(FrameReader(open_source(video)))
        stored = store.count()
        store.close()
    return {"frames": stats.frames, "seconds": stats.seconds, "fps": stats.fps, "reads_stored": stored,
            "peak_rss_mb": _peak_rss_mb()}


def _child(*args: str) -> dict[str, float]:
    env = {**os.environ, "YOLO_VERBOSE": "False", "OPENCV_LOG_LEVEL": "OFF"}
    result = subprocess.run([sys.executable, "-m", "anpr.bench", *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise AnprError(f"benchmark phase {args[0]} failed: {lines[-1] if lines else result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def benchmark(video: Path, *, naive_frames: int = 100, batch: int = 8, input_size: int = 640,
              device: str = "cpu", detector: str = "auto", stride: int = 1, settle: int = 0, motion: float = 0.0,
              progress=print) -> dict[str, object]:
    if not video.is_file():
        raise AnprError(f"no such video: {video}")
    progress("decode only ...")
    decode = _child("decode", str(video))
    progress(f"decode: {decode['fps']:.1f} frames/s; naive pipeline on {naive_frames} frames ...")
    naive = _child("naive", str(video), str(naive_frames), device)
    progress(f"naive: {naive['fps']:.2f} frames/s; anpr ...")
    ours = _child("anpr", str(video), str(batch), str(input_size), device, detector, str(stride), str(settle),
                  str(motion))
    progress(f"anpr: {ours['fps']:.1f} frames/s")
    return {
        "video": str(video), "device": device, "detector": detector, "batch": batch, "input_size": input_size,
        "stride": stride, "settle": settle, "motion": motion,
        "frames": ours["frames"], "naive_frames": naive["frames"], "reads_stored": ours["reads_stored"],
        "decode_fps": round(decode["fps"], 2), "naive_fps": round(naive["fps"], 3), "fps": round(ours["fps"], 2),
        "speedup_vs_naive": round(ours["fps"] / naive["fps"], 2),
        "fraction_of_decode": round(ours["fps"] / decode["fps"], 4),
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "naive_peak_rss_mb": round(naive["peak_rss_mb"], 1),
    }


PHASES = {"decode": lambda a: decode_phase(a[0]),
          "naive": lambda a: naive_phase(a[0], int(a[1]), a[2]),
          "anpr": lambda a: anpr_phase(a[0], int(a[1]), int(a[2]), a[3], a[4], int(a[5]), int(a[6]), float(a[7]))}

if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(json.dumps(PHASES[sys.argv[1]](sys.argv[2:])))
