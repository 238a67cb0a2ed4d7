"""Outbound sinks a purpose can write to besides the database.

They receive only reads the policy gate let through for that purpose. A file sink is
created on its first write, so a purpose that never gets a read leaves no file.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from anpr.config import Settings
from anpr.errors import StoreError
from anpr.policy.gate import PolicedRead, PolicedSink

WEBHOOK_TIMEOUT_SECONDS = 5.0


class JsonlExport:
    """Appends one JSON object per read to a file (e.g. an export answering requisitions)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, reads: Sequence[PolicedRead]) -> None:
        if not reads:
            return
        try:
            with self.path.open("a", encoding="utf-8") as out:
                out.writelines(json.dumps(r.as_json()) + "\n" for r in reads)
        except OSError as exc:
            raise StoreError(f"cannot write export {self.path}: {exc.strerror or exc}") from None


class Webhook:
    """POSTs each batch of reads as a JSON array."""

    def __init__(self, url: str) -> None:
        self.url = url

    def write(self, reads: Sequence[PolicedRead]) -> None:
        if not reads:
            return
        body = json.dumps([r.as_json() for r in reads]).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS):
                pass
        except (urllib.error.URLError, OSError) as exc:
            raise StoreError(f"webhook {self.url} failed: {getattr(exc, 'reason', exc)}") from None


def make_sinks(settings: Settings, database: PolicedSink) -> dict[str, PolicedSink]:
    """The deployment's sinks by name; every 'database' sink is the run's database."""
    sinks: dict[str, PolicedSink] = {}
    for name, sink in settings.sinks.items():
        if sink.type == "database":
            sinks[name] = database
        elif sink.type == "jsonl_export":
            sinks[name] = JsonlExport(Path(sink.path))  # type: ignore[arg-type]
        else:
            sinks[name] = Webhook(sink.url)  # type: ignore[arg-type]
    return sinks
