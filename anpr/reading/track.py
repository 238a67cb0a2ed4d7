"""Tracking across frames: the boxes of one plate, frame after frame, are one track.

- `PlateTracker` follows plate boxes with ByteTrack (from Roboflow's `trackers`, a
  Kalman motion model and two-stage matching) and says which tracks have ended. Traffic
  moves a plate by more than its own width between two detections, so boxes are
  matched by buffered IoU (each box widened on every side, more at a longer stride).
- `SettledPlates` counts each track's texts so the loop can stop reading a plate whose
  text is decided (config `pipeline.settle_reads`).
- `PassageBuilder` turns the reads a purpose kept of one track into one `Passage` when the
  track ends: its plate is voted over the track's reads (`vote`); a track with too few
  reads, whose plate never moved, or whose vote is no plausible registration, is dropped
  and counted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from anpr.formats import shortest_layout
from anpr.reading.plates import TOP_CANDIDATES, choose_plate
from anpr.records import Candidates, Passage, PlateRead, PolicedRead

UNTRACKED = -1


@dataclass(frozen=True, slots=True)
class TrackEnd:
    """A track that ended, and the last frame it was seen in (read or not: a settled plate is
    still followed), so that its passage spans the whole time the vehicle was seen."""

    track: int
    last_frame: int
    last_time: float
    last_box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 of its last box


# Seconds a track lives on without a box: longer than a few missed detections at the
# default stride, shorter than the gap between two vehicles one behind the other.
LOST_SECONDS = 0.4
# Each box is widened by this share of its size on every side, per frame of stride, before
# matching. A plate entering the frame (50 px wide, crossing 1920 px in a second) moves
# about 1.5 widths a frame until the motion model has its speed; two boxes d apart, each
# widened to (1 + 2 b) widths, overlap with IoU >= 0.1 when 1 + 2 b >= 1.22 d.
MATCH_BUFFER_PER_FRAME = 0.8
MATCH_MIN_IOU = 0.1  # of the widened boxes


class PlateTracker:
    """ByteTrack over plate boxes, one frame at a time, timed by the frames' own times (so a
    stride or a skipped frame is a longer step for the motion model, not a lost track)."""

    def __init__(
        self, confidence: float, stride: int = 1, lost_seconds: float = LOST_SECONDS, min_iou: float = MATCH_MIN_IOU
    ) -> None:
        import supervision as sv
        from trackers import ByteTrackTracker
        from trackers.utils.iou import BIoU

        self._sv = sv
        # Every box the detector keeps may start a track; boxes below it (none today)
        # would only continue one.
        self._tracker = ByteTrackTracker(
            lost_track_buffer=max(1, round(lost_seconds * 30)),  # in 30 fps frames, as the library counts
            frame_rate=30.0,
            track_activation_threshold=confidence,
            high_conf_det_threshold=confidence,
            minimum_consecutive_frames=1,
            minimum_iou_threshold=min_iou,
            iou=BIoU(MATCH_BUFFER_PER_FRAME * stride),
        )
        # Our own id per tracklet, given when the tracklet starts: the library names a
        # track only at its second box, and the first read of a plate must count too.
        self._ids: dict[int, tuple[object, int]] = {}  # id(tracklet) -> (tracklet, our id)
        self._next_id = 0
        self._last_seen: dict[int, tuple[int, float, tuple[float, ...]]] = {}  # our id -> its last box, when

    def _id_of(self, tracklet: object) -> int:
        key = id(tracklet)
        if key not in self._ids:
            self._ids[key] = (tracklet, self._next_id)  # the tracklet is kept so its id() is not reused
            self._next_id += 1
        return self._ids[key][1]

    def update(self, frame: int, time: float, boxes: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """The track id of each of one frame's boxes (UNTRACKED for a box that is no track's)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        detections = self._sv.Detections(xyxy=boxes, confidence=np.asarray(confidence, np.float32))
        detections.data["index"] = np.arange(len(detections))
        before = {id(t) for t in self._tracker.tracks}
        tracked = self._tracker.update(detections, timestamp=time)
        named = {t.tracker_id: t for t in self._tracker.tracks if t.tracker_id != UNTRACKED}
        ids = np.full(len(detections), UNTRACKED, np.int64)
        library_ids = tracked.tracker_id if tracked.tracker_id is not None else np.zeros(0, np.int64)
        for index, library_id in zip(tracked.data.get("index", np.zeros(0, np.int64)), library_ids, strict=True):
            if library_id != UNTRACKED and library_id in named:
                ids[int(index)] = self._id_of(named[library_id])
        for tracklet in self._tracker.tracks:
            if id(tracklet) in before:
                continue
            # A tracklet started by one of this frame's boxes: its state is that box.
            start = np.flatnonzero((ids == UNTRACKED) & np.all(np.isclose(boxes, tracklet.get_state_bbox()), axis=1))
            if len(start):
                ids[start[0]] = self._id_of(tracklet)
        for index in np.flatnonzero(ids != UNTRACKED):
            self._last_seen[int(ids[index])] = (frame, time, tuple(float(v) for v in boxes[index]))
        return ids

    def ended(self) -> list[TrackEnd]:
        """The tracks that ended since the last call (the tracker dropped them)."""
        alive = {id(t) for t in self._tracker.tracks}
        return self._end([key for key in self._ids if key not in alive])

    def end_all(self) -> list[TrackEnd]:
        """Every live track, ended (end of input, a cut to another scene)."""
        ended = self._end(list(self._ids))
        self._tracker.reset()
        return ended

    def _end(self, keys: list[int]) -> list[TrackEnd]:
        ends = []
        for key in keys:
            our_id = self._ids.pop(key)[1]
            seen = self._last_seen.pop(our_id, None)
            if seen is not None:  # a tracklet none of whose boxes was ours (started and lost unmatched)
                frame, time, box = seen
                ends.append(TrackEnd(our_id, frame, time, box))  # type: ignore[arg-type]
        return sorted(ends, key=lambda end: end.track)


