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
  from its spooled batch (at every purge and flush) and never written. `expire_spool`
  does the same to a spool folder without the database (`anpr db purge`).
- Bounded: when the spool would exceed `max_bytes`, a new batch is refused and counted as
  lost, with one warning per outage; nothing is raised into the run loop for that.
- No stall: while the database is down, it is tried again at most once per backoff
  interval (1 s, doubling up to 30 s); batches in between go straight to the spool. Once
  it is back, each write sends spooled batches for at most FLUSH_BUDGET_SECONDS (at least
  one), so a long outage's spool drains over the next writes instead of holding up one;
  until it has drained, new batches queue behind it, in order.
- Durable: a file is written to a temporary name, fsynced, then renamed into place, with
  mode 0600. A file sent or emptied is overwritten with zeros before it is deleted (best
  effort: a journaling file system or an SSD may still keep old blocks). A spool left by
  an earlier run is picked up and sent at the next write or flush.
- One run per spool folder: the folder is locked while in use, and a spool written for
  another database is refused at start rather than sent to the wrong one.

The folder (`store.spool_dir`) is anpr's alone, and anpr touches nothing else in it:

- It is marked by a file `.anpr-spool`. A folder anpr creates is made with mode 0700 and
  marked. An existing empty folder is adopted (marked), its mode left as it is (a warning
  if other users may enter it). An existing folder that holds anything but is not marked
  is refused, untouched; except one that holds nothing but batch files of an anpr from
  before the marker (and its old `.lock`), which is marked and picked up.
- Only these names are ever read, written, renamed or deleted: batch files
  `<20 digits>-<32 hex digits>.json`, their temporary files `.<batch file name>.tmp`,
  the marker, and the lock file `.anpr-spool.lock` (deleted only by the run that created
  it, while holding it). A batch or temporary file that cannot be decoded is not deleted
  but renamed to `<name>.unreadable` (counted as lost, with a warning): anpr never looks at
  it again, and retention does not reach it, so whoever reads the warning must.
- No symbolic link is followed: the folder itself must not be one, every file is opened
  relative to the folder's descriptor with O_NOFOLLOW, and a link with a batch file's name
  is skipped, neither followed nor deleted.
- A folder is removed at close only if this run created it and nothing but the marker
  and the lock file is left in it.

Not thread-safe: one run loop calls it. It reports the database's comings and goings
through `logging` (logger `anpr.spool`); the CLI shows them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import stat
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
MARKER_NAME = ".anpr-spool"
MARKER_TEXT = b"anpr outage spool (store.spool_dir): anpr touches only its own batch files here\n"
LOCK_NAME = ".anpr-spool.lock"
UNREADABLE_SUFFIX = ".unreadable"
_BATCH_NAME = re.compile(r"[0-9]{20}-[0-9a-f]{32}\.json")
_TEMP_NAME = re.compile(r"\.[0-9]{20}-[0-9a-f]{32}\.json\.tmp")
_LEGACY_LOCK_NAME = ".lock"  # of anpr before the marker
# O_NONBLOCK: a FIFO given a batch file's name must not hang the run (it is then refused
# as not a regular file); on a regular file it changes nothing.
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_LOCK_ATTEMPTS = 5
_UNDECODABLE = (ValueError, KeyError, TypeError, AttributeError)

log = logging.getLogger(__name__)


class SpoolInUse(StoreError):
    """Another process holds the spool folder's lock."""


@dataclass(frozen=True)
class Pending:
    """What the spool holds now."""

    batches: int
    reads: int
    bytes: int


