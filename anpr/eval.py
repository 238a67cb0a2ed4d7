"""Accuracy on an annotated photo folder (the openalpr benchmark layout).

Each `NAME.txt` holds one tab-separated line per plate: `IMAGE X Y WIDTH HEIGHT PLATE`.
A plate counts as found when a detection overlaps its box at IoU >= 0.3, and as read
exactly when the text read from that detection equals the label (normalised, O and 0
folded together).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from anpr.detect import PlateDetector, pairwise_iou
from anpr.errors import DatasetError
from anpr.ocr import PlateRecogniser, cut_plates
from anpr.plates import choose_plate, same_plate

MATCH_IOU = 0.3
ANNOTATION_FIELDS = ("image", "x", "y", "width", "height", "plate")


@dataclass(frozen=True, slots=True)
class Annotation:
    image: Path
    box: np.ndarray  # (4,) x1, y1, x2, y2
    plate: str


@dataclass(frozen=True, slots=True)
class ImageResult:
    image: str
    expected: str
    read: str | None  # None when the plate was not found
    iou: float
    candidates: tuple[str, ...] = ()  # best first


@dataclass(frozen=True, slots=True)
class EvalReport:
    results: list[ImageResult]
    seconds: float

    @property
    def images(self) -> int:
        return len(self.results)

    @property
    def detection_recall(self) -> float:
        return sum(r.read is not None for r in self.results) / max(self.images, 1)

    @property
    def exact(self) -> float:
        return sum(r.read is not None and same_plate(r.read, r.expected) for r in self.results) / max(self.images, 1)

    @property
    def top3(self) -> float:
        """Share of plates whose right text is among the first three candidates."""
        return sum(any(same_plate(c, r.expected) for c in r.candidates[:3]) for r in self.results) / max(self.images, 1)

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / max(self.images, 1)

    def summary(self) -> dict[str, float | int]:
        return {
            "images": self.images,
            "detection_recall": round(self.detection_recall, 4),
            "exact": round(self.exact, 4),
            "top3": round(self.top3, 4),
            "ms_per_image": round(self.ms_per_image, 1),
        }


def load_annotations(folder: Path) -> list[Annotation]:
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    annotations = []
    for label_file in sorted(folder.glob("*.txt")):
        for number, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(ANNOTATION_FIELDS):
                raise DatasetError(
                    f"{label_file}:{number}: expected {len(ANNOTATION_FIELDS)} tab-separated fields "
                    f"({' '.join(ANNOTATION_FIELDS)}), found {len(fields)}"
                )
            name, x, y, w, h, plate = fields
            try:
                x0, y0, width, height = (float(v) for v in (x, y, w, h))
            except ValueError:
                raise DatasetError(f"{label_file}:{number}: box values must be numbers: {x} {y} {w} {h}") from None
            image = folder / name
            if not image.is_file():
                raise DatasetError(f"{label_file}:{number}: image not found: {image}")
            annotations.append(Annotation(image, np.array([x0, y0, x0 + width, y0 + height], np.float32), plate))
    if not annotations:
        raise DatasetError(f"no annotations (*.txt) found in {folder}")
    return annotations


def _batches(items: list[Annotation], size: int) -> Iterator[list[Annotation]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate(
    folder: Path,
    detector: PlateDetector,
    recogniser: PlateRecogniser,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    annotations = load_annotations(folder)
    results: list[ImageResult] = []
    started = time.perf_counter()
    for batch in _batches(annotations, batch_size):
        images = []
        for annotation in batch:
            image = cv2.imread(str(annotation.image))
            if image is None:
                raise DatasetError(f"cannot decode image {annotation.image}")
            images.append(image)
        detections = detector.detect(images)
        matched: list[int] = []  # index into detections, per annotation (-1: not found)
        ious: list[float] = []
        for position, annotation in enumerate(batch):
            candidates = np.flatnonzero(detections.frame == position)
            overlaps = pairwise_iou(annotation.box, detections.xyxy[candidates])[0] if len(candidates) else np.zeros(0)
            best = int(overlaps.argmax()) if len(overlaps) else -1
            found = best >= 0 and overlaps[best] >= MATCH_IOU
            matched.append(int(candidates[best]) if found else -1)
            ious.append(float(overlaps[best]) if best >= 0 else 0.0)
        chosen = np.array([m for m in matched if m >= 0], np.int64)
        reads = recogniser.recognise(cut_plates(images, detections[chosen])).candidates if len(chosen) else []
        plate_of = dict(zip(chosen.tolist(), (choose_plate(c) for c in reads), strict=True))
        for annotation, match, iou in zip(batch, matched, ious, strict=True):
            plate = plate_of.get(match)
            results.append(
                ImageResult(
                    annotation.image.name,
                    annotation.plate,
                    plate.plate if plate else None,
                    iou,
                    tuple(t for t, _ in plate.candidates) if plate else (),
                )
            )
        if progress:
            progress(len(results), len(annotations))
    return EvalReport(results, time.perf_counter() - started)


def score_passages(truth: list[dict], reported: list[dict]) -> dict[str, object]:
    """Reported passages against the true ones of a clip (both with first_frame, last_frame, plate).

    A reported passage belongs to the true passage containing its middle frame. A true
    passage is right when exactly one reported passage of it has its plate. Every other
    reported passage is spurious: a duplicate, a wrong plate, or, where a photo shows
    more than one vehicle, a plate the annotation does not list (counted apart too).
    """
    owners: dict[int, list[dict]] = {i: [] for i in range(len(truth))}
    for passage in reported:
        middle = (passage["first_frame"] + passage["last_frame"]) / 2
        owner = next((i for i, t in enumerate(truth) if t["first_frame"] <= middle <= t["last_frame"]), None)
        if owner is not None:
            owners[owner].append(passage)
    matching = {i: [f for f in found if same_plate(f["plate"], truth[i]["plate"])] for i, found in owners.items()}
    right = [len(matching[i]) == 1 for i in range(len(truth))]
    # A passage of another plate beside one right passage: another vehicle, or a misread.
    beside_right = sum(len(owners[i]) - 1 for i in range(len(truth)) if right[i])
    return {
        "passages": len(truth),
        "reported": len(reported),
        "exactly_once_right": round(sum(right) / max(len(truth), 1), 4),
        "spurious": round((len(reported) - sum(right)) / max(len(reported), 1), 4),
        "spurious_beside_a_right_passage": beside_right,
        "missed": sum(not found for found in owners.values()),
        "wrong": [(truth[i]["plate"], [f["plate"] for f in owners[i]]) for i, ok in enumerate(right) if not ok],
    }
