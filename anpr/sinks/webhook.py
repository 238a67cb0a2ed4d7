"""The webhook (`type: webhook`): POSTs each batch of kept reads over https (plain http
only to hosts listed for it), authenticates with a header taken from the environment,
never follows a redirect, and keeps the batches it cannot deliver in a private on-disk
queue (an outbox, anpr/storage/outbox.py, marked `.anpr-webhook-queue`) instead of
stopping the run; `expire_webhook_queue` applies retention to that queue."""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from anpr.config.sinks import variable_name
from anpr.errors import ConfigError
from anpr.records import PolicedRead
from anpr.redact import redact, redact_text

if TYPE_CHECKING:
    from anpr.policy.gate import PolicedSink
from anpr.sinks.queued import DiskQueueSettings, expire_queue
from anpr.storage.outbox import Backoff, Batch, Kind, Outage, Outbox, Reachability

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


class WebhookSettings(DiskQueueSettings):
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

    _variables = field_validator("auth_env")(variable_name)

    @classmethod
    def queue_kind(cls) -> Kind:
        return WEBHOOK_QUEUE


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
        self.outage = Outage(
            self.status,
            f"webhook {self.shown_url}",
            "batches",
            clock,
            Backoff(monotonic, initial_backoff, max_backoff),
            log,
        )
        self._closed = False
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
        if self.outage.may_try():
            self._send_queued(self.monotonic() + FLUSH_BUDGET_SECONDS)
            if not self.queue.entries:  # in order: a new batch never overtakes a queued one
                try:
                    self._post(reads)
                    self.outage.answered()
                    return
                except WebhookFailed as exc:
                    self.outage.failed(str(exc), self.queue.directory)
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
            self.outage.failed(str(exc), self.queue.directory)

    def _deliver(self, batch: Batch) -> None:
        self._post(batch.reads)
        self.outage.answered()

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
            self.outage.cannot_queue(exc, "a batch", "its reads")
            return
        self.status.queued_batches += 1
        self.status.queued_reads += len(reads)


def expire_webhook_queue(folder: str | os.PathLike[str], now: float) -> int:
    """Retention of a webhook's queue folder offline (`anpr.sinks.queued.expire_queue`)."""
    return expire_queue(WEBHOOK_QUEUE, folder, now)


# --- MQTT (the client: anpr/sinks/mqtt_client.py) ----------------------------------------------------------
