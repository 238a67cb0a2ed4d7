"""An on-disk spool that keeps allowed reads while the database is unreachable.

`SpooledStore` wraps a `ReadStore` and is what the policy gate writes to (the gate's
DatabaseSink: `write(reads, counts, passages)` and `purge(now)`). While the database answers, a
batch goes straight to it. When it cannot be reached (server down, connection lost:
SQLAlchemy's OperationalError, InterfaceError, DisconnectionError), the batch is written
to the spool folder instead, one JSON file per batch, and sent when the database returns,
oldest first. A refused statement (integrity, schema, permission) is no outage: it stays
an error.

What the spool holds is what the gate let through for the database: reads allowed for a
purpose and the passages made of them, each with its deletion deadline and key, and
plate-free policy counters. Nothing of a denied purpose ever reaches it but those counters.

- No duplicates: every batch has a key, recorded in the batch's own transaction (see
  anpr/store.py). A batch whose commit went through but whose acknowledgement was lost is
  spooled too, and skipped as a whole when it is sent again.
- Retention holds in the spool: a read or passage whose deadline has passed is removed
  from its spooled batch (at every purge and flush) and never written.
- Bounded: when the spool would exceed `max_bytes`, a new batch is refused and counted as
  lost, with one warning per outage; nothing is raised into the run loop for that.
- No stall: while the database is down, it is tried again at most once per backoff
  interval (1 s, doubling up to 30 s); batches in between go straight to the spool. Once
  it is back, each write sends spooled batches for at most FLUSH_BUDGET_SECONDS (at least
  one), so a long outage's spool drains over the next writes instead of holding up one;
  until it has drained, new batches queue behind it, in order.
- Durable: a file is written to a temporary name, fsynced, then renamed into place; the
  folder is created with mode 0700 and files with 0600. A file sent or emptied is
  overwritten with zeros before it is deleted (best effort: a journaling file system or
  an SSD may still keep old blocks). A spool left by an earlier run is picked up and sent
  at the next write or flush.
- One run per spool folder: the folder is locked while in use, and a spool written for
  another database is refused at start rather than sent to the wrong one.

Not thread-safe: one run loop calls it. It reports the database's comings and goings
through `logging` (logger `anpr.spool`); the CLI shows them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from anpr.errors import StoreError
from anpr.records import CountKey, Passage, PolicedRead, new_key
from anpr.store import DatabaseUnavailable, ReadStore

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
LOCK_NAME = ".lock"
_TEMP_SUFFIX = ".tmp"

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

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class _Batch:
    key: str
    reads: list[PolicedRead]
    counts: dict[CountKey, int]
    passages: list[Passage]

    def drop_expired(self, now: float) -> int:
        """Drop the reads and passages whose deadline has passed; the number of reads dropped."""
        kept = [r for r in self.reads if r.delete_after > now]  # a deadline is inclusive, as in ReadStore.purge
        dropped = len(self.reads) - len(kept)
        self.reads = kept
        self.passages = [p for p in self.passages if p.delete_after > now]
        return dropped

    @property
    def empty(self) -> bool:
        return not self.reads and not self.counts and not self.passages


@dataclass
class _Entry:
    """One spool file, as indexed in memory."""

    path: Path
    reads: int
    size: int
    first_deadline: float  # the earliest delete_after of its reads and passages (inf if none)


class SpooledStore:
    """A ReadStore that keeps batches on disk while the database is unreachable."""

    def __init__(
        self,
        store: ReadStore,
        directory: str | os.PathLike[str],
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.time,  # for deadlines and down_since
        monotonic: Callable[[], float] = time.monotonic,  # for the backoff
        initial_backoff: float = INITIAL_BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        flush_budget: float = FLUSH_BUDGET_SECONDS,  # seconds of sending per write, once the database is back
    ) -> None:
        self.store = store
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.clock = clock
        self.monotonic = monotonic
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.flush_budget = flush_budget
        self.status = SpoolStatus()
        self._backoff = initial_backoff
        self._retry_at = 0.0
        self._full_warned = False
        self._entries: list[_Entry] = []
        self._bytes = 0
        self._last_ns = 0
        self._lock_fd: int | None = self._open_and_lock()
        try:
            self._pick_up()
        except BaseException:
            self._unlock()
            raise

    # --- the DatabaseSink interface -----------------------------------------------------

    def write(
        self,
        reads: Sequence[PolicedRead],
        counts: Mapping[CountKey, int] | None = None,
        passages: Sequence[Passage] = (),
    ) -> None:
        """Write a batch to the database, after what the spool holds; to the spool while the database is down."""
        if not reads and not counts and not passages:
            return
        batch = _Batch(new_key(), list(reads), dict(counts or {}), list(passages))
        if self._may_try():
            self._flush(self.clock(), self.monotonic() + self.flush_budget)
            if not self._entries:  # all sent (or none): this write is also the probe of a down database
                try:
                    self.store.write(batch.reads, batch.counts, batch.key, batch.passages)
                    self._reached()
                    return
                except DatabaseUnavailable as exc:
                    self._unreachable(exc)  # the batch may have been committed: its key tells at the flush
        self._spool(batch)

    def purge(self, now: float) -> int:
        """Apply retention to the spool, then to the database if it can be reached: the
        number of rows (reads and passages) deleted from the database (0 while it is down;
        never raises for that)."""
        self._expire(now)
        if not self._may_try():
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

    @property
    def pending(self) -> Pending:
        return Pending(len(self._entries), sum(e.reads for e in self._entries), self._bytes)

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
        """Release the spool folder (not the wrapped store); the folder is removed if empty."""
        if self._lock_fd is None:
            return
        self._unlock()
        with contextlib.suppress(OSError):  # batches remain: the next run sends them
            self.directory.rmdir()

    # --- database state -------------------------------------------------------------------

    def _may_try(self) -> bool:
        return self.status.database_up or self.monotonic() >= self._retry_at

    def _unreachable(self, exc: Exception) -> None:
        status = self.status
        status.failed_attempts += 1
        status.last_error = str(exc)
        if status.database_up:
            status.database_up = False
            status.down_since = self.clock()
            self._backoff = self.initial_backoff
            log.warning("%s; keeping allowed reads in %s until it returns", exc, self.directory)
        self._retry_at = self.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff)

    def _reached(self) -> None:
        status = self.status
        if not status.database_up:
            outage = self.clock() - (status.down_since or self.clock())
            status.database_up, status.down_since = True, None
            self._backoff, self._retry_at, self._full_warned = self.initial_backoff, 0.0, False
            log.info(
                "database %s reachable again after %.0f s%s",
                self.store.safe_url,
                outage,
                f"; sending {len(self._entries)} spooled batch(es)" if self._entries else "",
            )

    # --- sending and expiring ---------------------------------------------------------------

    def _flush(self, now: float, until: float | None = None) -> int:
        written = 0
        for number, entry in enumerate(list(self._entries)):
            if until is not None and number and self.monotonic() >= until:
                break
            batch = self._load(entry)
            if batch is None:
                continue
            self.status.expired_reads += batch.drop_expired(now)
            if not batch.empty:
                try:
                    done = self.store.write(batch.reads, batch.counts, batch.key, batch.passages)
                except DatabaseUnavailable as exc:
                    self._unreachable(exc)
                    break
                self._reached()
                if done:
                    written += 1
                    self.status.flushed_batches += 1
                    self.status.flushed_reads += len(batch.reads)
                else:
                    self.status.duplicate_batches += 1
            self._remove(entry)
        return written

    def _expire(self, now: float) -> None:
        for entry in list(self._entries):
            if entry.first_deadline > now:
                continue
            batch = self._load(entry)
            if batch is None:
                continue
            self.status.expired_reads += batch.drop_expired(now)
            if batch.empty:
                self._remove(entry)
                continue
            data = _encode(batch, self.store.safe_url, self.clock())
            try:
                self._write_file(entry.path, data)
            except OSError as exc:
                # The expired reads must not stay on disk: the batch goes rather than them.
                log.warning(
                    "cannot rewrite spool file %s (%s); dropping its %d read(s) and %d passage(s)",
                    entry.path,
                    exc.strerror or exc,
                    len(batch.reads),
                    len(batch.passages),
                )
                self._lose(len(batch.reads))
                self._remove(entry)
                continue
            self._bytes += len(data) - entry.size
            entry.size, entry.reads, entry.first_deadline = len(data), len(batch.reads), _first_deadline(batch)

    # --- files --------------------------------------------------------------------------------

    def _spool(self, batch: _Batch) -> None:
        self.status.expired_reads += batch.drop_expired(self.clock())
        if batch.empty:
            return
        data = _encode(batch, self.store.safe_url, self.clock())
        if self._bytes + len(data) > self.max_bytes:
            self._refuse(batch, f"spool {self.directory} is full ({_size(self.max_bytes)}, store.spool_max_mb)")
            return
        path = self.directory / f"{self._next_ns():020d}-{batch.key}.json"
        try:
            self._write_file(path, data)
        except OSError as exc:
            self._refuse(batch, f"cannot write to spool {self.directory} ({exc.strerror or exc})")
            return
        self._entries.append(_Entry(path, len(batch.reads), len(data), _first_deadline(batch)))
        self._bytes += len(data)
        self.status.spooled_batches += 1
        self.status.spooled_reads += len(batch.reads)

    def _refuse(self, batch: _Batch, why: str) -> None:
        self._lose(len(batch.reads))
        if not self._full_warned:
            self._full_warned = True
            log.warning("%s: reads are being lost until the database returns", why)

    def _lose(self, reads: int) -> None:
        self.status.lost_batches += 1
        self.status.lost_reads += reads

    def _next_ns(self) -> int:
        # File names sort in spool order, also across runs (the wall clock, kept increasing).
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns

    def _write_file(self, path: Path, data: bytes) -> None:
        temp = path.with_name(f".{path.name}{_TEMP_SUFFIX}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if path.exists():
                _zero(path)  # the old content of a rewritten batch (expired reads) is not left in freed blocks
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_directory(self.directory)

    def _remove(self, entry: _Entry) -> None:
        _shred(entry.path)
        self._entries.remove(entry)
        self._bytes -= entry.size

    def _load(self, entry: _Entry) -> _Batch | None:
        try:
            batch, _ = _decode(entry.path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable spool file %s (%s); deleted", entry.path, exc)
            self._lose(entry.reads)
            self._remove(entry)
            return None
        return batch

    def _open_and_lock(self) -> int:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.chmod(0o700)  # mkdir's mode is masked by the umask; an existing folder is tightened
            fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot use spool folder {self.directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(self.directory / LOCK_NAME).st_ino:
                raise OSError("lock file replaced")  # its last holder removed it as we opened it
        except OSError:
            os.close(fd)
            raise StoreError(
                f"spool folder {self.directory} is in use by another run: give each concurrent "
                f"run its own store.spool_dir"
            ) from None
        return fd

    def _unlock(self) -> None:
        if self._lock_fd is None:
            return
        (self.directory / LOCK_NAME).unlink(missing_ok=True)
        os.close(self._lock_fd)  # closing releases the lock
        self._lock_fd = None

    def _pick_up(self) -> None:
        """Index the batches an earlier run left, finishing or discarding its interrupted writes."""
        for temp in sorted(self.directory.glob(f".*.json{_TEMP_SUFFIX}")):
            final = temp.with_name(temp.name[1 : -len(_TEMP_SUFFIX)])
            try:
                _decode(temp.read_bytes())
            except (OSError, ValueError, KeyError, TypeError):
                _shred(temp)  # cut short before it was complete: the batch was counted in that run's status
                continue
            if final.exists():
                _zero(final)
            os.replace(temp, final)  # written and fsynced, only the rename was missing
            _fsync_directory(self.directory)
        others: dict[str, int] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = path.read_bytes()
                batch, database = _decode(data)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable spool file %s (%s); deleted", path, exc)
                _shred(path)
                self.status.lost_batches += 1
                continue
            if database != self.store.safe_url:
                others[database] = others.get(database, 0) + 1
                continue
            self._entries.append(_Entry(path, len(batch.reads), len(data), _first_deadline(batch)))
            self._bytes += len(data)
        if others:
            database, number = next(iter(others.items()))
            raise StoreError(
                f"spool folder {self.directory} holds {number} batch(es) for database {database}, "
                f"not {self.store.safe_url}: run with that database to send them, "
                f"or set store.spool_dir to another folder"
            )


# --- the file format --------------------------------------------------------------------------


def _encode(batch: _Batch, database: str, spooled_at: float) -> bytes:
    document = {
        "format": SPOOL_FORMAT,
        "key": batch.key,
        "database": database,  # without its password
        "spooled_at": spooled_at,
        "reads": [read.to_dict(exact=True) for read in batch.reads],
        "counts": [{**key.to_dict(), "count": number} for key, number in batch.counts.items()],
        "passages": [passage.to_dict(exact=True) for passage in batch.passages],
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode(data: bytes) -> tuple[_Batch, str]:
    document = json.loads(data)
    version = document.get("format")
    if version not in READABLE_FORMATS:
        raise ValueError(f"unknown spool format {version!r}")
    entries = document["reads"]
    if version == 1:
        entries = [{**r["read"], **{k: v for k, v in r.items() if k != "read"}, "rule": r["rule_id"]} for r in entries]
    reads = [PolicedRead.from_dict(entry) for entry in entries]
    counts = {CountKey.from_dict(c): c["count"] for c in document["counts"]}
    passages = [Passage.from_dict(entry) for entry in document.get("passages", [])]
    return _Batch(document["key"], reads, counts, passages), document["database"]


def _size(number: int) -> str:
    return f"{number // 2**20} MB" if number % 2**20 == 0 else f"{number} bytes"


def _first_deadline(batch: _Batch) -> float:
    deadlines = [r.delete_after for r in batch.reads] + [p.delete_after for p in batch.passages]
    return min(deadlines, default=float("inf"))


def _zero(path: Path) -> None:
    """Overwrite a file's content with zeros, in place."""
    try:
        with path.open("r+b") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(0)
            while size > 0:
                size -= file.write(b"\0" * min(size, 1 << 16))
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        pass


def _shred(path: Path) -> None:
    _zero(path)
    path.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
