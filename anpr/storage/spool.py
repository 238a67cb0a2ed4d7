"""An on-disk spool that keeps allowed reads while the database is unreachable.

`SpooledStore` wraps a `ReadStore` and is what the policy gate writes to (the gate's
DatabaseSink: `write(reads, counts, passages)` and `purge(now)`). While the database
answers, a batch goes straight to it. When it cannot be reached (server down, connection
lost, no answer within store.timeout_seconds: DatabaseUnavailable, see
`anpr.storage.store.database_error`; a SQLite file deleted or replaced while in use, which is gone
for the rest of the run), the batch goes to the spool folder (`store.spool_dir`) and
is sent when the database returns (or by the next run with that database), oldest first.
A refused statement (integrity, schema, permission) is no outage: it stays an error.

The spool holds what the gate let through for the database: allowed reads and the
passages made of them, each with its deletion deadline and key, and plate-free policy
counters, with the database they were written for; nothing of a denied purpose but those
counters. It may also hold an audit entry that could not be written (the run's end, with
counts only), appended when its batch is sent, in the batch's transaction. Its folder is
an outbox marked `.anpr-spool`: anpr/storage/outbox.py says what it may hold, what anpr touches
there, and how retention, the size bound and privacy hold there.
What is about the database is here:

- No duplicates: every batch has a key, recorded in the batch's own transaction (see
  anpr/storage/store.py). A batch whose commit went through but whose acknowledgement was lost is
  spooled too, and skipped as a whole when it is sent again.
- No stall: while the database is down, it is tried again at most once per backoff
  interval (1 s, doubling up to 30 s); batches in between go straight to the spool. Once
  it is back, each write sends spooled batches for at most FLUSH_BUDGET_SECONDS (at least
  one), so a long outage's spool drains over the next writes instead of holding up one;
  until it has drained, new batches queue behind it, in order.
- A batch the spool cannot take (full, not writable) is counted as lost, with one warning
  per outage; nothing is raised into the run loop for that.
- A spool written for another database is refused at start rather than sent to the wrong
  one. `expire_spool` purges a spool folder without the database (`anpr db purge`).

Not thread-safe: one run loop calls it. It reports the database's comings and goings
through `logging` (logger `anpr.storage.spool`); the CLI shows them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from anpr.errors import StoreError
from anpr.records import CountKey, Passage, PolicedRead
from anpr.storage.audit import AuditLog
from anpr.storage.outbox import Backoff, Batch, Expired, Kind, Outbox, OutboxInUse, expire_offline
from anpr.storage.store import DatabaseUnavailable, ReadStore

# 2: each read is PolicedRead.to_dict(exact=True), each passage Passage.to_dict(exact=True)
# ("passages" is absent from files of anpr before passages: none). 1 (anpr before the
# records module): the policy's fields beside a nested "read"; still read, so an upgrade
# loses no batch. Passages added no format number: an older anpr reads such a file and
# sends its reads without the passages, where a new number would have it delete the file.
SPOOL_FORMAT = 2
READABLE_FORMATS = (1, 2)
INITIAL_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# Sending a spooled batch costs about what writing it would have (a transaction), plus a
# file to zero and delete: a few ms on a local server, so some tens of batches per write.
FLUSH_BUDGET_SECONDS = 0.25
MARKER_NAME = ".anpr-spool"
LOCK_NAME = f"{MARKER_NAME}.lock"

T = TypeVar("T")
SpoolInUse = OutboxInUse  # another process holds the spool folder
ExpiredSpool = Expired  # what retention removed from a spool folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pending:
    """What the spool holds now."""

    batches: int
    reads: int
    bytes: int


@dataclass
class SpoolStatus:
    """The database's state as the spool sees it, and what went through the spool in this run."""

    database_up: bool = True
    down_since: float | None = None  # Unix time the current outage was first seen
    last_error: str | None = None  # the last reason the database could not be reached
    failed_attempts: int = 0  # attempts to reach the database that failed
    spooled_batches: int = 0
    spooled_reads: int = 0
    flushed_batches: int = 0  # spooled batches written to the database
    flushed_reads: int = 0
    duplicate_batches: int = 0  # spooled batches found already written (a lost acknowledgement): skipped
    expired_reads: int = 0  # removed from the spool by retention, never written
    lost_batches: int = 0  # refused (spool full, spool not writable) or unreadable
    lost_reads: int = 0
    # The longest one write or purge kept the run loop waiting, in seconds: about
    # store.timeout_seconds at most, after which a database that does not answer is down.
    longest_wait_seconds: float = 0.0

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class SpoolBatch(Batch):
    database: str = ""  # the database it was written for, without its password
    # Audit entries that could not be appended (the run's end, with the database down):
    # action, actor, details and the time they happened. Plate-free, like the counters.
    audit: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def empty(self) -> bool:
        return super().empty and not self.audit


