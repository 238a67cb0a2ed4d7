"""The hot loop: frames -> plate boxes -> crops -> text -> reads -> sinks.

Everything the pipeline does to a batch is in `Pipeline.process`, top to bottom, and
`run_lanes` is the loop that feeds it every camera's frames. Stages are passed in (a
detector, a recogniser, sinks), so swapping a model or adding a sink never touches this
file; `anpr/run/assemble.py` builds them from the settings.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import cv2
import numpy as np

from anpr.config.settings import PipelineSettings
from anpr.formats import shortest_layout
from anpr.reading.detect import Detections, PlateDetector, detection_plan, run_plans
from anpr.reading.ocr import PlateRecogniser, TextReads, cut_plates
from anpr.reading.plates import choose_plate
from anpr.reading.source import FrameBatch, FrameReader
from anpr.reading.track import UNTRACKED, PlateTracker, SettledPlates, TrackEnd
from anpr.records import PlateRead


class ReadSink(Protocol):
    """Receives every batch of reads (a database, a JSON-lines stream, ...), then the
    tracks of a source that ended with that batch (their passages are complete)."""

    def write(self, reads: Sequence[PlateRead]) -> None: ...

    def end_tracks(self, source: str, ends: Sequence[TrackEnd]) -> None: ...


class BoxObserver(Protocol):
    """Sees where the tracker put the plates of every frame it looked at: the boxes and their
    track ids (UNTRACKED: none), never a text (the annotated video, anpr/show/annotate.py)."""

    def seen(self, frame: int, boxes: np.ndarray, tracks: np.ndarray) -> None: ...


@dataclass
class RunStats:
    frames: int = 0
    reads: int = 0
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    # Seconds from each frame's capture to the end of its round (its reads stored), kept
    # only when this is a list (`anpr bench --streams`): a long run would grow it forever.
    latencies: list[float] | None = None

    def count(self, batch: FrameBatch, reads: Sequence[PlateRead], done: float) -> None:
        """A batch processed, its round done at `done` (time.monotonic())."""
        self.frames += sum(frame.covers for frame in batch.frames)  # with those the stride passed over
        self.reads += len(reads)
        if self.latencies is not None:
            self.latencies += [done - frame.captured for frame in batch.frames]

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class Stage(StrEnum):
    """The parts of a round that `StageTimes` tells apart."""

    DETECT = "detect"  # motion gate, where to look, the detector network
    TRACK = "track"  # plates joined to tracks, cuts
    READ = "read"  # crops cut and read by the recogniser
    KEEP = "keep"  # reads assembled and passed to the sinks: policy gate, database, outputs
    WAIT = "wait"  # no camera had a batch ready: waiting on decoding (or on a live camera)


@dataclass
class StageTimes:
    """Seconds a run spent in each stage (`anpr bench` shows each stage's frames/s alone).
    Timed per round, not per item, so that keeping them costs nothing measurable."""

    seconds: dict[Stage, float] = field(default_factory=lambda: dict.fromkeys(Stage, 0.0))

    def add(self, stage: Stage, since: float) -> float:
        """Count the time from `since` (time.perf_counter()) to now in `stage`; now."""
        now = time.perf_counter()
        self.seconds[stage] += now - since
        return now


class Rejection(StrEnum):
    """Why a detection's text was not emitted as a read (counted in the run summary)."""

    SHORT = "too short for any layout of the region"
    UNSURE = "below the minimum confidence"


def assemble_reads(
    batch: FrameBatch,
    detections: Detections,
    texts: TextReads,
    detector_model: str,
    ocr_model: str,
    min_confidence: float = 0.0,
    regions: tuple[str, ...] = (),
    rejected: Counter[Rejection] | None = None,
    min_ocr_confidence: float = 0.0,
    swaps: bool = True,
    tracks: np.ndarray | None = None,
) -> list[PlateRead | None]:
    """One entry per detection: its PlateRead, or None where the text is not a registration:
    too short for every layout of `regions`, or less sure than `min_confidence` (detector
    times OCR) or `min_ocr_confidence` (the recogniser's own calibrated floor). Each None is
    counted in `rejected` by its reason. `swaps`: the recogniser's `lookalike_swaps`;
    `tracks`: each detection's track id (None: untracked, as still images are)."""
    reads: list[PlateRead | None] = []
    shortest = shortest_layout(regions)
    for i, candidates in enumerate(texts.candidates):
        chosen = choose_plate(candidates, regions=regions, swaps=swaps)
        combined = float(detections.confidence[i]) * chosen.confidence
        unsure = combined < min_confidence or chosen.confidence < min_ocr_confidence
        reason = Rejection.SHORT if len(chosen.plate) < shortest else Rejection.UNSURE if unsure else None
        if reason is not None:
            if rejected is not None:
                rejected[reason] += 1
            reads.append(None)
            continue
        frame = batch.frames[detections.frame[i]]
        reads.append(
            PlateRead(
                source=frame.source,
                frame=frame.index,
                time=frame.time,
                plate=chosen.plate,
                raw_text=texts.raw[i],
                confidence=combined,
                ocr_confidence=chosen.confidence,
                detector_confidence=float(detections.confidence[i]),
                box=tuple(float(v) for v in detections.xyxy[i]),  # type: ignore[arg-type]
                detector_model=detector_model,
                ocr_model=ocr_model,
                candidates=chosen.candidates,
                country=chosen.country,
                format=chosen.format,
                track=None if tracks is None or tracks[i] == UNTRACKED else int(tracks[i]),
            )
        )
    return reads


MOTION_SIZE = (96, 54)  # frames are compared at this size: enough to see a vehicle, cheap to compute
# A cut: the picture changed by this many grey levels on average at CUT_SIZE between two
# detected frames. Vehicles crossing the development clip changed it by 12 at most (large
# colour-filled fronts); the cuts between the sample's photos by 27 to 43.
CUT_SIZE = (32, 18)
CUT_CHANGE = 20.0


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The frame in grey at CUT_SIZE (sampled, then averaged: cheap on a 1080p frame)."""
    sampled = cv2.resize(image, (2 * CUT_SIZE[0], 2 * CUT_SIZE[1]), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(cv2.resize(sampled, CUT_SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)


def is_cut(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether two thumbnails differ as two scenes do (CUT_CHANGE)."""
    return float(np.abs(after.astype(np.int16) - before.astype(np.int16)).mean()) > CUT_CHANGE


class Pipeline:
    """One camera's way through the stages. The work it may skip (motion gate, settled
    plates) is in its settings; all off, every frame it is given is detected and read. The
    stride is applied before, by the camera's FrameReader: frames it passes over are never
    made into images.

    With a `tracker` (video and streams), each box gets the id of the plate's track, and
    the sinks hear when a track ends; still images are not tracked. An `observer` is shown
    each tracked frame's boxes."""

    def __init__(
        self,
        detector: PlateDetector,
        recogniser: PlateRecogniser,
        sinks: Sequence[ReadSink],
        settings: PipelineSettings | None = None,
        regions: tuple[str, ...] = (),
        tracker: PlateTracker | None = None,
        observer: BoxObserver | None = None,
    ) -> None:
        self.detector = detector
        self.recogniser = recogniser
        self.sinks = list(sinks)
        self.settings = settings or PipelineSettings()
        # A batch spans `batch` frames of the source, of which the reader keeps every
        # stride-th: a longer one would read a vehicle's plate many times over before the
        # batch's end lets it settle (`settle_reads`), and hold its frames longer.
        self.batch_size = -(-self.settings.batch // self.settings.frame_stride)
        self._last_motion: np.ndarray | None = None
        self.tracker = tracker
        self.observer = observer
        self._source: str | None = None  # the frames' source, as the reads name it
        self._last_thumbnail: np.ndarray | None = None
        self._cut_tracks: list[TrackEnd] = []  # ended by a cut in the batch being processed
        self._settled = SettledPlates(self.settings.reads_to_settle if tracker else 0)
        self.regions = regions  # the deployment's plate regions: their layouts are preferred
        self.skipped: Counter[str] = Counter()  # frames not detected, crops not read, and why
        self.rejected: Counter[Rejection] = Counter()  # texts read but not emitted as plates, and why

    def _frames_to_detect(self, batch: FrameBatch) -> list[int]:
        chosen = []
        for position, frame in enumerate(batch.frames):
            self.skipped["stride"] += frame.covers - 1  # passed over by the source (FrameReader's stride)
            if self.settings.motion_threshold > 0:
                small = cv2.cvtColor(
                    cv2.resize(frame.image, MOTION_SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY
                ).astype(np.int16)
                still = (
                    self._last_motion is not None
                    and self._last_motion.shape == small.shape
                    and np.abs(small - self._last_motion).mean() < self.settings.motion_threshold
                )
                if still:
                    self.skipped["still"] += 1
                    continue
                self._last_motion = small
            chosen.append(position)
        return chosen

    def process(self, batch: FrameBatch) -> list[PlateRead]:
        """One batch of this camera alone through the stages (`process_round` of one camera)."""
        return process_round([(self, batch)])[0]

    def _to_read(self, detections: Detections, tracks: np.ndarray | None) -> np.ndarray:
        """Which detections to read: not those of a settled plate's track."""
        unread = ~self._settled.settled(tracks) if tracks is not None else np.ones(len(detections), bool)
        self.skipped["settled"] += int((~unread).sum())
        return unread

    def _emit(
        self, batch: FrameBatch, detected: FrameBatch, found: Detections, texts: TextReads, tracks: np.ndarray | None
    ) -> list[PlateRead]:
        """The reads of the detections `found` (read as `texts`) to the sinks; tracks that ended, too."""
        per_detection = assemble_reads(
            detected,
            found,
            texts,
            self.detector.identifier,
            self.recogniser.identifier,
            self.settings.min_confidence,
            self.regions,
            self.rejected,
            self.recogniser.reject_below,
            self.recogniser.lookalike_swaps,
            tracks,
        )
        reads = [read for read in per_detection if read is not None]
        if tracks is not None:
            # Only a complete registration settles a plate: a clipped or partly read text,
            # typical of a plate still small, repeated, must not stop the reads that follow.
            self._settled.add(tracks, [read.plate if read and read.format else None for read in per_detection])
        for sink in self.sinks:
            sink.write(reads)
        if self.tracker is not None and batch.frames:
            self._source = batch.frames[0].source
            ended, self._cut_tracks = self._cut_tracks + self.tracker.ended(), []
            self._end(ended)
        return reads

    def _track(self, batch: FrameBatch, detections: Detections) -> np.ndarray | None:
        """Each detection's track id, frame by frame in order (None without a tracker).
        At a cut (most of the picture changed at once) every track ends first."""
        if self.tracker is None:
            return None
        tracks = np.full(len(detections), UNTRACKED, np.int64)
        for position, frame in enumerate(batch.frames):
            if self._is_cut(frame.image):
                self._cut_tracks += self.tracker.end_all()
            mine = np.flatnonzero(detections.frame == position)
            tracks[mine] = self.tracker.update(
                frame.index, frame.time, detections.xyxy[mine], detections.confidence[mine]
            )
            if self.observer is not None:
                self.observer.seen(frame.index, detections.xyxy[mine], tracks[mine])
        return tracks

    def _is_cut(self, image: np.ndarray) -> bool:
        """Whether `image` shows another scene than the last detected frame (the tracker's
        widened matching would otherwise join a plate to the one before the cut)."""
        last, self._last_thumbnail = self._last_thumbnail, thumbnail(image)
        return last is not None and is_cut(last, self._last_thumbnail)

    def finish(self) -> None:
        """End every live track (the input ended or the run stops): their passages close."""
        if self.tracker is not None:
            self._end(self.tracker.end_all())

    def _end(self, ends: list[TrackEnd]) -> None:
        if not ends or self._source is None:
            return
        self._settled.forget(end.track for end in ends)
        for sink in self.sinks:
            sink.end_tracks(self._source, ends)


def process_round(
    work: Sequence[tuple[Pipeline, FrameBatch]], times: StageTimes | None = None
) -> list[list[PlateRead]]:
    """The hot loop, once, over every camera that has a batch: each camera's reads, in order.

    What is per camera stays per camera: the frames it skips (motion gate), where
    its detector looks (MotionWindows' background model, SecondPass's proposals), its
    tracks and settled plates, its sinks. The models' work is shared: the looks of all
    cameras go through the detector network together (`run_plans`: one call per input
    size and step; one call in all when every camera looks at whole frames), and the
    crops of all cameras through the recogniser in one call.
    """
    times = times or StageTimes()
    started = time.perf_counter()
    detected = [FrameBatch([batch.frames[i] for i in p._frames_to_detect(batch)]) for p, batch in work]
    images = [frames.images for frames in detected]
    call_limit = sum(p.batch_size for p, _ in work)  # a round's frames fit one call; windows beyond, several
    detections = run_plans([detection_plan(p.detector, i) for (p, _), i in zip(work, images, strict=True)], call_limit)
    started = times.add(Stage.DETECT, started)
    tracks = [p._track(d, found) for (p, _), d, found in zip(work, detected, detections, strict=True)]
    unread = [p._to_read(found, t) for (p, _), found, t in zip(work, detections, tracks, strict=True)]
    to_read = [found[u] for found, u in zip(detections, unread, strict=True)]
    started = times.add(Stage.TRACK, started)
    texts = recognise_all(
        [p.recogniser for p, _ in work], [cut_plates(i, r) for i, r in zip(images, to_read, strict=True)]
    )
    started = times.add(Stage.READ, started)
    reads = [
        p._emit(batch, d, r, text, t[u] if t is not None else None)
        for (p, batch), d, r, text, t, u in zip(work, detected, to_read, texts, tracks, unread, strict=True)
    ]
    times.add(Stage.KEEP, started)
    return reads


def recognise_all(recognisers: Sequence[PlateRecogniser], crops: Sequence[list[np.ndarray]]) -> list[TextReads]:
    """Each camera's crops read, one recogniser call for all cameras sharing a recogniser
    (none when there is no crop)."""
    texts = [TextReads([], []) for _ in crops]
    shared: dict[int, list[int]] = {}
    for i, recogniser in enumerate(recognisers):
        shared.setdefault(id(recogniser), []).append(i)
    for members in shared.values():
        together = [crop for i in members for crop in crops[i]]
        if not together:
            continue
        read = recognisers[members[0]].recognise(together)
        start = 0
        for i in members:
            end = start + len(crops[i])
            texts[i] = TextReads(read.raw[start:end], read.candidates[start:end])
            start = end
    return texts


@dataclass
class Lane:
    """One camera in a run: its frames, and the pipeline (tracks, policy gate) they go through."""

    name: str
    reader: FrameReader
    pipeline: Pipeline
    stats: RunStats = field(default_factory=RunStats)


DRAIN_SECONDS = 30.0  # after a stop request, queued frames are processed for at most this long
IDLE_WAIT_SECONDS = 0.005  # nothing queued anywhere: look again after this long
PROGRESS_SECONDS = 1.0  # progress is reported at least this often, frames or not


def _round(lanes: Sequence[Lane], times: StageTimes) -> bool:
    """A batch from every camera that has one, through the stages together: whether any had one."""
    taken = [(lane, lane.reader.take(lane.pipeline.batch_size)) for lane in lanes]
    work = [(lane, batch) for lane, batch in taken if batch is not None]
    if not work:
        return False
    reads = process_round([(lane.pipeline, batch) for lane, batch in work], times)
    done = time.monotonic()
    for (lane, batch), camera_reads in zip(work, reads, strict=True):
        lane.stats.count(batch, camera_reads, done)
    return True


def run_lanes(
    lanes: Sequence[Lane],
    stop: threading.Event | None = None,
    progress: Callable[[Sequence[Lane]], None] | None = None,
    drain_seconds: float = DRAIN_SECONDS,
    times: StageTimes | None = None,
    joining: Callable[[], Sequence[Lane]] | None = None,
) -> None:
    """The run loop: in each round, a batch from every camera that has one, all of them
    through the stages together (`process_round`), until all have ended or `stop` is set.

    A camera whose stream is down just has no frames; the others go on. When `stop` is
    set, decoding stops and the frames already queued still go through OCR, policy and
    storage (for at most `drain_seconds`), so nothing that was taken in is half-done.
    `times`, when given, gathers the seconds spent in each stage. `joining`, asked before
    each round, gives cameras that join the run from then on (a cluster node taking over the
    cameras of a node that was lost, anpr/run/cluster.py).
    """
    times = times or StageTimes()
    lanes = list(lanes)
    drain_until: float | None = None
    last_progress = 0.0
    try:
        while True:
            joined = list(joining()) if joining is not None else []
            lanes += joined
            if stop is not None and stop.is_set() and drain_until is None:
                drain_until = time.monotonic() + drain_seconds
                joined = lanes
            if drain_until is not None:
                for lane in joined:  # every camera when the stop comes; a camera joining later at once
                    lane.reader.stop_intake()
            worked = _round(lanes, times)
            now = time.monotonic()
            if progress and (worked or now - last_progress >= PROGRESS_SECONDS):
                progress(lanes)
                last_progress = now
            if all(lane.reader.finished for lane in lanes):
                break
            if drain_until is not None and (not worked or now > drain_until):
                break  # drained: what is left was never taken in
            if not worked:
                idle = time.perf_counter()
                time.sleep(IDLE_WAIT_SECONDS)
                times.add(Stage.WAIT, idle)
    finally:
        for lane in lanes:
            lane.stats.finished = time.perf_counter()
            lane.reader.close()
            lane.stats.frames += lane.reader.stride.passed  # the last frames, passed over by the stride
    # Only on a clean end (input over, or stopped and drained): after an error the
    # tracks' passages would be voted over reads that may not all have been stored.
    for lane in lanes:
        lane.pipeline.finish()
