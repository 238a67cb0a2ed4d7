from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from anpr import weights
from anpr.errors import ModelError
from anpr.eval import MATCH_IOU, box_iou, load_annotations
from anpr.ocr import PLATE_CLASSES, ctc_greedy_decode, cut_plates, fold_to_plate_alphabet, isolate_characters
from anpr.plates import PLATE_ALPHABET, same_plate


@pytest.fixture(scope="module")
def few(small_dataset):
    annotations = load_annotations(small_dataset)
    return annotations, [cv2.imread(str(a.image)) for a in annotations]


def test_detector_finds_the_annotated_plate_in_one_batched_call(detector, few):
    annotations, images = few
    detections = detector.detect(images)
    assert detections.xyxy.shape[1] == 4 and detections.xyxy.dtype == np.float32
    for position, annotation in enumerate(annotations):
        mine = detections.xyxy[detections.frame == position]
        assert len(mine), f"no plate found in {annotation.image.name}"
        assert box_iou(annotation.box, mine).max() >= MATCH_IOU, annotation.image.name


def test_ppocr_reads_most_plates_exactly(detector, ppocr, few):
    annotations, images = few
    detections = detector.detect(images)
    best = [int(np.flatnonzero(detections.frame == i)[box_iou(a.box, detections.xyxy[detections.frame == i]).argmax()])
            for i, a in enumerate(annotations)]
    reads = ppocr.recognise(cut_plates(images, detections[np.array(best)]))
    right = sum(same_plate(text, a.plate) for text, a in zip(reads.text, annotations))
    assert right >= len(annotations) - 2, list(zip(reads.text, [a.plate for a in annotations]))
    assert np.all((reads.confidence > 0) & (reads.confidence <= 1))
    assert len(reads.raw) == len(reads.text) and all(reads.raw)  # the model's own reading, kept


def _similarity(a: str, b: str) -> float:
    from difflib import SequenceMatcher

    return SequenceMatcher(None, a, b).ratio()


def test_easyocr_backend_reads_plate_text(detector, easyocr_recogniser, few):
    annotations, images = few
    crops = [image[int(a.box[1]):int(a.box[3]), int(a.box[0]):int(a.box[2])] for a, image in zip(annotations, images)]
    reads = easyocr_recogniser.recognise(crops)
    assert len(reads.text) == len(crops)
    assert all(set(t) <= set(PLATE_ALPHABET) for t in reads.text)
    similarity = np.mean([_similarity(t, a.plate.replace("O", "0")) for t, a in zip(reads.text, annotations)])
    assert similarity >= 0.5, list(zip(reads.text, [a.plate for a in annotations]))


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


def test_isolate_characters_drops_a_side_emblem():
    plate = np.full((60, 300, 3), 235, np.uint8)
    cv2.rectangle(plate, (4, 4), (30, 56), (150, 40, 20), -1)  # a band/emblem at the left edge
    cv2.putText(plate, "AB123CD", (48, 46), cv2.FONT_HERSHEY_SIMPLEX, 1.3, (10, 10, 10), 3)
    (text_width, _), _ = cv2.getTextSize("AB123CD", cv2.FONT_HERSHEY_SIMPLEX, 1.3, 3)
    cut = isolate_characters(plate)
    assert cut.shape[1] < plate.shape[1] - 30  # the emblem is gone
    assert text_width <= cut.shape[1] <= text_width + 30  # every character is kept


def _copy_models(tmp_path, corrupt: bool):
    shutil.copy(weights.MODELS_DIR / "manifest.json", tmp_path / "manifest.json")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    target = tmp_path / manifest["plate-yolov8n"]["file"]
    target.write_bytes(b"not the weights" if corrupt else (weights.MODELS_DIR / target.name).read_bytes())
    return target


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
