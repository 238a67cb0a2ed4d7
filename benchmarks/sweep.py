"""Sweep batch size and detector input size; plot frames/s against batch size.

    python benchmarks/sweep.py VIDEO [--batches 1 2 4 8 16] [--sizes 320 416 640] [--stride 1] [--settle 0]

Runs only the anpr phase of `anpr bench` (each point in a process of its own) and writes
benchmarks/sweep.json and benchmarks/sweep.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anpr.measure.bench import BENCH_DEPLOYMENT, run_phase

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 640])
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--settle", type=int, default=0)
    args = parser.parse_args()
    points = []
    for size in args.sizes:
        for batch in args.batches:
            overrides = {
                "pipeline": {"batch": batch, "stride": args.stride, "settle_reads": args.settle},
                "detector": {"input_size": size},
            }
            result = run_phase("anpr", str(args.video), str(BENCH_DEPLOYMENT), json.dumps(overrides))
            points.append(
                {
                    "input_size": size,
                    "batch": batch,
                    "fps": round(result["fps"], 2),
                    "peak_rss_mb": round(result["peak_rss_mb"], 1),
                }
            )
            print(json.dumps(points[-1]), flush=True)
    (HERE / "sweep.json").write_text(
        json.dumps({"video": str(args.video), "stride": args.stride, "settle": args.settle, "points": points}, indent=1)
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for size in args.sizes:
        series = [p for p in points if p["input_size"] == size]
        axes.plot([p["batch"] for p in series], [p["fps"] for p in series], marker="o", label=f"input {size}")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size (frames per detector call)")
    axes.set_ylabel("frames/s, end to end")
    axes.set_title(f"anpr on {args.video.name} (stride {args.stride}, settle {args.settle})")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(HERE / "sweep.png", dpi=100)
    print(f"wrote {HERE / 'sweep.json'} and {HERE / 'sweep.png'}")


if __name__ == "__main__":
    main()
