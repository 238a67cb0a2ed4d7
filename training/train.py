"""Train PlateNet and export it to ONNX: `python -m training.train` (the plate reader: `training.reader`).

Data: the `train` split of every crop set given (never `test`, never openalpr-eu) and
synthetic plates from `training.synth`, half and half in every batch, each crop cut and
degraded afresh by `training.augment` every time it is drawn. The run is fixed by its
seed and its step count (no early stopping, no choice of checkpoint on any score), so
the same command gives the same network. It writes the ONNX file, a provenance JSON
beside it, and the model's entry in `models/manifest.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from anpr.measure.eval import load_crop_labels
from anpr.reading.ocr import PLATE_NET_SIZE, prepare_plate
from anpr.reading.plates import PLATE_ALPHABET, normalise
from anpr.reading.weights import _sha256
from training.augment import CAMERAS, DEFAULT_CAMERA, Camera, cut, degrade
from training.calibrate import CALIBRATION_PLATES, calibrate
from training.model import PlateNet
from training.synth import TWO_ROW_SHARE, render_plate

MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_SETS = ("../shared/datasets/openalpr-us-crops", "../shared/datasets/openalpr-br-crops")
CLASS_OF = {ch: i + 1 for i, ch in enumerate(PLATE_ALPHABET)}  # 0 is the CTC blank
REAL_SHARE = 0.5


class PlateStream(IterableDataset):
    """An endless, seeded stream of (input, label) pairs, real and synthetic mixed.

    Each crop set is drawn as often as the others, whatever its size: the US set's 50
    states in 603 crops matter as much as the Brazilian set's one layout in 935.
    """

    def __init__(
        self,
        real: list[list[tuple[np.ndarray, str]]],
        seed: int,
        size: tuple[int, int] = PLATE_NET_SIZE,
        two_row_share: float = TWO_ROW_SHARE,
        real_surround_share: float = 0.0,
        start: int = 0,
        camera: Camera = CAMERAS[DEFAULT_CAMERA],
        glyph_share: float = 0.0,
    ) -> None:
        self.real = real
        self.seed = seed
        self.size = size
        self.two_row_share = two_row_share
        # Real crops are cut tight by hand; a detector's box is looser. With this share a
        # real crop is set on a surround and cut as loosely as the synthetic plates.
        self.real_surround_share = real_surround_share
        self.start = start  # a resumed run draws a stream of its own, not the first one again
        self.camera = camera
        self.glyph_share = glyph_share  # synthetic plates in real plate glyphs (training.glyphs)

    def __iter__(self):
        worker = get_worker_info()
        seed = [self.seed, worker.id if worker else 0] + ([self.start] if self.start else [])
        rng = np.random.default_rng(seed)
        cv2.setNumThreads(1)
        while True:
            if rng.random() < REAL_SHARE:
                crops = self.real[int(rng.integers(len(self.real)))]
                image, text = crops[int(rng.integers(len(crops)))]
                surround = bool(rng.random() < self.real_surround_share)
                crop = degrade(cut(image, rng, surround, self.camera), rng, self.camera)
            else:
                plate, text, rows = render_plate(rng, self.two_row_share, self.glyph_share)
                crop = degrade(cut(plate, rng, True, self.camera, rows), rng, self.camera)
            yield prepare_plate(crop, self.size), text


def collate(batch: list[tuple[np.ndarray, str]]):
    images = torch.from_numpy(np.stack([image for image, _ in batch]))
    targets = torch.tensor([CLASS_OF[ch] for _, text in batch for ch in text], dtype=torch.long)
    lengths = torch.tensor([len(text) for _, text in batch], dtype=torch.long)
    return images, targets, lengths


def load_real(sets: list[Path]) -> list[list[tuple[np.ndarray, str]]]:
    """Per crop set, its `train` crops and their registrations."""
    real = []
    for folder in sets:
        crops = []
        for label in load_crop_labels(folder, "train"):
            text = normalise(label.plate)
            image = cv2.imread(str(label.image), cv2.IMREAD_COLOR)
            if text and image is not None:
                crops.append((image, text))
        real.append(crops)
    return real


class Probabilities(torch.nn.Module):
    """What the ONNX file returns: per-column class probabilities (decoding wants them)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images).exp()


