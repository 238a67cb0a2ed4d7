from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from anpr.errors import ModelError
from anpr.measure.eval import MATCH_IOU, load_annotations
from anpr.reading import weights
from anpr.reading.detect import pairwise_iou
from anpr.reading.ocr import (
    PLATE_CLASSES,
    ctc_beam_search,
    ctc_greedy_decode,
    cut_plates,
    fold_to_plate_alphabet,
    isolate_characters,
)
from anpr.reading.plates import PLATE_ALPHABET, choose_plate, same_plate


@pytest.fixture(scope="module")
def few(small_dataset):
    annotations = load_annotations(small_dataset)
    return annotations, [cv2.imread(str(a.image)) for a in annotations]


def _iou(box, boxes):
    return pairwise_iou(box, boxes)[0]


def test_detector_finds_the_annotated_plate_in_one_batched_call(detector, few):
    annotations, images = few
    detections = detector.detect(images)
    assert detections.xyxy.shape[1] == 4 and detections.xyxy.dtype == np.float32
    for position, annotation in enumerate(annotations):
        mine = detections.xyxy[detections.frame == position]
        assert len(mine), f"no plate found in {annotation.image.name}"
        assert _iou(annotation.box, mine).max() >= MATCH_IOU, annotation.image.name


def test_onnx_detector_agrees_with_the_torch_one(detector, few):
    from anpr.config.settings import DetectorSettings
    from anpr.reading.detect import OnnxPlateDetector, make_detector

    annotations, images = few
    onnx = make_detector(DetectorSettings(backend="onnx", device="cpu"))
    assert isinstance(onnx, OnnxPlateDetector) and onnx.identifier.startswith("plate-yolov8n-onnx@")
    torch_boxes, onnx_boxes = detector.detect(images), onnx.detect(images)
    for position, annotation in enumerate(annotations):
        mine = onnx_boxes.xyxy[onnx_boxes.frame == position]
        theirs = torch_boxes.xyxy[torch_boxes.frame == position]
        assert _iou(annotation.box, mine).max() >= MATCH_IOU, annotation.image.name
        best = theirs[_iou(annotation.box, theirs).argmax()]
        assert _iou(best, mine).max() >= 0.8, annotation.image.name  # the same plate box, give or take


@pytest.mark.system  # the real weights, FP32 and INT8
def test_int8_detector_finds_the_plates_the_fp32_one_finds_and_is_the_cpu_default(few):
    from anpr.config.settings import DetectorSettings
    from anpr.reading.detect import make_detector

    annotations, images = few
    fp32 = make_detector(DetectorSettings(backend="onnx"))
    int8 = make_detector(DetectorSettings(backend="onnx-int8"))
    listed = json.loads((weights.MODELS_DIR / "manifest.json").read_text())["plate-yolov8n-int8"]
    assert int8.identifier == f"plate-yolov8n-int8@{listed['sha256'][:12]}"
    assert make_detector(DetectorSettings(backend="auto", device="cpu")).identifier == int8.identifier
    theirs, mine = fp32.detect(images), int8.detect(images)
    for position, annotation in enumerate(annotations):
        fp32_boxes = theirs.xyxy[theirs.frame == position]
        int8_boxes = mine.xyxy[mine.frame == position]
        assert _iou(annotation.box, fp32_boxes).max() >= MATCH_IOU, annotation.image.name
        assert _iou(annotation.box, int8_boxes).max() >= MATCH_IOU, annotation.image.name
        best = fp32_boxes[_iou(annotation.box, fp32_boxes).argmax()]
        assert _iou(best, int8_boxes).max() >= 0.8, annotation.image.name  # the same plate box, give or take


def test_pairwise_iou():
    from anpr.reading.detect import pairwise_iou

    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    iou = pairwise_iou(boxes, boxes[:2])
    assert iou.shape == (3, 2)
    assert iou[0, 0] == pytest.approx(1.0) and iou[0, 1] == pytest.approx(50 / 150) and iou[2].max() == 0
    assert pairwise_iou(boxes[0], np.zeros((0, 4))).shape == (1, 0)


def test_ppocr_reads_most_plates_exactly(detector, ppocr, few):
    annotations, images = few
    detections = detector.detect(images)
    best = [
        int(np.flatnonzero(detections.frame == i)[_iou(a.box, detections.xyxy[detections.frame == i]).argmax()])
        for i, a in enumerate(annotations)
    ]
    reads = ppocr.recognise(cut_plates(images, detections[np.array(best)]))
    plates = [choose_plate(c).plate for c in reads.candidates]
    right = sum(same_plate(text, a.plate) for text, a in zip(plates, annotations, strict=True))
    assert right >= len(annotations) - 1, list(zip(plates, [a.plate for a in annotations], strict=True))
    assert all(0 < p <= 1 for candidates in reads.candidates for _, p in candidates)
    assert len(reads.raw) == len(reads.candidates) and all(reads.raw)  # the model's own reading, kept


