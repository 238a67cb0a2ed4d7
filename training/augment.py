"""What cameras do to plates, applied to real and synthetic crops alike.

A plate is cut out along a slightly wrong quadrilateral (the detector's box is loose
or tight, the plate is seen at an angle), brought to a camera's resolution (down to
about 60x20 px), then blurred, lit, noised and JPEG-compressed. The result is a BGR
crop at that low resolution, which `anpr.reading.ocr.prepare_plate` turns into the network's
input exactly as at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, slots=True)
class Camera:
    """How loose a box is cut around a plate set on a surround, and how often the crop is blurred."""

    loose_x: float  # each side of the box grows by up to this share of the plate's width
    loose_y: float  # and by up to this share of its height
    focus_blur: float  # share of crops out of focus
    motion_blur: float  # share of crops smeared by motion
    # Share of plates on a surround seen turned by up to `tilt` degrees and cut by an upright
    # box around them, as a detector cuts a tilted plate (the crop taller, the row slanted).
    tilt_share: float = 0.0
    tilt: float = 0.0
    # How much taller a two-row plate's crop is than a one-row plate's (TWO_ROW_HEIGHT: as
    # they are); the first profiles drew it at a one-row plate's height, rows of 6 to 12 px.
    two_row_height: float = 1.0


# A two-row plate is physically about 1.8 times as tall as a one-row one (EU 280x200 mm
# against 520x110 mm), so at the same distance its crop is that much taller.
TWO_ROW_HEIGHT = 1.8


# "hand-cut" made PlateNet and the first plate reader. "detector-cut" is a wider one: the detector's box
# plus the crop margin (anpr.reading.ocr.CROP_MARGIN_*) is often looser than hand-cut's widest
# boxes, and a camera's plates are more often blurred than not.
CAMERAS = {
    "hand-cut": Camera(loose_x=0.10, loose_y=0.25, focus_blur=0.25, motion_blur=0.15),
    "detector-cut": Camera(loose_x=0.25, loose_y=0.45, focus_blur=0.4, motion_blur=0.2),
    # "scene" is "detector-cut" with the issue's +-15 degree tilt cut as a detector cuts it
    # (hand crops turned 10 degrees lost 9 points of the US set: benchmarks/RESULTS.md) and
    # two-row plates at their physical size. It made the committed plate reader.
    "scene": Camera(
        loose_x=0.25,
        loose_y=0.45,
        focus_blur=0.4,
        motion_blur=0.2,
        tilt_share=0.35,
        tilt=15.0,
        two_row_height=TWO_ROW_HEIGHT,
    ),
}
DEFAULT_CAMERA = "hand-cut"


def _surround(plate: np.ndarray, rng: np.random.Generator, tall: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The plate on a car-coloured, noisy surround, and the plate's corners in it; a `tall`
    surround has room above and below for an upright box around the plate turned 15 degrees."""
    height, width = plate.shape[:2]
    pad_x, pad_y = int(width * 0.25), int(max(height * 0.5, width * 0.3) if tall else height * 0.5)
    colour = rng.integers(0, 256, 3).astype(np.float32)
    canvas = np.empty((height + 2 * pad_y, width + 2 * pad_x, 3), np.float32)
    canvas[:] = colour
    canvas += rng.normal(0, 25, canvas.shape[:2])[..., None]
    canvas[pad_y : pad_y + height, pad_x : pad_x + width] = plate
    corners = np.float32(
        [[pad_x, pad_y], [pad_x + width, pad_y], [pad_x + width, pad_y + height], [pad_x, pad_y + height]]
    )
    return np.clip(canvas, 0, 255).astype(np.uint8), corners


