"""The annotated video (`anpr run SOURCE --annotate OUT.mp4`): every frame of the input, each
tracked plate boxed and labelled with its voted plate, private by default.

It is made in two passes, so the hot loop stays as it is:

1. during the run, a `VideoAnnotation` records what it is given: from the pipeline, where
   the tracker put each plate box of every frame it looked at (boxes and track ids, never a
   text: `BoxObserver`); from the policy gate, as one of the operator's outputs, the reads
   some purpose kept and the passages made of them. A read no purpose kept never reaches it,
   so its plate can be nothing but a box to blur;
2. after the run, `render` reads the video file again and writes OUT with every one of its
   frames, at its resolution and frame times: each track's box is interpolated between the
   frames it was seen in (and held over the frames the stride or the motion gate skipped),
   labelled from the track's first frame with its passage's plate (or, for a track that made
   no passage, the vote of its kept reads), and the frame is masked (`Mask`).

A plate of a track no purpose kept a read of is always blurred, in every mask, and never
labelled. Nothing is sharpened or scaled: a region is shown as decoded, or blurred.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np

from anpr.errors import AnprError, ConfigError, SourceError
from anpr.reading.source import IMAGE_SUFFIXES, STREAM_SCHEMES
from anpr.reading.track import UNTRACKED, vote
from anpr.records import Passage, PlateRead, PolicedRead
from anpr.redact import printable, redact

if TYPE_CHECKING:
    from anpr.run.assemble import CameraSource

log = logging.getLogger(__name__)


class Mask(StrEnum):
    """What of each frame is blurred (`--mask`)."""

    OUTSIDE = "outside"  # everything but the labelled plates
    PLATES = "plates"  # every plate; the scene as it is
    NONE = "none"  # only the plates no purpose kept


@dataclass(frozen=True)
class Blurred:
    background: bool  # the whole frame, but for the labelled plates' boxes
    labelled_plates: bool  # the boxes of plates a purpose kept (labelled all the same)


# The plates no purpose kept are blurred whatever the mask.
MASKS = {
    Mask.OUTSIDE: Blurred(background=True, labelled_plates=False),
    Mask.PLATES: Blurred(background=False, labelled_plates=True),
    Mask.NONE: Blurred(background=False, labelled_plates=False),
}

# The blur: a box filter this share of the frame's shorter side wide (91 px at 1080p), far
# wider than a face's features or a windscreen's text; smaller regions average to one colour.
BLUR_SHARE = 1 / 12
MIN_BLUR = 15
# A plate no purpose kept is blurred with this share of its width around its box: its box is
# interpolated between the frames it was seen in, and the plate moves between them.
PRIVATE_MARGIN = 0.25
SHARP_MARGIN = 0.05  # a labelled plate is shown as is with this margin around its box
SUFFIXES = (".mp4",)
ENCODER = "libx264"
# Near the input's quality: re-encoded unmasked, the sample's 120 px tiles come out no
# sharper than 1.1 times the input's Laplacian variance plus 6 (encoding noise). "ultrafast"
# takes half the CPU but makes files 6 times larger, with blocking that adds edges of its own.
ENCODER_OPTIONS = {"crf": "18", "preset": "veryfast"}


@dataclass(frozen=True)
class AnnotatedVideo:
    path: Path
    frames: int
    seconds: float
    mask: Mask


@dataclass
class _Span:
    """A plate's boxes along its track, and the frames it is shown in."""

    track: int
    frames: np.ndarray  # the frames it was seen in, ascending
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 in those frames
    first: int
    last: float  # inf: to the video's end
    label: str | None  # None: no purpose kept a read of it

    def box_at(self, frame: int) -> np.ndarray:
        """The box in `frame`: interpolated between two sightings, held before the first and after the last."""
        return np.array([np.interp(frame, self.frames, self.boxes[:, k]) for k in range(4)])


