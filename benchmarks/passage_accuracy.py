"""Passage accuracy on a video built from real photos: one vehicle passage every N seconds.

    python benchmarks/passage_accuracy.py [--dataset DIR] [--seconds 2] [--count N] [--clip PATH]
                                          [--traffic [--dev]] [--pipeline KEYS] [--input-size N]

Builds the clip (1920x1080, 25 fps, H.264; each period ends with --gap seconds of empty
road, as traffic has between vehicles; with --traffic, vehicles crossing a road scene,
`clips.build_traffic_clip`; with --dev, the vehicles are drawn car fronts carrying the
train-split crops of the US and BR sets, 60 of each, the clip constants are chosen on,
never the openalpr-eu photos) unless it exists, runs
`anpr run CLIP --config configs/paris-fps.yaml --jsonl --passages`, and scores:
- exactly_once_right: share of true passages reported by exactly one passage with the right plate
  (O and 0 folded together, as `anpr eval` scores);
- spurious: share of reported passages that are not that one right passage (a wrong plate, a
  duplicate, or a passage where no vehicle was).
A reported passage belongs to the true passage that contains its middle frame.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clips import DEV_SEED, annotated_vehicles, build_clip, build_traffic_clip, dataset_photos, dev_vehicles

from anpr.measure.eval import score_passages

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "datasets" / "openalpr-eu")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds of empty road ending each period")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--clip", type=Path, default=None)
    parser.add_argument("--traffic", action="store_true", help="vehicles crossing a road scene (issue 12)")
    parser.add_argument("--dev", action="store_true", help="with --traffic: vehicles from the crop sets' train splits")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "paris-fps.yaml")
    parser.add_argument("--pipeline", default="", help="extra pipeline keys, e.g. 'stride: 2, settle_reads: 3'")
    parser.add_argument("--input-size", type=int, default=None, help="detector input size")
    args = parser.parse_args()
    data = REPO / "benchmarks" / "data"
    if args.traffic and args.dev:
        clip = args.clip or data / "traffic-dev.mp4"
        if not clip.exists():
            build_traffic_clip(dev_vehicles(args.dataset.parent), clip, seed=DEV_SEED)
    elif args.traffic:
        clip = args.clip or data / f"traffic-{args.count or 'all'}.mp4"
        if not clip.exists():
            build_traffic_clip(annotated_vehicles(dataset_photos(args.dataset, args.count)), clip)
    else:
        clip = args.clip or data / f"passages-{args.count or 'all'}-{args.seconds:g}s-gap{args.gap:g}.mp4"
        if not clip.exists():
            build_clip(dataset_photos(args.dataset, args.count), clip, (1920, 1080), 25, args.seconds, "h264", args.gap)
    truth = json.loads(clip.with_suffix(".json").read_text())["passages"]
    with tempfile.TemporaryDirectory() as work:
        config = args.config
        if args.pipeline or args.input_size:
            config = Path(work) / "config.yaml"
            config.write_text(
                args.config.read_text()
                + (f"pipeline: {{{args.pipeline}}}\n" if args.pipeline else "")
                + (f"detector: {{input_size: {args.input_size}}}\n" if args.input_size else "")
            )
        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "anpr",
                "run",
                str(clip),
                "--config",
                str(config),
                "--db",
                str(Path(work) / "reads.sqlite"),
                "--jsonl",
                "--passages",
            ],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"anpr run failed: {result.stderr.strip()}")
    reported = [json.loads(line) for line in result.stdout.splitlines()]
    saved = clip.with_suffix(
        f".{args.pipeline.replace(' ', '').replace(':', '').replace(',', '-') or 'every'}"
        f"-{args.input_size or 640}.reported.jsonl"
    )
    saved.write_text(result.stdout)  # to rescore without running again
    print(
        json.dumps(
            {
                "clip": str(clip),
                "pipeline": args.pipeline or "defaults",
                "input_size": args.input_size or 640,
                **score_passages(truth, reported),
                "seconds": round(seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
