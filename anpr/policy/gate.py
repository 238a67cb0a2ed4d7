"""The gate between OCR and every sink.

For each read and each purpose its camera feeds, the gate asks the policy. An allowed
read goes to that purpose's sinks with its deletion deadline; a minimised purpose adds
to an hourly count; a denied purpose adds only to the hourly blocked count (rule,
purpose, camera, hour, number): nothing derived from the read (text, hash, crop, log
line) passes. The database write of a batch (reads and counts) is one transaction.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from anpr.config.deployment import Camera
from anpr.policy.engine import Policy
from anpr.reading.track import PassageBuilder, TrackEnd
from anpr.records import CountKey, Outcome, Passage, PlateRead, PolicedRead, hour_bucket, new_key

PURGE_INTERVAL_SECONDS = 60.0


class PolicedSink(Protocol):
    """Where a purpose's kept reads go (its `sinks:`, anpr/sinks/): one batch at a time
    (what it returns is not used). A sink may also have `close()`, called once when the run
    ends (`sinks.catalog.close_sinks`), and `write_passages(passages)`, given the purpose's
    passages as their tracks end."""

    def write(self, reads: Sequence[PolicedRead]) -> object: ...


class DatabaseSink(Protocol):
    """The run's database as the gate sees it: a batch of kept reads and counters in one
    transaction, and retention (store.ReadStore, or spool.SpooledStore around it)."""

    def write(
        self,
        reads: Sequence[PolicedRead],
        counts: Mapping[CountKey, int] | None = None,
        *,
        passages: Sequence[Passage] = (),
    ) -> object: ...

    def purge(self, now: float) -> int: ...


@runtime_checkable
class PassageSink(Protocol):
    """Receives passages as their tracks end: the operator's view (--jsonl --passages), every
    purpose's; a sink that takes passages (an MQTT sink), those of the purposes that name it."""

    def write_passages(self, passages: Sequence[Passage]) -> None: ...


@dataclass
class GateTally:
    seen: int = 0
    stored: Counter[str] = field(default_factory=Counter)  # purpose -> reads passed to its sinks
    counted: Counter[tuple[str, str, Outcome]] = field(default_factory=Counter)  # (purpose, rule, outcome)
    purged: int = 0  # reads and passages deleted by retention during the run
    passages: Counter[str] = field(default_factory=Counter)  # purpose -> passages made of its reads
    dropped_tracks: Counter[str] = field(default_factory=Counter)  # why a track made no passage -> count

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
            total.passages.update(tally.passages)
            total.dropped_tracks.update(tally.dropped_tracks)
        return total


class PolicyGate:
    """Routes the reads of one camera by the engine's outcome; implements the pipeline's ReadSink.

    Each purpose's kept reads of one track become a passage when the track ends: stored
    beside the reads when the purpose stores to the database, under the same rule and no
    longer than its reads, and given to the purpose's other sinks that take passages
    (`write_passages`). A denied purpose keeps no read, so it has no passage either."""

    def __init__(
        self,
        policy: Policy,
        camera: Camera,
        database: DatabaseSink,
        sinks: Mapping[str, PolicedSink],
        outputs: Sequence[PolicedSink] = (),
        clock: Callable[[], float] = time.time,
        passage_outputs: Sequence[PassageSink] = (),
    ) -> None:
        self.policy = policy
        self.camera = camera
        self.database = database
        self.sinks = sinks  # by sink name; database sinks map to `database`
        self.outputs = list(outputs)  # the operator's own view (--jsonl, the summary): allowed reads only
        self.clock = clock
        self.tally = GateTally()
        self._rules = {code: policy.purpose(code).rule.id for code in camera.purposes}
        self._sink_names = {code: policy.deployment.purposes[code].sinks for code in camera.purposes}
        self._next_purge = 0.0
        self.passage_outputs = list(passage_outputs)
        regions = policy.deployment.region
        self._passages = {code: PassageBuilder(regions, dropped=self.tally.dropped_tracks) for code in camera.purposes}
        self._stores_passages = {
            code: any(self.sinks[name] is self.database for name in names) for code, names in self._sink_names.items()
        }
        # A purpose's other sinks that take passages (an MQTT sink): the database got them above.
        self._passage_sinks: dict[str, list[PassageSink]] = {
            code: [s for s in (self.sinks[n] for n in names) if s is not database and isinstance(s, PassageSink)]
            for code, names in self._sink_names.items()
        }

    def write(self, reads: Sequence[PlateRead]) -> None:
        now = self.clock()
        bucket = hour_bucket(now)
        counts: Counter[CountKey] = Counter()
        routed: dict[str, list[PolicedRead]] = {name: [] for name in self.sinks}
        kept: list[PolicedRead] = []
        for read in reads:
            self.tally.seen += 1
            for purpose, rule_id in self._rules.items():
                decision = self.policy.decide(read, purpose, now)
                if decision.outcome is Outcome.STORED:
                    policed = PolicedRead(
                        read, self.camera.id, purpose, rule_id, decision.delete_after or now, decision.hit, new_key()
                    )
                    for name in self._sink_names[purpose]:
                        routed[name].append(policed)
                    kept.append(policed)
                    self.tally.stored[purpose] += 1
                else:
                    counts[CountKey(bucket, self.camera.id, purpose, rule_id, decision.outcome)] += 1
                    self.tally.counted[(purpose, rule_id, decision.outcome)] += 1
        self._flush(routed, counts)
        for purpose, builder in self._passages.items():
            builder.add(r for r in kept if r.purpose == purpose)
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

    def end_tracks(self, source: str, ends: Sequence[TrackEnd]) -> None:
        """Tracks of the camera ended: each purpose's reads of each become its passage."""
        stored: list[Passage] = []
        made: list[Passage] = []
        routed: dict[int, tuple[PassageSink, list[Passage]]] = {}  # by id: a sink two purposes name gets one call
        for purpose, builder in self._passages.items():
            passages = builder.close(source, ends)
            if passages:
                self.tally.passages[purpose] += len(passages)
            made += passages
            if self._stores_passages[purpose]:
                stored += passages
            for taker in self._passage_sinks[purpose]:
                routed.setdefault(id(taker), (taker, []))[1].extend(passages)
        if stored:
            self.database.write([], passages=stored)
        for sink, passages in routed.values():
            if passages:
                sink.write_passages(passages)
        if made:
            for output in self.passage_outputs:
                output.write_passages(made)
