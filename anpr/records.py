"""The records that travel through a run, and their one dictionary form.

    PlateRead    one plate read in one frame (what the pipeline produces)
    PolicedRead  a read a purpose may keep, with the policy's decision for it
    Outcome      what the policy did with a read for a purpose
    CountKey     one hourly counter of reads a purpose did not keep
    Passage      the reads a purpose kept of one tracked plate, voted into one plate

`to_dict` and `from_dict` are the only serialisation of a read (and of a passage): the JSON lines, the
exports, the webhook, the outage spool and the database mapping all use them.
`to_dict()` rounds for people and logs; `to_dict(exact=True)` keeps every digit, for
what must come back identical (the spool, the database).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Candidates = tuple[tuple[str, float], ...]  # texts and probabilities, best first

COUNT_BUCKET_SECONDS = 3600  # counters are kept per hour: enough to show a block, too coarse to track anyone


def hour_bucket(now: float) -> int:
    """Unix time of the start of the hour `now` falls in."""
    return int(now // COUNT_BUCKET_SECONDS * COUNT_BUCKET_SECONDS)


def new_key() -> str:
    """A random idempotency key (of a kept read, of a database batch): 32 hex digits."""
    return uuid.uuid4().hex


def _round(value: float, digits: int, exact: bool) -> float:
    return value if exact else round(value, digits)


def candidates_to_list(candidates: Candidates, exact: bool = False) -> list[list[Any]]:
    """`[[text, probability], ...]`, rounded to 4 digits unless `exact`."""
    return [[text, _round(p, 4, exact)] for text, p in candidates]


def _candidates_from_list(candidates: Any) -> Candidates:
    return tuple((str(text), float(p)) for text, p in candidates)


@dataclass(frozen=True, slots=True)
class PlateRead:
    """One plate read in one frame: what every sink receives."""

    source: str
    frame: int
    time: float
    plate: str
    raw_text: str
    confidence: float  # of the read as a whole: detector and OCR together
    ocr_confidence: float
    detector_confidence: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    detector_model: str
    ocr_model: str
    candidates: Candidates = ()  # best first, the plate among them
    country: str | None = None  # of the plate's format, e.g. "CZ" or "FR/SK/IT/HR"
    format: str | None = None  # the plate's pattern over L (letter) and D (digit)
    track: int | None = None  # the tracker's id for the plate (track.PlateTracker); None when untracked

    def to_dict(self, exact: bool = False) -> dict[str, Any]:
        return {
            "source": self.source,
            "frame": self.frame,
            "time": _round(self.time, 3, exact),
            "plate": self.plate,
            "confidence": _round(self.confidence, 4, exact),
            "box": [_round(v, 1, exact) for v in self.box],
            "raw_text": self.raw_text,
            "ocr_confidence": _round(self.ocr_confidence, 4, exact),
            "detector_confidence": _round(self.detector_confidence, 4, exact),
            "detector_model": self.detector_model,
            "ocr_model": self.ocr_model,
            "candidates": candidates_to_list(self.candidates, exact),
            "country": self.country,
            "format": self.format,
            "track": self.track,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlateRead:
        x1, y1, x2, y2 = (float(v) for v in data["box"])
        return cls(
            source=data["source"],
            frame=int(data["frame"]),
            time=float(data["time"]),
            plate=data["plate"],
            raw_text=data["raw_text"],
            confidence=float(data["confidence"]),
            ocr_confidence=float(data["ocr_confidence"]),
            detector_confidence=float(data["detector_confidence"]),
            box=(x1, y1, x2, y2),
            detector_model=data["detector_model"],
            ocr_model=data["ocr_model"],
            candidates=_candidates_from_list(data.get("candidates") or ()),
            country=data.get("country"),
            format=data.get("format"),
            track=None if data.get("track") is None else int(data["track"]),
        )


class Outcome(StrEnum):
    STORED = "stored"  # the purpose keeps the read: it goes to the purpose's sinks
    BLOCKED = "blocked"  # the purpose is denied
    AGGREGATED = "aggregated"  # the purpose may only count (statistics)
    NOT_STORED = "not_stored"  # the rule exempts this read (a compliant vehicle in a ZFE)


@dataclass(frozen=True, slots=True)
class CountKey:
    bucket: int  # Unix time of the start of the hour
    camera: str
    purpose: str
    rule_id: str
    outcome: Outcome

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "camera": self.camera,
            "purpose": self.purpose,
            "rule_id": self.rule_id,
            "outcome": self.outcome.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CountKey:
        return cls(int(data["bucket"]), data["camera"], data["purpose"], data["rule_id"], Outcome(data["outcome"]))


@dataclass(frozen=True, slots=True)
class PolicedRead:
    """A read that a purpose may keep, with what the policy decided for it."""

    read: PlateRead
    camera: str
    purpose: str
    rule_id: str
    delete_after: float  # Unix time
    hit: bool
    # Made once, when the gate keeps the read for a purpose, and stored with it (unique):
    # a batch re-sent after an outage is recognised by it and never stored twice.
    key: str = field(default_factory=new_key)

    def to_dict(self, exact: bool = False) -> dict[str, Any]:
        """The read's fields, then camera, purpose, rule, delete_after, hit and key (one flat object)."""
        return {
            **self.read.to_dict(exact),
            "camera": self.camera,
            "purpose": self.purpose,
            "rule": self.rule_id,
            "delete_after": _round(self.delete_after, 3, exact),
            "hit": self.hit,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicedRead:
        return cls(
            PlateRead.from_dict(data),
            data["camera"],
            data["purpose"],
            data["rule"],
            float(data["delete_after"]),
            bool(data["hit"]),
            data["key"],
        )


@dataclass(frozen=True, slots=True)
class Passage:
    """The reads one purpose kept of one tracked plate, voted into one plate.

    A passage is kept under the same rule as its reads and goes no later than the first
    of them (`delete_after` is their earliest deadline): nothing derived from a read
    outlives it. `hit` when any of its reads was a hit.
    """

    source: str
    camera: str
    purpose: str
    rule_id: str
    track: int  # the tracker's id for the plate, unique within a source in one run
    plate: str
    confidence: float  # the plate's share of the pooled, format-rescored candidates
    candidates: Candidates
    country: str | None
    format: str | None
    first_frame: int
    last_frame: int
    first_time: float
    last_time: float
    reads: int
    delete_after: float  # Unix time
    hit: bool = False
    key: str = field(default_factory=new_key)  # unique: a passage sent twice is stored once

    def to_dict(self, exact: bool = False) -> dict[str, Any]:
        return {
            "source": self.source,
            "camera": self.camera,
            "purpose": self.purpose,
            "rule": self.rule_id,
            "track": self.track,
            "plate": self.plate,
            "confidence": _round(self.confidence, 4, exact),
            "candidates": candidates_to_list(self.candidates, exact),
            "country": self.country,
            "format": self.format,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "first_time": _round(self.first_time, 3, exact),
            "last_time": _round(self.last_time, 3, exact),
            "reads": self.reads,
            "delete_after": _round(self.delete_after, 3, exact),
            "hit": self.hit,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Passage:
        return cls(
            source=data["source"],
            camera=data["camera"],
            purpose=data["purpose"],
            rule_id=data["rule"],
            track=int(data["track"]),
            plate=data["plate"],
            confidence=float(data["confidence"]),
            candidates=_candidates_from_list(data.get("candidates") or ()),
            country=data.get("country"),
            format=data.get("format"),
            first_frame=int(data["first_frame"]),
            last_frame=int(data["last_frame"]),
            first_time=float(data["first_time"]),
            last_time=float(data["last_time"]),
            reads=int(data["reads"]),
            delete_after=float(data["delete_after"]),
            hit=bool(data.get("hit", False)),
            key=data["key"],
        )