class VideoAnnotation:
    """Records one camera's plates during a run (`seen` from the pipeline, as its
    `pipeline.BoxObserver`; `write` and `write_passages` from the policy gate, as an output of
    the operator's) and renders the annotated video from them afterwards."""

    def __init__(self, out: Path, mask: Mask, camera: str, location: str, regions: Sequence[str] = ()) -> None:
        check_target(out, location)
        self.out, self.mask, self.camera, self.location = out, mask, camera, location
        self.regions = tuple(regions)
        self._looked: list[int] = []  # frames the detector looked at, in order
        self._seen: dict[int, list[tuple[int, tuple[float, ...]]]] = defaultdict(list)  # track -> (frame, box)
        self._untracked: list[tuple[int, tuple[float, ...]]] = []  # boxes of no track: (frame, box)
        self._kept: dict[int, dict[tuple[int, tuple[float, ...]], PlateRead]] = defaultdict(dict)  # track -> reads
        self._kept_untracked: dict[tuple[int, tuple[float, ...]], PlateRead] = {}
        self._passages: dict[int, Passage] = {}  # track -> its passage with the most reads

    @classmethod
    def for_run(
        cls, out: Path, mask: Mask, cameras: Sequence[CameraSource], regions: Sequence[str] = ()
    ) -> VideoAnnotation:
        """The annotation of a run's one camera (`assemble.CameraSource`s); refused for several."""
        if len(cameras) != 1:
            raise ConfigError("--annotate writes one camera's video: give SOURCE, or --camera ID")
        return cls(out, mask, cameras[0].camera.id, cameras[0].location, regions)

    # --- recording, during the run ------------------------------------------------------

    def seen(self, frame: int, boxes: np.ndarray, tracks: np.ndarray) -> None:
        self._looked.append(frame)
        for box, track in zip(np.asarray(boxes, float).reshape(-1, 4), tracks, strict=True):
            sighting = (frame, tuple(float(v) for v in box))
            if track == UNTRACKED:
                self._untracked.append(sighting)
            else:
                self._seen[int(track)].append(sighting)

    def write(self, reads: Sequence[PolicedRead]) -> None:
        """Reads some purpose kept (a read kept by two purposes comes twice: recorded once)."""
        for policed in reads:
            if policed.camera != self.camera:
                continue
            read = policed.read
            key = (read.frame, read.box)
            if read.track is None:
                self._kept_untracked[key] = read
            else:
                self._kept[read.track][key] = read

    def write_passages(self, passages: Sequence[Passage]) -> None:
        for passage in passages:
            known = self._passages.get(passage.track)
            if passage.camera == self.camera and (known is None or passage.reads > known.reads):
                self._passages[passage.track] = passage

    # --- rendering, after it ------------------------------------------------------------

    def label(self, track: int) -> str | None:
        """The track's plate: its passage's, else the vote of its kept reads; None when no purpose kept one."""
        if track in self._passages:
            return self._passages[track].plate
        kept = list(self._kept.get(track, {}).values())
        return vote(kept, self.regions).plate if kept else None

    def spans(self) -> list[_Span]:
        """Every plate to draw or blur, by the first frame it is shown in.

        A span runs over the frames the detector did not look at after its last sighting,
        up to the next frame looked at (the plate may still be there); a plate no purpose
        kept is also blurred over those before its first sighting."""
        looked = np.unique(np.array(self._looked, np.int64))
        spans = []
        for track, sightings in self._seen.items():
            spans.append(self._span(track, sightings, self.label(track), looked))
        for sighting in self._untracked:
            spans.append(self._span(UNTRACKED, [sighting], None, looked))
        for (frame, box), read in self._kept_untracked.items():
            spans.append(self._span(UNTRACKED, [(frame, box)], read.plate, looked))
        return sorted(spans, key=lambda span: span.first)

    @staticmethod
    def _span(
        track: int, sightings: list[tuple[int, tuple[float, ...]]], label: str | None, looked: np.ndarray
    ) -> _Span:
        by_frame = dict(sorted(sightings))
        frames = np.array(list(by_frame), np.int64)
        following = int(np.searchsorted(looked, frames[-1], side="right"))  # `looked` is sorted
        last = float(looked[following] - 1) if following < len(looked) else float("inf")
        first = int(frames[0])
        if label is None:  # blurred from the frame after the last one looked at without it
            preceding = int(np.searchsorted(looked, first))
            first = int(looked[preceding - 1]) + 1 if preceding else 0
        return _Span(track, frames, np.array(list(by_frame.values()), float), first, last, label)

    def render(self) -> AnnotatedVideo:
        """Write the annotated video to `out` (through a 0600 temporary file beside it, renamed
        into place only when whole). Raises AnprError."""
        import av

        log.info("writing the annotated video %s (mask %s)", printable(str(self.out)), self.mask.value)
        try:
            with _private_file(self.out) as file:
                frames, seconds = _reencode(self.location, file, self.spans(), _Painter(self.mask))
        except (av.error.FFmpegError, OSError) as exc:
            raise AnprError(f"cannot write the annotated video {printable(str(self.out))}: {exc}") from None
        return AnnotatedVideo(self.out, frames, seconds, self.mask)