class SettledPlates:
    """Each live track's texts so far, to stop reading a plate once it was read the same
    `settle_reads` times (0: never). The caller adds only the texts that may settle a plate."""

    def __init__(self, settle_reads: int) -> None:
        self.settle_reads = settle_reads
        self._texts: dict[int, Counter[str]] = defaultdict(Counter)

    def settled(self, tracks: np.ndarray) -> np.ndarray:
        if not self.settle_reads:
            return np.zeros(len(tracks), bool)
        most = {t: c.most_common(1)[0][1] for t, c in self._texts.items() if c}
        return np.array([most.get(int(t), 0) >= self.settle_reads for t in tracks], bool)

    def add(self, tracks: Iterable[int], plates: Iterable[str | None]) -> None:
        for track, plate in zip(tracks, plates, strict=True):
            if plate and track != UNTRACKED:
                self._texts[int(track)][plate] += 1

    def forget(self, tracks: Iterable[int]) -> None:
        for track in tracks:
            self._texts.pop(track, None)


@dataclass(frozen=True, slots=True)
class VotedPlate:
    plate: str
    confidence: float  # the plate's share of the pooled, format-rescored candidates
    candidates: Candidates
    country: str | None
    format: str | None


# A plate seen small is read worse: below this height (px in the frame) a read counts in
# proportion to its height. 32 px is the top of the small plates `anpr eval --scenes`
# draws (characters of 12 to 18 px); a priori, not fitted to any clip.
READABLE_HEIGHT = 32.0


def readability(read: PlateRead) -> float:
    """How much a read of this size counts in its track's vote: 1 from READABLE_HEIGHT up."""
    return min(1.0, max(0.0, read.box[3] - read.box[1]) / READABLE_HEIGHT)


def vote(reads: Sequence[PlateRead], regions: tuple[str, ...] = ()) -> VotedPlate:
    """The passage's plate: every read's candidates pooled, then rescored by the plate formats.

    Each read's candidates (already format-rescored, so they sum to one per read) count
    with the read's detector confidence times its readability (its size): the OCR's own
    confidence is in the candidates' probabilities, and counting it again would let one
    crisp misread outvote many. Pooling
    lets a plate that is every read's second choice beat one read's first; the format
    rescoring of the pool lets a complete registration beat a frequent short read of it.
    The reads' candidates were fitted to the layouts (with look-alike swaps where their
    recogniser needs them) when they were read, so the pool is rescored without swapping.
    """
    pooled: dict[str, float] = defaultdict(float)
    for read in reads:
        for text, probability in read.candidates or ((read.plate, 1.0),):
            pooled[text] += probability * read.detector_confidence * readability(read)
    chosen = choose_plate(list(pooled.items()), TOP_CANDIDATES, regions, swaps=False)
    return VotedPlate(chosen.plate, chosen.confidence, chosen.candidates, chosen.country, chosen.format)


