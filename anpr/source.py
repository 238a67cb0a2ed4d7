"""Frame sources: video files, RTSP streams, image folders and single images.

A source yields `Frame`s in order. `FrameReader` decodes a source in a background
thread into a bounded queue and hands the pipeline batches, so the detector never
waits on I/O. A live source drops its oldest frames when the pipeline falls behind,
rather than growing memory; a file source makes the decoder wait instead, so no
frame of a file is ever skipped.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from anpr.errors import SourceError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")
STREAM_OPEN_TIMEOUT_MS = 10_000
STREAM_READ_TIMEOUT_MS = 10_000


@dataclass(frozen=True, slots=True)
class Frame:
    source: str
    index: int
    time: float  # seconds: media time for files, Unix wall clock for live sources
    image: np.ndarray  # (H, W, 3) uint8 BGR


class FrameSource(Protocol):
    """Something that yields frames in order; `frames()` ends at end of input."""

    name: str
    live: bool  # True: frames arrive in real time and may be dropped

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class VideoSource:
    """A video file or a network stream, decoded by OpenCV's FFmpeg backend."""

    def __init__(self, location: str, live: bool) -> None:
        self.name = location
        self.live = live
        # Without an explicit transport FFmpeg tries UDP first, which loopback
        # firewalls and NAT often drop; TCP works everywhere RTSP does.
        if live and "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_READ_TIMEOUT_MS] if live else []
        self._capture = cv2.VideoCapture(location, cv2.CAP_FFMPEG, params)
        if not self._capture.isOpened():
            self._capture.release()
            what = "cannot connect to stream" if live else "cannot open video (not a video file, or corrupt)"
            raise SourceError(f"{what}: {location}")
        ok, first = self._capture.read()
        if not ok or first is None:
            self._capture.release()
            what = "stream sent no frame" if live else "video has no decodable frame (corrupt or empty)"
            raise SourceError(f"{what}: {location}")
        self._first = first
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or 0.0
        self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0

    def frames(self) -> Iterator[Frame]:
        image, index = self._first, 0
        while image is not None:
            if self.live:
                stamp = time.time()
            else:
                # POS_MSEC is the time of the frame that will be read next; the
                # index over fps is exact for constant-rate files and needs no seek.
                stamp = index / self.fps if self.fps > 0 else self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            yield Frame(self.name, index, stamp, image)
            ok, image = self._capture.read()
            image = image if ok else None
            index += 1

    def close(self) -> None:
        self._capture.release()


class ImageSource:
    """A folder of images (sorted by name) or a single image file."""

    live = False

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            not_images = [p.name for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES]
            if not_images:
                listed = ", ".join(not_images[:3]) + (f" and {len(not_images) - 3} more" if len(not_images) > 3 else "")
                raise SourceError(f"folder {path} holds {len(not_images)} file(s) that are not images: {listed}")
            self._paths = [p for p in entries if p.is_file()]
            if not self._paths:
                raise SourceError(f"folder holds no images: {path}")
        else:
            self._paths = [path]
        # A header check now, so that a bad file fails the run before anything is stored.
        unreadable = [p.name for p in self._paths if not cv2.haveImageReader(str(p))]
        if unreadable:
            raise SourceError(f"not a readable image: {path / unreadable[0] if path.is_dir() else path}")
        self.frame_count = len(self._paths)

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self._paths):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"cannot decode image: {path}")
            yield Frame(self.name, index, path.stat().st_mtime, image)

    def close(self) -> None:
        pass


def open_source(location: str) -> FrameSource:
    """The source for a path or URL; raises SourceError with a one-line reason."""
    if location.lower().startswith(STREAM_SCHEMES):
        return VideoSource(location, live=True)
    path = Path(location)
    if not path.exists():
        raise SourceError(f"no such file or folder: {location}")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(path)
    if path.stat().st_size == 0:
        raise SourceError(f"video file is empty (0 bytes): {location}")
    return VideoSource(str(path), live=False)


@dataclass(frozen=True, slots=True)
class FrameBatch:
    frames: list[Frame]

    @property
    def images(self) -> list[np.ndarray]:
        return [f.image for f in self.frames]

    def __len__(self) -> int:
        return len(self.frames)


_END = object()


class FrameReader:
    """Decodes a source in a background thread and yields batches of frames.

    The queue holds at most `capacity` frames. For a live source a full queue drops its
    oldest frame (counted in `dropped`); for a file the decoder waits.
    """

    def __init__(self, source: FrameSource, capacity: int = 64) -> None:
        self.source = source
        self.dropped = 0
        self.decoded = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(2, capacity))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._decode, name=f"decode:{source.name}", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            if self.source.live:
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    try:  # make room by discarding the oldest frame
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
            else:
                try:
                    self._queue.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

    def _decode(self) -> None:
        try:
            for frame in self.source.frames():
                if self._stop.is_set():
                    break
                self.decoded += 1
                self._put(frame)
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self._error = exc
        finally:
            self._put(_END)

    def batches(self, size: int, stop: threading.Event | None = None) -> Iterator[FrameBatch]:
        """Batches of up to `size` frames; a live source does not wait to fill one.

        Ends at the end of the source, or when `stop` is set while waiting for a frame
        (so a stalled stream cannot keep a stop request waiting).
        """
        finished = False
        while not finished:
            item = self._next(stop)
            if item is _END:
                break
            frames = [item]
            while len(frames) < size:
                try:
                    # A file always ends with _END, so waiting is safe; a live
                    # source's batch goes out with what has arrived.
                    item = self._queue.get_nowait() if self.source.live else self._queue.get()
                except queue.Empty:
                    break
                if item is _END:
                    finished = True
                    break
                frames.append(item)
            yield FrameBatch(frames)  # type: ignore[arg-type]
        if self._error is not None:
            raise self._error

    def _next(self, stop: threading.Event | None) -> object:
        while stop is None or not stop.is_set():
            try:
                return self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
        return _END

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.source.close()
