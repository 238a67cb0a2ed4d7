"""Two-row plates: exact reads of synthetic two-row plates from a seed no training run uses.

    python -m benchmarks.two_row [--backends platereader ppocr platenet] [--plates 500]

The plates are rendered by `training.synth.render_plate` with every plate of four
characters or more in two rows (layouts of every country the formats table knows, with
bands, emblems, clutter, frames), cut and degraded as a camera would (`training.augment`),
from TWO_ROW_SEED: no training or calibration stream draws from it. Each backend reads them
as the pipeline does (batched `recognise`, then `choose_plate` with its own look-alike
policy). Prints one JSON line per backend.

Needs the `train` extra (the fonts).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from anpr.reading.ocr import make_recogniser
from anpr.reading.plates import choose_plate, same_plate
from training.augment import cut, degrade
from training.synth import render_plate

TWO_ROW_SEED = 31_415_926  # apart from training (0, 1, ...) and calibration (1_000_003)
MIN_TWO_ROW_LENGTH = 4  # render_plate sets shorter registrations in one row


def two_row_plates(count: int, seed: int = TWO_ROW_SEED) -> list[tuple[np.ndarray, str]]:
    """`count` degraded crops of two-row plates and their registrations."""
    rng = np.random.default_rng(seed)
    plates: list[tuple[np.ndarray, str]] = []
    while len(plates) < count:
        plate, text = render_plate(rng, two_row_share=1.0)
        if len(text) >= MIN_TWO_ROW_LENGTH:
            plates.append((degrade(cut(plate, rng, surround=True), rng), text))
    return plates


def exact(backend: str, plates: list[tuple[np.ndarray, str]], batch: int = 8) -> float:
    recogniser = make_recogniser(backend)
    right = 0
    for start in range(0, len(plates), batch):
        chunk = plates[start : start + batch]
        reads = recogniser.recognise([crop for crop, _ in chunk])
        for candidates, (_, text) in zip(reads.candidates, chunk, strict=True):
            chosen = choose_plate(candidates, swaps=recogniser.lookalike_swaps)
            right += same_plate(chosen.plate, text)
    return right / len(plates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["platereader", "ppocr", "platenet"])
    parser.add_argument("--plates", type=int, default=500)
    args = parser.parse_args()
    plates = two_row_plates(args.plates)
    for backend in args.backends:
        print(
            json.dumps(
                {"backend": backend, "plates": len(plates), "seed": TWO_ROW_SEED, "exact": exact(backend, plates)}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