MIN_READS = 2  # a track read once is more likely a false box or a misread than a vehicle
# A vehicle passing the camera moves its plate across the frame or towards it; a box that
# stays where it was and keeps its size is text burned into the picture (a clock, a
# camera name) or a sign, whose box moves only by the detector's jitter (a few px).
# Moved: the centre by this share of the plate's width, or the width by this ratio,
# between any read and the first. A slow car moves its plate more than this in a second.
MIN_TRAVEL = 0.1
MIN_GROWTH = 1.05


class PassageBuilder:
    """The reads of each (source, track) that one purpose kept, until the track ends."""

    def __init__(
        self, regions: Sequence[str] = (), min_reads: int = MIN_READS, dropped: Counter[str] | None = None
    ) -> None:
        self.regions = tuple(regions)
        self.min_reads = min_reads
        self.shortest = shortest_layout(self.regions)
        # Tracks not made passages, by reason (a counter the caller may share between builders).
        self.dropped: Counter[str] = Counter() if dropped is None else dropped
        self._open: dict[tuple[str, int], list[PolicedRead]] = defaultdict(list)

    def add(self, reads: Iterable[PolicedRead]) -> None:
        for policed in reads:
            if policed.read.track is not None:  # None: untracked (a still image, a box of no track)
                self._open[(policed.read.source, policed.read.track)].append(policed)

    def close(self, source: str, ends: Iterable[TrackEnd]) -> list[Passage]:
        """The passages of the ended tracks of `source` (those long and plausible enough)."""
        passages = []
        for end in ends:
            reads = self._open.pop((source, end.track), None)
            if reads is None:
                continue  # a track none of whose reads this purpose kept
            passage = self._passage(end.track, reads, end)
            if passage is not None:
                passages.append(passage)
        return passages

    def close_all(self) -> list[Passage]:
        """Every open track's passage, each ending with its last read."""
        ended = sorted(self._open, key=lambda key: self._open[key][0].read.frame)
        last = {key: self._open[key][-1].read for key in ended}
        return [
            p for (source, track) in ended
            for p in self.close(source, [TrackEnd(track, last[source, track].frame, last[source, track].time)])
        ]  # fmt: skip

    def _passage(self, track: int, kept: list[PolicedRead], end: TrackEnd) -> Passage | None:
        if len(kept) < self.min_reads:
            self.dropped["too few reads"] += 1
            return None
        reads = [policed.read for policed in kept]
        # Whether it moved, over the whole track: a settled plate is not read to its end.
        boxes = [read.box for read in reads] + ([end.last_box] if end.last_box is not None else [])
        if not moved(boxes):
            self.dropped["did not move (an overlay or a sign)"] += 1
            return None
        voted = vote(reads, self.regions)
        if len(voted.plate) < self.shortest:
            self.dropped["no plausible plate"] += 1
            return None
        first, last = kept[0], kept[-1]
        return Passage(
            source=first.read.source,
            camera=first.camera,
            purpose=first.purpose,
            rule_id=first.rule_id,
            track=track,
            plate=voted.plate,
            confidence=voted.confidence,
            candidates=voted.candidates,
            country=voted.country,
            format=voted.format,
            first_frame=first.read.frame,
            last_frame=max(last.read.frame, end.last_frame),
            first_time=first.read.time,
            last_time=max(last.read.time, end.last_time),
            reads=len(kept),
            delete_after=min(p.delete_after for p in kept),
            hit=any(p.hit for p in kept),
        )


def moved(track_boxes: Sequence[tuple[float, ...]]) -> bool:
    """Whether a track's plate moved (MIN_TRAVEL) or grew or shrank (MIN_GROWTH) since its first box."""
    boxes = np.array(track_boxes, np.float32)
    widths = np.maximum(boxes[:, 2] - boxes[:, 0], 1.0)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    travel = np.linalg.norm(centres - centres[0], axis=1).max() / np.median(widths)
    growth = max(widths.max() / widths[0], widths[0] / widths.min())
    return bool(travel >= MIN_TRAVEL or growth >= MIN_GROWTH)
