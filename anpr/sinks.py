"""Sinks: the places a purpose writes the reads it keeps (config `sinks:`).

A sink receives only the reads the policy gate let through for a purpose that names it.
Each sink type is one class with its settings model, registered in `SINK_TYPES` by the
decorator above it: the config accepts exactly the registered types, each with its own
keys. A file sink is created on its first write, so a purpose that never gets a read
leaves no file. A sink may have a `close()`: the run calls it once, at its end.

What leaves the machine or stays on disk is guarded here: a webhook posts over https
(plain http only to hosts listed for it), authenticates with a header taken from the
environment, never follows a redirect, and keeps the batches it cannot deliver in a
private on-disk queue instead of stopping the run (an outbox, anpr/outbox.py, marked
`.anpr-webhook-queue`); an export file is anpr's private file (anpr/files.py: created
0600; one that is a link, another user's or open to others is refused). Retention reaches both:
`purge_export` and `expire_webhook_queue` remove what is past its deadline.

An MQTT sink (its client in anpr/mqtt.py, imported only by a run that has one) publishes
passages, and reads if asked, over TLS unless told otherwise, with credentials from the
environment, and queues what the broker has not acknowledged in an outbox of its own
(`.anpr-mqtt-queue`). A sink that takes passages has `write_passages`; the gate gives it
the passages of the purposes that name it (anpr/policy/gate.py).
"""

from __future__ import annotations

import fcntl
import http.client
import json
import logging
import math
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator, model_validator

from anpr.errors import AnprError, ConfigError, StoreError
from anpr.files import Use, append_whole, check_existing, open_file, shred, temp_name, write_private
from anpr.outbox import Backoff, Batch, Kind, Outbox, OutboxInUse, Reachability, expire_offline
from anpr.records import PolicedRead
from anpr.redact import redact, redact_text
from anpr.registry import SINK_TYPES

WEBHOOK_TIMEOUT_SECONDS = 5.0
INITIAL_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# Once the endpoint answers again, each write sends queued batches for about this long (at
# least one), so a long outage's queue drains over the next writes instead of holding up
# one; close() gives it longer, once.
FLUSH_BUDGET_SECONDS = 0.5
CLOSE_BUDGET_SECONDS = 10.0
WEBHOOK_QUEUE_PREFIX = "anpr-webhook-"
QUEUE_FORMAT = 1

log = logging.getLogger(__name__)


class PolicedSink(Protocol):
    """Receives the reads a purpose keeps, one batch at a time (what it returns is not used).
    A sink may also have `close()`, called once when the run ends (`close_sinks`), and
    `write_passages(passages)`, given the purpose's passages as their tracks end."""

    def write(self, reads: Sequence[PolicedRead]) -> object: ...


def _variable_name(value: str | None) -> str | None:
    """A setting that names an environment variable (whose value is a secret kept out of the config)."""
    if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("must be the name of an environment variable (letters, digits and _)")
    return value


def _safe_name(name: str) -> str:
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


class DatabaseSinkSettings(SinkSettings):
    type: Literal["database"]


class JsonlExportSettings(SinkSettings):
    type: Literal["jsonl_export"]
    path: Path  # the file appended to

    def in_folder(self, folder: Path, stem: str) -> SinkSettings:
        return self.model_copy(update={"path": folder / f"{stem}.jsonl"})

    def purge_files(self, name: str, now: float) -> tuple[int, str] | None:
        return purge_export(self.path, now), f"export {self.path}"


class QueuedSinkSettings(SinkSettings):
    """A sink whose undelivered output waits on disk in a queue of its own (an Outbox):
    `queue_dir` (default QUEUE_PREFIX + the sink's name), bounded by `queue_max_mb`; a
    non-empty folder that is not such a queue is refused (anpr/outbox.py)."""

    QUEUE_PREFIX: ClassVar[str]
    queue_dir: str | None = Field(None, min_length=1)
    queue_max_mb: StrictInt = Field(256, ge=1, le=1_048_576)

    def for_sink(self, name: str) -> SinkSettings:
        return self.model_copy(update={"queue_dir": self.queue_folder(name)})

    def queue_folder(self, name: str) -> str:
        """Where the queue of the sink called `name` is: queue_dir, else a folder named after the sink."""
        return self.queue_dir or f"{self.QUEUE_PREFIX}{_safe_name(name)}"

    def in_folder(self, folder: Path, stem: str) -> SinkSettings:
        return self.model_copy(update={"queue_dir": str(folder / f"{stem}-queue")})


