"""What every sink shares: the settings model of one `sinks:` entry, and of a sink that
queues on disk what it cannot deliver. Each sink type's own model is in its module."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt


def variable_name(value: str | None) -> str | None:
    """A setting that names an environment variable (whose value is a secret kept out of the config)."""
    if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("must be the name of an environment variable (letters, digits and _)")
    return value


def safe_name(name: str) -> str:
    """A sink's name as part of a folder name or an MQTT client id."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


class SinkSettings(BaseModel):
    """The keys of one `sinks:` entry; each sink type adds its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str

    def in_folder(self, folder: Path, stem: str) -> SinkSettings:
        """The same sink with any file it writes moved into `folder` (for `anpr demo`)."""
        return self

    def for_sink(self, name: str) -> SinkSettings:
        """These settings with the defaults that depend on the sink's name filled in."""
        return self

    def purge_files(self, name: str, now: float) -> tuple[int, str] | None:
        """Retention over what the sink called `name` keeps on disk outside the database
        (`anpr db purge`, with or without the database): the number of reads and passages
        removed and where; None when it keeps nothing there. StoreError when it cannot be purged."""
        return None

    # A data subject's requests (`anpr db subject-access`, `anpr db erase`, storage/subjects.py)
    # reach what a sink keeps on disk outside the database. A record is in its dict form
    # (`to_dict()`: a read's, or a passage's, which has `first_time`).

    def held_records(self, name: str, plate: Callable[[str], bool]) -> tuple[str, list[dict[str, Any]]] | None:
        """Where the sink called `name` keeps records on disk, and those whose plate `plate`
        selects; None when it keeps nothing there. StoreError when they cannot be read (a run
        holding the folder among the causes)."""
        return None

    def erase_records(self, name: str, erase: Callable[[dict[str, Any]], bool]) -> tuple[int, str] | None:
        """Remove the records `erase` selects from what the sink called `name` keeps on disk:
        how many, and where; None when it keeps nothing there. StoreError as `held_records`."""
        return None


class DatabaseSinkSettings(SinkSettings):
    type: Literal["database"]


class QueuedSinkSettings(SinkSettings):
    """A sink whose undelivered output waits on disk in a queue of its own (an Outbox):
    `queue_dir` (default QUEUE_PREFIX + the sink's name), bounded by `queue_max_mb`; a
    non-empty folder that is not such a queue is refused (anpr/storage/outbox.py)."""

    QUEUE_PREFIX: ClassVar[str]
    queue_dir: str | None = Field(None, min_length=1)
    queue_max_mb: StrictInt = Field(256, ge=1, le=1_048_576)

    def for_sink(self, name: str) -> SinkSettings:
        return self.model_copy(update={"queue_dir": self.queue_folder(name)})

    def queue_folder(self, name: str) -> str:
        """Where the queue of the sink called `name` is: queue_dir, else a folder named after the sink."""
        return self.queue_dir or f"{self.QUEUE_PREFIX}{safe_name(name)}"

    def in_folder(self, folder: Path, stem: str) -> SinkSettings:
        return self.model_copy(update={"queue_dir": str(folder / f"{stem}-queue")})
