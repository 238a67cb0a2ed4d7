"""INT8 variants of the default recogniser (ppocrv4-rec) against FP32: issue 15, "INT8
recogniser" in benchmarks/RESULTS.md. None kept its accuracy; none is used.

    python benchmarks/ocr_int8.py build                # the variants, under OUT
    python benchmarks/ocr_int8.py train|accuracy|speed [VARIANT ...]

Calibration reads only the train splits of the US and BR crop sets; `accuracy` measures
the test splits and openalpr-eu (measurement only).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from anpr.config.settings import DetectorSettings
from anpr.measure.eval import evaluate, evaluate_crops, load_crop_labels
from anpr.reading.detect import OnnxPlateDetector
from anpr.reading.ocr import PpOcrRecogniser, deskew, isolate_characters, line_width, prepare_line, strip_blue_band
from anpr.reading.weights import ModelFile, _sha256, model_file
from anpr.run.assemble import with_second_pass

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "datasets"
OUT = Path(tempfile.gettempdir()) / "anpr-ocr-int8"  # the variants: 3-11 MB each, not committed
SEED = 0
PER_SET = 100
SPEC = PpOcrRecogniser.line_input


def calibration_lines():
    rng = np.random.default_rng(SEED)
    lines, chosen = [], []
    for name in ("openalpr-us-crops", "openalpr-br-crops"):
        labels = load_crop_labels(DATA / name, "train")
        for i in sorted(rng.choice(len(labels), PER_SET, replace=False)):
            chosen.append(f"{name}/{labels[i].image.name}")
            stripped = strip_blue_band(deskew(cv2.imread(str(labels[i].image))))
            for view in (isolate_characters(stripped), stripped):
                lines.append(prepare_line(view, line_width(view, SPEC), SPEC)[None])
    return lines, chosen


class Reader(CalibrationDataReader):
    def __init__(self, lines):
        self._lines = iter(lines)

    def get_next(self):
        line = next(self._lines, None)
        return None if line is None else {"x": line}


VARIANTS = {
    "dyn-qint8": ("dynamic", dict(weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Conv"])),
    "dyn-quint8": ("dynamic", dict(weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Conv"])),
    "qdq-pc-all": ("static", dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)),
    "qdq-pc-all-rr": ("static", dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)),
    "qdq-pc-convmatmul": (
        "static",
        dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul"]),
    ),
    "qdq-s8s8-all": ("static", dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)),
    "qdq-u8s8-backbone": ("static", dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, backbone=True)),
    "qdq-u8s8-rr-backbone": (
        "static",
        dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True, backbone=True),
    ),
    "qdq-s8s8-backbone": ("static", dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, backbone=True)),
}


def backbone_nodes(path):
    """Names of the nodes up to the backbone's last pooling (PPLCNetV3); the SVTR neck and the head follow."""
    names = []
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Constant":
            continue
        names.append(node.name)
        if node.op_type == "AveragePool":
            return names
    raise ValueError("no AveragePool")


def build(only=()):
    src = model_file("ppocrv4-rec").path
    OUT.mkdir(exist_ok=True)
    op13 = OUT / "op13.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(src)), 13), str(op13))  # per-channel needs opset 13
    pre = OUT / "pre.onnx"
    quant_pre_process(str(op13), str(pre), skip_symbolic_shape=True)
    lines, chosen = calibration_lines()
    (OUT / "calibration.json").write_text(json.dumps(chosen, indent=0))
    for name, (kind, kw) in VARIANTS.items():
        if only and name not in only:
            continue
        kw = dict(kw)
        stride = kw.pop("calib_stride", 1)  # histogram calibrators hold every line's activations in memory
        if kw.pop("backbone", False):
            kw["nodes_to_quantize"] = backbone_nodes(pre)
        t = time.process_time()
        if kind == "dynamic":
            quantize_dynamic(str(pre), str(OUT / f"{name}.onnx"), **kw)
        else:
            quantize_static(
                str(pre),
                str(OUT / f"{name}.onnx"),
                Reader(lines[::stride]),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                **kw,
            )
        print(name, "built", round(time.process_time() - t, 1), "s", flush=True)


def paths():
    p = {"fp32": model_file("ppocrv4-rec").path}
    p.update({n: OUT / f"{n}.onnx" for n in VARIANTS})
    return p


def recogniser(name, path):
    return PpOcrRecogniser(weights=ModelFile(f"ppocrv4-rec-{name}", path, _sha256(path)), threads=1)


def train_accuracy(names):
    for name in names:
        r = recogniser(name, paths()[name])
        row = {"variant": name}
        for key, folder in (("us_train", "openalpr-us-crops"), ("br_train", "openalpr-br-crops")):
            s = evaluate_crops(DATA / folder, r, "train").summary()
            row[key] = [s["exact"], s["top3"], s["images"]]
        print(json.dumps(row), flush=True)


def accuracy(names):
    detector = with_second_pass(OnnxPlateDetector(DetectorSettings(), threads=1), DetectorSettings(), stills=True)
    for name in names:
        r = recogniser(name, paths()[name])
        row = {"variant": name}
        for key, folder, split in (("us_test", "openalpr-us-crops", "test"), ("br_test", "openalpr-br-crops", "test")):
            s = evaluate_crops(DATA / folder, r, split).summary()
            row[key] = [s["exact"], s["top3"], s["images"]]
        s = evaluate(DATA / "openalpr-eu", detector, r).summary()
        row["eu"] = [s["exact"], s["top3"], s["images"], s["detection_recall"]]
        print(json.dumps(row), flush=True)


def speed(names, crops_n=128, repeats=3):
    crops = [cv2.imread(str(label.image)) for label in load_crop_labels(DATA / "openalpr-us-crops", "test")][:crops_n]
    recs = {n: recogniser(n, paths()[n]) for n in names}
    model_cpu = {}
    for n, r in recs.items():
        inner = r._forward

        def timed(batch, inner=inner, n=n):
            t = time.process_time()
            out = inner(batch)
            model_cpu[n] += time.process_time() - t
            return out

        r._forward = timed
    results = {}
    for batch in (8, 32):
        groups = [crops[i : i + batch] for i in range(0, len(crops), batch)]
        best = {n: [9e9, 9e9, 9e9] for n in names}
        for rep in range(repeats + 1):
            for n, r in recs.items():
                model_cpu[n] = 0.0
                c, w = time.process_time(), time.perf_counter()
                for g in groups:
                    r.recognise(g)
                c, w = time.process_time() - c, time.perf_counter() - w
                if rep:  # the first pass warms up
                    best[n] = [min(best[n][0], c), min(best[n][1], w), min(best[n][2], model_cpu[n])]
        for n in names:
            results.setdefault(n, {})[batch] = [round(1000 * v / len(crops), 2) for v in best[n]]
    for n in names:
        print(json.dumps({"variant": n, "ms_per_crop [cpu, wall, model cpu]": results[n]}), flush=True)


if __name__ == "__main__":
    what = sys.argv[1]
    names = sys.argv[2:] or list(paths())
    {
        "build": lambda: build(sys.argv[2:]),
        "train": lambda: train_accuracy(names),
        "accuracy": lambda: accuracy(names),
        "speed": lambda: speed(names),
    }[what]()
