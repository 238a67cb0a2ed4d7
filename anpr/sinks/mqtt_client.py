"""The MQTT sink's client (config `type: mqtt`, settings `sinks.MqttSettings`).

Each passage, and each kept read with `reads: true`, is published as its JSON object (the
`--jsonl` fields, its `key` among them) on `<prefix>/passages/<camera>` or
`<prefix>/reads/<camera>`, QoS 1. `<prefix>/availability/<client id>` says `online`
(retained) once connected, and `offline` when the run closes the connection; the broker
publishes `offline` itself (the connection's last will) when it is lost. The level after
the prefix says what a topic carries, so no camera id reaches another kind's topics or the
availability; the camera level is its id percent-encoded (`topic_level`), one id per level.

Durability is anpr's, not the client library's. Every connection is a paho client of its
own that never reconnects by itself, and is dropped whole when the broker stops answering,
with whatever it had not had acknowledged: those messages are in the on-disk queue (an
outbox, anpr/storage/outbox.py, marked `.anpr-mqtt-queue`), so nothing is sent twice by the
library behind anpr's back. A batch is published, then waited on: what the broker
acknowledged (PUBACK) is done; what it did not is queued, or, for a batch from the queue,
written back without what was acknowledged. The queue is sent oldest first once the
broker answers again (tried at later writes after a backoff of 1 s doubling to 30 s, and
once more at close); new messages wait behind it. QoS 1 is at least once: a message whose
PUBACK was lost with the connection is sent again, and its `key` tells the copies apart.

The sink only ever receives what the policy gate let through for a purpose that names it:
a denied purpose keeps no read and makes no passage, so nothing of it reaches the broker
or the queue.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessageInfo
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from anpr.errors import ConfigError
from anpr.records import Passage, PolicedRead
from anpr.redact import redact_text
from anpr.sinks.mqtt import MQTT_QUEUE, MQTT_QUEUE_PREFIX, MqttSettings
from anpr.storage.outbox import Backoff, Batch, Outage, Outbox, Reachability

# A broker that acknowledges nothing for this long counts as down (also the bound on the
# TCP and TLS connection and on the answer to CONNECT).
MQTT_TIMEOUT_SECONDS = 5.0
KEEPALIVE_SECONDS = 30
INITIAL_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# As the webhook's: each write sends queued batches for about this long (at least one);
# close() gives it longer, once.
FLUSH_BUDGET_SECONDS = 0.5
CLOSE_BUDGET_SECONDS = 10.0
QUEUE_FORMAT = 1
ONLINE, OFFLINE = b"online", b"offline"

log = logging.getLogger(__name__)


class MqttFailed(Exception):
    """The broker cannot be reached or did not acknowledge; the message says which broker and why."""


@dataclass
class MqttStatus(Reachability):
    """The broker's state as the sink sees it, and what went through it in this run."""

    connections: int = 0
    sent_messages: int = 0  # acknowledged by the broker, at once or from the queue
    queued_messages: int = 0  # put in the queue by this run
    lost_messages: int = 0  # could not be queued (queue full or not writable)
    # Counted by the queue (anpr.storage.outbox.Tally): its reads lost or expired.
    lost_batches: int = 0
    lost_reads: int = 0
    expired_reads: int = 0


# --- the queue's file format -----------------------------------------------------------------


# --- messages --------------------------------------------------------------------------------


# The level after the prefix: what the topics under it carry. A camera is the level after,
# never this one, so a camera named `availability` cannot publish where the state is kept.
READS, PASSAGES, AVAILABILITY = "reads", "passages", "availability"


def topic_level(name: str) -> str:
    """A camera id as one topic level, percent-encoded (RFC 3986): every character but the
    unreserved ASCII ones (letters, digits, `-._~`) becomes %XX of its UTF-8 bytes, `%` itself
    included, so `/`, wildcards, controls and line separators never reach a topic, two ids
    never share a level, and `urllib.parse.unquote` gives the id back."""
    return quote(name, safe="")


