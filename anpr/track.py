"""Tracking across frames: boxes that continue one another belong to one plate.

Two trackers share one structure (`LiveTracks`: each track's last box and frame, ended
after a gap):

- `SettleTracker` follows plate boxes so the loop can stop reading a plate whose text is
  already decided (config `pipeline.settle_reads`).
- `PassageTracker` groups reads into passages: a read joins the open passage of its
  source whose last box it overlaps, or whose plate it resembles, within `max_gap`
  frames; otherwise it opens a passage of its own. A passage closes when no read has
  joined it for `max_gap` frames. Its plate is chosen from all its reads' candidates
  pooled, rescored by the plate formats (`vote`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Generic, TypeVar

import numpy as np

from anpr.detect import pairwise_iou
from anpr.plates import TOP_CANDIDATES, choose_plate
from anpr.records import Candidates, Passage, PlateRead

Item = TypeVar("Item")


class LiveTracks(Generic[Item]):
    """Tracks in the order they started: each its last box, the frame of that box, and an
    item of the caller's; a track not continued for more than `max_gap` frames ends."""

    def __init__(self, max_gap: int) -> None:
        self.max_gap = max_gap
        self.boxes = np.zeros((0, 4), np.float32)
        self.last_frame = np.zeros(0, np.int64)
        self.items: list[Item] = []

    def overlaps(self, frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(M, N) IoU of M boxes (seen in `frames`) with the N tracks' last boxes; 0 for a
        track that had ended by the box's frame."""
        iou = pairwise_iou(boxes, self.boxes)
        iou[(frames[:, None] - self.last_frame[None, :]) > self.max_gap] = 0
        return iou

    def start(self, frame: int, box: np.ndarray | Sequence[float], item: Item) -> int:
        self.boxes = np.vstack([self.boxes, np.asarray(box, np.float32).reshape(1, 4)])
        self.last_frame = np.append(self.last_frame, frame)
        self.items.append(item)
        return len(self.items) - 1

    def continue_(self, track: int, frame: int, box: np.ndarray | Sequence[float]) -> None:
        self.boxes[track], self.last_frame[track] = box, frame

    def end_before(self, frame: int) -> list[Item]:
        """End the tracks not continued for more than `max_gap` frames before `frame`; their items."""
        ended = (frame - self.last_frame) > self.max_gap
        if not ended.any():
            return []
        gone = [item for item, end in zip(self.items, ended, strict=True) if end]
        self.boxes, self.last_frame = self.boxes[~ended], self.last_frame[~ended]
        self.items = [item for item, end in zip(self.items, ended, strict=True) if not end]
        return gone


SETTLE_IOU = 0.3  # a box continues a track when it overlaps the track's last box this much
SETTLE_MAX_GAP = 12  # frames after which a track is forgotten


class SettleTracker:
    """Tracks of boxes across frames, to skip OCR on plates whose text is already decided."""

    def __init__(self, settle_reads: int) -> None:
        self.settle_reads = settle_reads
        self._tracks: LiveTracks[Counter[str]] = LiveTracks(SETTLE_MAX_GAP)

    def match(self, frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """For each box, the index of the live track it continues, or -1."""
        if not len(self._tracks.items) or not len(boxes):
            return np.full(len(boxes), -1)
        iou = self._tracks.overlaps(frames, boxes)
        best = iou.argmax(axis=1)
        return np.where(iou[np.arange(len(boxes)), best] >= SETTLE_IOU, best, -1)

    def settled(self, tracks: np.ndarray) -> np.ndarray:
        """For each track index (-1: none), whether its plate was read the same `settle_reads` times."""
        counts = self._tracks.items
        return np.array(
            [t >= 0 and bool(counts[t]) and counts[t].most_common(1)[0][1] >= self.settle_reads for t in tracks], bool
        )

    def update(self, frames: np.ndarray, boxes: np.ndarray, tracks: np.ndarray, plates: list[str | None]) -> None:
        for frame, box, track, plate in zip(frames, boxes, tracks, plates, strict=True):
            if track < 0:
                track = self._tracks.start(int(frame), box, Counter())
            self._tracks.continue_(int(track), int(frame), box)
            if plate:
                self._tracks.items[track][plate] += 1
        if len(frames):
            self._tracks.end_before(int(frames.max()))


# A read joins a passage when its text resembles the passage's (a misread of one plate
# shares most characters; two plates of one district share two or three) and either its
# box overlaps the passage's last box or its text is nearly the same. Overlap alone is not
# enough: at a cut, the next vehicle's plate can sit where the last one was.
JOIN_MIN_SIMILARITY = 0.6
JOIN_IOU = 0.1
JOIN_SAME_TEXT = 0.8
JOIN_MAX_AREA_RATIO = 2.0  # a plate's box does not double or halve between two reads of it


def text_similarity(a: str, b: str) -> float:
    """Position by position for texts of one length (misreads swap characters in place);
    difflib's ratio otherwise (a clipped read drops characters). Two plates of one series,
    RK857AI and RK576AH, share 3 of 7 positions though difflib finds 5 common characters."""
    if len(a) == len(b) and a:
        return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    return SequenceMatcher(None, a, b).ratio()


def _area(box: tuple[float, ...]) -> float:
    return max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)


MAX_GAP_FRAMES = 8  # about a third of a second at 25 fps: longer than a missed detection or two
MIN_READS = 2  # a passage seen in a single frame is more likely a misread than a vehicle


@dataclass
class PassageTrack:
    """The reads of one vehicle so far."""

    source: str
    reads: list[PlateRead] = field(default_factory=list)
    regions: tuple[str, ...] = ()  # the deployment's plate regions, for the vote

    @property
    def last(self) -> PlateRead:
        return self.reads[-1]

    def vote(self) -> VotedPlate:
        return vote(self.reads, self.regions)

    def record(self, purpose: str, camera: str | None) -> Passage:
        voted = self.vote()
        first, last = self.reads[0], self.reads[-1]
        return Passage(
            first.source,
            camera,
            purpose,
            voted.plate,
            voted.confidence,
            voted.candidates,
            voted.country,
            voted.format,
            first.frame,
            last.frame,
            first.time,
            last.time,
            len(self.reads),
        )


@dataclass(frozen=True, slots=True)
class VotedPlate:
    plate: str
    confidence: float  # the plate's share of the pooled, format-rescored candidates
    candidates: Candidates
    country: str | None
    format: str | None


def vote(reads: Sequence[PlateRead], regions: tuple[str, ...] = ()) -> VotedPlate:
    """The passage's plate: every read's candidates pooled, then rescored by the plate formats.

    Each read's candidates (already format-rescored, so they sum to one per read) count
    with the read's detector confidence: the OCR's own confidence is in the candidates'
    probabilities, and counting it again would let one crisp misread outvote many. Pooling
    lets a plate that is every read's second choice beat one read's first; the format
    rescoring of the pool lets a complete registration beat a frequent short read of it.
    The reads' candidates were fitted to the layouts (with look-alike swaps where their
    recogniser needs them) when they were read, so the pool is rescored without swapping.
    """
    pooled: dict[str, float] = defaultdict(float)
    for read in reads:
        for text, probability in read.candidates or ((read.plate, 1.0),):
            pooled[text] += probability * read.detector_confidence
    chosen = choose_plate(list(pooled.items()), TOP_CANDIDATES, regions, swaps=False)
    return VotedPlate(chosen.plate, chosen.confidence, chosen.candidates, chosen.country, chosen.format)


class PassageTracker:
    """Groups reads into passages, per source; reads must arrive in frame order."""

    def __init__(
        self, max_gap: int = MAX_GAP_FRAMES, min_reads: int = MIN_READS, regions: tuple[str, ...] = ()
    ) -> None:
        self.max_gap = max_gap
        self.min_reads = min_reads
        self.regions = regions
        self._open: dict[str, LiveTracks[PassageTrack]] = defaultdict(lambda: LiveTracks(self.max_gap))

    def update(self, reads: Sequence[PlateRead]) -> list[PassageTrack]:
        """Add reads; returns the passages that closed (long enough, voted later by the caller)."""
        closed: list[PassageTrack] = []
        for read in sorted(reads, key=lambda r: r.frame):
            closed += self._close(read.source, read.frame)
            tracks = self._open[read.source]
            overlaps = tracks.overlaps(np.array([read.frame]), np.array([read.box], np.float32))[0]
            best, best_score = -1, 0.0
            for index, passage in enumerate(tracks.items):
                if passage.last.frame == read.frame:
                    continue  # one plate per passage per frame
                overlap = float(overlaps[index])
                similarity = text_similarity(passage.last.plate, read.plate)
                ratio = _area(read.box) / _area(passage.last.box)
                same_size = 1 / JOIN_MAX_AREA_RATIO <= ratio <= JOIN_MAX_AREA_RATIO
                if similarity >= JOIN_MIN_SIMILARITY and (
                    (overlap >= JOIN_IOU and same_size) or similarity >= JOIN_SAME_TEXT
                ):
                    score = overlap + similarity
                    if score > best_score:
                        best, best_score = index, score
            if best < 0:
                tracks.start(read.frame, read.box, PassageTrack(read.source, [read], self.regions))
            else:
                tracks.items[best].reads.append(read)
                tracks.continue_(best, read.frame, read.box)
        return closed

    def _close(self, source: str, frame: int) -> list[PassageTrack]:
        return [p for p in self._open[source].end_before(frame) if len(p.reads) >= self.min_reads]

    def flush(self) -> list[PassageTrack]:
        """Close every open passage (end of input)."""
        closed = [p for tracks in self._open.values() for p in tracks.items if len(p.reads) >= self.min_reads]
        self._open.clear()
        return sorted(closed, key=lambda p: p.reads[0].frame)
