"""Batches of kept reads waiting on disk for an endpoint that does not answer (the
webhook's queue), and the file handling that private files of reads need.

One folder per queue, mode 0700, locked by the run that uses it; one JSON file per batch,
holding its reads' `to_dict(exact=True)` forms, with their deletion deadlines. A file is
written under a temporary name, fsynced and renamed into place, never through a symbolic
link, mode 0600; a file sent, emptied or rewritten is overwritten with zeros first (best
effort: a journaling file system or an SSD may keep old blocks). File names sort in queue
order, across runs too. Retention holds in the queue: `expire` removes reads whose
deadline has passed, from the file as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from anpr.errors import StoreError
from anpr.records import PolicedRead, new_key

QUEUE_FORMAT = 1
LOCK_NAME = ".lock"
TEMP_SUFFIX = ".tmp"

log = logging.getLogger("anpr.sinks")


class QueueInUse(StoreError):
    """Another run holds the queue folder."""


@dataclass
class Entry:
    """One queued batch, as indexed in memory (its reads stay on disk until sent)."""

    path: Path
    reads: int
    size: int
    first_deadline: float  # the earliest delete_after of its reads


class BatchQueue:
    """A folder of batches, oldest first. Not thread-safe: one run loop uses it."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: float, clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.clock = clock
        self.entries: list[Entry] = []
        self.bytes = 0
        self.lost_reads = 0  # unreadable files, and batches dropped because a rewrite failed
        self._last_ns = 0
        self._lock_fd: int | None = self._open_and_lock()
        try:
            self._pick_up()
        except BaseException:
            self.close()
            raise

    @property
    def reads(self) -> int:
        return sum(e.reads for e in self.entries)

    def put(self, reads: Sequence[PolicedRead]) -> None:
        """Queue a batch behind the others; OSError when it does not fit or cannot be written."""
        data = _encode(reads, self.clock())
        if self.bytes + len(data) > self.max_bytes:
            raise OSError(f"queue {self.directory} is full ({self.max_bytes / 2**20:g} MB)")
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        path = self.directory / f"{self._last_ns:020d}-{new_key()}.json"
        write_private(path, data)
        self.entries.append(Entry(path, len(reads), len(data), _first_deadline(reads)))
        self.bytes += len(data)

    def load(self, entry: Entry) -> list[PolicedRead] | None:
        """The batch's reads; None (the file deleted, its reads counted lost) if it cannot be read."""
        try:
            return _decode(read_private(entry.path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable queue file %s (%s); deleted", entry.path, exc)
            self.lost_reads += entry.reads
            self.remove(entry)
            return None

    def remove(self, entry: Entry) -> None:
        shred(entry.path)
        self.entries.remove(entry)
        self.bytes -= entry.size

    def expire(self, now: float) -> int:
        """Remove the reads whose deadline has passed (inclusive, as the database's purge);
        the number removed."""
        removed = 0
        for entry in [e for e in self.entries if e.first_deadline <= now]:
            reads = self.load(entry)
            if reads is None:
                continue
            kept = [r for r in reads if r.delete_after > now]
            removed += len(reads) - len(kept)
            if not kept:
                self.remove(entry)
                continue
            data = _encode(kept, self.clock())
            try:
                write_private(entry.path, data)
            except OSError as exc:
                # The expired reads must not stay on disk: the batch goes rather than them.
                log.warning("cannot rewrite queue file %s (%s); its %d read(s) dropped", entry.path, exc, len(kept))
                self.lost_reads += len(kept)
                self.remove(entry)
                continue
            self.bytes += len(data) - entry.size
            entry.size, entry.reads, entry.first_deadline = len(data), len(kept), _first_deadline(kept)
        return removed

    def close(self) -> None:
        """Release the folder; it is removed if empty (batches left are sent by the next run)."""
        if self._lock_fd is None:
            return
        (self.directory / LOCK_NAME).unlink(missing_ok=True)
        os.close(self._lock_fd)  # closing releases the lock
        self._lock_fd = None
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    def _open_and_lock(self) -> int:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.chmod(0o700)  # mkdir's mode is masked by the umask; an existing folder is tightened
            fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot use queue folder {self.directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(self.directory / LOCK_NAME).st_ino:
                raise OSError("lock file replaced")  # its last holder removed it as we opened it
        except OSError:
            os.close(fd)
            raise QueueInUse(f"queue folder {self.directory} is in use by another run") from None
        return fd

    def _pick_up(self) -> None:
        """Index the batches an earlier run left, finishing or discarding its interrupted writes."""
        for temp in sorted(self.directory.glob(f".*.json{TEMP_SUFFIX}")):  # see temp_name
            final = temp.with_name(temp.name[1 : -len(TEMP_SUFFIX)])
            try:
                _decode(read_private(temp))
            except (OSError, ValueError, KeyError, TypeError):
                shred(temp)  # cut short before it was complete
                continue
            if final.exists():
                shred(final)
            os.replace(temp, final)  # written and fsynced, only the rename was missing
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = read_private(path)
                reads = _decode(data)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable queue file %s (%s); deleted", path, exc)
                shred(path)
                continue
            self.entries.append(Entry(path, len(reads), len(data), _first_deadline(reads)))
            self.bytes += len(data)


def _encode(reads: Sequence[PolicedRead], queued_at: float) -> bytes:
    document = {"format": QUEUE_FORMAT, "queued_at": queued_at, "reads": [r.to_dict(exact=True) for r in reads]}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode(data: bytes) -> list[PolicedRead]:
    document = json.loads(data)
    if document.get("format") != QUEUE_FORMAT:
        raise ValueError(f"unknown queue format {document.get('format')!r}")
    return [PolicedRead.from_dict(entry) for entry in document["reads"]]


def _first_deadline(reads: Sequence[PolicedRead]) -> float:
    return min((r.delete_after for r in reads), default=float("inf"))


# --- private files ---------------------------------------------------------------------------


def temp_name(path: Path) -> Path:
    """Where `write_private` writes `path`'s next content before renaming it into place."""
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: a 0600 temporary file beside it, fsynced,
    renamed into place; then the old content, if any, is zeroed (after the rename, so
    that a crash in between loses neither)."""
    temp = temp_name(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            old: int | None = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        except OSError:
            old = None  # a new file, or not one to zero
        try:
            os.replace(temp, path)
            if old is not None:
                zero(old)
        finally:
            if old is not None:
                os.close(old)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def read_private(path: Path) -> bytes:
    """A file's bytes, not through a symbolic link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        return file.read()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def zero(path: Path | int) -> None:
    """Overwrite a file's content with zeros in place (a path, never followed if a link;
    or a descriptor opened for writing without O_APPEND); best effort."""
    try:
        fd = path if isinstance(path, int) else os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, 0, os.SEEK_SET)
        while size > 0:
            size -= os.write(fd, b"\0" * min(size, 1 << 16))
        os.fsync(fd)
    except OSError:
        pass
    finally:
        if not isinstance(path, int):
            os.close(fd)


def shred(path: Path) -> None:
    zero(path)
    path.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
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
