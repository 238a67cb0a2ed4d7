"""OCR cost per plate, batched, for each recogniser: the same real crops through each.

    python benchmarks/ocr_cost.py [--backends platereader platenet ppocr easyocr] [--batch 8] [--crops 142]

The crops are the `test` split of openalpr-us-crops (real plate crops of 50 states, 2:1,
about 320x160 px). Each backend reads them in batches of `--batch` as the pipeline does
(`recognise`, the backend's own preprocessing and decoding included), once to warm up,
then `--repeats` times timed; the best repeat is reported as ms per plate. Prints one
JSON line per backend.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2

from anpr.measure.eval import load_crop_labels
from anpr.reading.ocr import make_recogniser

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["platereader", "platenet", "ppocr", "easyocr"])
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "datasets" / "openalpr-us-crops")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crops", type=int, default=142)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    crops = [cv2.imread(str(label.image)) for label in load_crop_labels(args.dataset, "test")][: args.crops]
    batches = [crops[i : i + args.batch] for i in range(0, len(crops), args.batch)]
    for name in args.backends:
        recogniser = make_recogniser(name)
        for batch in batches:  # warm-up: first calls allocate
            recogniser.recognise(batch)
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            for batch in batches:
                recogniser.recognise(batch)
            best = min(best, time.perf_counter() - started)
        print(
            json.dumps(
                {
                    "backend": name,
                    "crops": len(crops),
                    "batch": args.batch,
                    "ms_per_plate": round(1000 * best / len(crops), 2),
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
