"""Folders of batches of kept reads waiting on disk to be sent: the database's outage spool
(anpr/storage/spool.py), each webhook's queue (anpr/sinks/catalog.py) and each MQTT sink's (anpr/sinks/mqtt_client.py)
are each an `Outbox`, told apart by a `Kind` (marker, words of the messages, what a batch
holds and its file format). Its files are made and written by anpr/files.py's primitives.

What such a folder may hold: one JSON file per batch, holding reads a purpose kept, each
with its deletion deadline and key (a spool's batches also hold passages, plate-free
policy counters and the database they were written for), named so that names sort in the
order written, across runs too; its marker and its lock file. A file is written to a
temporary name, mode 0600, fsynced, then renamed into place; what a file held is zeroed
when it is sent, emptied or rewritten (best effort: a journaling file system or an SSD may
keep old blocks). Retention holds there: a read or passage past its deadline is removed
from its batch (`expire`; before a batch is written or sent; `expire_offline` without the
run). A batch that would take the folder past its size limit is refused. An earlier run's
batches are picked up.

The folder is anpr's alone, and anpr touches nothing else in it:

- It is marked by a file of its kind (`.anpr-spool`, `.anpr-webhook-queue`,
  `.anpr-mqtt-queue`): one kind's folder is never taken for another's. A folder anpr creates is made with mode 0700,
  marked as made by anpr (both under a temporary name `.<name>.<random>.new` beside it,
  then renamed into place: no other run ever finds it unmarked), and removed once nothing
  but its marker is left (at close, or after an offline expiry: moved away to
  `.<name>.<key>.gone` first, for the same reason). An existing empty folder is adopted (marked), its mode left as
  it is (a warning if other users may enter it), and never removed. An existing folder
  that holds anything but is not marked is refused, untouched; except one that holds
  nothing but batch files of an anpr from before the markers (and its old `.lock`), which
  is marked and picked up.
- Only these names are ever read, written, renamed or deleted: batch files
  `<20 digits>-<32 hex digits>.json`, their temporary files `.<batch file name>.tmp`, the
  marker, and the lock file `<marker>.lock` (deleted only by the run that holds it, before
  it lets it go). A batch or temporary file that cannot be decoded is not deleted but
  renamed to `<name>.unreadable` (counted as lost, with a warning): anpr never looks at it
  again, and retention does not reach it, so whoever reads the warning must.
- No symbolic link is followed: the folder itself must not be one, every file is opened
  relative to the folder's descriptor with O_NOFOLLOW, and a link with a batch file's name
  is skipped, neither followed nor deleted.
- One process at a time: the folder is locked while in use, with the kernel's lock
  (flock) on the lock file, which goes with its process however it ends: a lock file left
  by a killed run locks nothing, and the next run takes it over. A run refused because
  another holds the folder has changed nothing in it: the folder is marked, or adopted,
  only under the lock.

Not thread-safe: one run loop uses an outbox. Warnings go to `logging` (logger `anpr.storage.outbox`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from anpr.errors import StoreError
from anpr.files import OPEN_FLAGS as _OPEN_FLAGS
from anpr.files import fsync_quietly as _fsync
from anpr.files import install_at as _install_at
from anpr.files import is_file_at as _is_file_at
from anpr.files import lstat_at as _lstat_at
from anpr.files import read_at as _read_at
from anpr.files import replace_at as _replace_at
from anpr.files import shred_at as _shred_at
from anpr.files import write_whole as write_all
from anpr.records import CountKey, Passage, PolicedRead, new_key

UNREADABLE_SUFFIX = ".unreadable"
# The marker's last line tells a folder anpr made (removed once empty) from one it adopted (never removed).
_MADE_BY_ANPR = b"; anpr made this folder and removes it once nothing else is left\n"
_BATCH_NAME = re.compile(r"[0-9]{20}-[0-9a-f]{32}\.json")
_TEMP_NAME = re.compile(r"\.[0-9]{20}-[0-9a-f]{32}\.json\.tmp")
_LEGACY_LOCK_NAME = ".lock"  # of anpr before the markers
_LOCK_ATTEMPTS = 5
UNDECODABLE = (ValueError, KeyError, TypeError, AttributeError)

log = logging.getLogger(__name__)


class OutboxInUse(StoreError):
    """Another process holds the folder's lock."""


