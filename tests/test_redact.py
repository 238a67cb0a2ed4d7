"""Secrets in locations (issue 13, item 1): a camera or webhook URL's credentials reach the
stream or the endpoint, and nothing else: not the reads' source, not a message.

The redaction itself on a table of locations; then the real source with a credentialed
URL against a real RTSP endpoint that asks for them (it must get them, and the error
must not show them); then the config loader echoing a bad value.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading

import pytest

from anpr.config.settings import load_settings
from anpr.errors import ConfigError, SourceError
from anpr.reading.source import Reconnect, SourceState, open_source
from anpr.redact import redact, redact_text

SECRET = "s3cret"


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("rtsp://admin:s3cret@cam.local:554/stream", "rtsp://admin:***@cam.local:554/stream"),
        ("RTSPS://admin:s3cret@10.0.0.7/live", "RTSPS://admin:***@10.0.0.7/live"),
        ("rtsp://s3cret@cam/stream", "rtsp://***@cam/stream"),  # a bare token as the user
        ("rtsp://admin:p@ss:s3cret@cam/x", "rtsp://admin:***@cam/x"),  # the userinfo ends at the last @
        ("rtsp://admin:pa/s3cret@cam/x", "rtsp://admin:***@cam/x"),  # an unencoded / in the password
        (
            "https://hooks.example/in?token=s3cret&site=7&API-KEY=s3cret",
            "https://hooks.example/in?token=***&site=***&API-KEY=***",  # a name not known harmless: hidden
        ),
        (
            "https://b.example/o?X-Amz-Signature=s3cret&client_secret=s3cret&Sig=s3cret&pwd=s3cret",
            "https://b.example/o?X-Amz-Signature=***&client_secret=***&Sig=***&pwd=***",
        ),
        ("https://a.example/cb#access_token=s3cret&state=1", "https://a.example/cb#access_token=***&state=***"),
        ("http://cam/mjpg?passwd=s3cret;auth=s3cret", "http://cam/mjpg?passwd=***;auth=***"),
        ("rtsp://cam.local/stream?channel=1&subtype=0", "rtsp://cam.local/stream?channel=1&subtype=0"),
        ("samples/sample.mp4", "samples/sample.mp4"),
        ("/srv/photos/user:pw@host/a.jpg", "/srv/photos/user:pw@host/a.jpg"),  # a path, not a URL
        ("", ""),
    ],
)
def test_redact_hides_userinfo_and_secret_parameters(location, shown):
    assert redact(location) == shown
    assert SECRET not in redact(location)
    assert redact(shown) == shown  # redacting twice changes nothing


def test_urls_inside_text_are_redacted():
    text = "cannot reach rtsp://admin:s3cret@cam/x or 'https://h/x?token=s3cret', nor /tmp/a.mp4"
    assert redact_text(text) == "cannot reach rtsp://admin:***@cam/x or 'https://h/x?token=***', nor /tmp/a.mp4"


class _AuthAskingRtsp:
    """A real RTSP endpoint that answers every request 401 with a Basic challenge and
    records what the client sent: FFmpeg retries with the URL's credentials."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                with connection:
                    self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        buffer = b""
        while chunk := connection.recv(4096):
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                request = head.decode("latin-1")
                self.requests.append(request)
                headers = dict(line.split(":", 1) for line in request.splitlines()[1:] if ":" in line)
                cseq = next((v.strip() for k, v in headers.items() if k.strip().lower() == "cseq"), "1")
                connection.sendall(
                    f'RTSP/1.0 401 Unauthorized\r\nCSeq: {cseq}\r\nWWW-Authenticate: Basic realm="cam"\r\n'
                    "Content-Length: 0\r\n\r\n".encode()
                )

    def close(self) -> None:
        self.listener.close()


def test_a_credentialed_stream_gets_its_credentials_and_no_message_shows_them():
    server = _AuthAskingRtsp()
    try:
        url = f"rtsp://admin:{SECRET}@127.0.0.1:{server.port}/stream"
        with pytest.raises(SourceError) as refused:
            open_source(url)
    finally:
        server.close()
    message = str(refused.value)
    assert SECRET not in message
    assert message == f"cannot connect to stream: rtsp://admin:***@127.0.0.1:{server.port}/stream"
    # The capture itself was given the real URL: the endpoint received the credentials.
    basic = base64.b64encode(f"admin:{SECRET}".encode()).decode()
    assert any(f"Authorization: Basic {basic}" in request for request in server.requests), server.requests


def test_a_stream_retried_in_the_background_is_named_without_its_password():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = open_source(
        f"rtsp://admin:{SECRET}@127.0.0.1:{port}/x?token={SECRET}", Reconnect(1, 0.05, 0.1), wait_for_stream=True
    )
    try:
        assert source.name == f"rtsp://admin:***@127.0.0.1:{port}/x?token=***"
        assert source.status.state is SourceState.RECONNECTING
        assert SECRET not in str(source.status.as_json())
    finally:
        source.close()


def test_a_path_that_looks_like_a_url_is_reported_without_its_password(tmp_path):
    with pytest.raises(SourceError) as refused:
        open_source(f"srt://admin:{SECRET}@cam:9000/x")  # not a stream scheme anpr reads: taken as a path
    assert str(refused.value) == "no such file or folder: srt://admin:***@cam:9000/x"


def test_a_config_value_echoed_in_an_error_hides_its_credentials(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "controller: {type: municipality, name: t}\n"
        "cameras: [{id: cam, purposes: [p], source: 'rtsp://admin:s3cret@cam/x'}]\n"
        "purposes: {p: {sinks: [store, hook]}}\n"
        "sinks:\n"
        "  store: {type: database}\n"
        f"  hook: {{type: webhook, url: 'https://user:{SECRET}@hooks.example/in?token={SECRET}'}}\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    message = str(refused.value)
    assert "key 'sinks.hook.url': must not hold credentials" in message
    assert SECRET not in message and "user:***@hooks.example" in message
    config.write_text(config.read_text().replace("type: webhook", "type: webhok"))
    with pytest.raises(ConfigError) as refused:  # the whole entry is quoted: its URL still redacted
        load_settings(config)
    assert "sinks.hook" in str(refused.value) and SECRET not in str(refused.value)