@dataclass(frozen=True)
class ExpiredSpool:
    """What retention removed from a spool folder."""

    reads: int = 0  # past their deadline
    passages: int = 0  # past their deadline
    batches: int = 0  # batch files deleted: all they held had expired, or they could not be rewritten without it
    lost_reads: int = 0  # live reads deleted with a batch file that could not be rewritten


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

    def drop_expired(self, now: float) -> tuple[int, int]:
        """Drop the reads and passages whose deadline has passed; how many of each."""
        kept = [r for r in self.reads if r.delete_after > now]  # a deadline is inclusive, as in ReadStore.purge
        kept_passages = [p for p in self.passages if p.delete_after > now]
        dropped = (len(self.reads) - len(kept), len(self.passages) - len(kept_passages))
        self.reads, self.passages = kept, kept_passages
        return dropped

    @property
    def empty(self) -> bool:
        return not self.reads and not self.counts and not self.passages


@dataclass
class _Entry:
    """One batch file, as indexed in memory."""

    name: str
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
        self._last_ns = 0
        folder = _Folder.open(self.directory, create=True, busy="give each concurrent run its own store.spool_dir")
        assert folder is not None  # create=True makes the folder or raises
        self._spool = _Spool(folder, self.status, clock)
        try:
            self._pick_up()
        except BaseException:
            folder.close()
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
            if not self._spool.entries:  # all sent (or none): this write is also the probe of a down database
                try:
                    self.store.write(batch.reads, batch.counts, batch.key, batch.passages)
                    self._reached()
                    return
                except DatabaseUnavailable as exc:
                    self._unreachable(exc)  # the batch may have been committed: its key tells at the flush
        self._add(batch)

    def purge(self, now: float) -> int:
        """Apply retention to the spool, then to the database if it can be reached: the
        number of rows (reads and passages) deleted from the database (0 while it is down;
        never raises for that)."""
        self._spool.expire(now)
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
        spool = self._spool
        return Pending(len(spool.entries), sum(e.reads for e in spool.entries), spool.bytes)

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
        next run; the folder itself is removed only if this run created it and it is empty."""
        self._spool.folder.close()

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
            entries = self._spool.entries
            log.info(
                "database %s reachable again after %.0f s%s",
                self.store.safe_url,
                outage,
                f"; sending {len(entries)} spooled batch(es)" if entries else "",
            )

    # --- sending ------------------------------------------------------------------------------

    def _flush(self, now: float, until: float | None = None) -> int:
        written = 0
        spool = self._spool
        for number, entry in enumerate(list(spool.entries)):
            if until is not None and number and self.monotonic() >= until:
                break
            loaded = spool.load(entry)
            if loaded is None:
                continue
            batch, _ = loaded
            self.status.expired_reads += batch.drop_expired(now)[0]
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
            spool.remove(entry)
        return written

    def _add(self, batch: _Batch) -> None:
        self.status.expired_reads += batch.drop_expired(self.clock())[0]
        if batch.empty:
            return
        spool = self._spool
        data = _encode(batch, self.store.safe_url, self.clock())
        if spool.bytes + len(data) > self.max_bytes:
            self._refuse(batch, f"spool {self.directory} is full ({_size(self.max_bytes)}, store.spool_max_mb)")
            return
        name = f"{self._next_ns():020d}-{batch.key}.json"
        try:
            spool.folder.write(name, data)
        except OSError as exc:
            self._refuse(batch, f"cannot write to spool {self.directory} ({_reason(exc)})")
            return
        spool.entries.append(_Entry(name, len(batch.reads), len(data), _first_deadline(batch)))
        spool.bytes += len(data)
        self.status.spooled_batches += 1
        self.status.spooled_reads += len(batch.reads)

    def _refuse(self, batch: _Batch, why: str) -> None:
        self._spool.lose(len(batch.reads))
        if not self._full_warned:
            self._full_warned = True
            log.warning("%s: reads are being lost until the database returns", why)

    def _next_ns(self) -> int:
        # File names sort in spool order, also across runs (the wall clock, kept increasing).
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns

    def _pick_up(self) -> None:
        others = self._spool.pick_up(self.store.safe_url)
        if others:
            database, number = next(iter(others.items()))
            raise StoreError(
                f"spool folder {self.directory} holds {number} batch(es) for database {database}, "
                f"not {self.store.safe_url}: run with that database to send them, "
                f"or set store.spool_dir to another folder"
            )


def expire_spool(directory: str | os.PathLike[str], now: float) -> ExpiredSpool:
    """Apply retention to a spool folder without the database: drop every read and passage
    whose deadline has passed from its batch files, whatever database they were spooled
    for, and delete the files left empty.

    A missing folder, or an empty one without the marker, holds nothing to purge: it is
    neither created nor marked. Raises SpoolInUse when a run holds the folder (that run
    purges it itself every minute), StoreError when the folder is not a spool.
    """
    folder = _Folder.open(Path(directory), create=False, busy="that run purges it itself every minute")
    if folder is None:
        return ExpiredSpool()
    try:
        spool = _Spool(folder, SpoolStatus(), time.time)
        spool.pick_up(None)
        return spool.expire(now)
    finally:
        folder.close()


class _Spool:
    """The batch files of an open spool folder, indexed in spool order. A run's SpooledStore
    and expire_spool both send, expire and remove them through this."""

    def __init__(self, folder: _Folder, status: SpoolStatus, clock: Callable[[], float]) -> None:
        self.folder = folder
        self.status = status  # lost_* and expired_reads are counted there
        self.clock = clock
        self.entries: list[_Entry] = []
        self.bytes = 0

    def pick_up(self, database: str | None) -> dict[str, int]:
        """Index the batches an earlier run left, finishing its interrupted writes: those of
        `database` (all with None); the number of batches of each other database, not indexed."""
        folder = self.folder
        for temp, final in folder.temporary_files():
            try:
                _decode(folder.read(temp))
            except OSError as exc:
                log.warning("cannot read spool file %s (%s); left as it is", folder.path(temp), _reason(exc))
                continue
            except _UNDECODABLE as exc:
                self._set_aside(temp, exc, reads=0)  # cut short, or of another format
                continue
            try:
                folder.install(temp, final)  # written and fsynced, only the rename was missing
            except OSError as exc:
                log.warning("cannot finish spool file %s (%s); left as it is", folder.path(temp), _reason(exc))
        others: dict[str, int] = {}
        for name in folder.batch_files():
            loaded = self._read(name, None)
            if loaded is None:
                continue
            (batch, spooled_for), size = loaded
            if database is not None and spooled_for != database:
                others[spooled_for] = others.get(spooled_for, 0) + 1
                continue
            self.entries.append(_Entry(name, len(batch.reads), size, _first_deadline(batch)))
            self.bytes += size
        return others

    def expire(self, now: float) -> ExpiredSpool:
        """Drop what has passed its deadline from the indexed batch files, rewriting each in place."""
        reads = passages = batches = lost = 0
        for entry in list(self.entries):
            if entry.first_deadline > now:
                continue
            loaded = self.load(entry)
            if loaded is None:
                continue
            batch, spooled_for = loaded
            dropped_reads, dropped_passages = batch.drop_expired(now)
            reads, passages = reads + dropped_reads, passages + dropped_passages
            self.status.expired_reads += dropped_reads
            if batch.empty:
                self.remove(entry)
                batches += 1
                continue
            data = _encode(batch, spooled_for, self.clock())  # for the database it was spooled for
            try:
                self.folder.write(entry.name, data)
            except OSError as exc:
                # The expired reads must not stay on disk: the batch goes rather than them.
                log.warning(
                    "cannot rewrite spool file %s (%s); dropping its %d read(s) and %d passage(s)",
                    self.folder.path(entry.name),
                    _reason(exc),
                    len(batch.reads),
                    len(batch.passages),
                )
                self.lose(len(batch.reads))
                self.remove(entry)
                batches, lost = batches + 1, lost + len(batch.reads)
                continue
            self.bytes += len(data) - entry.size
            entry.size, entry.reads, entry.first_deadline = len(data), len(batch.reads), _first_deadline(batch)
        return ExpiredSpool(reads, passages, batches, lost)

    def load(self, entry: _Entry) -> tuple[_Batch, str] | None:
        """An indexed batch and the database it was spooled for; None (and no longer indexed)
        when it cannot be read any more."""
        loaded = self._read(entry.name, entry.reads)
        if loaded is None:
            self._forget(entry)
            return None
        return loaded[0]

    def remove(self, entry: _Entry) -> None:
        self.folder.shred(entry.name)
        self._forget(entry)

    def lose(self, reads: int) -> None:
        self.status.lost_batches += 1
        self.status.lost_reads += reads

    def _forget(self, entry: _Entry) -> None:
        self.entries.remove(entry)
        self.bytes -= entry.size

    def _read(self, name: str, indexed_reads: int | None) -> tuple[tuple[_Batch, str], int] | None:
        """A batch file's batch, database and size; None when it cannot be read or decoded.
        `indexed_reads`: its reads, if it was indexed (None while picking up)."""
        try:
            data = self.folder.read(name)
        except OSError as exc:
            log.warning("cannot read spool file %s (%s); left as it is", self.folder.path(name), _reason(exc))
            if indexed_reads is not None:  # counted as pending until now: it will not be sent in this run
                self.lose(indexed_reads)
            return None
        try:
            return _decode(data), len(data)
        except _UNDECODABLE as exc:
            self._set_aside(name, exc, indexed_reads or 0)
            return None

    def _set_aside(self, name: str, exc: Exception, reads: int) -> None:
        self.lose(reads)
        try:
            aside = self.folder.set_aside(name)
        except OSError as error:
            log.warning(
                "unreadable spool file %s (%s); cannot rename it (%s), left as it is",
                self.folder.path(name),
                exc,
                _reason(error),
            )
            return
        log.warning(
            "unreadable spool file %s (%s); renamed to %s: its reads will not be sent, and retention does not reach it",
            self.folder.path(name),
            exc,
            aside,
        )


class _Folder:
    """An open, locked spool folder. Every file is reached through the folder's descriptor,
    without following a link: a folder renamed, or replaced by a link while in use, cannot
    send reads or deletions anywhere else."""

    def __init__(self, directory: Path, fd: int, created: bool) -> None:
        self.directory = directory
        self.fd: int | None = fd
        self.created = created  # by this run: only then may it be removed
        self._lock_fd: int | None = None
        self._lock_created = False

    @classmethod
    def open(cls, directory: Path, *, create: bool, busy: str) -> _Folder | None:
        """Open a spool folder and take its lock. Without `create`, a missing folder, or an
        empty unmarked one, is None and left as it is. `busy` ends the message when another
        process holds the lock."""
        for _ in range(_LOCK_ATTEMPTS):
            folder = cls._open(directory, create)
            if folder is None:
                return None
            try:
                locked = folder._lock(busy)
            except BaseException:
                folder.close()
                raise
            if locked:
                return folder
            folder.close()  # its last holder removed the lock file as we took it: look again
        raise SpoolInUse(f"spool folder {directory} is in use by another run: {busy}")

    @classmethod
    def _open(cls, directory: Path, create: bool) -> _Folder | None:
        created = False
        if create:
            try:
                directory.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(directory, 0o700)
                created = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot create spool folder {directory}: {_reason(exc)}") from None
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if create:
                raise StoreError(f"cannot open spool folder {directory}: it was removed as it was made") from None
            return None
        except OSError as exc:
            if os.path.islink(directory):
                raise StoreError(
                    f"spool folder {directory} is a symbolic link, which anpr does not follow: "
                    f"set store.spool_dir to the folder itself"
                ) from None
            if exc.errno == errno.ENOTDIR:
                raise StoreError(f"spool folder {directory} is not a folder: set store.spool_dir to a folder") from None
            raise StoreError(f"cannot open spool folder {directory}: {_reason(exc)}") from None
        folder = cls(directory, fd, False)
        try:
            return folder._claim(created, create)
        except BaseException:
            folder.close()
            raise

    def _claim(self, created: bool, create: bool) -> _Folder | None:
        """Self if the folder is anpr's spool (marking it if it may be), None if there is
        none to use; refuses any other folder."""
        fd = self._fd
        try:
            names = os.listdir(fd)
            if self._is_marked():
                self._check_mode()
                return self
            if created and not names:
                self.created = True
                os.fchmod(fd, 0o700)  # mkdir's mode is masked by the umask; only a folder made here is set
                self._mark()
                return self
            if not names:
                if not create:
                    self.close()
                    return None
                self._check_mode()
                self._mark()
                log.info("spool folder %s was empty: marked as anpr's spool (%s)", self.directory, MARKER_NAME)
                return self
            if self._holds_an_old_spool(names):
                self._check_mode()
                self._mark()
                log.info("spool folder %s holds a spool of an earlier anpr: marked (%s)", self.directory, MARKER_NAME)
                return self
        except OSError as exc:
            raise StoreError(f"cannot use spool folder {self.directory}: {_reason(exc)}") from None
        raise StoreError(
            f"spool folder {self.directory} holds files but no {MARKER_NAME} marker, so it is not an anpr "
            f"spool and is left untouched: set store.spool_dir to a dedicated folder"
        )

    def _holds_an_old_spool(self, names: list[str]) -> bool:
        """Whether the folder holds nothing but regular files an anpr from before the marker
        would have written there (batch files, at least one, their temporary files, its lock)."""
        fd = self._fd
        if not any(_BATCH_NAME.fullmatch(n) or _TEMP_NAME.fullmatch(n) for n in names):
            return False
        for name in names:
            if not (_BATCH_NAME.fullmatch(name) or _TEMP_NAME.fullmatch(name) or name == _LEGACY_LOCK_NAME):
                return False
            if not stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                return False
        return True

    def _is_marked(self) -> bool:
        return self._is_file(MARKER_NAME)

    def _mark(self) -> None:
        try:
            fd = os.open(MARKER_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600, dir_fd=self._fd)
        except FileExistsError:
            if self._is_marked():
                return  # marked by another anpr at the same moment
            raise
        try:
            _write_all(fd, MARKER_TEXT)
        finally:
            os.close(fd)
        self.fsync()

    def _check_mode(self) -> None:
        mode = stat.S_IMODE(os.fstat(self._fd).st_mode)
        if mode & 0o077:
            log.warning(
                "spool folder %s is open to other users (mode %04o); anpr leaves it so: chmod 700 it, "
                "or pick a folder of its own, to keep them from the spool's files",
                self.directory,
                mode,
            )

    def _lock(self, busy: str) -> bool:
        """Take the folder's lock; False when its file was removed as it was taken (look again)."""
        fd = self._fd
        created = True
        try:
            try:
                lock_fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600, dir_fd=fd)
            except FileExistsError:
                created = False
                lock_fd = os.open(LOCK_NAME, os.O_RDWR | _OPEN_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot lock spool folder {self.directory} ({LOCK_NAME}: {_reason(exc)})") from None
        try:
            held = os.fstat(lock_fd)
            if not stat.S_ISREG(held.st_mode):
                raise StoreError(f"cannot lock spool folder {self.directory}: {LOCK_NAME} is not a regular file")
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SpoolInUse(f"spool folder {self.directory} is in use by another run: {busy}") from None
            except OSError as exc:
                raise StoreError(f"cannot lock spool folder {self.directory}: {_reason(exc)}") from None
            try:
                named = os.stat(LOCK_NAME, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                named = None
            if named is None or (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
                os.close(lock_fd)
                return False
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(lock_fd)
            raise
        self._lock_fd, self._lock_created = lock_fd, created
        return True

    def close(self) -> None:
        """Release the lock, deleting its file if this run created it; remove the folder if
        this run created it and nothing but the marker and the lock file is left."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        remove = False
        if self.created and self._lock_created:
            with contextlib.suppress(OSError):
                remove = sorted(os.listdir(fd)) == sorted([MARKER_NAME, LOCK_NAME])
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(MARKER_NAME, dir_fd=fd)
        if self._lock_fd is not None:
            if self._lock_created:
                # Before the lock is released: a run waiting on this file then finds it gone and looks again.
                with contextlib.suppress(OSError):
                    os.unlink(LOCK_NAME, dir_fd=fd)
            os.close(self._lock_fd)
            self._lock_fd = None
        os.close(fd)
        if remove:
            with contextlib.suppress(OSError):  # something new in it: it stays
                os.rmdir(self.directory)

    # --- the spool's files: only names of the spool's patterns come here ---------------------

    @property
    def _fd(self) -> int:
        if self.fd is None:
            raise StoreError(f"spool folder {self.directory} used after it was closed")
        return self.fd

    def path(self, name: str) -> Path:
        return self.directory / name

    def batch_files(self) -> list[str]:
        """The batch files, in spool order (their names)."""
        return sorted(self._listing(_BATCH_NAME))

    def temporary_files(self) -> list[tuple[str, str]]:
        """The temporary files left by an interrupted write, each with its batch file's name."""
        return [(name, name[1 : -len(".tmp")]) for name in sorted(self._listing(_TEMP_NAME))]

    def _listing(self, pattern: re.Pattern[str]) -> list[str]:
        names = []
        with os.scandir(self._fd) as entries:
            for entry in entries:
                if not pattern.fullmatch(entry.name):
                    continue  # not the spool's: never touched
                if not entry.is_file(follow_symlinks=False):
                    log.warning(
                        "%s is %s; left alone",
                        self.path(entry.name),
                        "a symbolic link" if entry.is_symlink() else "not a regular file",
                    )
                    continue
                names.append(entry.name)
        return names

    def read(self, name: str) -> bytes:
        fd = os.open(name, os.O_RDONLY | _OPEN_FLAGS, dir_fd=self._fd)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            return file.read()

    def write(self, name: str, data: bytes) -> None:
        """Write a batch file (new, or in place of the old one) through a fsynced temporary file."""
        temp = f".{name}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600, dir_fd=self._fd)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.install(temp, name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=self._fd)
            raise

    def install(self, temp: str, name: str) -> None:
        """Rename a complete temporary file to its batch file's name."""
        if self._is_file(name):
            self.zero(name)  # the old content of a rewritten batch (expired reads) is not left in freed blocks
        elif self._exists(name):
            raise OSError(errno.EEXIST, "its batch file's name is taken by something else")
        os.replace(temp, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        self.fsync()

    def zero(self, name: str) -> None:
        """Overwrite a file's content with zeros, in place (best effort)."""
        try:
            fd = os.open(name, os.O_WRONLY | _OPEN_FLAGS, dir_fd=self._fd)
        except OSError:
            return
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                size = info.st_size
                while size > 0:
                    size -= os.write(fd, b"\0" * min(size, 1 << 16))
                os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def shred(self, name: str) -> None:
        self.zero(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._fd)
        self.fsync()

    def set_aside(self, name: str) -> Path:
        """Rename a file the spool cannot decode out of the spool's names; its new path."""
        aside, number = f"{name}{UNREADABLE_SUFFIX}", 1
        while self._exists(aside):
            aside, number = f"{name}{UNREADABLE_SUFFIX}.{number}", number + 1
        os.rename(name, aside, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        self.fsync()
        return self.path(aside)

    def fsync(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._fd)

    def _is_file(self, name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(name, dir_fd=self._fd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True


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
    database = document["database"]
    if not isinstance(database, str):
        raise TypeError(f"database is {type(database).__name__}, not text")
    return _Batch(document["key"], reads, counts, passages), database


def _size(number: int) -> str:
    return f"{number // 2**20} MB" if number % 2**20 == 0 else f"{number} bytes"


def _first_deadline(batch: _Batch) -> float:
    deadlines = [r.delete_after for r in batch.reads] + [p.delete_after for p in batch.passages]
    return min(deadlines, default=float("inf"))


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
