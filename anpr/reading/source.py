"""Frame sources: video files, RTSP streams, image folders and single images.

A source yields `Frame`s in order. `FrameReader` decodes a source in a background
thread into a bounded queue and hands the pipeline batches, so the detector never
waits on I/O. A live source drops its oldest frames when the pipeline falls behind,
rather than growing memory; a file source makes the decoder wait instead, so no
frame of a file is ever skipped.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from anpr.config.settings import PipelineSettings, StreamSettings
from anpr.errors import SourceError
from anpr.reading.images import image_problem, read_image
from anpr.redact import redact

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")
STREAM_OPEN_TIMEOUT_MS = 10_000
FD_FOLDER = "/proc/self/fd"  # opening FD_FOLDER/N opens the file of descriptor N anew
MAX_BAD_READS = 250  # a file whose frames fail to decode for this long (10 s at 25 fps) has ended
# A failed read that took this share of `stall_seconds` ran into the read timeout: the
# stream stalled. One that failed sooner was ended by the server or the network.
STALLED_SHARE = 0.9


_monotonic = time.monotonic  # in Frame's body, `time` is the field


@dataclass(frozen=True, slots=True)
class Frame:
    source: str
    index: int
    time: float  # seconds: media time for files, Unix wall clock for live sources
    image: np.ndarray  # (H, W, 3) uint8 BGR
    # Frames of the source this one stands for: itself and those the stride skipped before
    # it, which were decoded only as far as the codec needs and never made into images.
    covers: int = 1
    # When the frame was taken in (time.monotonic(): by default when it was made, as its
    # source delivered it): latencies are measured from it.
    captured: float = field(default_factory=_monotonic)


class SourceState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    ENDED = "ended"


@dataclass
class SourceStatus:
    """What a source is doing now; read by the progress display and the JSON log."""

    state: SourceState = SourceState.CONNECTING
    received: int = 0  # frames the source delivered
    reconnects: int = 0  # successful reconnections after a drop or a stall
    last_frame_time: float | None = None  # Unix time the last frame arrived
    last_error: str | None = None  # why the stream is down, while it is
    damaged_stretches: int = 0  # runs of undecodable frames skipped (a damaged file)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # images of a folder not read: (name, why)

    changes: list[tuple[float, SourceState, str | None]] = field(default_factory=list)  # (Unix time, state, why)

    def set(self, state: SourceState, error: str | None = None) -> None:
        """Enter `state`; every change is kept, so a monitor that looks now and then misses none."""
        if error is not None:
            self.last_error = error
        elif state is SourceState.CONNECTED or (state is SourceState.ENDED and self.state is SourceState.CONNECTED):
            # Back up, or ended while up: the error is history, which `changes` keeps; a
            # monitor reading `last_error` at the run's end must not see an outage that is over.
            self.last_error = None
        if state is not self.state:
            self.state = state
            self.changes.append((time.time(), state, error))

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "received": self.received,
            "reconnects": self.reconnects,
            "last_frame_time": round(self.last_frame_time, 3) if self.last_frame_time else None,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How a live stream is watched and reopened (config section `stream`)."""

    stall_seconds: float  # no frame for this long counts as a drop
    first_delay: float  # seconds before the first reopening attempt
    max_delay: float  # attempts back off exponentially up to this

    @classmethod
    def of(cls, stream: StreamSettings | None = None) -> Reconnect:
        stream = stream or StreamSettings()
        return cls(stream.stall_seconds, stream.reconnect_first_delay, stream.reconnect_max_delay)

    def delays(self) -> Iterator[float]:
        """Exponential backoff with jitter: many cameras that dropped together do not
        all hammer the recorder again at the same instant."""
        delay = self.first_delay
        while True:
            yield delay / 2 + random.uniform(0, delay / 2)
            delay = min(self.max_delay, delay * 2)


