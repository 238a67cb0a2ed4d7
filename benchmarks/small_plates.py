"""Detection recall on small plates: the EU photos scaled so each plate is about N px wide,
each placed in a 720p or 1080p frame, measured with `anpr eval`.

    python benchmarks/small_plates.py [--width 60] [--frame 1280x720] [--input-size 640]
                                      [--second-pass auto|tiles|off] [--ocr NAME] [--detector NAME]
                                      [--dataset DIR | --dev]

Each photo is scaled so that its annotated plate is `--width` px wide (INTER_AREA, as a
camera's optics and sensor would blur it), then cut to a frame of `--frame` around the
plate (the plate at a position drawn from a fixed seed), grey where the scaled photo does
not reach. The frames and their annotations are written in the openalpr layout under
benchmarks/data/, then `anpr eval FOLDER --json` runs on them with the detector input size
`--input-size` and the second pass `--second-pass` (`auto`, the default, searches the
frames with no plate found again, tile by tile: eval reads still images), through the
detector backend `--detector` (default: the configured one, `auto`). Prints one JSON
object. The photos are only measured, never trained on. With `--dev`, the plates are the
train-split crops of the US and BR sets on drawn car fronts (those of the development clip,
`clips.dev_vehicles`), written to `small-plates-dev-*`: figures to choose on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
from clips import dev_vehicles

from anpr.measure.eval import load_annotations

REPO = Path(__file__).resolve().parent.parent
SEED = 20261125
GREY = 114


def _frame_around_plate(photo: np.ndarray, box: np.ndarray, width: int, size: tuple[int, int], rng) -> tuple:
    """The scaled photo cut to `size` around the plate, and the plate's box in that frame."""
    scale = width / max(float(box[2] - box[0]), 1.0)
    scaled = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    plate = box * scale
    frame_w, frame_h = size
    # Where the plate's top-left corner lands in the frame: anywhere that keeps it whole.
    plate_w, plate_h = plate[2] - plate[0], plate[3] - plate[1]
    x = int(rng.uniform(0, max(frame_w - plate_w, 1)))
    y = int(rng.uniform(0, max(frame_h - plate_h, 1)))
    offset_x, offset_y = int(plate[0]) - x, int(plate[1]) - y  # scaled-photo pixel at the frame's (0, 0)
    frame = np.full((frame_h, frame_w, 3), GREY, np.uint8)
    src_x1, src_y1 = max(offset_x, 0), max(offset_y, 0)
    src_x2, src_y2 = min(offset_x + frame_w, scaled.shape[1]), min(offset_y + frame_h, scaled.shape[0])
    frame[src_y1 - offset_y : src_y2 - offset_y, src_x1 - offset_x : src_x2 - offset_x] = scaled[
        src_y1:src_y2, src_x1:src_x2
    ]
    return frame, plate - np.array([offset_x, offset_y, offset_x, offset_y], np.float32)


Photo = tuple[str, np.ndarray, np.ndarray, str]  # name stem, BGR image, plate box x1 y1 x2 y2, plate


def annotated_photos(dataset: Path) -> Iterator[Photo]:
    """The photos of an openalpr-layout folder (the EU set: measured only)."""
    for annotation in load_annotations(dataset):
        yield annotation.image.stem, cv2.imread(str(annotation.image)), annotation.box, annotation.plate


def dev_photos(datasets: Path) -> Iterator[Photo]:
    """The development clip's vehicles: train-split US and BR crops on drawn car fronts."""
    for vehicle in dev_vehicles(datasets):
        yield Path(vehicle.name.replace("/", "-")).stem, vehicle.image, vehicle.box, vehicle.plate


def build(photos: Iterable[Photo], folder: Path, width: int, size: tuple[int, int]) -> int:
    rng = np.random.default_rng(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for stem, photo, plate_box, plate in photos:
        frame, box = _frame_around_plate(photo, plate_box, width, size, rng)
        cv2.imwrite(str(folder / f"{stem}.png"), frame)
        x1, y1, x2, y2 = (float(v) for v in box)
        (folder / f"{stem}.txt").write_text(f"{stem}.png\t{x1:.0f}\t{y1:.0f}\t{x2 - x1:.0f}\t{y2 - y1:.0f}\t{plate}\n")
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "datasets" / "openalpr-eu")
    parser.add_argument("--dev", action="store_true", help="the train-split US and BR crops instead, to choose on")
    parser.add_argument("--width", type=int, default=60, help="plate width in px after scaling")
    parser.add_argument("--frame", default="1280x720")
    parser.add_argument("--input-size", type=int, default=640, help="detector input size")
    parser.add_argument("--second-pass", choices=("auto", "tiles", "off"), default="auto")
    parser.add_argument("--ocr", default=None, help="recogniser (default: the configured default)")
    parser.add_argument("--detector", default=None, help="detector backend (default: the configured default)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.frame.split("x"))
    folder = REPO / "benchmarks" / "data" / f"small-plates-{'dev-' if args.dev else ''}{args.width}px-{args.frame}"
    photos = dev_photos(args.dataset.parent) if args.dev else annotated_photos(args.dataset)
    images = build(photos, folder, args.width, (size[0], size[1]))
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "settings.yaml"
        config.write_text(f"detector: {{input_size: {args.input_size}, second_pass: {args.second_pass}}}\n")
        chosen = [*(["--ocr", args.ocr] if args.ocr else []), *(["--detector", args.detector] if args.detector else [])]
        result = subprocess.run(
            [sys.executable, "-m", "anpr", "eval", str(folder), "--json", "--config", str(config), *chosen],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        sys.exit(f"anpr eval failed: {result.stderr.strip()}")
    report = json.loads(result.stdout)
    print(
        json.dumps(
            {
                "folder": str(folder),
                "plate_width": args.width,
                "frame": args.frame,
                "input_size": args.input_size,
                "second_pass": args.second_pass,
                "detector": args.detector or "auto",
                "images": images,
                **report,
            }
        )
    )


if __name__ == "__main__":
    main()
