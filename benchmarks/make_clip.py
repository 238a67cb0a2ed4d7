"""Build a test clip from annotated real photos (one vehicle passage per photo).

    python benchmarks/make_clip.py OUTPUT.mp4 [--dataset DIR] [--count N] [--seconds S]
                                   [--size 1920x1080] [--fps 25] [--codec h264|h265]
                                   [--traffic [--seed N]]

Writes OUTPUT.mp4 and OUTPUT.json (the plate on screen in each passage, by frame).
By default each photo fills the frame in turn for S seconds. With `--traffic`, each
photo's vehicle crosses a road scene as a traffic camera sees it (`clips.build_traffic_clip`:
plates 50 to 150 px wide, 1 to 2 s on screen, blur, noise, overlays, gaps from overlap to
a few seconds, H.264 at 4 Mbit/s; `--seconds` and `--codec` do not apply).
The bundled sample, samples/sample.mp4, was made with:

    python benchmarks/make_clip.py samples/sample.mp4 --count 6 --seconds 1.2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clips import SEED, annotated_vehicles, build_clip, build_traffic_clip, dataset_photos

DEFAULT_DATASET = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "openalpr-eu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--count", type=int, default=None, help="number of photos (default: all)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per passage")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--codec", choices=["h264", "h265"], default="h264")
    parser.add_argument("--traffic", action="store_true", help="vehicles crossing a road scene")
    parser.add_argument("--seed", type=int, default=SEED, help="with --traffic: the draw of gaps, lanes, blur")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    photos = dataset_photos(args.dataset, args.count)
    if not photos:
        parser.error(f"no annotated photos in {args.dataset}")
    if args.traffic:
        passages = build_traffic_clip(annotated_vehicles(photos), args.output, (width, height), args.fps, args.seed)
    else:
        passages = build_clip(photos, args.output, (width, height), args.fps, args.seconds, args.codec)
    print(
        f"{args.output}: {len(passages)} passages, {passages[-1].last_frame + 1} frames, "
        f"{width}x{height} @ {args.fps} fps, {'traffic, h264' if args.traffic else args.codec}"
    )


if __name__ == "__main__":
    main()
