"""Two-row plates: exact reads of synthetic two-row plates from a seed no training run uses.

    python -m benchmarks.two_row [--backends platereader ppocr platenet] [--plates 500]

The plates are rendered by `training.synth.render_plate` with every plate of four
characters or more in two rows (layouts of every country the formats table knows, with
bands, emblems, clutter, frames), cut and degraded as a camera would (`training.augment`),
from TWO_ROW_SEED: no training or calibration stream draws from it, at two sizes (`SIZES`:
as tall as a one-row plate's crop, and at a two-row plate's physical size). Each backend
reads them as the pipeline does (batched `recognise`, then `choose_plate` with its own
look-alike policy). Prints one JSON line per backend: at each size, its exact share overall
and by crop height.

Needs the `train` extra (the fonts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from anpr.reading.ocr import make_recogniser
from anpr.reading.plates import choose_plate, same_plate
from training.augment import CAMERAS, DEFAULT_CAMERA, TWO_ROW_HEIGHT, Camera, cut, degrade
from training.synth import render_plate

TWO_ROW_SEED = 31_415_926  # apart from training (0, 1, ...) and calibration (1_000_003)
MIN_TWO_ROW_LENGTH = 4  # render_plate sets shorter registrations in one row

# Two ways of drawing the crops' size. "one-row heights" is the set as first measured: a
# two-row crop as tall as a one-row plate's, so half its rows are 6 to 12 px high, many past
# reading. "physical size": the same plates, cut as a camera at the same distance sees a
# plate TWO_ROW_HEIGHT times as tall (training.augment). The same seed
# and degradation; the plates differ after the first, as a larger crop's noise takes more
# draws from the stream.
SIZES: dict[str, Camera] = {
    "one-row heights": CAMERAS[DEFAULT_CAMERA],
    "physical size": dataclasses.replace(CAMERAS[DEFAULT_CAMERA], two_row_height=TWO_ROW_HEIGHT),
}


def two_row_plates(
    count: int, seed: int = TWO_ROW_SEED, camera: Camera = CAMERAS[DEFAULT_CAMERA]
) -> list[tuple[np.ndarray, str]]:
    """`count` degraded crops of two-row plates and their registrations."""
    rng = np.random.default_rng(seed)
    plates: list[tuple[np.ndarray, str]] = []
    while len(plates) < count:
        plate, text, rows = render_plate(rng, two_row_share=1.0)
        if len(text) >= MIN_TWO_ROW_LENGTH:
            plates.append((degrade(cut(plate, rng, True, camera, rows), rng, camera), text))
    return plates


HEIGHT_BIN = 20  # px of crop height per row of the breakdown


def exact(backend: str, plates: list[tuple[np.ndarray, str]], batch: int = 8) -> dict:
    """The backend's exact share, overall and by crop height (`HEIGHT_BIN` px bins: [exact, plates])."""
    recogniser = make_recogniser(backend)
    right = np.zeros(len(plates), bool)
    for start in range(0, len(plates), batch):
        chunk = plates[start : start + batch]
        reads = recogniser.recognise([crop for crop, _ in chunk])
        for offset, (candidates, (_, text)) in enumerate(zip(reads.candidates, chunk, strict=True)):
            chosen = choose_plate(candidates, swaps=recogniser.lookalike_swaps)
            right[start + offset] = same_plate(chosen.plate, text)
    bins = np.array([crop.shape[0] // HEIGHT_BIN * HEIGHT_BIN for crop, _ in plates])
    by_height = {
        f"{low}-{low + HEIGHT_BIN - 1} px": [round(float(right[bins == low].mean()), 3), int((bins == low).sum())]
        for low in sorted(set(bins.tolist()))
    }
    return {"exact": round(float(right.mean()), 4), "by_height": by_height}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["platereader", "ppocr", "platenet"])
    parser.add_argument("--plates", type=int, default=500)
    args = parser.parse_args()
    sets = {size: two_row_plates(args.plates, camera=camera) for size, camera in SIZES.items()}
    for backend in args.backends:
        figures = {size: exact(backend, plates) for size, plates in sets.items()}
        print(json.dumps({"backend": backend, "plates": args.plates, "seed": TWO_ROW_SEED, **figures}), flush=True)


if __name__ == "__main__":
    main()
