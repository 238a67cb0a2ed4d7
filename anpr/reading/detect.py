"""Plate detection: a batch of frames in, one typed array of plate boxes out.

`Detections` keeps every box of a batch in parallel numpy arrays (as supervision
does), with the index of the frame each box belongs to, so the stages after it work
on whole batches instead of per-frame lists of objects.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np

from anpr.config.settings import DetectorSettings
from anpr.errors import ConfigError
from anpr.reading.weights import ModelFile, model_file, onnx_session
from anpr.registry import DETECTORS


@dataclass(frozen=True, slots=True)
class Detections:
    xyxy: np.ndarray  # (N, 4) float32: x1, y1, x2, y2 in pixels of the box's frame
    confidence: np.ndarray  # (N,) float32
    frame: np.ndarray  # (N,) int32: position of the box's frame in the batch

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    @classmethod
    def concatenate(cls, parts: Sequence[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.xyxy for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.confidence for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.frame for p in parts]).astype(np.int32, copy=False),
        )

    def __len__(self) -> int:
        return len(self.confidence)

    def __getitem__(self, index: np.ndarray | slice) -> Detections:
        return Detections(self.xyxy[index], self.confidence[index], self.frame[index])


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of (N, 4) boxes against (M, 4) boxes, x1 y1 x2 y2."""
    a, b = np.asarray(a, np.float32).reshape(-1, 4), np.asarray(b, np.float32).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return intersection / np.maximum(area_a[:, None] + area_b[None, :] - intersection, 1e-9)


class PlateDetector(Protocol):
    """Finds plates in a batch of BGR frames."""

    identifier: str  # model name and hash, stored with every read

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, input_size: int | None = None
    ) -> Detections:
        """Plate boxes scoring at least `confidence` (None: the configured threshold), each
        image brought to `input_size` (None: the configured size)."""
        ...


# --- detection plans: one network call for every camera's looks ----------------------


@dataclass(frozen=True, slots=True)
class Look:
    """Images a detector wants the network `network` to look at, at `confidence` and
    `input_size` (None: the network's own)."""

    network: PlateDetector
    images: Sequence[np.ndarray]
    confidence: float | None = None
    input_size: int | None = None

    @property
    def key(self) -> tuple[int, float | None, int | None]:
        """Looks with the same key can go through the network in one call."""
        return id(self.network), self.confidence, self.input_size


# A detection as a plan: a generator that yields, step by step, the looks it needs (all
# the looks of one step at once), is sent what each look found (in the look's own image
# positions), and returns its result. `run_plans` steps the plans of every camera side by
# side, so the looks of one step of all of them go through the network in one call per
# (network, confidence, input size).
Result = TypeVar("Result")
Steps = Generator[list[Look], list[Detections], Result]
Plan = Steps[Detections]


def detection_plan(
    detector: PlateDetector,
    images: Sequence[np.ndarray],
    confidence: float | None = None,
    input_size: int | None = None,
) -> Plan:
    """`detector`'s plan for `images`: a wrapper's own (its `plan`), else one look of the network itself."""
    plan = getattr(detector, "plan", None)
    if plan is not None:
        planned: Detections = yield from plan(images, confidence, input_size)
        return planned
    if not len(images):
        return Detections.empty()
    found = yield [Look(detector, images, confidence, input_size)]
    return found[0]


def gather(plans: Sequence[Steps[Result]]) -> Steps[list[Result]]:
    """The plans stepped side by side: each step yields the looks of every plan still running."""
    results: dict[int, Result] = {}
    pending: dict[int, list[Look]] = {}

    def advance(i: int, found: list[Detections] | None) -> None:
        try:
            pending[i] = plans[i].send(found)  # type: ignore[arg-type]  # None starts a generator
        except StopIteration as end:
            results[i] = end.value
            pending.pop(i, None)

    for i in range(len(plans)):
        advance(i, None)
    while pending:
        order = list(pending)
        found = yield [look for i in order for look in pending[i]]
        starts = np.cumsum([0] + [len(pending[i]) for i in order])
        for i, start, end in zip(order, starts[:-1], starts[1:], strict=True):
            advance(i, found[start:end])
    return [results[i] for i in range(len(plans))]