class WebhookSettings(QueuedSinkSettings):
    QUEUE_PREFIX = WEBHOOK_QUEUE_PREFIX  # undelivered batches wait in anpr-webhook-NAME
    type: Literal["webhook"]
    # Hosts that may be sent reads over plain http:// (a receiver on the same machine or
    # network segment); every other host must be https://. Declared before `url`, whose
    # check reads it.
    allow_http_hosts: tuple[str, ...] = ()
    url: str = Field(min_length=1)  # where each batch is POSTed as JSON
    auth_env: str | None = None  # the environment variable whose value is sent as the Authorization header
    ca_file: Path | None = None  # PEM certificates to trust instead of the system's (a private CA)

    @field_validator("allow_http_hosts", mode="before")
    @classmethod
    def _host_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(h, str) and h.strip("[] ") for h in value):
            raise ValueError("must be a list of host names or IP addresses")
        return tuple(h.strip().strip("[]").lower() for h in value)

    @field_validator("url")
    @classmethod
    def _https_or_allowed_http(cls, value: str, info: ValidationInfo) -> str:
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("must not contain spaces or control characters")
        try:
            parts = urllib.parse.urlsplit(value)
            host, _ = parts.hostname, parts.port  # .port raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError("is not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http") or not host:
            raise ValueError("must be an https:// URL with a host (http:// only for a host in allow_http_hosts)")
        if "@" in parts.netloc:
            # urllib would not send them, and the config file is the wrong place for them.
            raise ValueError("must not hold credentials: put them in an environment variable named by auth_env")
        if scheme == "http" and host not in info.data.get("allow_http_hosts", ()):
            raise ValueError(
                f"must be https:// (http:// only for a host listed in allow_http_hosts, and {host} is not)"
            )
        return value

    _variable_name = field_validator("auth_env")(_variable_name)

    def purge_files(self, name: str, now: float) -> tuple[int, str] | None:
        folder = self.queue_folder(name)
        return expire_webhook_queue(folder, now), f"queue {folder}"


MQTT_QUEUE_PREFIX = "anpr-mqtt-"
_TOPIC_FORBIDDEN = re.compile(r"[+#\x00-\x1f\x7f]")  # wildcards and control characters


class MqttSettings(QueuedSinkSettings):
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

    _variable_name = field_validator("username_env", "password_env")(_variable_name)

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
        return queued.model_copy(update={"client_id": self.client_id or f"anpr-{_safe_name(name)}"})

    def purge_files(self, name: str, now: float) -> tuple[int, str] | None:
        from anpr.mqtt import expire_mqtt_queue

        folder = self.queue_folder(name)
        return expire_mqtt_queue(folder, now), f"MQTT queue {folder}"


def _run_database(settings: DatabaseSinkSettings, database: PolicedSink) -> PolicedSink:
    return database


SINK_TYPES.register(
    "database", settings=DatabaseSinkSettings, help="the run's database (--db, store.url), through the outage spool"
)(_run_database)


