"""The gate between OCR and every sink.

For each read and each purpose its camera feeds, the gate asks the policy. An allowed
read goes to that purpose's sinks with its deletion deadline; a minimised purpose adds
to an hourly count; a denied purpose adds only to the hourly blocked count (rule,
purpose, camera, hour, number): nothing derived from the read (text, hash, crop, log
line) passes. The database write of a batch (reads and counts) is one transaction.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from anpr.plates import PlateRead
from anpr.policy.deployment import Camera
from anpr.policy.engine import Policy
from anpr.policy.rules import Minimisation

COUNT_BUCKET_SECONDS = 3600  # counters are kept per hour: enough to show a block, too coarse to track anyone
PURGE_INTERVAL_SECONDS = 60.0


class Outcome(StrEnum):
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


def new_key() -> str:
    """A random idempotency key (of a kept read, of a database batch): 32 hex digits."""
    return uuid.uuid4().hex


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

    def as_json(self) -> dict[str, object]:
        return {**self.read.as_json(), "camera": self.camera, "purpose": self.purpose, "rule": self.rule_id,
                "delete_after": round(self.delete_after, 3), "hit": self.hit, "key": self.key}


class PolicedSink(Protocol):
    def write(self, reads: Sequence[PolicedRead]) -> None: ...


class DatabaseSink(Protocol):
    def write(self, reads: Sequence[PolicedRead], counts: Mapping[CountKey, int] = ...) -> None: ...

    def purge(self, now: float) -> int: ...


@dataclass
class GateTally:
    seen: int = 0
    stored: Counter[str] = field(default_factory=Counter)  # purpose -> reads passed to its sinks
    counted: Counter[tuple[str, str, Outcome]] = field(default_factory=Counter)  # (purpose, rule, outcome)
    purged: int = 0

    def counted_for(self, purpose: str, outcome: Outcome) -> int:
        return sum(n for (p, _, o), n in self.counted.items() if p == purpose and o is outcome)

    @classmethod
    def combined(cls, tallies: Sequence[GateTally]) -> GateTally:
        """One tally for several gates (the cameras of one run)."""
        total = cls()
        for tally in tallies:
            total.seen += tally.seen
            total.stored.update(tally.stored)
            total.counted.update(tally.counted)
            total.purged += tally.purged
        return total


class PolicyGate:
    """Routes the reads of one camera; implements the pipeline's ReadSink."""

    def __init__(
        self,
        policy: Policy,
        camera: Camera,
        database: DatabaseSink,
        sinks: Mapping[str, PolicedSink],
        outputs: Sequence[PolicedSink] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.camera = camera
        self.database = database
        self.sinks = sinks  # by sink name; database sinks map to `database`
        self.outputs = list(outputs)  # the operator's own view (--jsonl, the summary): allowed reads only
        self.clock = clock
        self.tally = GateTally()
        self._decisions = {code: policy.purpose(code) for code in camera.purposes}
        self._sink_names = {code: policy.deployment.purposes[code].sinks for code in camera.purposes}
        self._next_purge = 0.0

    def write(self, reads: Sequence[PlateRead]) -> None:
        now = self.clock()
        bucket = int(now // COUNT_BUCKET_SECONDS * COUNT_BUCKET_SECONDS)
        counts: Counter[CountKey] = Counter()
        routed: dict[str, list[PolicedRead]] = {name: [] for name in self.sinks}
        kept: list[PolicedRead] = []
        for read in reads:
            self.tally.seen += 1
            for purpose, decision in self._decisions.items():
                if not decision.allowed:
                    outcome = Outcome.BLOCKED
                elif decision.rule.minimisation is Minimisation.AGGREGATE:
                    outcome = Outcome.AGGREGATED
                else:
                    verdict = self.policy.decide(read, purpose, now)
                    if not verdict.store:
                        outcome = Outcome.NOT_STORED
                    else:
                        policed = PolicedRead(read, self.camera.id, purpose, decision.rule.id,
                                              verdict.delete_after or now, verdict.hit, new_key())
                        for name in self._sink_names[purpose]:
                            routed[name].append(policed)
                        kept.append(policed)
                        self.tally.stored[purpose] += 1
                        continue
                counts[CountKey(bucket, self.camera.id, purpose, decision.rule.id, outcome)] += 1
                self.tally.counted[(purpose, decision.rule.id, outcome)] += 1
        self._flush(routed, counts)
        for output in self.outputs:
            output.write(kept)
        if now >= self._next_purge:
            self.tally.purged += self.database.purge(now)
            self._next_purge = now + PURGE_INTERVAL_SECONDS

    def _flush(self, routed: dict[str, list[PolicedRead]], counts: Counter[CountKey]) -> None:
        database_reads = [r for name, rs in routed.items() if self.sinks[name] is self.database for r in rs]
        if database_reads or counts:
            self.database.write(database_reads, counts)
        for name, reads in routed.items():
            if reads and self.sinks[name] is not self.database:
                self.sinks[name].write(reads)