def run_plan(plan: Steps[Result], call_limit: int = 64) -> Result:
    """What `plan` returns, its looks of each step through the network: one call per
    (network, confidence, input size), of at most `call_limit` images (more are split
    into several calls, to bound the input tensor's memory)."""
    try:
        looks = next(plan)
        while True:
            found = [Detections.empty()] * len(looks)
            groups: dict[tuple[int, float | None, int | None], list[int]] = {}
            for j, look in enumerate(looks):
                if len(look.images):
                    groups.setdefault(look.key, []).append(j)
            for members in groups.values():
                first = looks[members[0]]
                network, confidence, input_size = first.network, first.confidence, first.input_size
                images = [image for j in members for image in looks[j].images]
                parts = []
                for start in range(0, len(images), call_limit):
                    part = network.detect(images[start : start + call_limit], confidence, input_size)
                    parts.append(Detections(part.xyxy, part.confidence, (part.frame + start).astype(np.int32)))
                combined = Detections.concatenate(parts)
                starts = np.cumsum([0] + [len(looks[j].images) for j in members])
                for j, start, end in zip(members, starts[:-1], starts[1:], strict=True):
                    mine = (combined.frame >= start) & (combined.frame < end)
                    found[j] = Detections(combined.xyxy[mine], combined.confidence[mine], combined.frame[mine] - start)
            looks = plan.send(found)
    except StopIteration as end:
        return end.value


def run_plans(plans: Sequence[Plan], call_limit: int = 64) -> list[Detections]:
    """Every plan's Detections, the looks of each step of all of them batched together."""
    return run_plan(gather(plans), call_limit)


LETTERBOX_FILL = 114  # the grey Ultralytics pads with; the weights were trained on it
STRIDE = 32
NMS_IOU = 0.5


# Registered first: `auto` takes the first backend that runs on the device, so on CPU the
# INT8 weights: FP32's detection recall for 0.5 to 0.8 of its CPU time (models/README.md,
# benchmarks/RESULTS.md, issue 15).
@DETECTORS.register(
    "onnx-int8",
    devices=("cpu",),
    help="the ONNX weights quantized to INT8 (training/quantize_detector.py), through ONNX Runtime (CPU)",
)
def int8_plate_detector(settings: DetectorSettings | None = None, threads: int = 0) -> OnnxPlateDetector:
    """The ONNX detector with the INT8 weights: the same pre- and post-processing."""
    return OnnxPlateDetector(settings, model_file("plate-yolov8n-int8"), threads)


