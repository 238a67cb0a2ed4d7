"""Accuracy on annotated sets, of two kinds:

- scenes (the openalpr benchmark layout): each `NAME.txt` holds one tab-separated line
  per plate, `IMAGE X Y WIDTH HEIGHT PLATE`. The detector and the recogniser run; a plate
  counts as found when a detection overlaps its box at IoU >= 0.3, and as read exactly
  when the text read from that detection equals the label.
- plate crops: `labels.csv` with `image,region,plate,split`. Only the recogniser runs,
  on the crops of one split.

Texts are compared normalised, O and 0 folded together. Every result keeps the
candidates with their probabilities, so the errors can be written out one per image, and
the most frequent character confusions are counted.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from anpr.errors import DatasetError
from anpr.reading.detect import Detections, PlateDetector, pairwise_iou
from anpr.reading.images import read_image
from anpr.reading.ocr import PlateRecogniser, cut_plates
from anpr.reading.plates import PlateText, choose_plate, comparable, same_plate
from anpr.records import candidates_to_list
from anpr.redact import printable

MATCH_IOU = 0.3
ANNOTATION_FIELDS = ("image", "x", "y", "width", "height", "plate")
LABELS_FILE = "labels.csv"  # a crop set's labels
LABEL_FIELDS = ("image", "region", "plate", "split")
SPLITS = ("train", "test")
TOP_CONFUSIONS = 10


@dataclass(frozen=True, slots=True)
class Annotation:
    image: Path
    box: np.ndarray  # (4,) x1, y1, x2, y2
    plate: str


@dataclass(frozen=True, slots=True)
class CropLabel:
    image: Path
    region: str
    plate: str
    split: str


@dataclass(frozen=True, slots=True)
class ImageResult:
    image: str
    expected: str
    read: str | None  # None when the plate was not found
    iou: float | None  # of the matched detection; None for a crop (nothing was detected)
    candidates: tuple[tuple[str, float], ...] = ()  # best first, with their probabilities
    confidence: float = 0.0  # the read's share of its candidates

    @property
    def right(self) -> bool:
        return self.read is not None and same_plate(self.read, self.expected)

    def to_dict(self) -> dict[str, Any]:
        """One line of `anpr eval --errors`."""
        return {
            "image": self.image,
            "expected": self.expected,
            "read": self.read,
            "right": self.right,
            "confidence": round(self.confidence, 4),
            "candidates": candidates_to_list(self.candidates),
            "iou": None if self.iou is None else round(self.iou, 4),
        }


def _result(image: str, expected: str, plate: PlateText | None, iou: float | None) -> ImageResult:
    if plate is None:
        return ImageResult(image, expected, None, iou)
    return ImageResult(image, expected, plate.plate, iou, plate.candidates, plate.confidence)


def confusions(results: Sequence[ImageResult], top: int = TOP_CONFUSIONS) -> list[tuple[str, str, int]]:
    """The most frequent (expected, read, count) character confusions of the wrong reads.

    Texts are aligned with difflib: a substituted character is counted as (expected, read)
    where the substituted runs have one length, a dropped one as (expected, ""), an added
    one as ("", read). O and 0 are folded together, as the exact score does.
    """
    counted: Counter[tuple[str, str]] = Counter()
    for result in results:
        if result.read is None or result.right:
            continue
        expected, read = comparable(result.expected), comparable(result.read)
        for op, i1, i2, j1, j2 in SequenceMatcher(None, expected, read, autojunk=False).get_opcodes():
            if op == "equal":
                continue
            if i2 - i1 == j2 - j1:  # substituted one for one
                counted.update(zip(expected[i1:i2], read[j1:j2], strict=True))
            else:  # dropped (expected, "") and added ("", read); a delete or insert has one side empty
                counted.update((ch, "") for ch in expected[i1:i2])
                counted.update(("", ch) for ch in read[j1:j2])
    return [(a, b, n) for (a, b), n in counted.most_common(top)]


@dataclass(frozen=True, slots=True)
class EvalReport:
    results: list[ImageResult]
    seconds: float
    detected: bool = True  # False for a crop set: the detector did not run

    @property
    def images(self) -> int:
        return len(self.results)

    @property
    def detection_recall(self) -> float | None:
        if not self.detected:
            return None
        return sum(r.read is not None for r in self.results) / max(self.images, 1)

    @property
    def exact(self) -> float:
        return sum(r.right for r in self.results) / max(self.images, 1)

    @property
    def top3(self) -> float:
        """Share of plates whose right text is among the first three candidates."""
        return sum(any(same_plate(c, r.expected) for c, _ in r.candidates[:3]) for r in self.results) / max(
            self.images, 1
        )

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / max(self.images, 1)

    def summary(self) -> dict[str, Any]:
        recall = self.detection_recall
        return {
            "images": self.images,
            "detection_recall": None if recall is None else round(recall, 4),
            "exact": round(self.exact, 4),
            "top3": round(self.top3, 4),
            "ms_per_image": round(self.ms_per_image, 1),
            "confusions": [list(c) for c in confusions(self.results)],
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


Item = TypeVar("Item")


def _batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class Scene:
    """One annotated plate in a scene, and how to get the scene: (image, the plate's box)."""

    name: str
    plate: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


def evaluate(
    folder: Path,
    detector: PlateDetector,
    recogniser: PlateRecogniser,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    regions: tuple[str, ...] = (),
) -> EvalReport:
    """Detection recall and exact plates on a scene set (openalpr layout)."""

    def scene(annotation: Annotation) -> Scene:
        return Scene(annotation.image.name, annotation.plate, lambda: (_read_image(annotation.image), annotation.box))

    scenes = [scene(annotation) for annotation in load_annotations(folder)]
    return evaluate_scenes(scenes, detector, recogniser, batch_size, progress, regions)


def match_plates(boxes: Sequence[np.ndarray], detections: Detections) -> tuple[list[int], list[float]]:
    """For the annotated plate box of each frame of a batch, the index of the detection that
    overlaps it most if that is at least MATCH_IOU (else -1), and that overlap (0.0: none)."""
    matched: list[int] = []
    ious: list[float] = []
    for position, box in enumerate(boxes):
        candidates = np.flatnonzero(detections.frame == position)
        overlaps = pairwise_iou(box, detections.xyxy[candidates])[0] if len(candidates) else np.zeros(0)
        best = int(overlaps.argmax()) if len(overlaps) else -1
        found = best >= 0 and overlaps[best] >= MATCH_IOU
        matched.append(int(candidates[best]) if found else -1)
        ious.append(float(overlaps[best]) if best >= 0 else 0.0)
    return matched, ious


def evaluate_scenes(
    scenes: Sequence[Scene],
    detector: PlateDetector,
    recogniser: PlateRecogniser,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    regions: tuple[str, ...] = (),
) -> EvalReport:
    """The detector on each scene, then the recogniser on the detection that overlaps the
    annotated plate most (found at IoU >= MATCH_IOU), as the pipeline cuts and reads it."""
    results: list[ImageResult] = []
    started = time.perf_counter()
    for batch in _batches(list(scenes), batch_size):
        images, boxes = zip(*(scene.load() for scene in batch), strict=True)
        detections = detector.detect(list(images))
        matched, ious = match_plates(boxes, detections)
        chosen = np.array([m for m in matched if m >= 0], np.int64)
        reads = recogniser.recognise(cut_plates(list(images), detections[chosen])).candidates if len(chosen) else []
        plates = (choose_plate(c, regions=regions, swaps=recogniser.lookalike_swaps) for c in reads)
        plate_of = dict(zip(chosen.tolist(), plates, strict=True))
        for scene, match, iou in zip(batch, matched, ious, strict=True):
            results.append(_result(scene.name, scene.plate, plate_of.get(match), iou))
        if progress:
            progress(len(results), len(scenes))
    return EvalReport(results, time.perf_counter() - started)


def evaluate_transplanted(
    folder: Path,
    hosts_folder: Path,
    detector: PlateDetector,
    recogniser: PlateRecogniser,
    split: str | None = "test",
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    regions: tuple[str, ...] = (),
) -> EvalReport:
    """A crop set read through the detector: each crop set into a scene of `hosts_folder`
    at a camera's size, tilt and blur (`anpr.measure.transplant`), then detected, cut and read."""
    from anpr.measure.transplant import Host, host_for, transplant

    hosts = [Host(a.image, a.box) for a in load_annotations(hosts_folder)]

    def scene(index: int, label: CropLabel) -> Scene:
        host, rng = host_for(index, hosts)

        def load() -> tuple[np.ndarray, np.ndarray]:
            return transplant(_read_image(label.image), _read_image(host.image), host.box, rng)

        return Scene(f"{label.image.name}@{host.image.name}", label.plate, load)

    scenes = [scene(i, label) for i, label in enumerate(load_crop_labels(folder, split))]
    return evaluate_scenes(scenes, detector, recogniser, batch_size, progress, regions)


def _read_image(path: Path) -> np.ndarray:
    image = read_image(path)
    if isinstance(image, str):
        raise DatasetError(f"{image}: {printable(str(path))}")
    return image


def is_crop_set(folder: Path) -> bool:
    return (folder / LABELS_FILE).is_file()


def load_crop_labels(folder: Path, split: str | None = None) -> list[CropLabel]:
    """The crops of a crop set, of one split (None: all), in file order."""
    path = folder / LABELS_FILE
    try:
        with path.open(encoding="utf-8", newline="") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if not rows or tuple(rows[0]) != LABEL_FIELDS:
        raise DatasetError(f"{path}: the first line must be {','.join(LABEL_FIELDS)}")
    labels = []
    for number, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != len(LABEL_FIELDS):
            raise DatasetError(
                f"{path}:{number}: expected {len(LABEL_FIELDS)} comma-separated fields, found {len(row)}"
            )
        name, region, plate, row_split = row
        if row_split not in SPLITS:
            raise DatasetError(f"{path}:{number}: split must be {' or '.join(SPLITS)}, not {row_split!r}")
        image = folder / name
        if not image.is_file():
            raise DatasetError(f"{path}:{number}: image not found: {image}")
        if split is None or row_split == split:
            labels.append(CropLabel(image, region, plate, row_split))
    if not labels:
        raise DatasetError(f"{path}: no crops" + (f" in split '{split}'" if split else ""))
    return labels


def evaluate_crops(
    folder: Path,
    recogniser: PlateRecogniser,
    split: str | None = "test",
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    regions: tuple[str, ...] = (),
) -> EvalReport:
    """Exact-plate accuracy of the recogniser on the plate crops of one split (None: all)."""
    labels = load_crop_labels(folder, split)
    results: list[ImageResult] = []
    started = time.perf_counter()
    for batch in _batches(labels, batch_size):
        texts = recogniser.recognise([_read_image(label.image) for label in batch])
        for label, candidates in zip(batch, texts.candidates, strict=True):
            plate = choose_plate(candidates, regions=regions, swaps=recogniser.lookalike_swaps)
            results.append(_result(label.image.name, label.plate, plate, None))
        if progress:
            progress(len(results), len(labels))
    return EvalReport(results, time.perf_counter() - started, detected=False)


def score_passages(truth: list[dict], reported: list[dict]) -> dict[str, object]:
    """Reported passages against the true ones of a clip (both with first_frame, last_frame, plate).

    A reported passage belongs to the true passage containing its middle frame; where two
    vehicles are on screen at once (their passages overlap), to the one with its plate, else
    to the one whose middle is nearest. A true passage is right when exactly one reported
    passage of it has its plate. Every other reported passage is spurious: a duplicate, a
    wrong plate, or, where a photo shows more than one vehicle, a plate the annotation does
    not list (counted apart too).
    """
    owners: dict[int, list[dict]] = {i: [] for i in range(len(truth))}
    for passage in reported:
        middle = (passage["first_frame"] + passage["last_frame"]) / 2
        spanning = [i for i, t in enumerate(truth) if t["first_frame"] <= middle <= t["last_frame"]]
        if spanning:
            owner = min(
                spanning,
                key=lambda i: (
                    not same_plate(passage["plate"], truth[i]["plate"]),
                    abs((truth[i]["first_frame"] + truth[i]["last_frame"]) / 2 - middle),
                ),
            )
            owners[owner].append(passage)
    matching = {i: [f for f in found if same_plate(f["plate"], truth[i]["plate"])] for i, found in owners.items()}
    right = [len(matching[i]) == 1 for i in range(len(truth))]
    # A passage of another plate beside one right passage: another vehicle, or a misread.
    beside_right = sum(len(owners[i]) - 1 for i in range(len(truth)) if right[i])
    # The spurious: a second report of a vehicle, or a report where none was.
    extra = sum(max(0, len(found) - 1) for found in owners.values())
    nowhere = len(reported) - sum(len(found) for found in owners.values())
    return {
        "passages": len(truth),
        "reported": len(reported),
        "exactly_once_right": round(sum(right) / max(len(truth), 1), 4),
        "reported_once": round(sum(len(found) == 1 for found in owners.values()) / max(len(truth), 1), 4),
        "extra_per_true": round((extra + nowhere) / max(len(truth), 1), 4),
        "second_reports": extra,
        "no_vehicle": nowhere,
        "spurious": round((len(reported) - sum(right)) / max(len(reported), 1), 4),
        "spurious_beside_a_right_passage": beside_right,
        "missed": sum(not found for found in owners.values()),
        "wrong": [(truth[i]["plate"], [f["plate"] for f in owners[i]]) for i, ok in enumerate(right) if not ok],
    }


def check_sets(datasets: Sequence[Path], split: str | None, scenes: Path | None = None) -> dict[Path, bool]:
    """Each set read and checked (whether it is a crop set), so a malformed one fails before
    any model loads; `scenes`, the hosts of crops read through the detector, must be a scene
    set and comes with a crop set. DatasetError names the first bad one."""
    crops = {dataset: is_crop_set(dataset) for dataset in datasets}
    for dataset in datasets:
        if crops[dataset]:
            load_crop_labels(dataset, split)
        else:
            load_annotations(dataset)
    if scenes is not None:
        if is_crop_set(scenes):
            raise DatasetError(f"--scenes: {scenes} is a crop set; the hosts must be scenes (NAME.jpg + NAME.txt)")
        load_annotations(scenes)
        if not any(crops.values()):
            raise DatasetError("--scenes: no crop set given, nothing to read through the detector")
    return crops


# How a set was read: a scene set through the detector, a crop set by hand crop, or a crop
# set set into scenes and read through the detector (`evaluate_transplanted`).
READ_SCENES, READ_HAND_CROPS, READ_THROUGH_DETECTOR = "scenes", "hand crops", "through the detector"


def evaluate_sets(
    datasets: Sequence[Path],
    crops: Mapping[Path, bool],
    settings: Any,  # config.RunSettings: the models and batch `anpr eval` measures
    split: str | None,
    regions: tuple[str, ...],
    progress: Callable[[int, int], None] | None = None,
    done: Callable[[Path, str, EvalReport], None] | None = None,
    scenes: Path | None = None,
) -> list[EvalReport]:
    """Each set measured with the same models, in order: scenes by the detector and the
    recogniser, crop sets (`crops`, as `check_sets` found them) by the recogniser alone and,
    given host `scenes`, through the detector too; `done` hears each report as it is made,
    with how the set was read (READ_*)."""
    from anpr.run.assemble import Models, load_models, load_recogniser, with_second_pass

    reports: list[EvalReport] = []
    models: Models | None = None
    recogniser: PlateRecogniser | None = None
    batch = settings.pipeline.batch

    def detector_and_recogniser() -> tuple[PlateDetector, PlateRecogniser]:
        nonlocal models
        models = models or load_models(settings)
        return with_second_pass(models.detector, settings.detector, stills=True), models.recogniser

    for dataset in datasets:
        measured: list[tuple[str, EvalReport]] = []
        if crops[dataset]:
            recogniser = recogniser or (models.recogniser if models else load_recogniser(settings))
            measured.append((READ_HAND_CROPS, evaluate_crops(dataset, recogniser, split, batch, progress, regions)))
            if scenes is not None:
                detector, recogniser = detector_and_recogniser()
                report = evaluate_transplanted(dataset, scenes, detector, recogniser, split, batch, progress, regions)
                measured.append((READ_THROUGH_DETECTOR, report))
        else:
            detector, recogniser = detector_and_recogniser()
            measured.append((READ_SCENES, evaluate(dataset, detector, recogniser, batch, progress, regions)))
        for how, report in measured:
            if done is not None:
                done(dataset, how, report)
            reports.append(report)
    return reports