def export(network: torch.nn.Module, path: Path, size: tuple[int, int] = PLATE_NET_SIZE) -> None:
    """The network as ONNX, taking (N, 1, height, width) grey crops of `size` (width, height)."""
    network.eval()
    dummy = torch.zeros(1, 1, size[1], size[0])
    torch.onnx.export(
        Probabilities(network),
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


PLATENET_LICENCE = "AGPL-3.0-or-later (trained by this project on AGPL-3.0 data; models/README.md)"


def update_manifest(
    models: Path, name: str, file: str, digest: str, source: str, licence: str = PLATENET_LICENCE
) -> None:
    manifest_path = models / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest[name] = {
        "location": "models",
        "file": file,
        "sha256": digest,
        "licence": licence,
        "source": source,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", type=Path, default=[Path(s) for s in DEFAULT_SETS])
    parser.add_argument("--out", type=Path, default=Path("models/platenet.onnx"))
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where the network trains")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes making plates (each draws its own seeded stream: another count is another run)",
    )
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    real = load_real(args.sets)
    counts = ", ".join(f"{len(crops)} from {folder}" for crops, folder in zip(real, args.sets, strict=True))
    print(f"real train crops: {counts}", flush=True)
    stream = DataLoader(
        PlateStream(real, args.seed),
        batch_size=args.batch,
        collate_fn=collate,
        num_workers=args.workers,
        prefetch_factor=4,
    )
    device = torch.device(args.device)
    network = PlateNet().to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
    started = time.monotonic()
    losses: list[float] = []
    network.train()
    for step, (images, targets, lengths) in enumerate(stream, 1):
        log_probs = network(images.to(device))
        columns = torch.full((len(images),), log_probs.shape[1], dtype=torch.long, device=device)
        loss = ctc(log_probs.transpose(0, 1), targets.to(device), columns, lengths.to(device))
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 5.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps:
            elapsed = time.monotonic() - started
            print(
                f"step {step}/{args.steps}  loss {np.mean(losses[-100:]):.4f}  "
                f"{elapsed / 60:.1f} min, {(args.steps - step) * elapsed / step / 60:.1f} min left",
                flush=True,
            )
        if step == args.steps:
            break
    minutes = (time.monotonic() - started) / 60

    command = "python -m training.train " + " ".join(sys.argv[1:] if argv is None else argv)
    run = {
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "real_train_crops": sum(len(crops) for crops in real),
        "sets": [str(s) for s in args.sets],
        "split": "train",
        "real_share": REAL_SHARE,
    }
    extra = {"device": args.device, "workers": args.workers}
    publish(network, args.out, "platenet", command, run, losses, minutes, extra=extra)
    return 0


def publish(
    network: torch.nn.Module,
    out: Path,
    name: str,
    command: str,
    run: dict,
    losses: list[float],
    minutes: float,
    size: tuple[int, int] = PLATE_NET_SIZE,
    licence: str = PLATENET_LICENCE,
    calibration_plates: int = CALIBRATION_PLATES,
    extra: dict | None = None,
) -> None:
    """A trained network out to `out`: ONNX, calibrated, its provenance JSON beside it
    (`run`'s settings, the loss curve, the machine) and, in models/, its manifest entry."""
    from anpr.reading.ocr import PlateNetRecogniser, PlateReaderRecogniser

    out.parent.mkdir(parents=True, exist_ok=True)
    export(network.cpu(), out, size)
    kind = {"platenet": PlateNetRecogniser, "platereader": PlateReaderRecogniser}[name]
    calibration = calibrate(out, kind, calibration_plates)
    print(f"calibrated: {calibration}", flush=True)
    digest = _sha256(out)
    provenance = {
        "model": name,
        "file": out.name,
        "sha256": digest,
        "command": command.strip(),
        **run,
        "minutes": round(minutes, 1),
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        **calibration,
        "loss_every_100_steps": [round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, len(losses), 100)],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        **(extra or {}),
    }
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    if out.parent.resolve() == MODELS:
        update_manifest(out.parent, name, out.name, digest, f"{command.strip()} (training/)", licence)
    print(f"wrote {out} sha256 {digest} after {minutes:.1f} min", flush=True)


if __name__ == "__main__":
    sys.exit(main())