def _encode(batch: SpoolBatch, spooled_at: float) -> bytes:
    document = {
        "format": SPOOL_FORMAT,
        "key": batch.key,
        "database": batch.database,
        "spooled_at": spooled_at,
        "reads": [read.to_dict(exact=True) for read in batch.reads],
        "counts": [{**key.to_dict(), "count": number} for key, number in batch.counts.items()],
        "passages": [passage.to_dict(exact=True) for passage in batch.passages],
        "audit": batch.audit,
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode(data: bytes) -> SpoolBatch:
    document = json.loads(data)
    version = document.get("format")
    if version not in READABLE_FORMATS:
        raise ValueError(f"unknown spool format {version!r}")
    entries = document["reads"]
    if version == 1:
        entries = [{**r["read"], **{k: v for k, v in r.items() if k != "read"}, "rule": r["rule_id"]} for r in entries]
    database = document["database"]
    if not isinstance(database, str):
        raise TypeError(f"database is {type(database).__name__}, not text")
    return SpoolBatch(
        [PolicedRead.from_dict(entry) for entry in entries],
        {CountKey.from_dict(c): c["count"] for c in document["counts"]},
        [Passage.from_dict(entry) for entry in document.get("passages", [])],
        document["key"],
        database,
        _audit_entries(document.get("audit", [])),
    )


def _audit_entries(entries: Any) -> list[dict[str, Any]]:
    if not isinstance(entries, list) or not all(
        isinstance(e, dict)
        and isinstance(e.get("action"), str)
        and isinstance(e.get("actor"), str)
        and isinstance(e.get("details"), dict)
        and isinstance(e.get("at"), (int, float))
        for e in entries
    ):
        raise TypeError("audit is not a list of entries")
    return entries


SPOOL = Kind(
    noun="spool",
    title="anpr outage spool",
    marker=MARKER_NAME,
    setting="store.spool_dir",
    size_setting="store.spool_max_mb",
    encode=_encode,
    decode=_decode,
)


class SpooledStore:
    """A ReadStore that keeps batches on disk while the database is unreachable."""

    def __init__(
        self,
        store: ReadStore,
        directory: str | os.PathLike[str],
        max_bytes: int,
        *,
        audit: AuditLog | None = None,  # where spooled audit entries are appended once sent
        clock: Callable[[], float] = time.time,  # for deadlines and down_since
        monotonic: Callable[[], float] = time.monotonic,  # for the backoff
        initial_backoff: float = INITIAL_BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        flush_budget: float = FLUSH_BUDGET_SECONDS,  # seconds of sending per write, once the database is back
        purge_database: bool = True,  # False: `purge` applies retention to the spool alone (a cluster node's)
    ) -> None:
        self.store = store
        self.audit = audit
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.clock = clock
        self.monotonic = monotonic
        self.flush_budget = flush_budget
        self.purge_database = purge_database
        self.status = SpoolStatus()
        self._backoff = Backoff(monotonic, initial_backoff, max_backoff)
        self._full_warned = False
        busy = "give each concurrent run its own store.spool_dir"
        self._spool = Outbox(SPOOL, self.directory, max_bytes, tally=self.status, busy=busy, clock=clock)
        try:
            others = self._spool.pick_up(lambda batch: batch.database == store.safe_url)
            if others:
                raise StoreError(
                    f"spool folder {self.directory} holds {len(others)} batch(es) for database {others[0].database}, "
                    f"not {store.safe_url}: run with that database to send them, "
                    f"or set store.spool_dir to another folder"
                )
        except BaseException:
            self._spool.close()
            raise

    # --- the DatabaseSink interface -----------------------------------------------------

    def write(
        self,
        reads: Sequence[PolicedRead],
        counts: Mapping[CountKey, int] | None = None,
        passages: Sequence[Passage] = (),
    ) -> None:
        """Write a batch to the database, after what the spool holds; to the spool while the database is down."""
        if reads or counts or passages:
            self._timed(self._write, reads, counts, passages)

    def _write(
        self, reads: Sequence[PolicedRead], counts: Mapping[CountKey, int] | None, passages: Sequence[Passage]
    ) -> None:
        batch = SpoolBatch(list(reads), dict(counts or {}), list(passages), database=self.store.safe_url)
        if self._may_try():
            self._flush(self.clock(), self.monotonic() + self.flush_budget)
            if not self._spool.entries:  # all sent (or none): this write is also the probe of a down database
                try:
                    self.store.write(batch.reads, batch.counts, batch.key, batch.passages)
                    self._reached()
                    return
                except DatabaseUnavailable as exc:
                    self._unreachable(exc)  # the batch may have been committed: its key tells at the flush
        try:
            if not self._spool.put(batch):
                return
        except OSError as exc:
            if not self._full_warned:
                self._full_warned = True
                log.warning("%s: reads are being lost until the database returns", exc.strerror or exc)
            return
        self.status.spooled_batches += 1
        self.status.spooled_reads += len(batch.reads)

    def append_audit_later(self, action: str, actor: str, details: dict[str, Any], at: float) -> bool:
        """Keep an audit entry that could not be appended (the database is down) in the
        spool: it is appended, with its time `at`, when the spool is sent, in the same
        transaction as its batch key (so once). False if the spool could not take it."""
        assert self.audit is not None, "a spool without an audit log keeps no audit entry"
        entry = {"action": action, "actor": actor, "details": details, "at": at}
        try:
            return self._spool.put(SpoolBatch([], audit=[entry], database=self.store.safe_url))
        except OSError as exc:
            log.warning("%s: the audit entry %s is lost", exc.strerror or exc, action)
            return False

    def purge(self, now: float) -> int:
        """Apply retention to the spool, then to the database if it can be reached: the
        number of rows (reads and passages) deleted from the database (0 while it is down;
        never raises for that). Without `purge_database`, to the spool alone: the
        database is purged by one process for all of a cluster's nodes (anpr/run/cluster.py)."""
        return self._timed(self._purge, now)

    def _purge(self, now: float) -> int:
        self._spool.expire(now)
        if not self.purge_database or not self._may_try():
            return 0
        try:
            deleted = self.store.purge(now)
        except DatabaseUnavailable as exc:
            self._unreachable(exc)
            return 0
        self._reached()
        return deleted

    # --- the spool ------------------------------------------------------------------------

    def flush(self, now: float | None = None) -> int:
        """Send what the spool holds now, whatever the backoff: the number of batches written
        (batches found already written are deleted and not counted). Stops quietly at the
        first sign that the database is still down."""
        return self._flush(self.clock() if now is None else now)

    def send_left_over(self) -> None:
        """Before a run's first audit entry and first frame: send what an earlier run left
        while the database was down (an earlier run's end, kept here, goes into the audit
        log in its place)."""
        if self.pending.batches:
            log.info(
                "%d read(s) left in %s by an earlier run while the database was down: sending them first",
                self.pending.reads,
                self.directory,
            )
            self.flush()

    @property
    def pending(self) -> Pending:
        return Pending(len(self._spool.entries), self._spool.reads, self._spool.bytes)

    def as_json(self) -> dict[str, object]:
        """The status and what is pending, for a JSON status line."""
        pending = self.pending
        return {
            **self.status.as_json(),
            "pending_batches": pending.batches,
            "pending_reads": pending.reads,
            "pending_bytes": pending.bytes,
            "spool_dir": str(self.directory),
        }

    def close(self) -> None:
        """Release the spool folder (not the wrapped store). Batches left in it wait for the
        next run; the folder itself is removed only if anpr made it and it is empty."""
        self._spool.close()

    def _timed(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)`, with how long it kept the run loop waiting noted in the status."""
        started = self.monotonic()
        try:
            return call(*args)
        finally:
            took = round(self.monotonic() - started, 3)
            self.status.longest_wait_seconds = max(self.status.longest_wait_seconds, took)

    # --- database state -------------------------------------------------------------------

    def _may_try(self) -> bool:
        return self._backoff.may_try(self.status.database_up)

    def _unreachable(self, exc: Exception) -> None:
        status = self.status
        status.failed_attempts += 1
        status.last_error = str(exc)
        if status.database_up:
            status.database_up = False
            status.down_since = self.clock()
            log.warning("%s; keeping allowed reads in %s until it returns", exc, self.directory)
        self._backoff.failed()

    def _reached(self) -> None:
        status = self.status
        if not status.database_up:
            outage = self.clock() - (status.down_since or self.clock())
            status.database_up, status.down_since = True, None
            self._backoff.answered()
            self._full_warned = False
            entries = self._spool.entries
            log.info(
                "database %s reachable again after %.0f s%s",
                self.store.safe_url,
                outage,
                f"; sending {len(entries)} spooled batch(es)" if entries else "",
            )

    # --- sending ------------------------------------------------------------------------------

    def _flush(self, now: float, until: float = math.inf) -> int:
        written = self.status.flushed_batches
        try:
            self._spool.send(self._send, now, lambda: self.monotonic() < until)
        except DatabaseUnavailable as exc:
            self._unreachable(exc)
        return self.status.flushed_batches - written

    def _send(self, batch: SpoolBatch) -> None:
        entries, audit = batch.audit, self.audit
        if entries and audit is None:
            raise StoreError(f"spool batch {batch.key} holds audit entries and this spool has no audit log")

        def append(session: Session) -> None:
            for entry in entries:
                assert audit is not None
                audit.append(entry["action"], entry["actor"], entry["details"], session=session, at=entry["at"])

        done = self.store.write(batch.reads, batch.counts, batch.key, batch.passages, also=append if entries else None)
        self._reached()
        if done:
            self.status.flushed_batches += 1
            self.status.flushed_reads += len(batch.reads)
        else:
            self.status.duplicate_batches += 1


def node_spool_dir(spool_dir: str, host: str, n: int) -> str:
    """The `n`th outage spool of a cluster node on `host`, beside the run's own spool_dir
    (a machine may run several nodes: run/cluster.py takes the first no process holds)."""
    return f"{spool_dir}-{re.sub(r'[^A-Za-z0-9._-]', '_', host)}-{n}"


def spool_folders(spool_dir: str) -> list[Path]:
    """The run's spool folder and the cluster nodes' beside it (`node_spool_dir`)."""
    base = Path(spool_dir).expanduser()
    nodes = sorted(p for p in base.parent.glob(f"{base.name}-*") if (p / MARKER_NAME).is_file())
    return [base, *nodes]


def expire_spool(directory: str | os.PathLike[str], now: float) -> ExpiredSpool:
    """Apply retention to a spool folder without the database (see `expire_offline`):
    SpoolInUse when a run holds it, StoreError when it is not a spool."""
    return expire_offline(SPOOL, directory, now, busy="that run purges it itself every minute")