def messages(prefix: str, batch: Batch) -> list[tuple[str, bytes]]:
    """The batch's reads, then its passages, as (topic, JSON payload)."""
    records: list[tuple[str, PolicedRead | Passage]] = [(READS, r) for r in batch.reads]
    records += [(PASSAGES, p) for p in batch.passages]
    return [
        (f"{prefix}/{kind}/{topic_level(record.camera)}", json.dumps(record.to_dict()).encode("utf-8"))
        for kind, record in records
    ]


# --- settings taken at start -----------------------------------------------------------------


def _credentials(settings: MqttSettings) -> tuple[str, str | None] | None:
    """The user name and password from the environment; ConfigError now, before any frame,
    rather than a refused connection for the whole run. The values never go into a message."""
    if settings.username_env is None:
        return None
    username = _from_environment(settings.username_env, "username_env")
    password = None if settings.password_env is None else _from_environment(settings.password_env, "password_env")
    return username, password


def _from_environment(variable: str, key: str) -> str:
    value = os.environ.get(variable, "")
    if not value:
        raise ConfigError(f"environment variable {variable} ({key}) is not set or empty")
    if not value.isprintable():
        raise ConfigError(f"environment variable {variable} ({key}) holds a line break or control character")
    return value


def _tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    if not settings.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=None if settings.ca_file is None else str(settings.ca_file))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a NUL in the path a ValueError
        raise ConfigError(f"cannot read ca_file {settings.ca_file}: {getattr(exc, 'strerror', None) or exc}") from None
    if settings.cert_file is not None:
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file)
        except (OSError, ValueError) as exc:
            what = f"cert_file {settings.cert_file}" + (f" / key_file {settings.key_file}" if settings.key_file else "")
            raise ConfigError(f"cannot read {what}: {getattr(exc, 'strerror', None) or exc}") from None
    return context


# --- one connection --------------------------------------------------------------------------


class _Link:
    """One connection to the broker: a paho client that never reconnects by itself, with its
    network thread. What it was acknowledged is recorded here, by message id."""

    def __init__(
        self,
        settings: MqttSettings,
        credentials: tuple[str, str | None] | None,
        tls: ssl.SSLContext | None,
        availability: str,
        timeout: float,
    ) -> None:
        self.shown = f"MQTT broker {settings.host}:{settings.broker_port}"
        self._changed = threading.Condition()
        self._acked: set[int] = set()
        self._connack: ReasonCode | None = None
        self.lost: str | None = None  # why the connection ended; None while it lasts
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id or "",
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,  # a lost connection is dropped whole (see the module's note)
        )
        client.connect_timeout = timeout
        client.will_set(availability, OFFLINE, qos=1, retain=True)
        if credentials is not None:
            client.username_pw_set(*credentials)
        if tls is not None:
            client.tls_set_context(tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        try:
            client.connect(settings.host, settings.broker_port, KEEPALIVE_SECONDS)
        except (OSError, ValueError) as exc:  # refused, timed out, TLS, no such host (socket.gaierror)
            raise MqttFailed(f"{self.shown} failed: {_why(exc)}") from None
        client.loop_start()
        with self._changed:
            self._changed.wait_for(lambda: self._connack is not None or self.lost is not None, timeout)
        connack = self._connack
        if connack is None or connack.is_failure:
            why = f"refused: {connack}" if connack is not None else self.lost or f"no answer within {timeout:g} s"
            self.drop()
            raise MqttFailed(f"{self.shown} failed: {why}")
        self.publish(availability, ONLINE, retain=True)

    @property
    def alive(self) -> bool:
        return self.lost is None

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, properties: Properties | None
    ) -> None:
        with self._changed:
            self._connack = reason
            self._changed.notify_all()

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._changed:
            self.lost = "connection lost" if reason.is_failure else "connection closed"
            self._changed.notify_all()

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties | None
    ) -> None:
        with self._changed:
            self._acked.add(mid)
            self._changed.notify_all()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Hand a message to the connection (QoS 1); its id. MqttFailed if the connection is gone."""
        info: MQTTMessageInfo = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self.lost is not None:
            raise MqttFailed(f"{self.shown} failed: {self.lost or _error_text(info.rc)}")
        return info.mid

    def wait(self, ids: Sequence[int], stall: float) -> list[bool]:
        """Wait until every message of `ids` is acknowledged, the connection ends, or nothing
        is acknowledged for `stall` seconds; which of them were (their ids are then forgotten)."""
        pending = set(ids)
        with self._changed:
            while pending and self.lost is None:
                done = pending & self._acked
                pending -= done
                if pending and not done and not self._changed.wait(stall):
                    break
            acked = [i in self._acked for i in ids]
            self._acked.difference_update(ids)
        return acked

    def drop(self) -> None:
        """End the connection now, without a word to the broker (which then publishes the last
        will): whatever was not acknowledged goes with this client and is never sent by it."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # an ssl.SSLSocket too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()
        with self._changed:
            self.lost = self.lost or "connection dropped"

    def close(self, availability: str, timeout: float) -> None:
        """Say `offline` (retained) and disconnect cleanly, waiting `timeout` at most for the
        broker to acknowledge; a connection that does not answer is dropped."""
        if self.lost is None:
            try:
                said = self.wait([self.publish(availability, OFFLINE, retain=True)], timeout)
            except MqttFailed:
                said = [False]
            if said[0]:
                self.client.disconnect()
                self.client.loop_stop()
        self.drop()


