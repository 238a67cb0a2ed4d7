"""Quantize the plate detector to INT8 for the CPU: `python -m training.quantize_detector`.

ONNX Runtime static quantization (QDQ; weights int8 per output channel, activations uint8)
of `plate-yolov8n-onnx` into `models/plate_detector_model_1.int8.onnx`, the manifest's
`plate-yolov8n-int8`. Calibrated on frames of the development clip
`benchmarks/data/traffic-dev.mp4` only (train-split crops of the US and BR sets crossing a
road scene: `python benchmarks/passage_accuracy.py --traffic --dev` builds it), fed as the
pipeline feeds the detector: whole frames letterboxed to 640, and the windows around moving
vehicles (`MotionWindows`) letterboxed to 320. The openalpr-eu photos and the clips made
from them (traffic-all, samples/sample.mp4) are never read: they only measure.

The frames are a fixed, seeded choice, so the same command on the same machine writes the
same file. It writes the model, a provenance JSON beside it (command, seed, frames, recipe,
sha256 of input and output, detection recall on held-out frames of the clip and CPU time,
FP32 against INT8) and the manifest entry.

`--compare` quantizes with every recipe of RECIPES instead and prints what each gives on
the held-out frames: the figures RECIPE was chosen on (models/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from anpr.config.settings import VIDEO_STRIDE, DetectorSettings
from anpr.measure.eval import MATCH_IOU
from anpr.reading.detect import MotionWindows, OnnxPlateDetector, detect_in_windows, pairwise_iou
from anpr.reading.weights import ModelFile, _sha256, model_file, onnx_session
from benchmarks.clips import dev_vehicles, plates_on_screen
from training.train import MODELS, update_manifest

REPO = MODELS.parent
SOURCE = "plate-yolov8n-onnx"
NAME = "plate-yolov8n-int8"
DEFAULT_OUT = MODELS / "plate_detector_model_1.int8.onnx"
DEFAULT_CLIP = REPO / "benchmarks" / "data" / "traffic-dev.mp4"
DATASETS = REPO.parent / "shared" / "datasets"  # the crop sets the clip's vehicles come from
LICENCE = "MIT (models/plate_detector_model_1.LICENSE)"  # a derivative of plate-yolov8n

SEED = 20261130
CALIBRATION_FRAMES = 64  # whole frames, each with the windows around what moves in it
HELD_OUT_FRAMES = 240  # frames with a plate on screen, none of them a calibration frame
WHOLE_INPUT = 640  # DetectorSettings.input_size: still images and whole-frame looks
WINDOW_INPUT = 320  # DetectorSettings.window_input_size: the windows around moving vehicles
WINDOW_BATCH = 8  # windows per detector call, as the pipeline's default batch


# --- recipes: what is quantized and how its ranges are calibrated ------------------------

# The Detect head's last nodes turn the convolutions' outputs into boxes in pixels (0 to
# 640) and class scores (0 to 1) and join them into one output tensor: one 8-bit scale
# for both would round every score to 0. Each entry: regular expressions of node names
# that stay in float.
HEAD_OUTPUT = (r"^/model\.22/(Concat_26|Mul_5|Sigmoid|Div_1)$",)  # the output's join and its last steps
HEAD_DECODE = (r"^/model\.22/(?!cv[23]\.)",)  # all of the head but its convolutions (cv2: boxes, cv3: classes)
OUTPUT_CONVS = (r"^/model\.22/cv[23]\.\d/cv[23]\.\d\.2/",)  # the last convolution of each branch and scale


@dataclass(frozen=True, slots=True)
class Recipe:
    name: str
    method: str  # an onnxruntime CalibrationMethod: MinMax, Percentile or Entropy
    float_nodes: tuple[str, ...] = ()  # node-name patterns left in float
    reduce_range: bool = False  # 7-bit weights: no int16 overflow in AVX2's u8 x s8 products
    op_types: tuple[str, ...] = ()  # the operator types quantized (none given: every one ONNX Runtime can)


# The one used: the best recall at both inputs, and boxes as tight as FP32's. With 8-bit
# weights the u8 x s8 products overflow int16 on CPUs without VNNI (AVX2, the dev machine)
# and recall drops 2 points; the box decoding (DFL) quantized loosens the boxes the reader crops.
RECIPE = Recipe("head decode float, minmax, 7-bit weights", "MinMax", HEAD_DECODE, reduce_range=True)

# Every recipe tried (`--compare`), on the held-out frames; models/README.md has the figures.
RECIPES = (
    Recipe("all, minmax", "MinMax"),
    Recipe("head output float, minmax", "MinMax", HEAD_OUTPUT),
    Recipe("head decode float, minmax", "MinMax", HEAD_DECODE),
    Recipe("head decode float, percentile", "Percentile", HEAD_DECODE),
    Recipe("head decode float, entropy", "Entropy", HEAD_DECODE),
    Recipe("head decode and output convs float, minmax", "MinMax", HEAD_DECODE + OUTPUT_CONVS),
    Recipe("convs only, head decode float, minmax", "MinMax", HEAD_DECODE, op_types=("Conv",)),
    Recipe("head output float, minmax, 7-bit weights", "MinMax", HEAD_OUTPUT, reduce_range=True),
    RECIPE,
    Recipe("head decode float, percentile, 7-bit weights", "Percentile", HEAD_DECODE, reduce_range=True),
    Recipe("head decode float, entropy, 7-bit weights", "Entropy", HEAD_DECODE, reduce_range=True),
    Recipe(
        "head decode and output convs float, minmax, 7-bit weights",
        "MinMax",
        HEAD_DECODE + OUTPUT_CONVS,
        reduce_range=True,
    ),
)


# --- the development clip, read as the pipeline reads it -----------------------------------


@dataclass(frozen=True, slots=True)
class ClipFrames:
    frames: dict[int, np.ndarray]  # frame index -> BGR frame
    windows: dict[int, np.ndarray]  # frame index -> (K, 4) windows around what moves (none: whole-frame look)


def choose_frames(count: int, with_plates: set[int], seed: int) -> tuple[list[int], list[int]]:
    """Calibration frames (any frame the pipeline detects on) and held-out frames (with a
    plate on screen, none of them a calibration frame), both a seeded draw."""
    rng = np.random.default_rng(seed)
    looked_at = np.arange(0, count, VIDEO_STRIDE)
    calibration = sorted(int(i) for i in rng.choice(looked_at, CALIBRATION_FRAMES, replace=False))
    candidates = np.array(sorted(set(looked_at.tolist()) & with_plates - set(calibration)))
    held_out = sorted(int(i) for i in rng.choice(candidates, HELD_OUT_FRAMES, replace=False))
    return calibration, held_out


def read_clip(clip: Path, wanted: set[int], detector: OnnxPlateDetector) -> ClipFrames:
    """The `wanted` frames and the windows `MotionWindows` would look at in each: its
    background model fed every VIDEO_STRIDE-th frame from the start, as `anpr run` does."""
    motion = MotionWindows(detector, DetectorSettings())
    capture = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    frames: dict[int, np.ndarray] = {}
    windows: dict[int, np.ndarray] = {}
    index = 0
    while index <= max(wanted):
        ok, frame = capture.read()
        if not ok:
            raise SystemExit(f"{clip} ends at frame {index}, before frame {max(wanted)}")
        if index % VIDEO_STRIDE == 0:
            moving = motion._moving(frame)  # the search alone: no detector call
            if index in wanted:
                frames[index] = frame
                windows[index] = np.zeros((0, 4), np.int32) if moving is None else moving
        index += 1
    capture.release()
    return ClipFrames(frames, windows)


def crops(frame: np.ndarray, windows: np.ndarray) -> list[np.ndarray]:
    return [frame[y1:y2, x1:x2] for x1, y1, x2, y2 in windows]


def calibration_inputs(data: ClipFrames, indices: Sequence[int], detector: OnnxPlateDetector) -> list[np.ndarray]:
    """One input tensor per look: each whole frame at WHOLE_INPUT, each window at WINDOW_INPUT,
    letterboxed as the detector letterboxes them."""
    tensors = []
    for index in indices:
        frame = data.frames[index]
        tensors.append(detector._letterbox([frame], WHOLE_INPUT)[0])
        tensors += [detector._letterbox([crop], WINDOW_INPUT)[0] for crop in crops(frame, data.windows[index])]
    return tensors


class Looks(CalibrationDataReader):
    """The calibration tensors, one at a time (their shapes differ: frames and windows)."""

    def __init__(self, input_name: str, tensors: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.tensors = tensors
        self.set_range(0, len(tensors))

    def __len__(self) -> int:
        return len(self.tensors)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending: Iterator[np.ndarray] = iter(self.tensors[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._pending, None)
        return None if tensor is None else {self.input_name: tensor}


# --- quantization ------------------------------------------------------------------------


def float_nodes(model: Path, patterns: Sequence[str]) -> list[str]:
    """Names of the nodes of `model` that match any of `patterns`."""
    return [n.name for n in onnx.load(str(model)).graph.node if any(re.search(p, n.name) for p in patterns)]


def quantize(prepared: Path, out: Path, recipe: Recipe, looks: Looks, cache: Path) -> None:
    """`prepared` (quant_pre_process'd) quantized by `recipe` into `out`. The tensors' ranges
    are kept in `cache`, per calibration method: recipes differing only in what stays float
    share them."""
    quantize_static(
        prepared,
        out,
        looks,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=float_nodes(prepared, recipe.float_nodes),
        reduce_range=recipe.reduce_range,
        op_types_to_quantize=list(recipe.op_types) or None,
        calibrate_method=CalibrationMethod[recipe.method],
        # One look per calibration call: the shapes differ, and the histogram methods
        # would otherwise hold every activation of every look in memory at once.
        extra_options={"CalibStridedMinMax": 1},
        calibration_cache_path=cache,
    )


# --- what a model gives: recall on held-out frames, CPU time -----------------------------


def best_iou(truth: Sequence[np.ndarray], detections: np.ndarray) -> np.ndarray:
    """Each true plate box's IoU with the detection that covers it best (0: none)."""
    if not len(truth) or not len(detections):
        return np.zeros(len(truth), np.float32)
    return pairwise_iou(np.asarray(truth), detections).max(axis=1)


def mean_iou_found(ious: np.ndarray) -> float:
    """The mean IoU of the plates found: how tight the boxes the reader crops are."""
    tight = ious[ious >= MATCH_IOU]
    return round(float(tight.mean()), 4) if len(tight) else 0.0


def inside(box: np.ndarray, windows: np.ndarray) -> bool:
    return bool(((windows[:, :2] <= box[:2]).all(axis=1) & (windows[:, 2:] >= box[2:]).all(axis=1)).any())


def recall(
    detector: OnnxPlateDetector, data: ClipFrames, indices: Sequence[int], truth: dict[int, list[np.ndarray]]
) -> dict[str, Any]:
    """Detection recall on the frames `indices` (a plate found at IoU >= MATCH_IOU, as `anpr
    eval` counts): whole frames at WHOLE_INPUT (every plate on screen), and the windows at
    WINDOW_INPUT (the plates wholly inside a window), each with the mean IoU of the plates found."""
    whole: list[np.ndarray] = []
    windowed: list[np.ndarray] = []
    for start in range(0, len(indices), WINDOW_BATCH):
        chunk = indices[start : start + WINDOW_BATCH]
        seen = detector.detect([data.frames[i] for i in chunk], input_size=WHOLE_INPUT)
        whole += [best_iou(truth[i], seen.xyxy[seen.frame == k]) for k, i in enumerate(chunk)]
    for index in indices:
        windows = data.windows[index]
        targets = [box for box in truth[index] if len(windows) and inside(box, windows)]
        if targets:
            owners = np.zeros(len(windows), np.int32)
            seen = detect_in_windows(detector, [data.frames[index]], windows, owners, None, WINDOW_BATCH, WINDOW_INPUT)
            windowed.append(best_iou(targets, seen.xyxy))
    whole_iou, window_iou = np.concatenate(whole), np.concatenate(windowed)
    return {
        "frames": len(indices),
        "plates": len(whole_iou),
        f"recall_whole_{WHOLE_INPUT}": round(float((whole_iou >= MATCH_IOU).mean()), 4),
        f"mean_iou_found_whole_{WHOLE_INPUT}": mean_iou_found(whole_iou),
        "plates_in_windows": len(window_iou),
        f"recall_windows_{WINDOW_INPUT}": round(float((window_iou >= MATCH_IOU).mean()), 4),
        f"mean_iou_found_windows_{WINDOW_INPUT}": mean_iou_found(window_iou),
    }


# (input shape, timed calls) of each timing: the video path's windows, batch 8 at 320x320,
# and a 1080p frame at 640 (letterboxed to its own aspect: 640x384), batch 1.
TIMINGS = {"320x320_batch8": ((8, 3, 320, 320), 6), "640x384_batch1": ((1, 3, 384, 640), 12)}


def cpu_ms_per_image(model: ModelFile, threads: int = 0) -> dict[str, float]:
    """CPU time (all threads) per image of the network call alone, after one warm-up call;
    short, as the machine is shared."""
    session = onnx_session(model, threads)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(SEED)
    figures = {}
    for label, (shape, calls) in TIMINGS.items():
        tensor = rng.random(shape, np.float32)
        session.run(None, {name: tensor})
        start = time.process_time()
        for _ in range(calls):
            session.run(None, {name: tensor})
        figures[label] = round(1000 * (time.process_time() - start) / (calls * shape[0]), 1)
    return figures


def detector_of(model: ModelFile, threads: int) -> OnnxPlateDetector:
    return OnnxPlateDetector(DetectorSettings(), weights=model, threads=threads)


def provenance(
    out: Path,
    source: ModelFile,
    clip: Path,
    command: str,
    calibration: list[int],
    held_out: list[int],
    looks: int,
) -> dict[str, Any]:
    """What the provenance JSON beside the model says of how it was made, and its CPU time."""
    return {
        "model": NAME,
        "file": out.name,
        "sha256": _sha256(out),
        "source_model": SOURCE,
        "source_file": source.path.name,
        "source_sha256": source.sha256,
        "command": command,
        "seed": SEED,
        "method": {
            "tool": f"onnxruntime {ort.__version__} quantize_static after quant_pre_process(skip_symbolic_shape=True)",
            "format": "QDQ",
            "weights": "int8, per output channel",
            "activations": "uint8",
            **asdict(RECIPE),
        },
        "calibration": {
            "clip": f"benchmarks/data/{clip.name}",
            "clip_sha256": _sha256(clip),
            "clip_made_of": "train splits of openalpr-us-crops and openalpr-br-crops (clips.dev_vehicles)",
            "frames": calibration,
            "looks": looks,
            "inputs": f"whole frames letterboxed to {WHOLE_INPUT}, MotionWindows windows letterboxed to {WINDOW_INPUT}",
        },
        "held_out": {"frames": held_out},
        "cpu_ms_per_image": {
            "fp32": cpu_ms_per_image(source),
            "int8": cpu_ms_per_image(ModelFile(NAME, out, "")),
        },
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


# --- the command ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="the development clip (traffic-dev)")
    parser.add_argument("--datasets", type=Path, default=DATASETS, help="the folder of the US and BR crop sets")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--compare", action="store_true", help="measure every recipe instead of writing one")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads for the recall runs (0: all)")
    args = parser.parse_args(argv)
    if not args.clip.with_suffix(".json").is_file():
        parser.error(f"{args.clip} not found: build it with python benchmarks/passage_accuracy.py --traffic --dev")
    if "traffic-dev" not in args.clip.name:
        parser.error("calibrate on the development clip only (traffic-dev): the others are made to measure")

    source = model_file(SOURCE)
    fp32 = detector_of(source, args.threads)
    on_screen = plates_on_screen(args.clip, dev_vehicles(args.datasets))
    truth = {i: [box for _, box in plates] for i, plates in on_screen.items()}
    count = int(cv2.VideoCapture(str(args.clip), cv2.CAP_FFMPEG).get(cv2.CAP_PROP_FRAME_COUNT))
    calibration, held_out = choose_frames(count, set(truth), SEED)
    started = time.monotonic()
    data = read_clip(args.clip, set(calibration) | set(held_out), fp32)
    looks = Looks(fp32._input, calibration_inputs(data, calibration, fp32))
    print(f"read {args.clip.name}: {len(looks)} calibration looks, {len(held_out)} held-out frames", flush=True)
    baseline = recall(fp32, data, held_out, truth)
    print(f"fp32: {baseline}", flush=True)

    with tempfile.TemporaryDirectory(prefix="quantize-detector-") as work:
        prepared = Path(work) / "prepared.onnx"
        # Shape inference and graph clean-up first, as ONNX Runtime advises; the symbolic
        # shape pass is skipped: it cannot follow the head's shapes (dynamic height, width).
        quant_pre_process(source.path, prepared, skip_symbolic_shape=True)
        recipes = RECIPES if args.compare else (RECIPE,)
        results = {}
        for recipe in recipes:
            out = Path(work) / "candidate.onnx" if args.compare else args.out
            ranges = Path(work) / f"ranges-{recipe.method}-{'-'.join(recipe.op_types) or 'all'}.json"
            quantize(prepared, out, recipe, looks, ranges)
            candidate = ModelFile(NAME, out, _sha256(out))
            results[recipe.name] = recall(detector_of(candidate, args.threads), data, held_out, truth)
            if args.compare:
                results[recipe.name]["cpu_ms_per_image"] = cpu_ms_per_image(candidate, args.threads)
            print(f"{recipe.name}: {results[recipe.name]}", flush=True)
    if args.compare:
        baseline["cpu_ms_per_image"] = cpu_ms_per_image(source, args.threads)
        print(json.dumps({"fp32": baseline, **results}, indent=1))
        return 0

    command = "python -m training.quantize_detector " + " ".join(sys.argv[1:] if argv is None else argv)
    record = provenance(args.out, source, args.clip, command.strip(), calibration, held_out, len(looks))
    record["held_out"].update(fp32=baseline, int8=results[RECIPE.name])
    record["minutes"] = round((time.monotonic() - started) / 60, 1)
    digest = record["sha256"]
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    if args.out.parent.resolve() == MODELS:
        update_manifest(
            MODELS, NAME, args.out.name, digest, f"{command.strip()} (training/quantize_detector.py)", LICENCE
        )
    print(f"wrote {args.out} sha256 {digest}: {record['held_out']['int8']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
