"""Sinks: the places a purpose writes the reads it keeps (config `sinks:`).

A sink receives only the reads the policy gate let through for a purpose that names it.
Each sink type is one class with its settings model, registered in `SINK_TYPES` by the
decorator above it: the config accepts exactly the registered types, each with its own
keys. A file sink is created on its first write, so a purpose that never gets a read
leaves no file.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from anpr.errors import StoreError
from anpr.records import PolicedRead
from anpr.registry import SINK_TYPES

WEBHOOK_TIMEOUT_SECONDS = 5.0


class PolicedSink(Protocol):
    """Receives the reads a purpose keeps, one batch at a time (what it returns is not used)."""

    def write(self, reads: Sequence[PolicedRead]) -> object: ...


class SinkSettings(BaseModel):
    """The keys of one `sinks:` entry; each sink type adds its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str

    def in_folder(self, folder: Path, stem: str) -> SinkSettings:
        """The same sink with any file it writes moved into `folder` (for `anpr demo`)."""
        return self


class DatabaseSinkSettings(SinkSettings):
    type: Literal["database"]


class JsonlExportSettings(SinkSettings):
    type: Literal["jsonl_export"]
    path: Path  # the file appended to

    def in_folder(self, folder: Path, stem: str) -> SinkSettings:
        return self.model_copy(update={"path": folder / f"{stem}.jsonl"})


class WebhookSettings(SinkSettings):
    type: Literal["webhook"]
    url: str = Field(min_length=1)  # where each batch is POSTed as JSON


def _run_database(settings: DatabaseSinkSettings, database: PolicedSink) -> PolicedSink:
    return database


SINK_TYPES.register(
    "database", settings=DatabaseSinkSettings, help="the run's database (--db, store.url), through the outage spool"
)(_run_database)


@SINK_TYPES.register(
    "jsonl_export",
    settings=JsonlExportSettings,
    help="appends one JSON object per read to `path` (e.g. an export answering requisitions)",
)
class JsonlExport:
    def __init__(self, settings: JsonlExportSettings, database: PolicedSink | None = None) -> None:
        self.path = settings.path

    def write(self, reads: Sequence[PolicedRead]) -> None:
        if not reads:
            return
        try:
            with self.path.open("a", encoding="utf-8") as out:
                out.writelines(json.dumps(r.to_dict()) + "\n" for r in reads)
        except OSError as exc:
            raise StoreError(f"cannot write export {self.path}: {exc.strerror or exc}") from None


@SINK_TYPES.register("webhook", settings=WebhookSettings, help="POSTs each batch of reads as a JSON array to `url`")
class Webhook:
    def __init__(self, settings: WebhookSettings, database: PolicedSink | None = None) -> None:
        self.url = settings.url

    def write(self, reads: Sequence[PolicedRead]) -> None:
        if not reads:
            return
        body = json.dumps([r.to_dict() for r in reads]).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS):
                pass
        except (urllib.error.URLError, OSError) as exc:
            raise StoreError(f"webhook {self.url} failed: {getattr(exc, 'reason', exc)}") from None


def make_sinks(sinks: Mapping[str, SinkSettings], database: PolicedSink) -> dict[str, PolicedSink]:
    """A deployment's sinks by name; every `database` sink is the run's database."""
    return {name: SINK_TYPES.get(spec.type).factory(spec, database) for name, spec in sinks.items()}