def _similarity(a: str, b: str) -> float:
    from difflib import SequenceMatcher

    return SequenceMatcher(None, a, b).ratio()


def test_easyocr_backend_reads_plate_text(detector, easyocr_recogniser, few):
    annotations, images = few
    crops = [
        image[int(a.box[1]) : int(a.box[3]), int(a.box[0]) : int(a.box[2])]
        for a, image in zip(annotations, images, strict=True)
    ]
    reads = easyocr_recogniser.recognise(crops)
    plates = [choose_plate(c).plate for c in reads.candidates]
    assert len(plates) == len(crops)
    assert all(set(t) <= set(PLATE_ALPHABET) for t in plates)
    similarity = np.mean([_similarity(t, a.plate.replace("O", "0")) for t, a in zip(plates, annotations, strict=True)])
    assert similarity >= 0.5, list(zip(plates, [a.plate for a in annotations], strict=True))


def test_fold_maps_case_and_drops_foreign_classes():
    fold = fold_to_plate_alphabet(["<blank>", "a", "A", "-", "皖", "7"])
    assert fold.shape == (6, 1 + len(PLATE_ALPHABET))
    assert fold[1].argmax() == fold[2].argmax() == 1 + PLATE_ALPHABET.index("A")
    assert fold[3].argmax() == 0 and fold[4].argmax() == 0  # separator, CJK glyph -> blank
    assert np.all(fold.sum(axis=1) == 1)


def test_ctc_decode_merges_repeats_and_drops_blanks():
    column = {ch: 1 + i for i, ch in enumerate(PLATE_ALPHABET)}
    path = ["A", "A", "<b>", "A", "B", "<b>", "<b>", "7"]
    probabilities = np.full((1, len(path), 1 + len(PLATE_ALPHABET)), 0.001, np.float32)
    for t, ch in enumerate(path):
        probabilities[0, t, 0 if ch == "<b>" else column[ch]] = 0.9
    texts, confidences = ctc_greedy_decode(probabilities, PLATE_CLASSES)
    assert texts == ["AAB7"]
    assert confidences[0] == pytest.approx(0.9)


def test_beam_search_sums_alignments_the_best_path_misses():
    # Two columns, each blank 0.6 / A 0.4: the best path is blank-blank, "" (0.36), but
    # "A" collects A-A, A-blank and blank-A: 0.16 + 0.24 + 0.24 = 0.64.
    a = 1 + PLATE_ALPHABET.index("A")
    probabilities = np.zeros((2, 1 + len(PLATE_ALPHABET)), np.float32)
    probabilities[:, 0], probabilities[:, a] = 0.6, 0.4
    assert ctc_greedy_decode(probabilities[None], PLATE_CLASSES)[0] == [""]
    ranked = dict(ctc_beam_search(probabilities, PLATE_CLASSES))
    assert ranked["A"] == pytest.approx(0.64) and ranked[""] == pytest.approx(0.36)
    assert max(ranked, key=ranked.get) == "A"


def test_formats_fix_look_alikes_only_where_the_pattern_says():
    from anpr.formats import best_format

    assert best_format("LM298A1").text == "LM298AI"  # letter position: 1 -> I
    assert best_format("PP587A0").text == "PP587AO"  # letter position: 0 -> O
    assert best_format("RK7S5AJ").text == "RK755AJ"  # digit position: S -> 5
    assert best_format("1B80338").country == "CZ/US-ID" and best_format("1B80338", ("EU",)).country == "CZ"
    assert best_format("WA56660").pattern == "LLDDDDD"
    assert "SK" in best_format("RK776AI").country.split("/")
    assert best_format("M5XSX") is None and best_format("PRK262AH") is None
    assert best_format("RK7X6AI") is None  # X has no digit look-alike: no pattern fits


