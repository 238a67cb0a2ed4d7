"""The confidence below which PlateNet's reads are more often wrong than right.

Measured on synthetic plates the network never saw (a seed of their own, the training
augmentation), read and rescored as the pipeline does. The threshold is where, going up
the confidences, reads start to be right at least half the time: the pipeline rejects
reads below it as no plate (`Rejection.UNSURE`). It is written into the ONNX
file's metadata (`reject_below`), so that the model carries its own calibration.

The training command calibrates the model it writes. `python -m training.calibrate MODEL`
calibrates a trained model again (after a change in how reads are chosen) and updates its
provenance JSON beside it, and the manifest for a model in `models/`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from anpr.reading.ocr import OnnxPlateRecogniser, PlateNetRecogniser, PlateReaderRecogniser
from anpr.reading.plates import choose_plate
from anpr.reading.weights import ModelFile, _sha256
from training.augment import cut, degrade
from training.synth import render_plate

CALIBRATION_SEED = 1_000_003  # apart from every training seed
CALIBRATION_PLATES = 2000
CALIBRATION_BIN = 100  # reads per bin: accuracy within one known to about +-5 points
METADATA_KEY = "reject_below"


def measure(
    path: Path,
    plates: int = CALIBRATION_PLATES,
    seed: int = CALIBRATION_SEED,
    kind: type[OnnxPlateRecogniser] = PlateNetRecogniser,
) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, right) of the network's chosen read of each held-out synthetic plate."""
    rng = np.random.default_rng(seed)
    crops, texts = [], []
    for _ in range(plates):
        plate, text, _ = render_plate(rng)
        crops.append(degrade(cut(plate, rng, surround=True), rng))
        texts.append(text)
    recogniser = kind(weights=ModelFile(kind.model_name, path, _sha256(path)))
    confidence, right = [], []
    for start in range(0, plates, 64):
        reads = recogniser.recognise(crops[start : start + 64])
        for candidates, text in zip(reads.candidates, texts[start : start + 64], strict=True):
            chosen = choose_plate(candidates, swaps=recogniser.lookalike_swaps)
            confidence.append(chosen.confidence)
            right.append(chosen.plate == text)
    return np.array(confidence), np.array(right)


def threshold(confidence: np.ndarray, right: np.ndarray, bin_size: int = CALIBRATION_BIN) -> float:
    """The confidence from which reads are right at least half the time.

    Reads are sorted by confidence and cut into bins of `bin_size`; the threshold is the
    lowest confidence of the first bin, from the bottom, that is right at least half the
    time (rounded down to 0.01). Below it, a read is more likely wrong than right.
    """
    order = np.argsort(confidence, kind="stable")
    ranked, hits = confidence[order], right[order]
    for start in range(0, len(ranked), bin_size):
        if hits[start : start + bin_size].mean() >= 0.5:
            return float(np.floor(ranked[start] * 100) / 100)
    return 1.0


def write_threshold(path: Path, value: float) -> None:
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=f"{value:.2f}")
    onnx.save(model, str(path))


def calibrate(
    path: Path, kind: type[OnnxPlateRecogniser] = PlateNetRecogniser, plates: int = CALIBRATION_PLATES
) -> dict[str, float]:
    """Measure, write the threshold into the model, and return what was measured."""
    confidence, right = measure(path, plates, kind=kind)
    value = threshold(confidence, right)
    write_threshold(path, value)
    below = confidence < value
    return {
        "reject_below": value,
        "calibration_plates": len(right),
        "calibration_exact": round(float(right.mean()), 4),
        "rejected_share": round(float(below.mean()), 4),
        "right_among_rejected": round(float(right[below].mean()), 4) if below.any() else 0.0,
        "right_among_kept": round(float(right[~below].mean()), 4) if (~below).any() else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Calibrate a trained PlateNet or plate reader again.")
    parser.add_argument("model", type=Path, help="the ONNX file; its provenance JSON beside it is updated")
    args = parser.parse_args(argv)
    from training.train import MODELS, update_manifest

    provenance_path = args.model.with_suffix(".json")
    provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
    name = provenance.get("model", "platenet")  # which network the file holds, as its training wrote
    kind = {"platenet": PlateNetRecogniser, "platereader": PlateReaderRecogniser}[name]
    calibration = calibrate(args.model, kind)
    digest = _sha256(args.model)
    command = "python -m training.calibrate " + " ".join(sys.argv[1:] if argv is None else argv)
    provenance.update(calibration, sha256=digest, recalibrated_by=command.strip())
    provenance_path.write_text(json.dumps(provenance, indent=2) + "\n")
    if args.model.parent.resolve() == MODELS:
        entry = json.loads((MODELS / "manifest.json").read_text())[name]
        update_manifest(MODELS, name, args.model.name, digest, entry["source"], entry["licence"])
    print(f"calibrated {args.model}: {calibration}, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