def check_target(out: Path, location: str) -> None:
    """Refuse, before the run, what `render` could not do: a source that is not a video file
    (a stream cannot be read again; images make no video), an OUT that is not an .mp4, is the
    source itself, or is in a folder that does not exist or cannot be written."""
    shown = printable(str(out))
    if location.lower().startswith(STREAM_SCHEMES):
        raise ConfigError(
            f"--annotate needs a video file: a stream ({redact(location)}) cannot be read again after the run"
        )
    source = Path(location)
    if source.is_dir() or source.suffix.lower() in IMAGE_SUFFIXES:
        raise ConfigError(f"--annotate needs a video file, not images ({printable(location)})")
    if out.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--annotate writes an MP4 file: name it .mp4, not {shown}")
    if out.is_dir():
        raise ConfigError(f"--annotate: {shown} is a folder")
    if source.exists() and out.exists() and os.path.samefile(source, out):
        raise ConfigError(f"--annotate: {shown} is the source itself")
    try:  # the folder must take a file: made and removed here, not found out after the run
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"--annotate: cannot write {shown}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _private_file(path: Path) -> Iterator[IO[bytes]]:
    """A new 0600 file beside `path`, renamed to `path` if the block ends well, else deleted."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w+b") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


class _Painter:
    """One frame's mask, boxes and labels, with supervision's annotators."""

    def __init__(self, mask: Mask) -> None:
        self.blurred = MASKS[mask]
        self._ready: tuple[int, int] | None = None

    def _prepare(self, width: int, height: int) -> None:
        import supervision as sv

        kernel = max(MIN_BLUR, round(min(width, height) * BLUR_SHARE) | 1)
        self._blur = sv.BlurAnnotator(kernel_size=kernel)
        thickness = sv.calculate_optimal_line_thickness((width, height))
        self._boxes = sv.BoxAnnotator(thickness=thickness, color_lookup=sv.ColorLookup.TRACK)
        self._labels = sv.LabelAnnotator(
            text_scale=sv.calculate_optimal_text_scale((width, height)),
            text_thickness=thickness // 2 + 1,
            color_lookup=sv.ColorLookup.TRACK,
        )
        self._whole = sv.Detections(xyxy=np.array([[0, 0, width, height]], np.float32))
        self._ready = (width, height)

    def paint(self, image: np.ndarray, spans: Sequence[_Span], frame: int) -> np.ndarray:
        import supervision as sv

        height, width = image.shape[:2]
        if self._ready != (width, height):
            self._prepare(width, height)
        boxes = np.array([span.box_at(frame) for span in spans], np.float32).reshape(-1, 4)
        labelled = np.array([span.label is not None for span in spans], bool)
        shown = image.copy()
        if self.blurred.background:
            self._blur.annotate(shown, self._whole)
            for x1, y1, x2, y2 in _pixels(_widened(boxes[labelled], SHARP_MARGIN), width, height):
                shown[y1:y2, x1:x2] = image[y1:y2, x1:x2]
        private = ~labelled | self.blurred.labelled_plates
        if private.any():
            self._blur.annotate(shown, sv.Detections(xyxy=_widened(boxes[private], PRIVATE_MARGIN)))
        if labelled.any():
            plates = sv.Detections(
                xyxy=boxes[labelled],
                tracker_id=np.array([max(span.track, 0) for span in spans if span.label is not None], int),
            )
            self._boxes.annotate(shown, plates)
            self._labels.annotate(shown, plates, labels=[span.label for span in spans if span.label is not None])
        return shown


def _widened(boxes: np.ndarray, share: float) -> np.ndarray:
    """Each box grown by `share` of its width on every side."""
    margin = (boxes[:, 2:3] - boxes[:, 0:1]) * share
    return np.hstack([boxes[:, :2] - margin, boxes[:, 2:] + margin]).astype(np.float32)


def _pixels(boxes: np.ndarray, width: int, height: int) -> list[tuple[int, int, int, int]]:
    clipped = np.clip(np.round(boxes), 0, [width, height, width, height]).astype(int)
    return [(int(x1), int(y1), int(x2), int(y2)) for x1, y1, x2, y2 in clipped if x2 > x1 and y2 > y1]


def _reencode(location: str, out: IO[bytes], spans: list[_Span], painter: _Painter) -> tuple[int, float]:
    """Every frame of the video at `location`, painted, encoded to `out` at the input's frame
    times (its time base and timestamps: the same frames and duration): (frames, seconds)."""
    import av
    from av.video.stream import VideoStream

    with _read_again(location) as source_file, av.open(source_file) as source, av.open(out, "w", "mp4") as target:
        if not source.streams.video:
            raise SourceError(f"no video stream in {printable(location)}")
        video = source.streams.video[0]
        video.thread_type = "AUTO"
        rate = video.average_rate or video.guessed_rate
        encoded = cast(VideoStream, target.add_stream(ENCODER, rate=rate, options=ENCODER_OPTIONS))
        encoded.pix_fmt, encoded.time_base = "yuv420p", video.time_base
        numbers, shown = _FrameNumbers(float(rate or 0)), _Showing(spans)
        frames, end = 0, 0.0
        for frame in _decoded(source, video):
            index = numbers.of(frame)
            image = painter.paint(_upright(frame), shown.at(index), index)
            if not frames:  # the size as shown: a turned video's frames are turned upright
                encoded.height, encoded.width = image.shape[:2]
            painted = av.VideoFrame.from_ndarray(image, format="bgr24")
            painted.pts, painted.time_base, painted.duration = frame.pts, frame.time_base, frame.duration
            for packet in encoded.encode(painted):
                target.mux(packet)
            frames += 1
            if frame.pts is not None and frame.time_base is not None:
                end = float((frame.pts + (frame.duration or 0)) * frame.time_base)
        for packet in encoded.encode():
            target.mux(packet)
    return frames, end


def _upright(frame: Any) -> np.ndarray:
    """The frame as BGR, turned as its display matrix says (as OpenCV's reader turns it, so the
    run's boxes fit); the annotated video is written upright, with no rotation of its own."""
    turns = round(frame.rotation / 90) % 4
    image = frame.to_ndarray(format="bgr24")
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


class _Showing:
    """The spans shown in each frame, frame after frame (`spans` by their first frame)."""

    def __init__(self, spans: list[_Span]) -> None:
        self._waiting = iter(spans)
        self._next = next(self._waiting, None)
        self._active: list[_Span] = []

    def at(self, index: int) -> list[_Span]:
        while self._next is not None and self._next.first <= index:
            self._active.append(self._next)
            self._next = next(self._waiting, None)
        self._active = [span for span in self._active if span.last >= index]
        return self._active


@contextlib.contextmanager
def _read_again(location: str) -> Iterator[IO[bytes]]:
    """The video file, opened by Python: FFmpeg is never handed its name (see source.open_video_file)."""
    try:
        file = open(location, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise SourceError(f"cannot read {printable(location)} again: {exc.strerror or exc}") from None
    with file:
        yield file


def _decoded(source: Any, video: Any) -> Iterator[Any]:
    """The video's frames in order; a packet that does not decode (a damaged stretch) is passed over."""
    import av

    for packet in source.demux(video):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


class _FrameNumbers:
    """Each decoded frame's number as the run's reader (`source.VideoSource`) gives it: its
    count, or, past a damaged stretch, its media time over the nominal rate."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self._next = 0
        self._offset: int | None = None

    def of(self, frame: Any) -> int:
        index = self._next
        if self.fps > 0 and frame.time is not None:
            media = round(frame.time * self.fps)
            self._offset = media if self._offset is None else self._offset
            index = max(index, media - self._offset)
        self._next = index + 1
        return index