@SINK_TYPES.register(
    "jsonl_export",
    settings=JsonlExportSettings,
    help="appends one JSON object per read to `path` (e.g. an export answering requisitions), a file of mode 0600",
)
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
    `anpr.sinks`). A missing file has nothing to purge."""
    path = Path(path)
    try:
        fd = _locked_export(path, "rewrite")
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StoreError(f"cannot purge export {path}: {exc.strerror or exc}") from None
    try:
        shred(temp_name(path))  # left by a purge cut short (it may hold lines past their deadline)
        with os.fdopen(os.dup(fd), "rb") as file:
            lines = file.read().splitlines(keepends=True)
        kept: list[bytes] = []
        unreadable = 0
        for line in lines:
            deadline = _deadline(line)
            if deadline is None:
                unreadable += bool(line.strip())
            elif deadline <= now:  # a deadline is inclusive, as in the database's purge
                continue
            kept.append(line)
        removed = len(lines) - len(kept)
        if unreadable:
            log.warning("%d line(s) of export %s could not be read; left in place", unreadable, path)
        if removed:
            try:
                write_private(path, b"".join(kept))
            except OSError as exc:
                raise StoreError(f"cannot purge export {path}: {exc.strerror or exc}") from None
        return removed
    finally:
        os.close(fd)


def _deadline(line: bytes) -> float | None:
    """The `delete_after` of an export line; None if it is not a read's JSON object."""
    try:
        value = json.loads(line)["delete_after"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


# --- webhook ---------------------------------------------------------------------------------


class WebhookFailed(Exception):
    """A batch was not delivered; the message names the endpoint (redacted) and why."""


@dataclass
class WebhookStatus(Reachability):
    """The endpoint's state as the webhook sees it, and what went through its queue in this run."""

    sent_batches: int = 0  # delivered, at once or from the queue
    queued_batches: int = 0  # put in the queue by this run
    queued_reads: int = 0
    expired_reads: int = 0  # removed from the queue by retention, never sent
    lost_batches: int = 0  # could not be queued (queue full or not writable), or unreadable in the queue
    lost_reads: int = 0


def _encode_queued(batch: Batch, queued_at: float) -> bytes:
    document = {"format": QUEUE_FORMAT, "queued_at": queued_at, "reads": [r.to_dict(exact=True) for r in batch.reads]}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode_queued(data: bytes) -> Batch:
    document = json.loads(data)
    if document.get("format") != QUEUE_FORMAT:
        raise ValueError(f"unknown queue format {document.get('format')!r}")
    return Batch([PolicedRead.from_dict(entry) for entry in document["reads"]])


WEBHOOK_QUEUE = Kind(
    noun="webhook queue",
    title="anpr webhook queue",
    marker=".anpr-webhook-queue",
    setting="queue_dir",
    size_setting="queue_max_mb",
    encode=_encode_queued,
    decode=_decode_queued,
)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would resend the Authorization header to wherever a redirect points, over
    # http:// too: a 3xx answer is a failure instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _authorization(variable: str | None) -> dict[str, str]:
    """The Authorization header from the environment; ConfigError now, before any frame,
    rather than a 401 for every batch. The value never goes into a message."""
    if variable is None:
        return {}
    value = os.environ.get(variable, "")
    if not value.strip():
        raise ConfigError(f"environment variable {variable} (auth_env) is not set or empty")
    try:
        value.encode("latin-1")  # what an HTTP header can carry
    except UnicodeEncodeError:
        raise ConfigError(
            f"environment variable {variable} (auth_env) holds characters an HTTP header cannot carry"
        ) from None
    if not value.isprintable():
        raise ConfigError(f"environment variable {variable} (auth_env) holds a line break or control character")
    return {"Authorization": value}


def _opener(ca_file: Path | None) -> urllib.request.OpenerDirector:
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a NUL in the path a ValueError
        raise ConfigError(f"cannot read ca_file {ca_file}: {getattr(exc, 'strerror', None) or exc}") from None
    return urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=context))


