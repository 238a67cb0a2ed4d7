"""Build a test clip from annotated real photos (one vehicle passage per photo).

    python benchmarks/make_clip.py OUTPUT.mp4 [--dataset DIR] [--count N] [--seconds S]
                                   [--size 1920x1080] [--fps 25] [--codec h264|h265]

Writes OUTPUT.mp4 and OUTPUT.json (the plate on screen in each passage, by frame).
The bundled sample, samples/sample.mp4, was made with:

    python benchmarks/make_clip.py samples/sample.mp4 --count 6 --seconds 1.2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clips import build_clip, dataset_photos

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
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    photos = dataset_photos(args.dataset, args.count)
    if not photos:
        parser.error(f"no annotated photos in {args.dataset}")
    passages = build_clip(photos, args.output, (width, height), args.fps, args.seconds, args.codec)
    print(
        f"{args.output}: {len(passages)} passages, {passages[-1].last_frame + 1} frames, "
        f"{width}x{height} @ {args.fps} fps, {args.codec}"
    )


if __name__ == "__main__":
    main()