def _upright_box(box: np.ndarray, degrees: float) -> np.ndarray:
    """The corners, in the source image, of the upright box around `box` turned by `degrees`.

    Warping these corners to an upright rectangle shows the plate turned by `degrees` with
    the box a detector draws around it: the crop taller than the plate, its row slanted."""
    centre = box.mean(axis=0)
    turn = _turn(np.radians(degrees))
    turned = (box - centre) @ turn.T
    (x0, y0), (x1, y1) = turned.min(axis=0), turned.max(axis=0)
    upright = np.float32([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return upright @ turn + centre  # back to the source image: the inverse turn


def _turn(angle: float) -> np.ndarray:
    """The 2x2 rotation by `angle` radians, for points as rows (`points @ _turn(a).T`)."""
    return np.float32([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def cut(
    plate: np.ndarray,
    rng: np.random.Generator,
    surround: bool,
    camera: Camera = CAMERAS[DEFAULT_CAMERA],
    rows: int = 1,
) -> np.ndarray:
    """The plate cut along a jittered quadrilateral, at a random camera resolution.

    A profile without tilt or a two-row height draws exactly what it drew before they
    existed, so that the committed models' runs stay reproducible."""
    tilted = surround and camera.tilt_share > 0 and rng.random() < camera.tilt_share
    if surround:
        image, corners = _surround(plate, rng, tall=tilted)
    else:
        image = plate
        h, w = plate.shape[:2]
        corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    width = corners[1, 0] - corners[0, 0]
    height = corners[3, 1] - corners[0, 1]
    # Box margins: from a box that clips the plate's edge to one with a lot of surround.
    grow_x = rng.uniform(-0.03, camera.loose_x if surround else 0.03, 2) * width
    grow_y = rng.uniform(-0.06, camera.loose_y if surround else 0.05, 2) * height
    box = corners + np.float32(
        [[-grow_x[0], -grow_y[0]], [grow_x[1], -grow_y[0]], [grow_x[1], grow_y[1]], [-grow_x[0], grow_y[1]]]
    )
    # Perspective and rotation: each corner moves on its own, then the whole box turns.
    box += rng.normal(0, 1, (4, 2)).astype(np.float32) * np.float32([0.03 * width, 0.05 * height])
    angle = np.radians(rng.normal(0, 4))
    centre = box.mean(axis=0)
    box = (box - centre) @ _turn(angle).T + centre
    out_h = int(np.clip(rng.lognormal(np.log(40), 0.5), 16, 160))
    if rows > 1 and camera.two_row_height != 1.0:
        out_h = int(out_h * camera.two_row_height)
    if tilted:  # the plate keeps its size in pixels; the upright box around it is taller
        plate_h = float(np.linalg.norm(box[3] - box[0]))
        box = _upright_box(box, rng.uniform(-camera.tilt, camera.tilt))
        out_h = int(out_h * np.linalg.norm(box[3] - box[0]) / max(1.0, plate_h))
    aspect = float(np.linalg.norm(box[1] - box[0]) / max(1.0, np.linalg.norm(box[3] - box[0])))
    out_w = int(np.clip(out_h * aspect * rng.uniform(0.9, 1.1), 24, 600))
    target = np.float32([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]])
    warp = cv2.getPerspectiveTransform(box.astype(np.float32), target)
    return cv2.warpPerspective(image, warp, (out_w, out_h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def degrade(crop: np.ndarray, rng: np.random.Generator, camera: Camera = CAMERAS[DEFAULT_CAMERA]) -> np.ndarray:
    """Light, blur, glare, noise and compression at the crop's own resolution."""
    image = crop.astype(np.float32)
    if rng.random() < 0.3:  # night or infrared: grey, hard contrast
        grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
        image = np.repeat(grey[..., None], 3, axis=2)
    image = image * rng.uniform(0.6, 1.3) + rng.uniform(-35, 35)  # exposure
    image += rng.normal(0, 12, 3).astype(np.float32)  # colour cast
    if rng.random() < 0.15:  # glare: a bright blob
        h, w = image.shape[:2]
        mask = np.zeros((h, w), np.float32)
        cv2.circle(
            mask, (int(rng.integers(w)), int(rng.integers(h))), int(rng.integers(max(2, h // 3), max(3, h))), 1.0, -1
        )
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, h / 6))
        image += mask[..., None] * rng.uniform(50, 150)
    if rng.random() < 0.2:  # a shadow over part of the plate
        h, w = image.shape[:2]
        x = int(rng.integers(w))
        image[:, x:] *= rng.uniform(0.4, 0.8)
    image = np.clip(image, 0, 255)
    gamma = rng.uniform(0.6, 1.6)
    image = 255.0 * (image / 255.0) ** gamma
    blur = rng.random()
    if blur < camera.focus_blur:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.3))
    elif blur < camera.focus_blur + camera.motion_blur:  # motion across the frame
        length = int(rng.integers(2, 6))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        turn = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(-30, 30), 1.0)
        kernel = cv2.warpAffine(kernel, turn, (length, length))
        image = cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6))
    image += rng.normal(0, rng.uniform(0, 12), image.shape).astype(np.float32)
    out = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        _, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 90))])
        out = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return out