class FrameSource(Protocol):
    """Something that yields frames in order; `frames()` ends at end of input.

    With a `stride` (`Stride`), it yields only every stride-th frame; the others are
    counted in the `covers` of the next frame yielded. A video's cost only what the codec
    needs to go on (an H.264 frame is decoded, as later ones refer to it, and counted in
    `status.received`, but never converted to a BGR image, nor queued); a folder's images
    are not read at all."""

    name: str
    live: bool  # True: frames arrive in real time and may be dropped
    status: SourceStatus

    def frames(self, stride: Stride | None = None) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class Stride:
    """Which frame numbers a source delivers: the first, then each one at least `every`
    after the last delivered (a damaged file's numbers may jump past a multiple)."""

    def __init__(self, every: int) -> None:
        self.every = max(1, every)
        self._next = 0  # the first frame number due
        self.passed = 0  # frames passed over since the last delivered (at the end: after it)

    def due(self, index: int) -> bool:
        """Whether frame `index` is delivered; if not, it is counted as passed over."""
        if index < self._next:
            self.passed += 1
            return False
        return True

    def delivered(self, index: int) -> int:
        """Frame `index` is delivered: how many frames it covers (itself and those passed over)."""
        covers, self.passed, self._next = self.passed + 1, 0, index + self.every
        return covers


