"""Where a reader's through-the-detector points go: the crop sets' test splits read from
hand crops, from hand crops with one camera fault each, and from the transplanted scenes
of `anpr eval --scenes` cut by the plate's true box and by the detector's box.

    python -m benchmarks.reader_gap [--ocr platereader] [--pool]

Also prints how much looser the detector's box is than the plate's true box and the
true-box reads by plate height. With `--pool`, through the detector: what reading with the
pool's two members (`PooledRecogniser`: the plate reader and PP-OCRv4) could reach (an
oracle taking whichever is right), the pool itself, and a cascade fixed beforehand (the
plate reader where its confidence reaches its calibrated floor `reject_below`, else the pool).
Measurement only: nothing here is chosen on these figures. One JSON object per line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from anpr.config.settings import RunSettings
from anpr.measure.eval import _read_image, load_annotations, load_crop_labels, match_plates
from anpr.measure.transplant import Host, host_for, transplant
from anpr.reading.detect import Detections
from anpr.reading.ocr import PooledRecogniser, cut_plates, make_recogniser
from anpr.reading.plates import PlateText, choose_plate, same_plate
from anpr.run.assemble import load_models, with_second_pass

DATASETS = Path("../shared/datasets")
CROP_SETS = ("openalpr-us-crops", "openalpr-br-crops")
HEIGHT_BINS = (20, 30, 45)  # px: plates below, between and above, cut by the true box
HEIGHT_NAMES = ("<20", "20-30", "30-45", ">=45")
BATCH = 8  # scenes per detector call, as `anpr eval` (pipeline.batch) detects them


def turned(image: np.ndarray, degrees: float) -> np.ndarray:
    """The crop turned, inside the axis-aligned box around it (as a detector would draw it)."""
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    c, s = abs(np.cos(np.radians(degrees))), abs(np.sin(np.radians(degrees)))
    width, height = int(w * c + h * s), int(w * s + h * c)
    turn[0, 2] += (width - w) / 2
    turn[1, 2] += (height - h) / 2
    return cv2.warpAffine(image, turn, (width, height), borderMode=cv2.BORDER_REPLICATE)


def camera_faults(image: np.ndarray, height: int = 36, sigma: float = 0.7, quality: int = 60) -> np.ndarray:
    """The crop brought to `height` px, blurred and JPEG-compressed."""
    width = max(8, round(image.shape[1] * height / image.shape[0]))
    small = cv2.GaussianBlur(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), (0, 0), sigma)
    return cv2.imdecode(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)


def one_box(box: np.ndarray) -> Detections:
    return Detections(box[None].astype(np.float32), np.ones(1, np.float32), np.zeros(1, np.int32))


def read(reader, crops: list[np.ndarray]) -> list[PlateText]:
    """The plates `reader` reads in `crops`, chosen as the pipeline chooses them."""
    return [choose_plate(c, swaps=reader.lookalike_swaps) for c in reader.recognise(crops).candidates]


def share_right(plates: list[PlateText], truth: list[str], of: int | None = None) -> float:
    """The share of `plates` that are right, of `of` plates (default: as many as read)."""
    right = sum(same_plate(p.plate, t) for p, t in zip(plates, truth, strict=True))
    return round(right / (of or len(plates)), 4) if (of or plates) else 0.0


def measure_set(folder: Path, reader, detector, hosts: list[Host], pool: bool) -> list[dict]:
    labels = load_crop_labels(folder, "test")
    truth = [label.plate for label in labels]
    hand = [_read_image(label.image) for label in labels]
    true_cut, detector_cut, found_at, heights, looseness = [], [], [], [], []
    scenes = []
    for index, image in enumerate(hand):
        host, rng = host_for(index, hosts)
        scene, box = transplant(image, _read_image(host.image), host.box, rng)
        scenes.append((scene, box))
        true_cut.append(cut_plates([scene], one_box(box))[0])
        heights.append(float(box[3] - box[1]))
    for start in range(0, len(scenes), BATCH):  # detected in batches as `anpr eval` does
        batch = scenes[start : start + BATCH]
        found = detector.detect([scene for scene, _ in batch])
        matched, _ = match_plates([box for _, box in batch], found)
        for position, ((scene, box), match) in enumerate(zip(batch, matched, strict=True)):
            if match >= 0:
                detected = found.xyxy[match].astype(np.float64)
                detector_cut.append(cut_plates([scene], one_box(detected))[0])
                found_at.append(start + position)
                w, h = box[2] - box[0], box[3] - box[1]
                looseness.append([(box[0] - detected[0]) / w, (box[1] - detected[1]) / h,
                                  (detected[2] - box[2]) / w, (detected[3] - box[3]) / h])  # fmt: skip
    found_truth = [truth[i] for i in found_at]
    by_true_box = read(reader, true_cut)
    bins = np.digitize(heights, HEIGHT_BINS)
    by_height = {}
    for b in sorted(set(bins.tolist())):
        members = np.flatnonzero(bins == b)
        by_height[HEIGHT_NAMES[b]] = [len(members), share_right([by_true_box[i] for i in members],
                                                                [truth[i] for i in members])]  # fmt: skip
    lines = [
        {
            "set": folder.name,
            "ocr": reader.identifier,
            "plates": len(labels),
            "hand crops": share_right(read(reader, hand), truth),
            "hand crops turned 10 degrees": share_right(
                read(reader, [turned(im, 10 if i % 2 else -10) for i, im in enumerate(hand)]), truth
            ),
            "hand crops 36 px, blur 0.7, JPEG 60": share_right(read(reader, [camera_faults(im) for im in hand]), truth),
            "transplanted, true box": share_right(by_true_box, truth),
            "transplanted, detector box": share_right(read(reader, detector_cut), found_truth, len(labels)),
            "true box by plate height": by_height,
            "detector box looser than the plate (left, top, right, bottom), median": np.round(
                np.median(looseness, axis=0), 3
            ).tolist(),
            "p90": np.round(np.percentile(looseness, 90, axis=0), 3).tolist(),
        }
    ]
    if pool:
        members = [make_recogniser(member) for member in PooledRecogniser.members]
        first, second = (read(member, detector_cut) for member in members)
        pooled = read(PooledRecogniser(), detector_cut)
        floor = members[0].reject_below
        cascade = [a if a.confidence >= floor else p for a, p in zip(first, pooled, strict=True)]
        either = [a if same_plate(a.plate, t) else b for a, b, t in zip(first, second, found_truth, strict=True)]
        figures = {
            PooledRecogniser.members[0]: share_right(first, found_truth, len(labels)),
            PooledRecogniser.members[1]: share_right(second, found_truth, len(labels)),
            "oracle": share_right(either, found_truth, len(labels)),
            "pool": share_right(pooled, found_truth, len(labels)),
            f"cascade (floor {floor})": share_right(cascade, found_truth, len(labels)),
        }
        lines.append({"set": folder.name, "through the detector": figures})
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ocr", default="platereader")
    parser.add_argument("--pool", action="store_true", help="the pool's members, their oracle and a cascade")
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    args = parser.parse_args()

    reader = make_recogniser(args.ocr)
    settings = RunSettings()
    detector = with_second_pass(load_models(settings).detector, settings.detector, stills=True)
    hosts = [Host(a.image, a.box) for a in load_annotations(args.datasets / "openalpr-eu")]
    for name in CROP_SETS:
        for line in measure_set(args.datasets / name, reader, detector, hosts, args.pool):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
