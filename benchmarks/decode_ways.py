"""CPU per source frame of ways to decode a clip when only every third frame is used
(issue 15, "decoding only what is used" in benchmarks/RESULTS.md).

    python benchmarks/decode_ways.py [CLIP] [--seconds 60]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import av
import cv2

STRIDE = 3


def opencv(path: str, frames: int, every: int) -> int:
    """Every frame grabbed, every `every`-th retrieved as BGR; frames out."""
    capture, out = cv2.VideoCapture(path), 0
    for index in range(frames):
        if not capture.grab():
            break
        if index % every == 0:
            capture.retrieve()
            out += 1
    return out


def pyav(path: str, frames: int, skip: str | None) -> int:
    """PyAV decoding (non-reference frames skipped with `skip`="NONREF"), frames at least
    STRIDE apart converted by OpenCV from I420; frames decoded."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if skip:
            stream.codec_context.skip_frame = skip
        decoded, last = 0, -STRIDE
        for frame in container.decode(stream):
            index = round(float(frame.pts * stream.time_base) * float(stream.average_rate))
            if index >= frames:
                break
            decoded += 1
            if index - last >= STRIDE:
                last = index
                cv2.cvtColor(frame.to_ndarray(format="yuv420p"), cv2.COLOR_YUV2BGR_I420)
    return decoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", nargs="?", default="benchmarks/data/traffic-all.mp4")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    frames = round(args.seconds * (cv2.VideoCapture(args.clip).get(cv2.CAP_PROP_FPS) or 25))
    ways: dict[str, Callable[[], int]] = {
        "opencv, every frame read to BGR": lambda: opencv(args.clip, frames, 1),
        f"opencv, every frame grabbed, every {STRIDE}rd retrieved": lambda: opencv(args.clip, frames, STRIDE),
        "pyav, every frame decoded, kept ones converted": lambda: pyav(args.clip, frames, None),
        "pyav, non-reference frames skipped, kept ones converted": lambda: pyav(args.clip, frames, "NONREF"),
    }
    for name, way in ways.items():
        started = time.process_time()
        out = way()
        print(f"{name}: {1000 * (time.process_time() - started) / frames:.2f} CPU ms per source frame ({out} out)")


if __name__ == "__main__":
    main()