def test_choose_plate_prefers_a_format_fit_and_keeps_candidates():
    candidates = [("RK7554", 0.5), ("RK755AJ", 0.3), ("RK755A1", 0.05), ("R", 0.1)]
    assert choose_plate(candidates).plate == "RK7554"  # without a region, Missouri's LLDDDD counts too
    chosen = choose_plate(candidates, regions=("EU",))
    assert chosen.plate == "RK755AJ" and chosen.format == "LLDDDLL"
    assert [t for t, _ in chosen.candidates][:2] == ["RK755AJ", "RK7554"]
    assert sum(p for _, p in chosen.candidates) == pytest.approx(1.0)
    unknown = choose_plate([("M5XSX", 0.6), ("M5XX", 0.2)])
    assert (unknown.plate, unknown.country, unknown.format) == ("M5XSX", None, None)
    assert choose_plate([]).plate == ""


def _two_line_plate(top: str, bottom: str) -> np.ndarray:
    plate = np.full((140, 220, 3), 235, np.uint8)
    cv2.rectangle(plate, (3, 3), (216, 136), (30, 30, 30), 3)
    cv2.putText(plate, top, (30, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (15, 15, 15), 4)
    cv2.putText(plate, bottom, (22, 120), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (15, 15, 15), 4)
    return plate


@pytest.mark.parametrize("top, bottom", [("AB12", "345CD"), ("KL7", "2049")])
def test_two_line_plates_are_read_top_row_first(ppocr, top, bottom):
    plate = _two_line_plate(top, bottom)
    line = isolate_characters(plate)
    assert line.shape[1] > 1.5 * plate.shape[1] * line.shape[0] / plate.shape[0]  # rows side by side
    reads = ppocr.recognise([plate])
    assert choose_plate(reads.candidates[0]).plate == top + bottom


def test_single_line_plates_are_not_split(few):
    from anpr.reading.ocr import _binarise

    _, images = few
    annotations, _ = few
    for annotation, image in zip(annotations, images, strict=True):
        x1, y1, x2, y2 = annotation.box.astype(int)
        assert len(_binarise(image[y1:y2, x1:x2])[2]) <= 1, annotation.image.name


def test_isolate_characters_drops_a_side_emblem():
    plate = np.full((60, 300, 3), 235, np.uint8)
    cv2.rectangle(plate, (4, 4), (30, 56), (150, 40, 20), -1)  # a band/emblem at the left edge
    cv2.putText(plate, "AB123CD", (48, 46), cv2.FONT_HERSHEY_SIMPLEX, 1.3, (10, 10, 10), 3)
    (text_width, _), _ = cv2.getTextSize("AB123CD", cv2.FONT_HERSHEY_SIMPLEX, 1.3, 3)
    cut = isolate_characters(plate)
    assert cut.shape[1] < plate.shape[1] - 30  # the emblem is gone
    assert text_width <= cut.shape[1] <= text_width + 30  # every character is kept


def _copy_models(tmp_path, corrupt: bool, model: str = "plate-yolov8n"):
    shutil.copy(weights.MODELS_DIR / "manifest.json", tmp_path / "manifest.json")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    target = tmp_path / manifest[model]["file"]
    target.write_bytes(b"not the weights" if corrupt else (weights.MODELS_DIR / target.name).read_bytes())
    return target


@pytest.mark.system  # copies the real weight files
@pytest.mark.parametrize("corrupt", [True, False])
def test_weights_are_checked_at_load(tmp_path, monkeypatch, corrupt):
    target = _copy_models(tmp_path, corrupt)
    monkeypatch.setattr(weights, "MODELS_DIR", tmp_path)
    weights._manifest.cache_clear()
    weights.model_file.cache_clear()
    try:
        if corrupt:
            with pytest.raises(ModelError, match=str(target)):
                weights.model_file("plate-yolov8n")
        else:
            assert weights.model_file("plate-yolov8n").path == target
        target.unlink()
        weights.model_file.cache_clear()
        with pytest.raises(ModelError, match="missing"):
            weights.model_file("plate-yolov8n")
    finally:
        weights._manifest.cache_clear()
        weights.model_file.cache_clear()


@pytest.mark.system  # copies the real manifest
def test_int8_detector_weights_are_checked_at_load(tmp_path, monkeypatch):
    from anpr.config.settings import DetectorSettings
    from anpr.reading.detect import make_detector

    target = _copy_models(tmp_path, corrupt=True, model="plate-yolov8n-int8")
    monkeypatch.setattr(weights, "MODELS_DIR", tmp_path)
    weights._manifest.cache_clear()
    weights.model_file.cache_clear()
    try:
        with pytest.raises(ModelError, match=str(target)):
            make_detector(DetectorSettings(backend="onnx-int8"))
    finally:
        weights._manifest.cache_clear()
        weights.model_file.cache_clear()