class VideoSource:
    """A video file or a network stream, decoded by OpenCV's FFmpeg backend.

    A live stream that drops or stalls is reopened with backoff, in the same process,
    until the source is closed; its frame numbers go on counting across reconnections.
    The first connection must succeed (a wrong URL is an error, not something to retry)
    unless `wait_for_stream`: then it is retried like a drop. `name` is the location with
    its credentials hidden (`redact`).
    """

    def __init__(
        self,
        location: str,
        live: bool,
        reconnect: Reconnect | None = None,
        wait_for_stream: bool = False,
        threads: int = 0,
    ) -> None:
        # The name travels into every read, export, log line and message; only the
        # capture is given the credentials.
        self.name = redact(location)
        self._location = location
        self.live = live
        self.reconnect = reconnect or Reconnect.of()
        self.threads = threads  # FFmpeg's decoding threads (0: its own choice, one per core)
        self.status = SourceStatus()
        self._closing = threading.Event()
        self._reading = False
        # Without an explicit transport FFmpeg tries UDP first, which loopback
        # firewalls and NAT often drop; TCP works everywhere RTSP does.
        if live and "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
        self._capture = cv2.VideoCapture()
        self._first: np.ndarray | None = None
        self.fps, self.frame_count, self._index_offset = 0.0, 0, 0
        opened = self._open()
        if isinstance(opened, str):
            if not (live and wait_for_stream):
                raise SourceError(f"{opened}: {self.name}")
            # One camera of several may be down when the run starts; it is retried like a drop.
            self.status.set(SourceState.RECONNECTING, opened)
            return
        self._capture, self._first = opened
        self.status.set(SourceState.CONNECTED)
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or 0.0
        self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0
        # Some containers report the media time a few frames ahead (AVI: the decoder's
        # delay); the first frame, number 0, gives that offset.
        self._index_offset = self._media_index() if self.fps > 0 and not live else 0

    def _media_index(self) -> int:
        """The frame number the media time of the frame just read gives."""
        return round(self._capture.get(cv2.CAP_PROP_POS_MSEC) * self.fps / 1000)

    def _open(self) -> tuple[cv2.VideoCapture, np.ndarray] | str:
        """The capture and its first frame, or why not."""
        params = [cv2.CAP_PROP_N_THREADS, self.threads] if self.threads else []
        if self.live:
            params += [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                STREAM_OPEN_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self.reconnect.stall_seconds * 1000),
            ]
            if not _is_utf8(self._location):  # OpenCV crashes on it (see open_video_file)
                return "stream URL is not valid UTF-8 (percent-encode its bytes)"
            capture = cv2.VideoCapture(self._location, cv2.CAP_FFMPEG, params)
        else:
            try:
                capture = open_video_file(self._location, params)
            except OSError as exc:
                return f"cannot open video ({exc.strerror or exc})"
        if not capture.isOpened():
            capture.release()
            return "cannot connect to stream" if self.live else "cannot open video (not a video file, or corrupt)"
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            return "stream sent no frame" if self.live else "video has no decodable frame (corrupt or empty)"
        return capture, first

    def frames(self, stride: Stride | None = None) -> Iterator[Frame]:
        # The capture is released on the thread that reads it: FFmpeg does not take a
        # release from another thread while a read is blocked in it.
        self._reading = True
        chosen = stride or Stride(1)
        try:
            # `ready`: the frame's image when getting to it decoded it whole (opening a
            # capture reads its first frame); otherwise it is grabbed and retrieved only if due.
            at_frame, ready, index = self._first is not None, self._first, 0
            if not at_frame and self.live:
                ready = self._reopen()
                at_frame = ready is not None
            while at_frame and not self._closing.is_set():
                self.status.received += 1
                self.status.last_frame_time = time.time()
                if chosen.due(index):
                    image = ready if ready is not None else self._retrieve()
                    if image is not None:
                        yield Frame(self.name, index, self._stamp(index), image, chosen.delivered(index))
                index += 1
                at_frame, ready = self._advance()
                if at_frame and not self.live and self.fps > 0:
                    # A damaged file loses frames, sometimes without a failed read (FFmpeg drops
                    # what it cannot decode): number each frame by its media time, not by count.
                    index = max(index, self._media_index() - self._index_offset)
        finally:
            self.status.set(SourceState.ENDED)
            self._capture.release()

    def _stamp(self, index: int) -> float:
        """Frame `index`'s time: the wall clock for a stream; for a file, its number over the
        nominal rate, or without a rate, the media time of the frame just grabbed."""
        if self.live:
            return time.time()
        return index / self.fps if self.fps > 0 else self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0

    def _advance(self) -> tuple[bool, np.ndarray | None]:
        """On to the next frame, decoded but not yet converted to an image: whether there is
        one, and its image when getting there took a reopening (which reads a frame whole)."""
        if not self.live:
            return self._capture.grab() or self._skip_damage(), None
        why = self._grab_live()
        if why is None:
            return True, None
        first = self._reopen(why)
        return first is not None, first

    def _retrieve(self) -> np.ndarray | None:
        """The grabbed frame as a BGR image (None if it cannot be converted: the frame is skipped)."""
        ok, image = self._capture.retrieve()
        return image if ok and image is not None else None

    def _skip_damage(self) -> bool:
        """After a failed grab in a file: whether a later frame decodes (False at its end).

        A file damaged in the middle fails a few reads and then decodes again; stopping
        at the first failure would silently drop the rest of it."""
        for _ in range(MAX_BAD_READS):
            if self._capture.grab():
                self.status.damaged_stretches += 1
                return True
        return False

    def _grab_live(self) -> str | None:
        """None when the stream's next frame is grabbed, else what happened instead."""
        asked = time.monotonic()
        if self._capture.grab():
            return None
        waited = time.monotonic() - asked
        if waited >= STALLED_SHARE * self.reconnect.stall_seconds:
            return f"stream stalled: no frame for {waited:.0f} s"
        return "stream ended: the server closed it or the connection dropped"

    def _reopen(self, why: str | None = None) -> np.ndarray | None:
        """Reopen a stream that went down (`why`), backing off; its first frame, or None once closed."""
        self._capture.release()
        if self.status.state is not SourceState.RECONNECTING:  # else: never connected yet
            self.status.set(SourceState.RECONNECTING, why)
        for delay in self.reconnect.delays():
            if self._closing.wait(delay):
                return None
            opened = self._open()
            if isinstance(opened, str):
                self.status.set(SourceState.RECONNECTING, opened)
                continue
            self._capture, first = opened
            if self.status.received:  # a first connection is not a reconnection
                self.status.reconnects += 1
            self.status.set(SourceState.CONNECTED)
            return first
        return None

    def close(self) -> None:
        """Stop reading; the reading thread releases the stream when its read returns."""
        self._closing.set()
        if not self._reading:
            self._capture.release()


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes of a command-line argument that were not UTF-8 (surrogate escapes)
        return False
    return True