# Registered before "torch", so ONNX on CPU when the INT8 weights are not chosen.
@DETECTORS.register("onnx", devices=("cpu",), help="the same weights exported to ONNX, through ONNX Runtime (CPU)")
class OnnxPlateDetector:
    """The same YOLO weights exported to ONNX, run by ONNX Runtime: the fast path on CPU.

    Frames are letterboxed to their own aspect (a multiple of the stride), not to a
    square, so a 16:9 frame at input 640 costs 640x384; a batch is one session call.
    """

    def __init__(
        self, settings: DetectorSettings | None = None, weights: ModelFile | None = None, threads: int = 0
    ) -> None:
        settings = settings or DetectorSettings()
        self.weights = weights or model_file("plate-yolov8n-onnx")
        self.identifier = self.weights.identifier
        self.confidence = settings.confidence
        self.input_size = settings.input_size
        self._session = onnx_session(self.weights, threads)
        self._input = self._session.get_inputs()[0].name

    def _letterbox(self, images: Sequence[np.ndarray], input_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, 3, H, W) float32 input, per-frame scale (B,), per-frame (pad_x, pad_y) (B, 2)."""
        sizes = np.array([image.shape[:2] for image in images], np.float32)  # (B, 2) h, w
        scales = np.minimum(input_size / sizes[:, 0], input_size / sizes[:, 1])
        scaled = np.rint(sizes * scales[:, None]).astype(np.int32)
        height, width = (int(np.ceil(v / STRIDE) * STRIDE) for v in scaled.max(axis=0))
        batch = np.full((len(images), height, width, 3), LETTERBOX_FILL, np.uint8)
        pads = np.stack([(width - scaled[:, 1]) // 2, (height - scaled[:, 0]) // 2], axis=1)
        for i, image in enumerate(images):
            h, w = scaled[i]
            x, y = pads[i]
            batch[i, y : y + h, x : x + w] = cv2.resize(image, (int(w), int(h)), interpolation=cv2.INTER_LINEAR)
        tensor = batch[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # BGR -> RGB, NCHW
        return np.ascontiguousarray(tensor), scales, pads.astype(np.float32)

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, input_size: int | None = None
    ) -> Detections:
        if not images:
            return Detections.empty()
        threshold = self.confidence if confidence is None else confidence
        tensor, scales, pads = self._letterbox(images, input_size or self.input_size)
        output = self._session.run(None, {self._input: tensor})[0].transpose(0, 2, 1)  # (B, anchors, 5)
        frame, anchor = np.nonzero(output[:, :, 4] >= threshold)
        if not len(frame):
            return Detections.empty()
        cx, cy, w, h, score = (output[frame, anchor, i] for i in range(5))
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        xyxy = (xyxy - np.tile(pads[frame], 2)) / scales[frame, None]
        kept = per_frame_nms(xyxy, score, frame, threshold)
        sizes = np.array([images[i].shape[1::-1] for i in frame[kept]], np.float32)
        clipped = np.clip(xyxy[kept], 0, np.tile(sizes, 2))
        return Detections(clipped.astype(np.float32), score[kept].astype(np.float32), frame[kept].astype(np.int32))


@DETECTORS.register(
    "torch", devices=("cpu", "cuda"), help="the YOLO weights through Ultralytics and PyTorch (CPU or CUDA)"
)
class YoloPlateDetector:
    """Ultralytics YOLO plate detector; one model call per batch of frames (every camera's,
    `run_plans`). On CUDA it runs in half precision (FP16, Ultralytics' `half`), on the CPU
    in FP32. The CUDA path has not been measured: no GPU was lent to this project yet."""

    def __init__(self, settings: DetectorSettings | None = None, weights: ModelFile | None = None) -> None:
        from ultralytics import YOLO  # heavy import kept out of CLI start-up

        settings = settings or DetectorSettings()
        self.weights = weights or model_file("plate-yolov8n")
        self.identifier = self.weights.identifier
        self.confidence = settings.confidence
        self.input_size = settings.input_size
        self.device = settings.device
        self._model = YOLO(str(self.weights.path), task="detect")

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, input_size: int | None = None
    ) -> Detections:
        if not images:
            return Detections.empty()
        results: Any = self._model.predict(  # Ultralytics types a list, an iterator or tensors
            list(images),
            conf=self.confidence if confidence is None else confidence,
            imgsz=input_size or self.input_size,
            device=self.device,
            half=self.device != "cpu",
            verbose=False,
            batch=len(images),
        )
        parts = []
        for position, result in enumerate(results):
            boxes = result.boxes
            count = len(boxes)
            if count:
                parts.append(
                    Detections(
                        boxes.xyxy.cpu().numpy(),
                        boxes.conf.cpu().numpy(),
                        np.full(count, position, np.int32),
                    )
                )
        return Detections.concatenate(parts)


# --- the second pass for small plates ------------------------------------------------

TILE_OVERLAP = 128  # px: wider than a small plate, so each one is whole in some tile


def tile_windows(width: int, height: int, tile: int, overlap: int = TILE_OVERLAP) -> np.ndarray:
    """(K, 4) x1, y1, x2, y2 of tile x tile windows covering a frame, neighbours sharing `overlap` px."""

    def starts(length: int) -> np.ndarray:
        if length <= tile:
            return np.zeros(1, np.int32)
        count = int(np.ceil((length - overlap) / (tile - overlap)))
        return np.rint(np.linspace(0, length - tile, count)).astype(np.int32)

    xs, ys = starts(width), starts(height)
    x1, y1 = (grid.ravel() for grid in np.meshgrid(xs, ys))
    return np.stack([x1, y1, np.minimum(x1 + tile, width), np.minimum(y1 + tile, height)], axis=1)


# A box is only a proposal, worth a closer look, when the detector gives it less than
# the configured score or sees the plate smaller than this (its box is then coarse).
PROPOSAL_CONFIDENCE = 0.05
SMALL_AT_INPUT = 48  # px wide at the detector's input
# A closer look is a window this many plate widths wide brought to the input size, so the
# plate fills about a quarter of the input (160 px at 640): the size of a plate in an
# ordinary photo, which the detector finds surely.
LOOK_WIDTHS = 4.0
MAX_LOOKS = 8  # closer looks per frame, most likely proposals first


class SecondPass:
    """A detector that looks again where small plates hide: the first pass shrinks a frame
    to the input size, and a plate 60 px wide in a 1920x1080 frame becomes 20 px, which it
    misses or boxes too coarsely to read.

    1. Proposals: the first pass's boxes that are small at the detector's input; on frames
       where it found nothing, the frame is searched tile by tile at its own resolution
       (tiles of the input size are not shrunk), and tile boxes below the configured score
       or still small are proposals too (a sure, large one is kept as it is).
    2. A closer look at each proposal: a window around it, LOOK_WIDTHS plate widths wide,
       brought to the input size and detected again at the configured score. What it finds
       replaces the proposal. A tile proposal it does not confirm is dropped; a first-pass
       box it does not confirm is kept, as it passed the score once already.

    It costs one detector call per tile (8 for 1080p, 6 for 720p) on frames with no plate,
    and one per closer look, so `auto` uses it on still images only, where a missed plate
    is never seen again; a video sees the vehicle again as it comes closer.
    """

    def __init__(self, detector: PlateDetector, settings: DetectorSettings, batch: int = 8) -> None:
        self.detector = detector
        self.identifier = detector.identifier
        self.input_size = settings.input_size
        self.confidence = settings.confidence
        self.batch = batch
        self.searched = 0  # frames searched again (tiles, closer looks or both)
        self.found = 0  # of them, frames where the second pass found or re-boxed a plate

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, input_size: int | None = None
    ) -> Detections:
        return run_plan(self.plan(images, confidence, input_size), self.batch)

    def plan(
        self, images: Sequence[np.ndarray], confidence: float | None = None, input_size: int | None = None
    ) -> Plan:
        """Three steps (first pass, tiles, closer looks), each batched with other cameras' by `run_plans`."""
        threshold = self.confidence if confidence is None else confidence
        first = yield from detection_plan(self.detector, images, threshold)
        small = self._small_at_input(images, first)
        empty = [
            i for i in range(len(images)) if not (first.frame == i).any() and max(images[i].shape[:2]) > self.input_size
        ]
        tiled = yield from self._tiles(images, empty)
        sure_tiles = (tiled.confidence >= threshold) & ((tiled.xyxy[:, 2] - tiled.xyxy[:, 0]) >= SMALL_AT_INPUT)
        proposals = Detections.concatenate([first[small], tiled[~sure_tiles]])
        origin = np.concatenate([np.flatnonzero(small), np.full(int((~sure_tiles).sum()), -1)])  # first-pass index
        chosen = _most_likely_per_frame(proposals, MAX_LOOKS)
        looks, confirmed = yield from self._look_closer(images, proposals[chosen], threshold)
        replaced = origin[chosen][confirmed]
        kept = np.setdiff1d(np.arange(len(first)), replaced[replaced >= 0])
        combined = Detections.concatenate([first[kept], tiled[sure_tiles], looks])
        merged = combined[per_frame_nms(combined.xyxy, combined.confidence, combined.frame)]  # one plate, two finds
        searched = set(empty) | set(first.frame[small].tolist())
        self.searched += len(searched)
        self.found += len(searched & (set(looks.frame.tolist()) | set(tiled.frame[sure_tiles].tolist())))
        return merged[np.argsort(merged.frame, kind="stable")]

    def _small_at_input(self, images: Sequence[np.ndarray], found: Detections) -> np.ndarray:
        """Which boxes are narrower than SMALL_AT_INPUT where the detector saw them (letterboxed)."""
        longest = np.array([max(images[i].shape[:2]) for i in found.frame], np.float32)
        scale = np.minimum(1.0, self.input_size / np.maximum(longest, 1.0))
        return (found.xyxy[:, 2] - found.xyxy[:, 0]) * scale < SMALL_AT_INPUT

    def _tiles(self, images: Sequence[np.ndarray], frames: list[int]) -> Plan:
        """Proposals from tiles of the input size over each of `frames`, at PROPOSAL_CONFIDENCE."""
        if not frames:
            return Detections.empty()
        tiles = [(f, tile_windows(images[f].shape[1], images[f].shape[0], self.input_size)) for f in frames]
        windows = np.concatenate([w for _, w in tiles])
        owners = np.concatenate([np.full(len(w), f, np.int32) for f, w in tiles])
        found = yield from windows_plan(self.detector, images, windows, owners, PROPOSAL_CONFIDENCE)
        found = Detections(found.xyxy, found.confidence, owners[found.frame])
        return found[per_frame_nms(found.xyxy, found.confidence, found.frame)]  # a plate in two tiles

    def _look_closer(
        self, images: Sequence[np.ndarray], proposals: Detections, confidence: float
    ) -> Steps[tuple[Detections, np.ndarray]]:
        """What a closer look at each proposal finds (in frame coordinates), and which proposals it confirmed."""
        if not len(proposals):
            return Detections.empty(), np.zeros(0, bool)
        sizes = np.array([images[i].shape[1::-1] for i in proposals.frame], np.float32)  # w, h
        centres = (proposals.xyxy[:, :2] + proposals.xyxy[:, 2:]) / 2
        side = np.minimum(LOOK_WIDTHS * (proposals.xyxy[:, 2] - proposals.xyxy[:, 0]), sizes.min(axis=1))
        top_left = np.clip(centres - side[:, None] / 2, 0, sizes - side[:, None])  # slid inside the frame
        windows = np.rint(np.hstack([top_left, top_left + side[:, None]])).astype(np.int32)
        found = yield from windows_plan(self.detector, images, windows, proposals.frame, confidence)
        confirmed = np.zeros(len(proposals), bool)
        confirmed[found.frame] = True
        return Detections(found.xyxy, found.confidence, proposals.frame[found.frame]), confirmed


def detect_in_windows(
    detector: PlateDetector,
    images: Sequence[np.ndarray],
    windows: np.ndarray,
    frames: np.ndarray,
    confidence: float | None,
    batch: int,
    input_size: int | None = None,
) -> Detections:
    """Detections in (K, 4) windows x1 y1 x2 y2 of the frames `frames`, in frame
    coordinates; `frame` of each box is the index of its window. At most `batch` windows
    per detector call."""
    return run_plan(windows_plan(detector, images, windows, frames, confidence, input_size), batch)


def windows_plan(
    detector: PlateDetector,
    images: Sequence[np.ndarray],
    windows: np.ndarray,
    frames: np.ndarray,
    confidence: float | None,
    input_size: int | None = None,
) -> Plan:
    """The plan of `detect_in_windows`: every window one image of one look."""
    crops = [images[int(f)][y1:y2, x1:x2] for f, (x1, y1, x2, y2) in zip(frames, windows, strict=True)]
    found = yield from detection_plan(detector, crops, confidence, input_size)
    offset = np.tile(windows[found.frame, :2], 2).astype(np.float32)
    return Detections(found.xyxy + offset, found.confidence, found.frame)


# --- where things move ------------------------------------------------------------------

MOTION_WIDTH = 240  # px: frames are compared this wide (1/8 of 1080p: a plate is 6 px or more)
# The background model forgets at this rate per call: what stops moving (a stopped car, a
# clock digit that just changed) joins the background within about 1 / rate calls, while
# a moving vehicle's pixels keep changing.
BACKGROUND_RATE = 0.05
MOTION_MIN_SHARE = 0.002  # of the frame: a smaller moving blob is noise or a clock digit
MOTION_GROW = 7  # px at MOTION_WIDTH: parts of one vehicle closer than this are one blob
WINDOW_MARGIN = 0.15  # of a blob's size, added on every side: the plate's edge may not move
WHOLE_FRAME_SHARE = 0.4  # more of the frame moving, or in one window, than this: look at all of it
WHOLE_FRAME_EVERY = 25  # calls: a whole-frame look this often finds plates that do not move
# A plate is a fraction of its vehicle (about a fifth of its width): a box wider than this
# share of the window around a moving vehicle is the vehicle's grille or window, not a plate.
MAX_WINDOW_SHARE = 0.5
ALWAYS_MOVING = 0.5  # a pixel moving in more than this share of recent frames is an overlay (a clock)
ACTIVITY_MEMORY = 0.05  # weight of the newest frame in that share (about the last 20 frames)


class MotionWindows:
    """A detector for one camera's video that looks where things move.

    A vehicle is much larger than its plate (about five plate widths), so a window around
    it, brought to a small input, shows the plate at a size the detector finds surely,
    however far the vehicle is: a plate 50 px wide in a 1080p frame is 9 px at a whole-frame
    input of 320, and about 60 px in its vehicle's window at the same input. Moving blobs
    come from a background model (OpenCV's MOG2, forgetting fast) on small grey frames,
    which gives a vehicle's whole shape where a frame difference gives only its edges;
    pixels that change all the time (a burned-in clock's fast digits) are left out. The
    whole frame is looked at (at `input_size`) on the first call, when all of it is new,
    when most of it moves or a window would cover most of it (a vehicle filling the frame),
    and every WHOLE_FRAME_EVERY calls.
    """

    def __init__(self, detector: PlateDetector, settings: DetectorSettings, batch: int = 8) -> None:
        self.detector = detector
        self.identifier = detector.identifier
        self.confidence = settings.confidence
        self.input_size = settings.input_size  # of whole-frame looks
        self.window_input = settings.window_input_size
        self.batch = batch
        self._background = cv2.createBackgroundSubtractorMOG2(detectShadows=False)
        self._activity: np.ndarray | None = None
        self._calls = 0

    def detect(
        self, images: Sequence[np.ndarray], confidence: float | None = None, input_size: int | None = None
    ) -> Detections:
        return run_plan(self.plan(images, confidence, input_size), self.batch)

    def plan(
        self, images: Sequence[np.ndarray], confidence: float | None = None, input_size: int | None = None
    ) -> Plan:
        """One step: the whole-frame looks and the window looks. Where things move is this
        camera's own (its background model), found here, before any look; the looks
        themselves are batched with other cameras' by `run_plans`: all cameras' whole
        frames in one network call, all their windows in another (two input sizes)."""
        threshold = self.confidence if confidence is None else confidence
        whole: list[int] = []
        windows: list[np.ndarray] = []
        owners: list[int] = []
        for position, image in enumerate(images):
            moving = self._moving(image)
            self._calls += 1
            # A window as large as most of the frame (a vehicle filling it) is no closer look:
            # brought to the small window input, its plate is smaller than in a whole look.
            areas = np.prod(moving[:, 2:] - moving[:, :2], axis=1) if moving is not None else np.zeros(0)
            too_large = bool((areas > WHOLE_FRAME_SHARE * image.shape[0] * image.shape[1]).any())
            if moving is None or too_large or self._calls % WHOLE_FRAME_EVERY == 1:
                whole.append(position)
            else:
                windows += list(moving)
                owners += [position] * len(moving)
        owner = np.asarray(owners, np.int32)
        boxes = np.asarray(windows, np.int32).reshape(-1, 4)
        full, found = yield from gather(
            [
                detection_plan(self.detector, [images[i] for i in whole], threshold, input_size or self.input_size),
                windows_plan(self.detector, images, boxes, owner, threshold, self.window_input),
            ]
        )
        window_width = boxes[found.frame, 2] - boxes[found.frame, 0]
        found = found[(found.xyxy[:, 2] - found.xyxy[:, 0]) <= MAX_WINDOW_SHARE * window_width]
        combined = Detections.concatenate(
            [
                Detections(full.xyxy, full.confidence, np.asarray(whole, np.int32)[full.frame]),
                Detections(found.xyxy, found.confidence, owner[found.frame]),
            ]
        )
        merged = combined[per_frame_nms(combined.xyxy, combined.confidence, combined.frame)]  # a plate in two windows
        return merged[np.argsort(merged.frame, kind="stable")]

    def _moving(self, image: np.ndarray) -> np.ndarray | None:
        """(K, 4) windows x1 y1 x2 y2 around what moves in `image`; None to look at all of it."""
        height, width = image.shape[:2]
        scale = MOTION_WIDTH / width
        # Sampled to twice the width first, then averaged down: averaging the whole frame
        # costs more than all the rest of this search (its memory traffic competes with the
        # decoder and the detector), and averaging four samples tames the sensor noise.
        size = (MOTION_WIDTH, max(1, round(height * scale)))
        sampled = cv2.resize(image, (2 * size[0], 2 * size[1]), interpolation=cv2.INTER_NEAREST)
        small = cv2.resize(sampled, size, interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        moving = (self._background.apply(grey, learningRate=BACKGROUND_RATE) > 0).astype(np.float32)
        if self._activity is None or self._activity.shape != moving.shape:
            self._activity = np.zeros(moving.shape, np.float32)
            return None
        self._activity += ACTIVITY_MEMORY * (moving - self._activity)
        moving[self._activity > ALWAYS_MOVING] = 0
        if moving.mean() > WHOLE_FRAME_SHARE:
            return None
        grown = cv2.dilate(moving.astype(np.uint8), np.ones((MOTION_GROW, MOTION_GROW), np.uint8))
        _, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
        blobs = stats[1:][stats[1:, cv2.CC_STAT_AREA] >= MOTION_MIN_SHARE * grown.size]
        if not len(blobs):
            return np.zeros((0, 4), np.int32)
        x, y, w, h = (blobs[:, i].astype(np.float32) for i in range(4))
        margin_x, margin_y = WINDOW_MARGIN * w + MOTION_GROW, WINDOW_MARGIN * h + MOTION_GROW
        boxes = np.stack([x - margin_x, y - margin_y, x + w + margin_x, y + h + margin_y], axis=1) / scale
        boxes = np.clip(boxes, 0, [width, height, width, height])
        return np.rint(_merge_overlapping(boxes)).astype(np.int32)


def _merge_overlapping(boxes: np.ndarray) -> np.ndarray:
    """Boxes that overlap replaced by the box around both, until none overlap."""
    boxes = boxes.copy()
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        overlap = pairwise_iou(boxes, boxes) > 0
        np.fill_diagonal(overlap, False)
        if overlap.any():
            i, j = np.argwhere(overlap)[0]
            union = np.concatenate([np.minimum(boxes[i, :2], boxes[j, :2]), np.maximum(boxes[i, 2:], boxes[j, 2:])])
            boxes = np.vstack([np.delete(boxes, [i, j], axis=0), union])
            merged = True
    return boxes


def _most_likely_per_frame(found: Detections, limit: int) -> np.ndarray:
    """Indices (ascending) of the `limit` most confident boxes of each frame."""
    order = np.lexsort((-found.confidence, found.frame))
    rank = np.arange(len(order)) - np.searchsorted(found.frame[order], found.frame[order])
    return np.sort(order[rank < limit])


def per_frame_nms(xyxy: np.ndarray, score: np.ndarray, frame: np.ndarray, min_score: float = 0.0) -> np.ndarray:
    """Indices (ascending) of the boxes kept by non-maximum suppression within each frame."""
    keep: list[int] = []
    for position in np.unique(frame):
        members = np.flatnonzero(frame == position)
        boxes = xyxy[members]
        chosen = cv2.dnn.NMSBoxes(
            np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).tolist(),
            score[members].tolist(),
            min_score,
            NMS_IOU,
        )
        keep.extend(members[np.asarray(chosen, np.int64).reshape(-1)])
    return np.array(sorted(keep), np.int64)


def make_detector(settings: DetectorSettings | None = None) -> PlateDetector:
    """The detector the settings name; `auto` is the first registered backend that runs on
    the device (ONNX Runtime on CPU, PyTorch on CUDA)."""
    settings = settings or DetectorSettings()
    if settings.backend == "auto":
        entry = DETECTORS.for_device(settings.device)
    else:
        entry = DETECTORS.get(settings.backend)
        if settings.device.split(":")[0] not in entry.devices:
            runs_there = DETECTORS.for_device(settings.device).name
            raise ConfigError(
                f"the {entry.name} detector runs on {', '.join(entry.devices)}, not "
                f"{settings.device}; use --detector {runs_there} (or auto) with --device "
                f"{settings.device}"
            )
    detector: PlateDetector = entry.factory(settings)
    return detector
