"""Test clips built from real photos: one vehicle passage per photo (development tooling,
not part of the `anpr` package: the benchmarks import it as `clips`, the tests as
`benchmarks.clips`).

Each photo drifts and grows across the frame for `seconds_per_photo` (as a vehicle
approaching a camera would), so consecutive frames differ the way video does. The
frames are encoded by the FFmpeg binary shipped in the `imageio-ffmpeg` wheel (libx264
or libx265), so no system codec is needed. A JSON file beside the clip lists which
plate is on screen from which frame to which.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

CODECS = {
    "h264": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"],
    "h265": ["-c:v", "libx265", "-preset", "veryfast", "-crf", "26", "-x265-params", "log-level=error"],
}
# QuickTime players want HEVC in MP4 tagged hvc1; other containers take no tag.
CONTAINER_OPTIONS = {("h265", ".mp4"): ["-tag:v", "hvc1"]}


@dataclass(frozen=True, slots=True)
class TruePassage:
    """Where one photo's plate is on screen in a clip: the truth passages are scored against."""

    plate: str
    photo: str
    first_frame: int
    last_frame: int


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _placed(photo: np.ndarray, size: tuple[int, int], progress: float) -> np.ndarray:
    """The photo on a dark frame, scaled 0.85 -> 1.0 of the frame and drifting right to left."""
    width, height = size
    fit = min(width / photo.shape[1], height / photo.shape[0])
    scale = fit * (0.85 + 0.15 * progress)
    w, h = max(1, int(photo.shape[1] * scale)), max(1, int(photo.shape[0] * scale))
    resized = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    frame = np.full((height, width, 3), 24, np.uint8)
    x = int((width - w) / 2 + (0.5 - progress) * 0.1 * width)
    y = (height - h) // 2
    # Clip the pasted region to the frame.
    fx1, fy1, fx2, fy2 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    frame[fy1:fy2, fx1:fx2] = resized[fy1 - y : fy2 - y, fx1 - x : fx2 - x]
    return frame


def build_clip(
    photos: Sequence[tuple[Path, str]],
    output: Path,
    size: tuple[int, int] = (1920, 1080),
    fps: int = 25,
    seconds_per_photo: float = 2.0,
    codec: str = "h264",
    gap_seconds: float = 0.0,
) -> list[TruePassage]:
    """Encode one passage per (photo, plate) into `output`; writes `output`.json too.

    With `gap_seconds`, each passage ends with that much empty road (a plain frame), as
    traffic has between vehicles: the passage period stays `seconds_per_photo`.
    """
    period = max(1, round(seconds_per_photo * fps))
    gap_frames = min(period - 1, round(gap_seconds * fps))
    frames_per_photo = period - gap_frames
    command = [
        ffmpeg_exe(),
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        f"{size[0]}x{size[1]}",
        "-r",
        str(fps),
        "-i",
        "-",
        *CODECS[codec],
        *CONTAINER_OPTIONS.get((codec, output.suffix.lower()), []),
        "-pix_fmt",
        "yuv420p",
        "-g",
        str(2 * fps),
        str(output),
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    passages = []
    encoder = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert encoder.stdin is not None
    try:
        for number, (photo_path, plate) in enumerate(photos):
            photo = cv2.imread(str(photo_path))
            if photo is None:
                raise ValueError(f"cannot read photo {photo_path}")
            for step in range(frames_per_photo):
                encoder.stdin.write(_placed(photo, size, step / max(1, frames_per_photo - 1)).tobytes())
            empty_road = np.full((size[1], size[0], 3), 24, np.uint8).tobytes()
            for _ in range(gap_frames):
                encoder.stdin.write(empty_road)
            first = number * period
            passages.append(TruePassage(plate, photo_path.name, first, first + frames_per_photo - 1))
        encoder.stdin.close()
    finally:
        error = encoder.stderr.read().decode(errors="replace") if encoder.stderr else ""
        code = encoder.wait()
    if code != 0:
        raise RuntimeError(f"ffmpeg failed ({code}): {error.strip()}")
    output.with_suffix(".json").write_text(
        json.dumps(
            {"fps": fps, "size": list(size), "codec": codec, "passages": [asdict(p) for p in passages]}, indent=1
        )
    )
    return passages


def dataset_photos(folder: Path, count: int | None = None) -> list[tuple[Path, str]]:
    """(photo, plate) pairs of an openalpr-layout folder, spread evenly over its sorted names."""
    from anpr.eval import load_annotations

    pairs = [(annotation.image, annotation.plate) for annotation in load_annotations(folder)]
    if count is None or count >= len(pairs):
        return pairs
    step = len(pairs) / count
    return [pairs[int(i * step)] for i in range(count)]
