"""The JSON-lines export (`type: jsonl_export`): one JSON object per kept read appended to
a file that is anpr's private file (anpr/files.py: created 0600; one that is a link,
another user's or open to others is refused); `purge_export` applies retention to it."""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from anpr.config.sinks import SinkSettings
from anpr.errors import StoreError
from anpr.files import Use, append_whole, check_existing, open_file, shred, temp_name, write_private
from anpr.records import PolicedRead

if TYPE_CHECKING:
    from anpr.policy.gate import PolicedSink

log = logging.getLogger(__name__)


class JsonlExportSettings(SinkSettings):
    type: Literal["jsonl_export"]
    path: Path  # the file appended to

    def in_folder(self, folder: Path, stem: str) -> SinkSettings:
        return self.model_copy(update={"path": folder / f"{stem}.jsonl"})

    def purge_files(self, name: str, now: float) -> tuple[int, str] | None:
        return purge_export(self.path, now), f"export {self.path}"

    def held_records(self, name: str, plate: Callable[[str], bool]) -> tuple[str, list[dict[str, Any]]] | None:
        return f"export {self.path}", export_records(self.path, plate)

    def erase_records(self, name: str, erase: Callable[[dict[str, Any]], bool]) -> tuple[int, str] | None:
        return erase_from_export(self.path, erase), f"export {self.path}"


class JsonlExport:
    def __init__(self, settings: JsonlExportSettings, database: PolicedSink | None = None) -> None:
        self.path = settings.path
        try:
            check_existing(self.path)  # refused before the first frame, not at the first read
        except OSError as exc:
            raise StoreError(f"cannot write export {self.path}: {exc.strerror or exc}") from None

    def write(self, reads: Sequence[PolicedRead]) -> None:
        if not reads:
            return
        data = "".join(json.dumps(r.to_dict()) + "\n" for r in reads).encode("utf-8")
        try:
            fd = _locked_export(self.path, "append")
            try:
                append_whole(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(f"cannot write export {self.path}: {exc.strerror or exc}") from None


def _locked_export(path: Path, use: Use) -> int:
    """`path` opened as anpr's private file (anpr/files.py) and locked against a concurrent
    purge. A purge replaces the file: a descriptor of the file it replaced is reopened, or
    lines written there would vanish with it."""
    while True:
        fd = open_file(path, use)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino:
                return fd
        except FileNotFoundError:
            pass  # removed as we locked it: open it again (a write recreates it)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def purge_export(path: str | os.PathLike[str], now: float) -> int:
    """Remove the lines of a `jsonl_export` file whose `delete_after` is at or before `now`:
    the number removed. The file is rewritten atomically (0600) under the same lock the
    run's writes take, and what it held before is zeroed (best effort). A line that cannot
    be read as a read's JSON object is left in place, and counted in a warning (logger
    `anpr.sinks.jsonl`). A missing file has nothing to purge."""
    # A deadline is inclusive, as in the database's purge.
    return _remove_lines(Path(path), "purge", lambda record: _deadline(record) <= now)


def erase_from_export(path: str | os.PathLike[str], erase: Callable[[dict[str, Any]], bool]) -> int:
    """Remove the lines of a `jsonl_export` file whose read `erase` selects (a data subject's
    erasure request), as `purge_export` removes expired ones: the number removed."""
    return _remove_lines(Path(path), "erase from", erase)


def export_records(path: str | os.PathLike[str], plate: Callable[[str], bool]) -> list[dict[str, Any]]:
    """The reads of a `jsonl_export` file whose plate `plate` selects, read under the lock."""
    path = Path(path)
    try:
        # As for a rewrite: an export too open to others is still read, to say what it holds.
        fd = _locked_export(path, "rewrite")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot read export {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(os.dup(fd), "rb") as file:
            records = [_record(line) for line in file.read().splitlines()]
    finally:
        os.close(fd)
    return [r for r in records if r is not None and plate(str(r.get("plate", "")))]


def _remove_lines(path: Path, doing: str, remove: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite an export without the lines whose read `remove` selects, under the lock."""
    try:
        fd = _locked_export(path, "rewrite")
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StoreError(f"cannot {doing} export {path}: {exc.strerror or exc}") from None
    try:
        shred(temp_name(path))  # left by a rewrite cut short (it may hold lines that were to go)
        with os.fdopen(os.dup(fd), "rb") as file:
            lines = file.read().splitlines(keepends=True)
        kept: list[bytes] = []
        unreadable = 0
        for line in lines:
            record = _record(line)
            if record is None:
                unreadable += bool(line.strip())
            elif remove(record):
                continue
            kept.append(line)
        removed = len(lines) - len(kept)
        if unreadable:
            log.warning("%d line(s) of export %s could not be read; left in place", unreadable, path)
        if removed:
            try:
                write_private(path, b"".join(kept))
            except OSError as exc:
                raise StoreError(f"cannot {doing} export {path}: {exc.strerror or exc}") from None
        return removed
    finally:
        os.close(fd)


def _record(line: bytes) -> dict[str, Any] | None:
    """An export line as its read's dict; None if it is not a read's JSON object (with a
    numeric `delete_after`)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and not math.isnan(_deadline(record)) else None


def _deadline(record: dict[str, Any]) -> float:
    """The `delete_after` of an export line's object; NaN (never expired) if it has none."""
    value = record.get("delete_after")
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return math.nan
    return float(value)