_ERRORS = {MQTTErrorCode.MQTT_ERR_NO_CONN: "not connected", MQTTErrorCode.MQTT_ERR_QUEUE_SIZE: "too many messages"}


def _error_text(rc: MQTTErrorCode) -> str:
    return _ERRORS.get(rc, str(rc))


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return redact_text(getattr(exc, "strerror", None) or str(exc)) or type(exc).__name__


# --- the sink --------------------------------------------------------------------------------


class MqttSink:
    """Publishes passages (and reads, with `reads: true`); what the broker does not
    acknowledge waits in `queue_dir` and is sent, oldest first, once it answers again. A
    failing broker never stops the run: it gets one warning per outage."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        clock: Callable[[], float] = time.time,  # for deadlines
        monotonic: Callable[[], float] = time.monotonic,  # for the backoff
        initial_backoff: float = INITIAL_BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        timeout: float = MQTT_TIMEOUT_SECONDS,
    ) -> None:
        self.settings = settings
        self.prefix = settings.topic_prefix
        self.availability = f"{self.prefix}/{AVAILABILITY}/{settings.client_id or 'anpr'}"
        self.shown = f"MQTT broker {settings.host}:{settings.broker_port}"
        self.clock, self.monotonic, self.timeout = clock, monotonic, timeout
        self._credentials = _credentials(settings)
        self._tls = _tls_context(settings)
        self.status = MqttStatus()
        self.outage = Outage(
            self.status, self.shown, "messages", clock, Backoff(monotonic, initial_backoff, max_backoff), log
        )
        self._link: _Link | None = None
        self._closed = False
        folder = settings.queue_dir or MQTT_QUEUE_PREFIX.rstrip("-")
        busy = "give each concurrent run its own queue_dir (and client_id)"
        limit = settings.queue_max_mb * 2**20
        self.queue = Outbox(MQTT_QUEUE, folder, limit, tally=self.status, busy=busy, clock=clock)
        try:
            self.queue.pick_up()
            if self.queue.entries:
                log.info(
                    "%d read(s) and %d passage(s) left in %s by an earlier run for %s: sent first",
                    self.queue.reads,
                    self.queue.passages,
                    self.queue.directory,
                    self.shown,
                )
            self._tick()  # connected from the start: `online`, and an earlier run's queue on its way
        except BaseException:
            if self._link is not None:
                self._link.drop()
            self.queue.close()
            raise

    def write(self, reads: Sequence[PolicedRead]) -> None:
        self._tick()
        if self.settings.reads and reads:
            self._publish(Batch(list(reads)))

    def write_passages(self, passages: Sequence[Passage]) -> None:
        self._tick()
        if passages:
            self._publish(Batch([], passages=list(passages)))

    def close(self) -> None:
        """Try the queue once more, whatever the backoff; what is left waits for the next run."""
        if self._closed:
            return
        self._closed = True
        try:
            self.queue.expire(self.clock())
            if self.queue.entries and self._connected(whatever_the_backoff=True):
                self._send_queued(self.monotonic() + CLOSE_BUDGET_SECONDS)
            if self.queue.entries:
                log.warning(
                    "%s: %d read(s) and %d passage(s) wait in %s; the next run sends them "
                    "(each dropped when its retention ends)",
                    self.shown,
                    self.queue.reads,
                    self.queue.passages,
                    self.queue.directory,
                )
            if self.status.lost_messages:
                lost = self.status.lost_messages
                log.warning("%s: %d message(s) could not be queued and were lost", self.shown, lost)
        finally:
            try:
                if self._link is not None:
                    self._link.close(self.availability, self.timeout)
                    self._link = None
            finally:
                self.queue.close()

    def _tick(self) -> None:
        """Retention over the queue; then, if the broker is (or can now be) connected, the queue sent."""
        self.queue.expire(self.clock())
        if self._connected() and self.queue.entries:
            self._send_queued(self.monotonic() + FLUSH_BUDGET_SECONDS)

    def _connected(self, whatever_the_backoff: bool = False) -> bool:
        """Whether a connection is up: the one there is, else a new one if the backoff allows."""
        if self._link is not None:
            if self._link.alive:
                return True
            self._unreachable(MqttFailed(f"{self.shown} failed: {self._link.lost}"))
        if not (whatever_the_backoff or self.outage.may_try()):
            return False
        try:
            self._link = _Link(self.settings, self._credentials, self._tls, self.availability, self.timeout)
        except MqttFailed as exc:
            self._unreachable(exc)
            return False
        self.status.connections += 1
        self.outage.answered()
        return True

    def _publish(self, batch: Batch) -> None:
        """Publish a new batch, unless the queue holds older ones (order) or there is no connection; what is left
        of it unacknowledged is queued."""
        if not self.queue.entries and self._link is not None and self._link.alive:
            try:
                self._deliver(batch)
                return
            except MqttFailed as exc:
                self._unreachable(exc)
        self._enqueue(batch)

    def _send_queued(self, until: float) -> None:
        """Send queued batches, oldest first, until `until` (at least one); stop at the first failure."""
        try:
            self.queue.send(self._deliver, self.clock(), lambda: self.monotonic() < until)
        except MqttFailed as exc:
            self._unreachable(exc)

    def _deliver(self, batch: Batch) -> None:
        """Publish the batch and wait for its acknowledgements. On failure (MqttFailed), the
        batch is left holding only what was not acknowledged."""
        link = self._link
        if link is None or not link.alive:
            raise MqttFailed(f"{self.shown} failed: {link.lost if link else 'not connected'}")
        ids: list[int] = []
        failure = None
        try:
            for topic, payload in messages(self.prefix, batch):
                ids.append(link.publish(topic, payload))
        except MqttFailed as exc:
            failure = exc
        unsent = len(batch.reads) + len(batch.passages) - len(ids)
        acked = link.wait(ids, self.timeout) + [False] * unsent
        self.status.sent_messages += sum(acked)
        if all(acked):
            return
        reads_acked, passages_acked = acked[: len(batch.reads)], acked[len(batch.reads) :]
        batch.reads = [r for r, done in zip(batch.reads, reads_acked, strict=True) if not done]
        batch.passages = [p for p, done in zip(batch.passages, passages_acked, strict=True) if not done]
        why = link.lost or f"{len(acked) - sum(acked)} message(s) not acknowledged within {self.timeout:g} s"
        raise failure or MqttFailed(f"{self.shown} failed: {why}")

    def _enqueue(self, batch: Batch) -> None:
        size = len(batch.reads) + len(batch.passages)
        try:
            if not self.queue.put(batch):
                return
        except OSError as exc:
            self.status.lost_messages += size
            self.outage.cannot_queue(exc, "a message", "messages")
            return
        self.status.queued_messages += size

    def _unreachable(self, exc: MqttFailed) -> None:
        if self._link is not None:
            self._link.drop()  # its unacknowledged messages are queued: it must never send them
            self._link = None
        self.outage.failed(str(exc), self.queue.directory)
