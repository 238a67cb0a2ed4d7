"""Passages: the reads of one vehicle across frames, voted into one plate.

A read joins the open passage of its source whose last box it overlaps, or whose plate
it resembles, within `max_gap` frames; otherwise it opens a passage of its own. A
passage closes when no read has joined it for `max_gap` frames. Its plate is chosen from
all its reads' candidates pooled, rescored by the plate formats (`vote`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from anpr.detect import pairwise_iou
from anpr.plates import PlateRead, choose_plate

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
        return sum(x == y for x, y in zip(a, b)) / len(a)
    return SequenceMatcher(None, a, b).ratio()


def _area(box: tuple[float, ...]) -> float:
    return max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
MAX_GAP_FRAMES = 8  # about a third of a second at 25 fps: longer than a missed detection or two
MIN_READS = 2  # a passage seen in a single frame is more likely a misread than a vehicle
TOP_CANDIDATES = 5


@dataclass
class Passage:
    source: str
    reads: list[PlateRead] = field(default_factory=list)

    @property
    def last(self) -> PlateRead:
        return self.reads[-1]

    def vote(self) -> VotedPlate:
        return vote(self.reads)


@dataclass(frozen=True, slots=True)
class VotedPlate:
    plate: str
    confidence: float  # the plate's share of the pooled, format-rescored candidates
    candidates: tuple[tuple[str, float], ...]
    country: str | None
    format: str | None


def vote(reads: Sequence[PlateRead]) -> VotedPlate:
    """The passage's plate: every read's candidates pooled, then rescored by the plate formats.

    Each read's candidates (already format-rescored, so they sum to one per read) count
    with the read's detector confidence: the OCR's own confidence is in the candidates'
    probabilities, and counting it again would let one crisp misread outvote many. Pooling
    lets a plate that is every read's second choice beat one read's first; the format
    rescoring of the pool lets a complete registration beat a frequent short read of it.
    """
    pooled: dict[str, float] = defaultdict(float)
    for read in reads:
        for text, probability in read.candidates or ((read.plate, 1.0),):
            pooled[text] += probability * read.detector_confidence
    chosen = choose_plate(list(pooled.items()), TOP_CANDIDATES)
    return VotedPlate(chosen.plate, chosen.confidence, chosen.candidates, chosen.country, chosen.format)


class PassageTracker:
    """Groups reads into passages, per source; reads must arrive in frame order."""

    def __init__(self, max_gap: int = MAX_GAP_FRAMES, min_reads: int = MIN_READS) -> None:
        self.max_gap = max_gap
        self.min_reads = min_reads
        self._open: dict[str, list[Passage]] = defaultdict(list)

    def update(self, reads: Sequence[PlateRead]) -> list[Passage]:
        """Add reads; returns the passages that closed (long enough, voted later by the caller)."""
        closed: list[Passage] = []
        for read in sorted(reads, key=lambda r: r.frame):
            closed += self._close(read.source, read.frame)
            passages = self._open[read.source]
            best, best_score = None, 0.0
            for passage in passages:
                if passage.last.frame == read.frame:
                    continue  # one plate per passage per frame
                overlap = float(pairwise_iou(passage.last.box, read.box)[0, 0])
                similarity = text_similarity(passage.last.plate, read.plate)
                ratio = _area(read.box) / _area(passage.last.box)
                same_size = 1 / JOIN_MAX_AREA_RATIO <= ratio <= JOIN_MAX_AREA_RATIO
                if similarity >= JOIN_MIN_SIMILARITY and (overlap >= JOIN_IOU and same_size
                                                          or similarity >= JOIN_SAME_TEXT):
                    score = overlap + similarity
                    if score > best_score:
                        best, best_score = passage, score
            if best is None:
                best = Passage(read.source)
                passages.append(best)
            best.reads.append(read)
        return closed

    def _close(self, source: str, frame: int) -> list[Passage]:
        passages = self._open[source]
        ended = [p for p in passages if frame - p.last.frame > self.max_gap]
        self._open[source] = [p for p in passages if p not in ended]
        return [p for p in ended if len(p.reads) >= self.min_reads]

    def flush(self) -> list[Passage]:
        """Close every open passage (end of input)."""
        closed = [p for passages in self._open.values() for p in passages if len(p.reads) >= self.min_reads]
        self._open.clear()
        return sorted(closed, key=lambda p: p.reads[0].frame)