def open_video_file(path: str, params: Sequence[int] = ()) -> cv2.VideoCapture:
    """An FFmpeg capture of the video file at `path`, whatever its name, opened with
    `params` (OpenCV's property, value pairs); raises OSError.

    FFmpeg is handed the file Python opened (`/proc/self/fd/N`), never its name: OpenCV's
    binding crashes the process on a name that is not UTF-8, and FFmpeg takes a name with
    a colon (`http:clip.mp4`, `concat:a.mp4`) for a protocol."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.path.isdir(FD_FOLDER):
            return cv2.VideoCapture(f"{FD_FOLDER}/{fd}", cv2.CAP_FFMPEG, list(params))
        if not _is_utf8(path):
            raise OSError(errno.EINVAL, "its name is not UTF-8, which OpenCV cannot open here")
        return cv2.VideoCapture(os.path.abspath(path), cv2.CAP_FFMPEG, list(params))
    finally:
        os.close(fd)  # FFmpeg opened the file again for itself


class ImageSource:
    """A folder of images (sorted by name) or a single image file.

    A folder may hold other files (annotations, sidecars, a README): they are counted and
    skipped with one warning. An image that is unreadable, has no header or is too large
    (`images.MAX_IMAGE_PIXELS`) is skipped and reported at the end; only a folder with no
    readable image at all is an error. A single image must be readable.
    """

    live = False

    def __init__(self, path: Path) -> None:
        self.name = redact(str(path))
        self.status = SourceStatus()
        self._images: list[tuple[int, Path]] = []  # (frame number: position among the folder's images, path)
        if path.is_dir():
            self._list_folder(path)
        else:
            # A header check now, so that a bad file fails the run before anything is stored.
            problem = image_problem(path)
            if problem:
                raise SourceError(f"{problem}: {self.name}")
            self._images = [(0, path)]
        self.frame_count = len(self._images)
        self.status.set(SourceState.CONNECTED)

    def _list_folder(self, folder: Path) -> None:
        try:
            files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
        except OSError as exc:
            raise SourceError(f"cannot read folder {self.name}: {exc.strerror or exc}") from None
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        others = [redact(p.name) for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        if not images:
            suffixes = " ".join(sorted(IMAGE_SUFFIXES))
            raise SourceError(
                f"folder holds no images: {self.name}"
                + (f" ({len(others)} other file(s): {listed}; images end in {suffixes})" if others else "")
            )
        if others:
            log.warning("folder %s: %d file(s) that are not images skipped (%s)", self.name, len(others), listed)
        # Headers only, now: a folder with no readable image fails before anything is stored.
        for index, image in enumerate(images):
            problem = image_problem(image)
            if problem:
                self.status.skipped.append((redact(image.name), problem))
            else:
                self._images.append((index, image))
        if not self._images:
            name, problem = self.status.skipped[0]
            raise SourceError(f"folder holds no readable image: {self.name} ({name}: {problem})")

    def frames(self, stride: Stride | None = None) -> Iterator[Frame]:
        chosen = stride or Stride(1)
        for index, path in self._images:
            if not chosen.due(index):
                continue  # not read at all
            try:
                taken = path.stat().st_mtime
            except OSError as exc:
                image: np.ndarray | str = f"not a readable image ({exc.strerror or exc})"
            else:
                image = read_image(path)
            if isinstance(image, str):  # one bad image must not stop the folder: skipped and reported
                self.status.skipped.append((redact(path.name), image))
                continue
            self.status.received += 1
            self.status.last_frame_time = time.time()
            yield Frame(self.name, index, taken, image, chosen.delivered(index))
        self.status.set(SourceState.ENDED)

    def close(self) -> None:
        pass


def decode_threads(cameras: int) -> int:
    """Decoding threads for each of `cameras` video sources: the cores shared among them.
    FFmpeg's default, a thread per core for every decoder, oversubscribes the cores as soon
    as there are two cameras, and the models' threads compete with all of them."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, cameras))


