"""The MQTT sink's settings (`type: mqtt`) and its on-disk queue (`.anpr-mqtt-queue`), with
its retention (`expire_mqtt_queue`): what a config and `anpr db purge` need, without the
MQTT client library, which only a run that has an MQTT sink loads (anpr/sinks/mqtt_client.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from anpr.config.sinks import SinkSettings, safe_name, variable_name
from anpr.records import Passage, PolicedRead
from anpr.sinks.queued import DiskQueueSettings, expire_queue
from anpr.storage.outbox import Batch, Kind

QUEUE_FORMAT = 1


MQTT_QUEUE_PREFIX = "anpr-mqtt-"
_TOPIC_FORBIDDEN = re.compile(r"[+#\x00-\x1f\x7f]")  # wildcards and control characters


class MqttSettings(DiskQueueSettings):
    QUEUE_PREFIX = MQTT_QUEUE_PREFIX  # unacknowledged messages wait in anpr-mqtt-NAME
    type: Literal["mqtt"]
    host: str = Field(min_length=1)  # the broker's host name or IP address
    tls: bool = True  # plain MQTT only when set to false (a broker on the same machine or network segment)
    port: StrictInt | None = Field(None, ge=1, le=65535)  # default 8883, or 1883 without TLS
    topic_prefix: str = "anpr"  # <prefix>/passages/<camera>, <prefix>/reads/<camera>, <prefix>/availability/<client id>
    reads: bool = False  # publish each kept read too, not only passages
    client_id: str | None = Field(None, min_length=1, max_length=128)  # default anpr-NAME
    username_env: str | None = None  # environment variables holding the credentials (their names, not their values)
    password_env: str | None = None
    ca_file: Path | None = None  # PEM certificates to trust instead of the system's (a private CA)
    cert_file: Path | None = None  # a client certificate (PEM), for brokers that authenticate clients by certificate
    key_file: Path | None = None  # its private key, when not in cert_file

    @field_validator("host")
    @classmethod
    def _host_name(cls, value: str) -> str:
        if "://" in value or "/" in value or "@" in value:
            raise ValueError("must be a host name or IP address, not a URL (port and TLS have keys of their own)")
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("must not contain spaces or control characters")
        return value.strip("[]")

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        if not value or value.startswith(("/", "$")) or value.endswith("/") or "//" in value:
            raise ValueError("must be topic levels such as anpr or site/anpr (no empty level, no leading $)")
        if _TOPIC_FORBIDDEN.search(value) or not value.isprintable():  # C1 controls and U+2028 are not printable
            raise ValueError("must not contain the wildcards + or #, or control characters or line separators")
        return value

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        if value is not None and (_TOPIC_FORBIDDEN.search(value) or "/" in value or not value.isprintable()):
            raise ValueError("must not contain /, + or #, or control characters (it names the availability topic)")
        return value

    _variables = field_validator("username_env", "password_env")(variable_name)

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if self.password_env is not None and self.username_env is None:
            raise ValueError("password_env needs username_env: MQTT sends a password only with a user name")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file, cert_file and key_file are for TLS, which tls: false turns off")
        return self

    @property
    def broker_port(self) -> int:
        return self.port if self.port is not None else 8883 if self.tls else 1883

    def for_sink(self, name: str) -> SinkSettings:
        queued = super().for_sink(name)
        return queued.model_copy(update={"client_id": self.client_id or f"anpr-{safe_name(name)}"})

    @classmethod
    def queue_kind(cls) -> Kind:
        return MQTT_QUEUE


def _encode_queued(batch: Batch, queued_at: float) -> bytes:
    document = {
        "format": QUEUE_FORMAT,
        "queued_at": queued_at,
        "reads": [r.to_dict(exact=True) for r in batch.reads],
        "passages": [p.to_dict(exact=True) for p in batch.passages],
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode_queued(data: bytes) -> Batch:
    document = json.loads(data)
    if document.get("format") != QUEUE_FORMAT:
        raise ValueError(f"unknown queue format {document.get('format')!r}")
    return Batch(
        [PolicedRead.from_dict(entry) for entry in document["reads"]],
        passages=[Passage.from_dict(entry) for entry in document["passages"]],
    )


MQTT_QUEUE = Kind(
    noun="MQTT queue",
    title="anpr MQTT queue",
    marker=".anpr-mqtt-queue",
    setting="queue_dir",
    size_setting="queue_max_mb",
    encode=_encode_queued,
    decode=_decode_queued,
)


def expire_mqtt_queue(folder: str | os.PathLike[str], now: float) -> int:
    """Retention of an MQTT sink's queue folder offline (`anpr.sinks.queued.expire_queue`)."""
    return expire_queue(MQTT_QUEUE, folder, now)