@dataclass
class Batch:
    """What one batch file holds. A webhook's batches hold reads only; an MQTT sink's, reads or passages."""

    reads: list[PolicedRead]
    counts: dict[CountKey, int] = field(default_factory=dict)
    passages: list[Passage] = field(default_factory=list)
    key: str = field(default_factory=new_key)  # in its file's name; for the spool, its key in the database too

    def drop_expired(self, now: float) -> tuple[int, int]:
        """Drop the reads and passages whose deadline has passed; how many of each."""
        # A deadline is inclusive, as in ReadStore.purge.
        return self.drop_where(lambda r: r.delete_after <= now, lambda p: p.delete_after <= now)

    def drop_where(self, read: Callable[[PolicedRead], bool], passage: Callable[[Passage], bool]) -> tuple[int, int]:
        """Drop the reads and passages the predicates select; how many of each."""
        kept = [r for r in self.reads if not read(r)]
        kept_passages = [p for p in self.passages if not passage(p)]
        dropped = (len(self.reads) - len(kept), len(self.passages) - len(kept_passages))
        self.reads, self.passages = kept, kept_passages
        return dropped

    @property
    def empty(self) -> bool:
        return not self.reads and not self.counts and not self.passages

    @property
    def first_deadline(self) -> float:
        return min([r.delete_after for r in self.reads] + [p.delete_after for p in self.passages], default=math.inf)


B = TypeVar("B", bound=Batch)


@dataclass(frozen=True)
class Kind(Generic[B]):
    """What a batch folder is for."""

    noun: str  # in messages: "<noun> folder X ...", "unreadable <noun> file"
    title: str  # the marker's text begins with it
    marker: str  # the marker file's name; the lock file's is this and ".lock"
    setting: str  # what names the folder, for messages
    size_setting: str  # what bounds it, for messages
    encode: Callable[[B, float], bytes]  # a batch, and the Unix time it is written
    decode: Callable[[bytes], B]  # raises one of UNDECODABLE when it cannot

    @property
    def lock(self) -> str:
        return f"{self.marker}.lock"


class Tally(Protocol):
    """Where an outbox counts what it loses and what retention removes (its owner's status)."""

    lost_batches: int
    lost_reads: int
    expired_reads: int


@dataclass
class _Tally:
    lost_batches: int = 0
    lost_reads: int = 0
    expired_reads: int = 0


@dataclass(frozen=True)
class Expired:
    """What retention removed from a batch folder."""

    reads: int = 0  # past their deadline
    passages: int = 0  # past their deadline
    batches: int = 0  # batch files deleted: all they held had expired, or they could not be rewritten without it
    lost_reads: int = 0  # live reads deleted with a batch file that could not be rewritten


@dataclass
class Entry:
    """One batch file, as indexed in memory (its content stays on disk until it is sent)."""

    name: str
    reads: int
    size: int
    first_deadline: float  # the earliest delete_after of its reads and passages (inf if none)
    passages: int = 0


class _NoFolder(Exception):
    """There is no folder of its kind to open, and none was to be made."""


class _Vanished(Exception):
    """The folder was removed between its making and its opening: its last run closed it."""


