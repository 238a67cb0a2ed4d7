"""Sinks that leave the database (issue 13, items 2 and 3): the webhook and the export file.

The webhook posts to a real HTTP server on 127.0.0.1 (http.server in a thread, allowed by
`allow_http_hosts`), and over HTTPS to one with a certificate made by the openssl command
and trusted through `ca_file`. An endpoint that is down is a closed port. Time is the
test's: the webhook's clocks are injected, so backoff and retention need no waiting.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import pytest
from support.http_receiver import Receiver

from anpr.config.settings import Settings, load_settings
from anpr.errors import ConfigError, StoreError
from anpr.records import PlateRead, PolicedRead, new_key
from anpr.run.outputs import StatusLog
from anpr.sinks.catalog import close_sinks, make_sinks
from anpr.sinks.jsonl import JsonlExport, JsonlExportSettings, purge_export
from anpr.sinks.webhook import Webhook, WebhookSettings, expire_webhook_queue

TOKEN = "Bearer tok-s3cret"
NOW = 1_800_000_000.0
DAY = 86_400.0


def _read(plate: str = "AB123CD", delete_after: float = NOW + DAY, frame: int = 0) -> PolicedRead:
    read = PlateRead(
        "rtsp://admin:***@cam/x", frame, 0.5, plate, plate, 0.91, 0.95, 0.96, (1.0, 2.0, 3.0, 4.0), "d@1", "o@2"
    )
    return PolicedRead(read, "cam", "parking_fps", "FR-FPS", delete_after, False)


def _free_port() -> int:
    with socket.socket() as sock:  # free a moment ago: nothing listens there until a test starts a server
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Clock:
    def __init__(self) -> None:
        self.wall, self.mono = NOW, 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def _webhook(port: int, queue: Path, clock: Clock, **keys) -> Webhook:
    settings = WebhookSettings(
        type="webhook",
        url=f"http://127.0.0.1:{port}/reads",
        allow_http_hosts=("127.0.0.1",),
        queue_dir=str(queue),
        **keys,
    )
    return Webhook(settings, clock=lambda: clock.wall, monotonic=lambda: clock.mono, timeout=2.0)


def _queued(queue: Path) -> list[list[dict]]:
    return [json.loads(path.read_bytes())["reads"] for path in sorted(queue.glob("*.json"))]


# --- the webhook's settings -----------------------------------------------------------------


def _config(tmp_path: Path, hook: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        "controller: {type: municipality, name: t}\n"
        "cameras: [{id: cam, purposes: [parking_fps]}]\n"
        "purposes: {parking_fps: {safeguards: {human_review: true, signage: true}, retention_days: 1, "
        "sinks: [store, hook]}}\n"
        f"sinks:\n  store: {{type: database}}\n  hook: {hook}\n"
    )
    return path


@pytest.mark.parametrize(
    ("hook", "error"),
    [
        ("{type: webhook, url: 'file:///etc/passwd'}", "key 'sinks.hook.url': must be an https:// URL"),
        ("{type: webhook, url: 'ftp://example.org/in'}", "key 'sinks.hook.url': must be an https:// URL"),
        ("{type: webhook, url: 'https:///in'}", "key 'sinks.hook.url': must be an https:// URL with a host"),
        ("{type: webhook, url: 'http://partner.example/in'}", "key 'sinks.hook.url': must be https://"),
        (
            "{type: webhook, url: 'http://partner.example/in', allow_http_hosts: [127.0.0.1]}",
            "allow_http_hosts, and partner.example is not",
        ),
        ("{type: webhook, url: 'https://h.example:http/in'}", "key 'sinks.hook.url': is not a valid URL"),
        ("{type: webhook, url: 'https://h.example/a b'}", "must not contain spaces"),
        ("{type: webhook, url: 'https://h.example/in', auth_env: 'TOKEN; rm'}", "key 'sinks.hook.auth_env'"),
        ("{type: webhook, url: 'https://h.example/in', queue_max_mb: 0}", "key 'sinks.hook.queue_max_mb'"),
        ("{type: webhook, url: 'https://h.example/in', queue_dir: ''}", "key 'sinks.hook.queue_dir'"),
    ],
)
def test_a_webhook_url_must_be_https_or_an_allowed_http_host(tmp_path, hook, error):
    with pytest.raises(ConfigError) as refused:
        load_settings(_config(tmp_path, hook))
    assert error in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "hook",
    [
        "{type: webhook, url: 'https://partner.example/in?site=3'}",
        "{type: webhook, url: 'HTTP://127.0.0.1:8080/in', allow_http_hosts: [127.0.0.1]}",
        "{type: webhook, url: 'http://[::1]:8080/in', allow_http_hosts: ['[::1]']}",
        "{type: webhook, url: 'http://Receiver.LAN/in', allow_http_hosts: receiver.lan}",
    ],
)
def test_https_and_allowed_http_webhooks_are_accepted(tmp_path, hook):
    deployment = load_settings(_config(tmp_path, hook)).deployment
    assert deployment is not None and isinstance(deployment.sinks["hook"], WebhookSettings)


def _deployment_sinks(tmp_path: Path, **keys) -> dict:
    hook = {"type": "webhook", "url": "https://hooks.example/in", "queue_dir": str(tmp_path / "q"), **keys}
    settings = Settings.model_validate(
        {
            "controller": {"type": "municipality", "name": "t"},
            "cameras": [{"id": "cam", "purposes": ["parking_fps"]}],
            "purposes": {"parking_fps": {"retention_days": 1, "sinks": ["store", "hook"]}},
            "sinks": {"store": {"type": "database"}, "hook": hook},
        }
    )
    assert settings.deployment is not None
    return settings.deployment.sinks


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, "sink 'hook': environment variable ANPR_TEST_HOOK_TOKEN (auth_env) is not set or empty"),
        ("  ", "sink 'hook': environment variable ANPR_TEST_HOOK_TOKEN (auth_env) is not set or empty"),
        ("Bearer s3cret\r\nX-Evil: 1", "holds a line break or control character"),
        ("Bearer s3cret\u20ac", "holds characters an HTTP header cannot carry"),
    ],
)
def test_a_missing_or_unusable_auth_variable_fails_when_the_sinks_are_built(tmp_path, monkeypatch, value, error):
    if value is None:
        monkeypatch.delenv("ANPR_TEST_HOOK_TOKEN", raising=False)
    else:
        monkeypatch.setenv("ANPR_TEST_HOOK_TOKEN", value)
    sinks = _deployment_sinks(tmp_path, auth_env="ANPR_TEST_HOOK_TOKEN")
    with pytest.raises(ConfigError) as refused:
        make_sinks(sinks, database=object())  # type: ignore[arg-type]
    assert error in str(refused.value) and "s3cret" not in str(refused.value)
    assert not (tmp_path / "q").exists()  # nothing was set up for a sink that cannot work


def test_the_default_queue_folder_is_named_after_the_sink(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hook = WebhookSettings(type="webhook", url="https://hooks.example/in")
    sinks = make_sinks({"partner/eu": hook}, database=object())  # type: ignore[arg-type]
    try:
        assert (tmp_path / "anpr-webhook-partner_eu").is_dir()
        assert stat.S_IMODE((tmp_path / "anpr-webhook-partner_eu").stat().st_mode) == 0o700
    finally:
        close_sinks(sinks.values())
    assert not (tmp_path / "anpr-webhook-partner_eu").exists()  # an empty queue is removed at close


# --- delivery, queue, retry -----------------------------------------------------------------------


def test_each_batch_is_posted_with_the_authorization_header_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ANPR_TEST_HOOK_TOKEN", TOKEN)
    clock = Clock()
    with Receiver() as receiver:
        hook = _webhook(receiver.port, tmp_path / "q", clock, auth_env="ANPR_TEST_HOOK_TOKEN")
        hook.write([_read("AB123CD"), _read("EF456GH")])
        hook.close()
    (headers, body), *others = receiver.posts
    assert not others
    assert headers["Authorization"] == TOKEN and headers["Content-Type"] == "application/json"
    assert [r["plate"] for r in body] == ["AB123CD", "EF456GH"]
    assert body[0] == _read("AB123CD").to_dict() | {"key": body[0]["key"]}  # the reads' one dict form


def test_a_refusing_endpoint_is_named_without_the_header_or_url_secrets(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ANPR_TEST_HOOK_TOKEN", TOKEN)
    clock = Clock()
    with Receiver(status=401) as receiver:
        settings = WebhookSettings(
            type="webhook",
            url=f"http://127.0.0.1:{receiver.port}/reads?token=s3cret",
            allow_http_hosts=("127.0.0.1",),
            queue_dir=str(tmp_path / "q"),
            auth_env="ANPR_TEST_HOOK_TOKEN",
        )
        hook = Webhook(settings, clock=lambda: clock.wall, monotonic=lambda: clock.mono)
        with caplog.at_level(logging.INFO, logger="anpr.sinks"):
            hook.write([_read()])
            hook.close()
    assert len(receiver.posts) == 2  # the write, and once more at close
    messages = [r.getMessage() for r in caplog.records] + [hook.status.last_error or ""]
    assert f"webhook http://127.0.0.1:{receiver.port}/reads?token=*** failed: HTTP 401 Unauthorized" in messages[0]
    assert not [m for m in messages if "s3cret" in m or "tok-" in m]


def test_a_failing_endpoint_queues_its_batches_and_gets_them_in_order_once_it_answers(tmp_path, caplog):
    port, clock, queue = _free_port(), Clock(), tmp_path / "q"
    hook = _webhook(port, queue, clock)
    with caplog.at_level(logging.WARNING, logger="anpr.sinks"):
        hook.write([_read("AA111AA")])  # refused: queued, one warning, no exception
        hook.write([_read("BB222BB")])  # within the backoff: queued without trying
        clock.advance(1.5)
        hook.write([_read("CC333CC")])  # tried again (oldest first), refused again: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("anpr.sinks.")]
    assert len(warnings) == 1 and f"webhook http://127.0.0.1:{port}/reads failed" in warnings[0]
    assert hook.status.failed_attempts == 2 and not hook.status.up
    assert [[r["plate"] for r in batch] for batch in _queued(queue)] == [["AA111AA"], ["BB222BB"], ["CC333CC"]]
    # On disk: a private folder, private files, the reads' exact dict form.
    assert stat.S_IMODE(queue.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in queue.glob("*.json")} == {0o600}
    assert PolicedRead.from_dict(_queued(queue)[0][0]).read == _read("AA111AA").read
    with Receiver(port) as receiver:
        hook.write([_read("DD444DD")])  # still within the backoff (2 s now): queued behind the others
        assert not receiver.posts
        clock.advance(2.5)
        hook.write([_read("EE555EE")])
        assert receiver.plates == ["AA111AA", "BB222BB", "CC333CC", "DD444DD", "EE555EE"]
        assert hook.status.up and not _queued(queue)
        hook.close()
    assert not queue.exists()


def test_close_tries_the_queue_once_more_whatever_the_backoff(tmp_path):
    port, clock, queue = _free_port(), Clock(), tmp_path / "q"
    hook = _webhook(port, queue, clock)
    hook.write([_read("AA111AA")])
    with Receiver(port) as receiver:
        hook.close()  # no time has passed: the backoff would still hold a write back
    assert receiver.plates == ["AA111AA"] and not queue.exists()


def test_a_queue_left_by_an_earlier_run_is_sent_by_the_next_one(tmp_path):
    port, clock, queue = _free_port(), Clock(), tmp_path / "q"
    first = _webhook(port, queue, clock)
    first.write([_read("AA111AA")])
    first.close()  # still down: the batch stays
    assert len(_queued(queue)) == 1
    with Receiver(port) as receiver:
        second = _webhook(port, queue, clock)
        second.write([_read("BB222BB")])
        second.close()
    assert receiver.plates == ["AA111AA", "BB222BB"]


def test_retention_holds_in_the_queue(tmp_path):
    port, clock, queue = _free_port(), Clock(), tmp_path / "q"
    hook = _webhook(port, queue, clock)
    hook.write([_read("SHORT1", delete_after=NOW + 60), _read("LONG1", delete_after=NOW + DAY)])
    hook.write([_read("SHORT2", delete_after=NOW + 60)])
    clock.advance(60)  # a deadline is inclusive
    hook.write([_read("LONG2", delete_after=NOW + DAY)])
    assert [[r["plate"] for r in batch] for batch in _queued(queue)] == [["LONG1"], ["LONG2"]]
    assert hook.status.expired_reads == 2
    assert not any(b"SHORT" in p.read_bytes() for p in queue.iterdir())  # nor in a temporary file
    with Receiver(port) as receiver:
        hook.close()
    assert receiver.plates == ["LONG1", "LONG2"]


def test_expire_webhook_queue_applies_retention_offline(tmp_path):
    port, clock, queue = _free_port(), Clock(), tmp_path / "q"
    hook = _webhook(port, queue, clock)
    hook.write([_read("SHORT1", delete_after=NOW + 60), _read("LONG1", delete_after=NOW + DAY)])
    hook.write([_read("SHORT2", delete_after=NOW + 60)])
    assert expire_webhook_queue(queue, NOW + 60) == 0  # the run holds the folder and applies retention itself
    hook.close()
    assert expire_webhook_queue(queue, NOW + 59) == 0
    assert expire_webhook_queue(queue, NOW + 60) == 2
    assert [[r["plate"] for r in batch] for batch in _queued(queue)] == [["LONG1"]]
    assert {stat.S_IMODE(p.stat().st_mode) for p in queue.glob("*.json")} == {0o600}
    assert expire_webhook_queue(queue, NOW + DAY) == 1 and not queue.exists()
    assert expire_webhook_queue(tmp_path / "never-made", NOW) == 0


def test_a_queue_folder_is_used_by_one_run_at_a_time(tmp_path):
    clock = Clock()
    hook = _webhook(_free_port(), tmp_path / "q", clock)
    try:
        with pytest.raises(StoreError, match="is in use by another run: give each concurrent run its own queue_dir"):
            _webhook(_free_port(), tmp_path / "q", clock)
    finally:
        hook.close()


def _batch_name() -> str:
    return f"{time.time_ns():020d}-{new_key()}.json"


def _snapshot(folder: Path) -> dict[str, tuple[bool, bytes | str, int]]:
    """Every entry of a folder: whether it is a link, its content (or target), its mode."""
    return {
        p.name: (p.is_symlink(), os.readlink(p) if p.is_symlink() else p.read_bytes(), p.lstat().st_mode)
        for p in folder.iterdir()
    }


def test_a_queue_dir_that_is_not_a_webhook_queue_is_refused_and_left_untouched(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    (home / "notes.json").write_bytes(b"my notes")
    (home / ".lock").write_bytes(b"someone else's lock")
    (home / _batch_name()).write_bytes(b"named like a batch, but not anpr's")
    spool = tmp_path / "spool"  # another kind of anpr folder: its marker is not a webhook queue's
    spool.mkdir()
    (spool / ".anpr-spool").write_bytes(b"anpr outage spool")
    for folder in (home, spool):
        before, mode = _snapshot(folder), folder.stat().st_mode
        for attempt in (
            lambda folder=folder: _webhook(_free_port(), folder, Clock()),
            lambda folder=folder: expire_webhook_queue(folder, NOW),
        ):
            with pytest.raises(StoreError, match=r"holds files but no \.anpr-webhook-queue marker") as raised:
                attempt()
            assert "set queue_dir to a dedicated folder" in str(raised.value) and "\n" not in str(raised.value)
            assert _snapshot(folder) == before and folder.stat().st_mode == mode  # nothing read, written or chmod-ed


def test_an_existing_empty_queue_dir_is_adopted_as_it_is_and_never_removed(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    hook = _webhook(_free_port(), shared, Clock())
    hook.write([_read("AA111AA")])
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755 and (shared / ".anpr-webhook-queue").is_file()
    hook.close()
    assert expire_webhook_queue(shared, NOW + DAY) == 1
    assert sorted(p.name for p in shared.iterdir()) == [".anpr-webhook-queue"]  # emptied, not removed


def test_no_symbolic_link_is_followed_in_or_to_a_queue_dir(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    for attempt in (lambda: _webhook(_free_port(), link, Clock()), lambda: expire_webhook_queue(link, NOW)):
        with pytest.raises(StoreError, match=rf"webhook queue folder {re.escape(str(link))} is a symbolic link"):
            attempt()
        assert list(real.iterdir()) == []
    port, clock, queue = _free_port(), Clock(), tmp_path / "q"
    first = _webhook(port, queue, clock)
    first.write([_read("AA111AA", delete_after=NOW + 60)])
    first.close()
    victim = tmp_path / "victim.json"
    victim.write_bytes(b"someone's file, outside the queue")
    linked, linked_temp = _batch_name(), f".{_batch_name()}.tmp"
    (queue / linked).symlink_to(victim)
    (queue / linked_temp).symlink_to(victim)
    with Receiver(port) as receiver:
        second = _webhook(port, queue, clock)
        assert second.queue.reads == 1  # the links are not batches
        second.write([_read("BB222BB")])
        second.close()
    assert receiver.plates == ["AA111AA", "BB222BB"]
    assert expire_webhook_queue(queue, NOW + DAY) == 0
    assert victim.read_bytes() == b"someone's file, outside the queue"  # neither read, zeroed nor deleted
    assert (queue / linked).is_symlink() and (queue / linked_temp).is_symlink()  # nor the links removed


def test_a_queue_of_the_previous_anpr_is_picked_up_and_an_unreadable_file_set_aside(tmp_path, caplog):
    """The anpr before the marker left batch files alone in the folder (format 1): they are
    sent; a file it cannot decode is renamed aside, never deleted."""
    port, clock, queue = _free_port(), Clock(), tmp_path / "q"
    queue.mkdir()
    old = {"format": 1, "queued_at": NOW, "reads": [_read("AA111AA").to_dict(exact=True)]}
    (queue / _batch_name()).write_bytes(json.dumps(old).encode())
    broken = _batch_name()
    (queue / broken).write_bytes(b'{"format": 9}')
    with Receiver(port) as receiver, caplog.at_level(logging.WARNING):
        hook = _webhook(port, queue, clock)
        assert (queue / ".anpr-webhook-queue").is_file() and hook.status.lost_batches == 1
        hook.close()
    assert receiver.plates == ["AA111AA"]
    assert (queue / f"{broken}.unreadable").read_bytes() == b'{"format": 9}'
    assert any("unreadable webhook queue file" in r.getMessage() for r in caplog.records)


def test_a_full_queue_loses_batches_with_one_warning_and_never_stops_the_run(tmp_path, caplog):
    port, clock, queue = _free_port(), Clock(), tmp_path / "q"
    hook = _webhook(port, queue, clock, queue_max_mb=1)
    big = [_read(f"AB{n:03d}CD", frame=n) for n in range(2000)]  # about 0.9 MB queued
    with caplog.at_level(logging.WARNING, logger="anpr.sinks"):
        hook.write(big)
        hook.write(big[:500])
        hook.write(big[:500])
    assert len(_queued(queue)) == 1 and hook.status.lost_reads == 1000
    assert len([r for r in caplog.records if "cannot queue a batch" in r.getMessage()]) == 1
    hook.close()


def test_a_redirect_is_not_followed_so_the_header_goes_nowhere_else(tmp_path, monkeypatch):
    monkeypatch.setenv("ANPR_TEST_HOOK_TOKEN", TOKEN)
    clock = Clock()
    with Receiver() as elsewhere, Receiver(status=307) as receiver:
        receiver.location = f"http://127.0.0.1:{elsewhere.port}/steal"
        hook = _webhook(receiver.port, tmp_path / "q", clock, auth_env="ANPR_TEST_HOOK_TOKEN")
        hook.write([_read()])
        assert "HTTP 307" in (hook.status.last_error or "") and "redirects are not followed" in hook.status.last_error
        assert not elsewhere.posts and len(_queued(tmp_path / "q")) == 1
        hook.close()


@pytest.mark.system  # runs the openssl command
def test_https_with_a_private_ca(tmp_path, monkeypatch):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    clock = Clock()
    with Receiver(tls=tls) as receiver:
        url = f"https://127.0.0.1:{receiver.port}/reads"
        untrusted = Webhook(
            WebhookSettings(type="webhook", url=url, queue_dir=str(tmp_path / "q1")), timeout=2.0
        )  # the system's CAs do not know this certificate
        untrusted.write([_read("AA111AA")])
        assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.status.last_error or "")
        untrusted.close()
        trusted = Webhook(
            WebhookSettings(type="webhook", url=url, queue_dir=str(tmp_path / "q2"), ca_file=cert),
            clock=lambda: clock.wall,
        )
        trusted.write([_read("BB222BB")])
        trusted.close()
    assert receiver.plates == ["BB222BB"]
    with pytest.raises(ConfigError, match="cannot read ca_file"):
        Webhook(WebhookSettings(type="webhook", url=url, queue_dir=str(tmp_path / "q3"), ca_file=tmp_path / "none"))


# --- export files and the status log ---------------------------------------------------------------


def test_an_export_file_is_created_private_and_never_through_a_link(tmp_path):
    old = os.umask(0)  # even with no umask at all
    try:
        export = JsonlExport(JsonlExportSettings(type="jsonl_export", path=tmp_path / "x.jsonl"))
        export.write([_read()])
        export.write([_read("EF456GH")])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.jsonl").stat().st_mode) == 0o600
    assert [json.loads(line)["plate"] for line in (tmp_path / "x.jsonl").read_text().splitlines()] == [
        "AB123CD",
        "EF456GH",
    ]
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="cannot write export"):
        JsonlExport(JsonlExportSettings(type="jsonl_export", path=tmp_path / "link.jsonl")).write([_read()])
    assert (tmp_path / "elsewhere").read_text() == ""


def test_purge_export_removes_expired_lines_and_keeps_what_it_cannot_read(tmp_path, caplog):
    path = tmp_path / "x.jsonl"
    export = JsonlExport(JsonlExportSettings(type="jsonl_export", path=path))
    export.write([_read("OLD1", NOW - 1), _read("KEEP1", NOW + 1), _read("EDGE", NOW)])
    with path.open("a") as file:
        file.write('{"plate": "NODEADLINE"}\nnot json at all\n\n')
    export.write([_read("OLD2", NOW - DAY), _read("KEEP2", NOW + DAY)])
    (tmp_path / ".x.jsonl.tmp").write_text('{"plate": "OLD0"}\n')  # left by a purge cut short
    with caplog.at_level(logging.WARNING, logger="anpr.sinks"):
        assert purge_export(path, NOW) == 3
    lines = path.read_text().splitlines()
    assert [json.loads(line)["plate"] for line in lines if line.startswith('{"source"')] == ["KEEP1", "KEEP2"]
    assert '{"plate": "NODEADLINE"}' in lines and "not json at all" in lines
    assert any("2 line(s) of export" in r.getMessage() for r in caplog.records)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p.name for p in tmp_path.iterdir() if p.name != "x.jsonl"]  # no temporary file left
    export.write([_read("NEW", NOW + DAY)])  # the run goes on appending to the purged file
    assert json.loads(path.read_text().splitlines()[-1])["plate"] == "NEW"
    assert purge_export(path, NOW) == 0
    assert purge_export(tmp_path / "missing.jsonl", NOW) == 0


def test_the_status_log_is_created_private(tmp_path):
    old = os.umask(0)
    try:
        log = StatusLog(tmp_path / "status.jsonl")
        log.event("run.start", cameras={"cam": "rtsp://admin:***@cam/x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "status.jsonl").stat().st_mode) == 0o600
    assert json.loads((tmp_path / "status.jsonl").read_text())["event"] == "run.start"