@SINK_TYPES.register(
    "webhook",
    settings=WebhookSettings,
    help="POSTs each batch of reads as a JSON array to `url` (https); batches it cannot deliver wait on disk",
)
class Webhook:
    """POSTs each batch; a batch it cannot deliver waits in `queue_dir` and is sent, oldest
    first, at a later write once a backoff has passed (1 s, doubling to 30 s), and once more
    at close. A failing endpoint never stops the run: it gets one warning per outage."""

    def __init__(
        self,
        settings: WebhookSettings,
        database: PolicedSink | None = None,
        *,
        clock: Callable[[], float] = time.time,  # for deadlines
        monotonic: Callable[[], float] = time.monotonic,  # for the backoff
        initial_backoff: float = INITIAL_BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
        timeout: float = WEBHOOK_TIMEOUT_SECONDS,
    ) -> None:
        self.url = settings.url
        self.shown_url = redact(settings.url)
        self.clock, self.monotonic = clock, monotonic
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", **_authorization(settings.auth_env)}
        self._opener = _opener(settings.ca_file)
        self.status = WebhookStatus()
        self._backoff = Backoff(monotonic, initial_backoff, max_backoff)
        self._full_warned, self._closed = False, False
        folder = settings.queue_dir or WEBHOOK_QUEUE_PREFIX.rstrip("-")
        busy = "give each concurrent run its own queue_dir"
        self.queue = Outbox(
            WEBHOOK_QUEUE, folder, settings.queue_max_mb * 2**20, tally=self.status, busy=busy, clock=clock
        )
        try:
            self.queue.pick_up()
        except BaseException:
            self.queue.close()
            raise
        if self.queue.entries:
            log.info(
                "%d read(s) left in %s by an earlier run for webhook %s: sent first",
                self.queue.reads,
                self.queue.directory,
                self.shown_url,
            )

    def write(self, reads: Sequence[PolicedRead]) -> None:
        self.queue.expire(self.clock())
        if not reads:
            return
        if self._backoff.may_try(self.status.up):
            self._send_queued(self.monotonic() + FLUSH_BUDGET_SECONDS)
            if not self.queue.entries:  # in order: a new batch never overtakes a queued one
                try:
                    self._post(reads)
                    self._reached()
                    return
                except WebhookFailed as exc:
                    self._unreachable(exc)
        self._enqueue(reads)

    def close(self) -> None:
        """Try the queue once more, whatever the backoff; what is left waits for the next run."""
        if self._closed:
            return
        self._closed = True
        try:
            self.queue.expire(self.clock())
            self._send_queued(self.monotonic() + CLOSE_BUDGET_SECONDS)
            if self.queue.entries:
                log.warning(
                    "webhook %s: %d read(s) wait in %s; the next run sends them (each dropped when its retention ends)",
                    self.shown_url,
                    self.queue.reads,
                    self.queue.directory,
                )
            if self.status.lost_reads:
                log.warning(
                    "webhook %s: %d read(s) could not be queued and were lost", self.shown_url, self.status.lost_reads
                )
        finally:
            self.queue.close()

    def _send_queued(self, until: float) -> None:
        """Send queued batches, oldest first, until `until` (at least one); stop at the first failure."""
        try:
            self.queue.send(self._deliver, self.clock(), lambda: self.monotonic() < until)
        except WebhookFailed as exc:
            self._unreachable(exc)

    def _deliver(self, batch: Batch) -> None:
        self._post(batch.reads)
        self._reached()

    def _post(self, reads: Sequence[PolicedRead]) -> None:
        body = json.dumps([r.to_dict() for r in reads]).encode()
        request = urllib.request.Request(self.url, body, self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout):
                pass
        except urllib.error.HTTPError as exc:
            exc.close()
            redirect = " (redirects are not followed: give the final URL)" if 300 <= exc.code < 400 else ""
            raise WebhookFailed(f"webhook {self.shown_url} failed: HTTP {exc.code} {exc.reason}{redirect}") from None
        except urllib.error.URLError as exc:
            raise WebhookFailed(f"webhook {self.shown_url} failed: {redact_text(str(exc.reason))}") from None
        except (OSError, http.client.HTTPException) as exc:
            why = redact_text(str(exc)) or type(exc).__name__
            raise WebhookFailed(f"webhook {self.shown_url} failed: {why}") from None
        self.status.sent_batches += 1

    def _enqueue(self, reads: Sequence[PolicedRead]) -> None:
        try:
            if not self.queue.put(Batch(list(reads))):
                return
        except OSError as exc:
            if not self._full_warned:
                self._full_warned = True
                log.warning(
                    "webhook %s: cannot queue a batch (%s): its reads are lost until it answers",
                    self.shown_url,
                    exc.strerror or exc,
                )
            return
        self.status.queued_batches += 1
        self.status.queued_reads += len(reads)

    def _unreachable(self, exc: WebhookFailed) -> None:
        if self.status.failed(str(exc), self.clock()):
            log.warning("%s; its batches wait in %s and are sent when it answers", exc, self.queue.directory)
        self._backoff.failed()

    def _reached(self) -> None:
        outage = self.status.answered(self.clock())
        if outage is not None:
            self._backoff.answered()
            self._full_warned = False
            log.info("webhook %s answers again after %.0f s", self.shown_url, outage)


def expire_webhook_queue(folder: str | os.PathLike[str], now: float) -> int:
    """Apply retention to a webhook's queue folder offline (as `anpr db purge` does the
    database): remove the queued reads whose `delete_after` is at or before `now`; the
    number removed. A missing folder holds nothing; a folder a run is using is left to that
    run, which applies retention at each write (0). StoreError when it is not a webhook queue."""
    try:
        return expire_offline(WEBHOOK_QUEUE, folder, now, busy="that run applies retention itself").reads
    except OutboxInUse:
        log.info("webhook queue %s is in use by a run, which applies retention itself", folder)
        return 0


# --- MQTT (the client: anpr/mqtt.py) ----------------------------------------------------------


def _run_mqtt(settings: MqttSettings, database: PolicedSink | None = None) -> PolicedSink:
    from anpr.mqtt import MqttSink  # the MQTT client is loaded only by a run that has an MQTT sink

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
