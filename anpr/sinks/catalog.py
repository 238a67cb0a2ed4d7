"""The sink types, registered in one place (`SINK_TYPES`, in the order `anpr run --help`
lists them), and the building and closing of a deployment's sinks.

A sink receives only the reads the policy gate let through for a purpose that names it
(anpr/policy/gate.py `PolicedSink`); one that takes passages has `write_passages`. The
config accepts exactly the registered types, each with its own keys (its settings model).
A file sink is created on its first write, so a purpose that never gets a read leaves no
file. A sink may have a `close()`: the run calls it once, at its end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from anpr.config.sinks import DatabaseSinkSettings, SinkSettings
from anpr.errors import AnprError
from anpr.registry import SINK_TYPES
from anpr.sinks.jsonl import JsonlExport, JsonlExportSettings
from anpr.sinks.mqtt import MqttSettings
from anpr.sinks.webhook import Webhook, WebhookSettings

if TYPE_CHECKING:
    from anpr.policy.gate import PolicedSink


def _run_database(settings: DatabaseSinkSettings, database: PolicedSink) -> PolicedSink:
    return database


SINK_TYPES.register(
    "database", settings=DatabaseSinkSettings, help="the run's database (--db, store.url), through the outage spool"
)(_run_database)

SINK_TYPES.register(
    "jsonl_export",
    settings=JsonlExportSettings,
    help="appends one JSON object per read to `path` (e.g. an export answering requisitions), a file of mode 0600",
)(JsonlExport)

SINK_TYPES.register(
    "webhook",
    settings=WebhookSettings,
    help="POSTs each batch of reads as a JSON array to `url` (https); batches it cannot deliver wait on disk",
)(Webhook)


def _run_mqtt(settings: MqttSettings, database: PolicedSink | None = None) -> PolicedSink:
    from anpr.sinks.mqtt_client import MqttSink  # the MQTT client is loaded only by a run that has an MQTT sink

    return MqttSink(settings)


SINK_TYPES.register(
    "mqtt",
    settings=MqttSettings,
    help="publishes each passage (and each read, with `reads: true`) as JSON to an MQTT broker, QoS 1; "
    "what it cannot deliver waits on disk",
)(_run_mqtt)


def make_sinks(sinks: Mapping[str, SinkSettings], database: PolicedSink) -> dict[str, PolicedSink]:
    """A deployment's sinks by name; every `database` sink is the run's database. A sink
    that cannot be built (a missing auth_env variable) fails here, before any frame, with
    its name in the message."""
    built: dict[str, PolicedSink] = {}
    try:
        for name, spec in sinks.items():
            try:
                built[name] = SINK_TYPES.get(spec.type).factory(spec.for_sink(name), database)
            except AnprError as exc:
                raise type(exc)(f"sink '{name}': {exc}") from None
    except BaseException:
        close_sinks(built.values(), database)
        raise
    return built


def close_sinks(sinks: Iterable[PolicedSink], database: object = None) -> None:
    """Close each sink that has a `close()`, once; `database` (the run's own, closed with
    the run) is left alone."""
    closed: set[int] = set()
    for sink in sinks:
        if sink is database or id(sink) in closed:
            continue
        closed.add(id(sink))
        close = getattr(sink, "close", None)
        if callable(close):
            close()
