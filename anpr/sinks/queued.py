"""What a sink whose undelivered output waits on disk (a webhook, an MQTT broker) does with
its queue folder when no run holds it: retention (`anpr db purge`) and a data subject's
requests (storage/subjects.py). Each such sink's settings name their queue's kind; the rest
is the same for all."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from anpr.config.sinks import QueuedSinkSettings
from anpr.storage.outbox import Kind, OutboxInUse, erase_subject_records, expire_offline, subject_records

log = logging.getLogger(__name__)


class DiskQueueSettings(QueuedSinkSettings):
    @classmethod
    def queue_kind(cls) -> Kind:
        """The kind of the sink's queue folder (its marker, format, and name: `Kind.noun`)."""
        raise NotImplementedError

    def purge_files(self, name: str, now: float) -> tuple[int, str] | None:
        kind, folder = self.queue_kind(), self.queue_folder(name)
        return expire_queue(kind, folder, now), f"{kind.noun} {folder}"

    def held_records(self, name: str, plate: Callable[[str], bool]) -> tuple[str, list[dict[str, Any]]] | None:
        kind, folder = self.queue_kind(), self.queue_folder(name)
        return f"{kind.noun} {folder}", subject_records(kind, folder, plate)

    def erase_records(self, name: str, erase: Callable[[dict[str, Any]], bool]) -> tuple[int, str] | None:
        kind, folder = self.queue_kind(), self.queue_folder(name)
        return erase_subject_records(kind, folder, erase), f"{kind.noun} {folder}"


def expire_queue(kind: Kind, folder: str | os.PathLike[str], now: float) -> int:
    """Apply retention to a queue folder offline (as `anpr db purge` does the database):
    remove the queued reads and passages whose `delete_after` is at or before `now`; the
    number removed. A missing folder holds nothing; a folder a run is using is left to that
    run, which applies retention at each write (0). StoreError when it is not a `kind` queue."""
    try:
        expired = expire_offline(kind, folder, now, busy="that run applies retention itself")
    except OutboxInUse:
        log.info("%s %s is in use by a run, which applies retention itself", kind.noun, folder)
        return 0
    return expired.reads + expired.passages
