"""Plate crops measured as the pipeline sees them: set into real scenes, then detected.

A hand-cut crop is framed the way its annotator cut it; the reader in the pipeline gets
what the detector cut from a camera frame, looser or tighter, smaller, tilted, blurred and
recompressed with the scene around it. A figure on hand crops alone overstates (PlateNet:
0.943 of the BR test crops, 0.632 of BR plates cut by the detector from real photos).

So each crop of a split is warped onto the plate of a host scene (a photo of an annotated
scene set, its own plate painted out first), at a camera's size, tilt and blur, and the
scene is JPEG-compressed; the detector then has to find it and the reader reads what the
detector cut. Everything is drawn from a seed per crop: the same crop in the same host
at the same size every time, whatever the batch or the order.

These scenes measure; they are never training data (`training/` renders its own plates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

TRANSPLANT_SEED = 20261207
# Plates are drawn at the host plate's area times this (a US plate, 30x15 cm, covers about
# what an EU one, 52x11 cm, does), and a share of them as small as a camera sees a plate
# far off: 24 to 32 px high, their characters 12 to 18 px (half to 0.6 of a US or BR plate's
# height). None is smaller than that: below it, the plate is the detector's problem.
AREA_SCALE = (0.7, 1.15)
SMALL_SHARE = 0.25
SMALL_HEIGHT = (24, 32)
TILT_DEGREES = 10.0
CORNER_JITTER = 0.04  # of the plate's width and height: perspective
PAINT_MARGIN = 0.15  # the host plate's box grown by this before it is painted out
BLUR_SIGMA = (0.0, 1.0)
MOTION_SHARE = 0.2
JPEG_QUALITY = (40, 92)


@dataclass(frozen=True, slots=True)
class Host:
    """A scene photo and the box of the plate a crop will cover."""

    image: Path
    box: np.ndarray  # (4,) x1, y1, x2, y2


def _paint_out(scene: np.ndarray, box: np.ndarray) -> None:
    """The host's own plate painted over from its surround, so only the transplant is a plate."""
    height, width = scene.shape[:2]
    w, h = box[2] - box[0], box[3] - box[1]
    x1, y1 = int(max(0, box[0] - PAINT_MARGIN * w)), int(max(0, box[1] - PAINT_MARGIN * h))
    x2, y2 = int(min(width, box[2] + PAINT_MARGIN * w)), int(min(height, box[3] + PAINT_MARGIN * h))
    rx1, ry1 = max(0, x1 - (x2 - x1) // 2), max(0, y1 - (y2 - y1))
    rx2, ry2 = min(width, x2 + (x2 - x1) // 2), min(height, y2 + (y2 - y1))
    region = scene[ry1:ry2, rx1:rx2]
    mask = np.zeros(region.shape[:2], np.uint8)
    mask[y1 - ry1 : y2 - ry1, x1 - rx1 : x2 - rx1] = 255
    scene[ry1:ry2, rx1:rx2] = cv2.inpaint(region, mask, 5, cv2.INPAINT_TELEA)


def _target_corners(crop_shape: tuple[int, ...], box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(4, 2) corners, clockwise from top left, where the crop lands in the scene."""
    crop_h, crop_w = crop_shape[:2]
    aspect = crop_w / max(crop_h, 1)
    area = (box[2] - box[0]) * (box[3] - box[1]) * rng.uniform(*AREA_SCALE)
    height = max(SMALL_HEIGHT[0], float(np.sqrt(area / aspect)))
    if rng.random() < SMALL_SHARE:
        height = rng.uniform(*SMALL_HEIGHT)
    width = aspect * height
    half = np.array([width / 2, height / 2])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    corners += rng.uniform(-CORNER_JITTER, CORNER_JITTER, (4, 2)) * 2 * half
    angle = np.radians(rng.uniform(-TILT_DEGREES, TILT_DEGREES))
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    return (corners @ turn.T + centre).astype(np.float32)


def _camera(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Focus or motion blur over the whole frame, then the camera's JPEG."""
    sigma = rng.uniform(*BLUR_SIGMA)
    if rng.random() < MOTION_SHARE:
        length = int(rng.integers(3, 6))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        scene = cv2.filter2D(scene, -1, kernel)
    elif sigma > 0.3:
        scene = cv2.GaussianBlur(scene, (0, 0), sigma)
    quality = int(rng.integers(*JPEG_QUALITY))
    _, encoded = cv2.imencode(".jpg", scene, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return np.asarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR))


def transplant(
    crop: np.ndarray, scene: np.ndarray, host_box: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`crop` set onto `scene` in place of the plate at `host_box`: (new scene, the plate's box)."""
    scene = scene.copy()
    _paint_out(scene, host_box)
    corners = _target_corners(crop.shape, host_box, rng)
    crop_h, crop_w = crop.shape[:2]
    source = np.array([[0, 0], [crop_w, 0], [crop_w, crop_h], [0, crop_h]], np.float32)
    warp = cv2.getPerspectiveTransform(source, corners)
    size = (scene.shape[1], scene.shape[0])
    shrinking = cv2.INTER_AREA if cv2.norm(corners[1] - corners[0]) < crop_w else cv2.INTER_LINEAR
    warped = cv2.warpPerspective(crop, warp, size, flags=shrinking)
    mask = cv2.warpPerspective(np.full((crop_h, crop_w), 255, np.uint8), warp, size, flags=cv2.INTER_NEAREST)
    scene[mask > 0] = warped[mask > 0]
    height, width = scene.shape[:2]
    box = np.array(
        [
            max(0.0, corners[:, 0].min()),
            max(0.0, corners[:, 1].min()),
            min(float(width), corners[:, 0].max()),
            min(float(height), corners[:, 1].max()),
        ],
        np.float32,
    )
    return _camera(scene, rng), box


def host_for(index: int, hosts: list[Host], seed: int = TRANSPLANT_SEED) -> tuple[Host, np.random.Generator]:
    """The host scene and the random draws of crop number `index`: fixed by the seed and the index."""
    rng = np.random.default_rng([seed, index])
    return hosts[int(rng.integers(len(hosts)))], rng