def open_source(
    location: str, reconnect: Reconnect | None = None, wait_for_stream: bool = False, threads: int = 0
) -> FrameSource:
    """The source for a path or URL; raises SourceError with a one-line reason.

    With `wait_for_stream`, a stream that cannot be reached yet is retried in the
    background instead (its status says so) rather than raising. `threads`: a video's
    decoding threads (`decode_threads`; 0: FFmpeg's choice)."""
    if location.lower().startswith(STREAM_SCHEMES):
        return VideoSource(location, live=True, reconnect=reconnect, wait_for_stream=wait_for_stream, threads=threads)
    path = Path(location)
    if not path.exists():
        raise SourceError(f"no such file or folder: {redact(location)}")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(path)
    if path.stat().st_size == 0:
        raise SourceError(f"video file is empty (0 bytes): {redact(location)}")
    return VideoSource(str(path), live=False, threads=threads)


@dataclass(frozen=True, slots=True)
class FrameBatch:
    frames: list[Frame]

    @property
    def images(self) -> list[np.ndarray]:
        return [f.image for f in self.frames]

    def __len__(self) -> int:
        return len(self.frames)


class FrameReader:
    """Decodes a source in a background thread; the run loop (`pipeline.run_lanes`) takes
    batches of frames.

    The queue holds at most `capacity` frames. For a live source a full queue drops its
    oldest frame (counted in `dropped`); for a file the decoder waits. Only every
    `stride`-th frame is made into an image and queued (`FrameSource.frames`).
    """

    def __init__(self, source: FrameSource, capacity: int | None = None, stride: int = 1) -> None:
        self.source = source
        self.stride = Stride(stride)
        self.capacity = max(2, capacity or PipelineSettings().queue)
        self.dropped = 0
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=self.capacity)
        self._stop = threading.Event()
        self._decoder_done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._decode, name=f"decode:{source.name}", daemon=True)
        self._thread.start()

    @property
    def status(self) -> SourceStatus:
        return self.source.status

    def _put(self, frame: Frame) -> None:
        while not self._stop.is_set():
            if self.source.live:
                try:
                    self._queue.put_nowait(frame)
                    break
                except queue.Full:
                    try:  # make room by discarding the oldest frame
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
            else:
                try:
                    self._queue.put(frame, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _decode(self) -> None:
        try:
            for frame in self.source.frames(self.stride):
                if self._stop.is_set():
                    break
                self._put(frame)
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self._error = exc
        finally:
            self._decoder_done.set()

    @property
    def finished(self) -> bool:
        """The source ended (or intake stopped) and every decoded frame was taken; a
        decoder error not yet raised by `take` keeps it unfinished."""
        return self._decoder_done.is_set() and self._queue.empty() and self._error is None

    def take(self, size: int) -> FrameBatch | None:
        """Up to `size` queued frames without waiting, or None.

        A file's batch is only handed out full (or at its end), so the detector always
        gets whole batches; a live source's batch goes out with what has arrived.
        """
        filling = not (self.source.live or self._decoder_done.is_set() or self._stop.is_set())
        if filling and self._queue.qsize() < min(size, self.capacity):
            return None
        frames: list[Frame] = []
        while len(frames) < size:
            try:
                frames.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not frames and self._error is not None and self._decoder_done.is_set():
            error, self._error = self._error, None
            raise error
        return FrameBatch(frames) if frames else None

    def stop_intake(self) -> None:
        """Decode no more frames; those already queued can still be taken."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self.source.close()
        self._thread.join(timeout=5)