class Outbox(Generic[B]):
    """An open, locked batch folder, and its batches indexed oldest first. Every file is
    reached through the folder's descriptor, without following a link: a folder renamed,
    or replaced by a link while in use, cannot send reads or deletions anywhere else."""

    def __init__(
        self,
        kind: Kind[B],
        directory: str | os.PathLike[str],
        max_bytes: float = math.inf,
        *,
        tally: Tally,
        busy: str,  # ends the message when another process holds the folder
        clock: Callable[[], float] = time.time,
        create: bool = True,  # else _NoFolder for a missing folder, or an empty unmarked one, left as it is
    ) -> None:
        self.kind, self.directory, self.max_bytes = kind, Path(directory), max_bytes
        self.tally, self.clock = tally, clock
        self.entries: list[Entry] = []
        self.bytes = 0
        self.made = False  # by anpr (its marker says so): only then may the folder be removed
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._last_ns = 0
        vanished = False
        for _ in range(_LOCK_ATTEMPTS):
            try:
                self._fd = self._open_folder(create)
            except _Vanished:
                vanished = True  # another run, ending, removed it as this one found it: make it again
                continue
            vanished = False
            try:
                # Marked only under the lock: a run refused here leaves the folder as it found it.
                if self._lock(busy) and self._still_at_its_path():
                    self._claim(self._dir, create)
                    return
            except BaseException:
                self.close()
                raise
            self.close()  # its last holder removed the lock file, or the folder, as we took it: look again
        if vanished:
            raise StoreError(f"cannot open {self._what}: other runs kept removing it as it was made")
        raise OutboxInUse(f"{self._what} is in use by another run: {busy}")

    @property
    def reads(self) -> int:
        return sum(e.reads for e in self.entries)

    @property
    def passages(self) -> int:
        return sum(e.passages for e in self.entries)

    # --- the batches ---------------------------------------------------------------------------

    def pick_up(self, belongs: Callable[[B], bool] = lambda batch: True) -> list[B]:
        """Index the batches an earlier run left, finishing its interrupted writes; those
        `belongs` refuses are left as they are, not indexed, and returned."""
        for temp in self._listing(_TEMP_NAME):
            try:
                self.kind.decode(_read_at(self._dir, temp))
                _install_at(self._dir, temp, temp[1 : -len(".tmp")])  # written and fsynced, only the rename was missing
            except UNDECODABLE as exc:
                self._set_aside(temp, exc, reads=0)  # cut short, or of another format
            except OSError as exc:
                log.warning("cannot finish %s file %s (%s); left as it is", self.kind.noun, self._path(temp), _why(exc))
        foreign = []
        for name in self._listing(_BATCH_NAME):
            loaded = self._read(name, None)
            if loaded is None:
                continue
            batch, size = loaded
            if not belongs(batch):
                foreign.append(batch)
                continue
            self.entries.append(Entry(name, len(batch.reads), size, batch.first_deadline, len(batch.passages)))
            self.bytes += size
        return foreign

    def put(self, batch: B) -> bool:
        """Write a batch behind the others, without what has passed its deadline; False if
        nothing was left to write. OSError, its message a whole sentence, when it does not
        fit or cannot be written: the batch is then counted as lost."""
        now = self.clock()
        self.tally.expired_reads += batch.drop_expired(now)[0]
        if batch.empty:
            return False
        data = self.kind.encode(batch, now)
        # The wall clock, kept increasing: names sort in the order written, across runs too.
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        name = f"{self._last_ns:020d}-{batch.key}.json"
        outbox = f"{self.kind.noun} {self.directory}"
        if self.bytes + len(data) > self.max_bytes:
            self._lose(len(batch.reads))
            raise OSError(errno.ENOSPC, f"{outbox} is full ({_size(self.max_bytes)}, {self.kind.size_setting})")
        try:
            _replace_at(self._dir, name, data)
        except OSError as exc:
            self._lose(len(batch.reads))
            raise OSError(exc.errno, f"cannot write to {outbox} ({_why(exc)})") from None
        self.entries.append(Entry(name, len(batch.reads), len(data), batch.first_deadline, len(batch.passages)))
        self.bytes += len(data)
        return True

    def send(self, deliver: Callable[[B], object], now: float, more: Callable[[], bool]) -> None:
        """Hand the batches to `deliver`, oldest first, without what has passed its deadline,
        deleting each once delivered, while `more()` (at least one). An exception from
        `deliver` stops it and is raised; that batch stays, less the reads and passages
        `deliver` removed from it before it failed (those it did deliver): only the rest is
        sent again."""
        for number, entry in enumerate(list(self.entries)):
            if number and not more():
                return
            batch = self._load(entry)
            if batch is None:
                continue
            self.tally.expired_reads += batch.drop_expired(now)[0]
            if not batch.empty:
                held = (len(batch.reads), len(batch.passages))
                try:
                    deliver(batch)
                except BaseException:
                    if (len(batch.reads), len(batch.passages)) != held:
                        self._keep_rest(entry, batch)
                    raise
            self._remove(entry)

    def _keep_rest(self, entry: Entry, batch: B) -> None:
        """Write back what is left of a batch partly delivered; if it cannot be, the file stays as
        it was, and what was delivered from it will be sent again (a key tells the copies apart)."""
        if batch.empty:
            self._remove(entry)
            return
        try:
            self._rewrite(entry, batch)
        except OSError as exc:
            log.warning(
                "cannot rewrite %s file %s (%s); what was sent from it will be sent again",
                self.kind.noun,
                self._path(entry.name),
                _why(exc),
            )

    def expire(self, now: float) -> Expired:
        """Drop what has passed its deadline from the batch files, rewriting each in place."""

        def drop(batch: B) -> tuple[int, int]:
            dropped = batch.drop_expired(now)
            self.tally.expired_reads += dropped[0]
            return dropped

        return self._drop([e for e in self.entries if e.first_deadline <= now], drop)

    def remove_where(self, read: Callable[[PolicedRead], bool], passage: Callable[[Passage], bool]) -> Expired:
        """Drop the reads and passages the predicates select from every batch file (an
        erasure request), rewriting each in place; counted as `Expired` counts retention."""
        return self._drop(list(self.entries), lambda batch: batch.drop_where(read, passage))

    def held(self) -> list[B]:
        """Every indexed batch, as its file holds it now (one that cannot be read is left out)."""
        return [batch for entry in list(self.entries) if (batch := self._load(entry)) is not None]

    def _drop(self, entries: list[Entry], drop: Callable[[B], tuple[int, int]]) -> Expired:
        reads = passages = batches = lost = 0
        for entry in entries:
            batch = self._load(entry)
            if batch is None:
                continue
            dropped_reads, dropped_passages = drop(batch)
            reads, passages = reads + dropped_reads, passages + dropped_passages
            if batch.empty:
                self._remove(entry)
                batches += 1
                continue
            if not dropped_reads and not dropped_passages:
                continue
            try:
                self._rewrite(entry, batch)
            except OSError as exc:
                # What is dropped must not stay on disk: the batch goes rather than it.
                log.warning(
                    "cannot rewrite %s file %s (%s); dropping its %d read(s) and %d passage(s)",
                    self.kind.noun,
                    self._path(entry.name),
                    _why(exc),
                    len(batch.reads),
                    len(batch.passages),
                )
                self._lose(len(batch.reads))
                self._remove(entry)
                batches, lost = batches + 1, lost + len(batch.reads)
        return Expired(reads, passages, batches, lost)

    def _rewrite(self, entry: Entry, batch: B) -> None:
        """Replace a batch file with `batch` (what is left of it), in place; OSError if it cannot be."""
        data = self.kind.encode(batch, self.clock())
        _replace_at(self._dir, entry.name, data)
        self.bytes += len(data) - entry.size
        entry.size, entry.first_deadline = len(data), batch.first_deadline
        entry.reads, entry.passages = len(batch.reads), len(batch.passages)

    def _load(self, entry: Entry) -> B | None:
        """An indexed batch; None (and no longer indexed) when it cannot be read any more."""
        loaded = self._read(entry.name, entry.reads)
        if loaded is None:
            self._forget(entry)
            return None
        return loaded[0]

    def _remove(self, entry: Entry) -> None:
        _shred_at(self._dir, entry.name)
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        self.entries.remove(entry)
        self.bytes -= entry.size

    def _lose(self, reads: int) -> None:
        self.tally.lost_batches += 1
        self.tally.lost_reads += reads

    def _read(self, name: str, indexed_reads: int | None) -> tuple[B, int] | None:
        """A batch file's batch and size; None when it cannot be read or decoded.
        `indexed_reads`: its reads, if it was indexed (None while picking up)."""
        try:
            data = _read_at(self._dir, name)
        except OSError as exc:
            log.warning("cannot read %s file %s (%s); left as it is", self.kind.noun, self._path(name), _why(exc))
            if indexed_reads is not None:  # counted as pending until now: it will not be sent in this run
                self._lose(indexed_reads)
            return None
        try:
            return self.kind.decode(data), len(data)
        except UNDECODABLE as exc:
            self._set_aside(name, exc, indexed_reads or 0)
            return None

    def _set_aside(self, name: str, exc: Exception, reads: int) -> None:
        """Rename a file that cannot be decoded out of the folder's names."""
        self._lose(reads)
        unreadable = f"unreadable {self.kind.noun} file {self._path(name)} ({exc})"
        aside, number = f"{name}{UNREADABLE_SUFFIX}", 1
        while _lstat_at(self._dir, aside) is not None:
            aside, number = f"{name}{UNREADABLE_SUFFIX}.{number}", number + 1
        try:
            os.rename(name, aside, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except OSError as error:
            log.warning("%s; cannot rename it (%s), left as it is", unreadable, _why(error))
            return
        _fsync(self._dir)
        log.warning(
            "%s; renamed to %s: its reads will not be sent, and retention does not reach it",
            unreadable,
            self._path(aside),
        )

    # --- the folder ------------------------------------------------------------------------------

    @property
    def _what(self) -> str:
        return f"{self.kind.noun} folder {self.directory}"

    @property
    def _dir(self) -> int:
        if self._fd is None:
            raise StoreError(f"{self._what} used after it was closed")
        return self._fd

    def _path(self, name: str) -> Path:
        return self.directory / name

    def _open_folder(self, create: bool) -> int:
        """The folder's descriptor (the folder made first, if missing and `create`), once it is
        known that it may be of its kind; nothing in it is changed here (see `_claim`)."""
        if create:
            self._make()
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if create:
                raise _Vanished from None
            raise _NoFolder from None
        except OSError as exc:
            setting = self.kind.setting
            if os.path.islink(self.directory):
                raise StoreError(
                    f"{self._what} is a symbolic link, which anpr does not follow: set {setting} to the folder itself"
                ) from None
            if exc.errno == errno.ENOTDIR:
                raise StoreError(f"{self._what} is not a folder: set {setting} to a folder") from None
            raise StoreError(f"cannot open {self._what}: {_why(exc)}") from None
        try:
            self._judge(fd, create)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _make(self) -> None:
        """Make the missing folder, already marked as made by anpr: it is built under a
        temporary name beside it and renamed into place, so that no other run ever finds it
        empty and unmarked, and adopts it (then it would never be removed)."""
        parent = self.directory.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(self.directory):
                return
            temp = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", suffix=".new", dir=parent))
        except OSError as exc:
            raise StoreError(f"cannot create {self._what}: {_why(exc)}") from None
        try:
            fd = os.open(temp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o700)  # whatever the umask
                _write_marker(fd, self.kind, made=True)
            finally:
                os.close(fd)
            # Fails on a folder made meanwhile by another anpr (it holds its marker); would
            # replace one that someone else made empty at this very instant.
            os.rename(temp, self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp / self.kind.marker)
            with contextlib.suppress(OSError):
                os.rmdir(temp)
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # else: another run made it first
                raise StoreError(f"cannot create {self._what}: {_why(exc)}") from None

    def _judge(self, fd: int, create: bool) -> bool:
        """Whether the folder is marked as of its kind (else it may be adopted, and is to be
        marked); StoreError when it is not of its kind, _NoFolder when empty and not to be made.
        Its lock file is no sign of anything: a run that took it may not have marked it yet.
        Nor is a marker listed but gone when looked at: a run closing the folder removed it."""
        kind = self.kind
        try:
            names = [name for name in os.listdir(fd) if name not in (kind.lock, kind.marker)]
            if _is_file_at(fd, kind.marker):
                return True
            if not names and not create:
                raise _NoFolder
            if not names or self._holds_old_batches(fd, names):
                return False
        except OSError as exc:
            raise StoreError(f"cannot use {self._what}: {_why(exc)}") from None
        raise StoreError(
            f"{self._what} holds files but no {kind.marker} marker, so it is not an anpr {kind.noun} "
            f"and is left untouched: set {kind.setting} to a dedicated folder"
        )

    def _claim(self, fd: int, create: bool) -> None:
        """Under the lock: refuse a folder that is not of its kind, marking one that may be."""
        kind = self.kind
        marked = self._judge(fd, create)
        try:
            if marked:
                self.made = _read_at(fd, kind.marker).endswith(_MADE_BY_ANPR)
            else:
                _write_marker(fd, kind, made=False)
                log.info("%s marked as anpr's (%s)", self._what, kind.marker)
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        except OSError as exc:
            raise StoreError(f"cannot use {self._what}: {_why(exc)}") from None
        if mode & 0o077:
            log.warning(
                "%s is open to other users (mode %04o); anpr leaves it so: chmod 700 it, "
                "or pick a folder of its own, to keep them from its files",
                self._what,
                mode,
            )

    @staticmethod
    def _holds_old_batches(fd: int, names: list[str]) -> bool:
        """Whether the folder holds nothing but regular files an anpr from before the markers
        would have written there (batch files, at least one, their temporary files, its lock)."""
        if not any(_BATCH_NAME.fullmatch(n) or _TEMP_NAME.fullmatch(n) for n in names):
            return False
        return all(
            (_BATCH_NAME.fullmatch(name) or _TEMP_NAME.fullmatch(name) or name == _LEGACY_LOCK_NAME)
            and _is_file_at(fd, name)
            for name in names
        )

    def _lock(self, busy: str) -> bool:
        """Take the folder's lock; False when its file was removed as it was taken (look again).
        The lock is the kernel's (flock), released when its process ends, however it ends: a
        lock file left by a killed run is no lock, and the run that takes it next owns it."""
        fd, name = self._dir, self.kind.lock
        try:
            try:
                lock_fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600, dir_fd=fd)
            except FileExistsError:
                lock_fd = os.open(name, os.O_RDWR | _OPEN_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot lock {self._what} ({name}: {_why(exc)})") from None
        try:
            held = os.fstat(lock_fd)
            if not stat.S_ISREG(held.st_mode):
                raise StoreError(f"cannot lock {self._what}: {name} is not a regular file")
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutboxInUse(f"{self._what} is in use by another run: {busy}") from None
            except OSError as exc:
                raise StoreError(f"cannot lock {self._what}: {_why(exc)}") from None
            named = _lstat_at(fd, name)
            if named is None or (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
                os.close(lock_fd)
                return False
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(lock_fd)
            raise
        self._lock_fd = lock_fd
        return True

    def _still_at_its_path(self) -> bool:
        """Whether the folder locked is still the one at its path: the run that held it may
        have moved it away to remove it (`close`) after it was opened here."""
        at_path = _lstat_at(None, self.directory)
        opened = os.fstat(self._dir)
        return at_path is not None and (at_path.st_dev, at_path.st_ino) == (opened.st_dev, opened.st_ino)

    def close(self) -> None:
        """Release the folder: its lock, deleting the lock file; the folder itself if anpr
        made it and nothing but the marker and the lock file is left. Batches left in it
        wait for the next run."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        marker, lock = self.kind.marker, self.kind.lock
        gone: Path | None = None
        if self.made and self._lock_fd is not None:
            with contextlib.suppress(OSError):
                if sorted(os.listdir(fd)) == sorted([marker, lock]):
                    # Moved away first, under the lock: a run starting now never finds the
                    # folder at its path unmarked (it would adopt it), but makes a new one.
                    moved = self.directory.with_name(f".{self.directory.name}.{new_key()}.gone")
                    os.rename(self.directory, moved)
                    gone = moved
        if gone is not None:
            with contextlib.suppress(OSError):
                os.unlink(marker, dir_fd=fd)
        if self._lock_fd is not None:
            # Before the lock is released: a run waiting on this file then finds it gone and looks again.
            with contextlib.suppress(OSError):
                os.unlink(lock, dir_fd=fd)
            os.close(self._lock_fd)
            self._lock_fd = None
        os.close(fd)
        if gone is not None:
            _remove_moved_folder(gone)

    def _listing(self, pattern: re.Pattern[str]) -> list[str]:
        """The regular files whose names match `pattern`, sorted (oldest first)."""
        names = []
        with os.scandir(self._dir) as entries:
            for entry in entries:
                if not pattern.fullmatch(entry.name):
                    continue  # not anpr's: never touched
                if not entry.is_file(follow_symlinks=False):
                    log.warning(
                        "%s is %s; left alone",
                        self._path(entry.name),
                        "a symbolic link" if entry.is_symlink() else "not a regular file",
                    )
                    continue
                names.append(entry.name)
        return sorted(names)


def _write_marker(fd: int, kind: Kind[Any], made: bool) -> None:
    text = f"{kind.title} ({kind.setting}): anpr touches only its own batch files here".encode()
    try:
        marker = os.open(kind.marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600, dir_fd=fd)
    except FileExistsError:
        if _is_file_at(fd, kind.marker):
            return  # marked by another anpr at the same moment
        raise
    try:
        write_all(marker, text + (_MADE_BY_ANPR if made else b"\n"))
    finally:
        os.close(marker)
    _fsync(fd)


def _remove_moved_folder(path: Path) -> None:
    """Remove a folder `close` moved away once empty. A run that opened it before the move
    may have put its lock file there for an instant: it finds the folder moved and takes
    its lock file out again, so the removal is tried a few times."""
    for attempt in range(_LOCK_ATTEMPTS):
        try:
            os.rmdir(path)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == _LOCK_ATTEMPTS - 1:
                log.warning("cannot remove the empty folder %s (%s); remove it by hand", path, _why(exc))
                return
            time.sleep(0.01)


class Backoff:
    """When to try again an endpoint whose batches wait in an outbox (the database, a
    webhook): every time while it answers; once it fails, not before `initial` seconds,
    then twice as long after each failure, up to `maximum`, until it answers again."""

    def __init__(self, monotonic: Callable[[], float], initial: float, maximum: float) -> None:
        self.monotonic, self.initial, self.maximum = monotonic, initial, maximum
        self._delay, self._retry_at = initial, 0.0

    def may_try(self, up: bool) -> bool:
        return up or self.monotonic() >= self._retry_at

    def failed(self) -> None:
        self._retry_at = self.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.maximum)

    def answered(self) -> None:
        self._delay, self._retry_at = self.initial, 0.0


@dataclass
class Reachability:
    """Whether the far end of a sink that queues (a webhook, an MQTT broker) answers, as the
    sink has seen it. The sinks' own status records add what went through them."""

    up: bool = True
    down_since: float | None = None  # Unix time the current outage was first seen
    last_error: str | None = None
    failed_attempts: int = 0

    def failed(self, error: str, now: float) -> bool:
        """An attempt failed with `error`; whether that began an outage (warn once per outage)."""
        self.failed_attempts += 1
        self.last_error = error
        if not self.up:
            return False
        self.up, self.down_since = False, now
        return True

    def answered(self, now: float) -> float | None:
        """An attempt went through; the seconds of the outage it ended, None when there was none."""
        if self.up:
            return None
        outage = now - (self.down_since or now)
        self.up, self.down_since = True, None
        return outage


class Outage:
    """What a sink that queues on disk (a webhook, an MQTT broker) knows of its far end's
    outages: whether it answers (`status`), when to try it again (Backoff), and what the log
    is told: one warning when an outage begins, one when the queue itself fails during it
    (a full disk), one line when the far end answers again."""

    def __init__(
        self,
        status: Reachability,
        shown: str,
        waiting: str,
        clock: Callable[[], float],
        backoff: Backoff,
        logger: logging.Logger,  # the sink's own: its outages are its messages
    ) -> None:
        self.status, self.shown, self.waiting, self.clock = status, shown, waiting, clock
        self._backoff, self._log = backoff, logger
        self._queue_warned = False

    def may_try(self) -> bool:
        return self._backoff.may_try(self.status.up)

    def failed(self, error: str, folder: Path) -> None:
        """An attempt failed: `waiting` (what the sink queues: "batches", "messages") wait in `folder`."""
        if self.status.failed(error, self.clock()):
            self._log.warning("%s; its %s wait in %s and are sent when it answers", error, self.waiting, folder)
        self._backoff.failed()

    def answered(self) -> None:
        outage = self.status.answered(self.clock())
        if outage is not None:
            self._backoff.answered()
            self._queue_warned = False
            self._log.info("%s answers again after %.0f s", self.shown, outage)

    def cannot_queue(self, error: OSError, what: str, lost: str) -> None:
        """The queue could not take `what` ("a batch"); `lost` ("its reads") are lost until it answers."""
        if not self._queue_warned:
            self._queue_warned = True
            self._log.warning(
                "%s: cannot queue %s (%s): %s are lost until it answers",
                self.shown,
                what,
                error.strerror or error,
                lost,
            )


@contextlib.contextmanager
def _offline(kind: Kind[Any], directory: str | os.PathLike[str], busy: str) -> Iterator[Outbox[Any] | None]:
    """A folder of `kind` opened without its run, its batches picked up; None when there is
    no folder (a missing one, or an empty one without the marker: neither made nor marked).
    OutboxInUse when a run holds it (`busy` ends the message), StoreError when it is not a
    folder of this kind."""
    try:
        outbox = Outbox(kind, directory, tally=_Tally(), busy=busy, create=False)
    except _NoFolder:
        yield None
        return
    try:
        outbox.pick_up()
        yield outbox
    finally:
        outbox.close()


def expire_offline(kind: Kind[Any], directory: str | os.PathLike[str], now: float, *, busy: str) -> Expired:
    """Apply retention to a folder of `kind` without its run (`_offline`): drop every read
    and passage whose deadline has passed from its batch files, whatever they were written
    for, and delete the files left empty."""
    with _offline(kind, directory, busy) as outbox:
        return outbox.expire(now) if outbox is not None else Expired()


def held_offline(kind: Kind[Any], directory: str | os.PathLike[str], *, busy: str) -> list[Any]:
    """The batches a folder of `kind` holds, read without its run (`_offline`)."""
    with _offline(kind, directory, busy) as outbox:
        return outbox.held() if outbox is not None else []


def remove_offline(
    kind: Kind[Any],
    directory: str | os.PathLike[str],
    read: Callable[[PolicedRead], bool],
    passage: Callable[[Passage], bool],
    *,
    busy: str,
) -> Expired:
    """Drop the reads and passages the predicates select from a folder of `kind`, without
    its run (`_offline`)."""
    with _offline(kind, directory, busy) as outbox:
        return outbox.remove_where(read, passage) if outbox is not None else Expired()


# What a data subject's request says to a run that holds a folder: the request must see all of it.
SUBJECT_BUSY = "stop that run to answer a data subject's request"


def subject_records(kind: Kind[Any], directory: str | os.PathLike[str], plate: Callable[[str], bool]) -> list[dict]:
    """The reads and passages (dict forms) in a folder of `kind` whose plate `plate` selects."""
    batches = held_offline(kind, directory, busy=SUBJECT_BUSY)
    records = [r.to_dict() for b in batches for r in b.reads] + [p.to_dict() for b in batches for p in b.passages]
    return [r for r in records if plate(r["plate"])]


def erase_subject_records(
    kind: Kind[Any], directory: str | os.PathLike[str], erase: Callable[[dict[str, Any]], bool]
) -> int:
    """Remove the reads and passages (judged by their dict form) `erase` selects from a
    folder of `kind`: how many."""
    erased = remove_offline(
        kind, directory, lambda r: erase(r.to_dict()), lambda p: erase(p.to_dict()), busy=SUBJECT_BUSY
    )
    return erased.reads + erased.passages


def _size(number: float) -> str:
    return f"{int(number) // 2**20} MB" if number % 2**20 == 0 else f"{int(number)} bytes"


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
