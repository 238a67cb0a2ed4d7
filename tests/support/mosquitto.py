"""A real, throw-away Mosquitto broker for tests (Debian's `mosquitto` package), and a
subscriber that records what reaches it.

The broker listens on 127.0.0.1 at a free port, with its config, persistence file and
log in a folder of its own. Persistence is on: stopped (SIGTERM, which saves its state)
and started again on the same port, it keeps a persistent subscriber's session and the
QoS 1 messages queued for it. Optionally it requires a user name and password (a
password file made by `mosquitto_passwd`) or speaks TLS only (a certificate and key).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

MOSQUITTO = "/usr/sbin/mosquitto"
START_TIMEOUT_S = 10.0


def _binary(name: str, default: str) -> str:
    found = shutil.which(name) or (default if Path(default).is_file() else None)
    if found is None:
        raise RuntimeError(f"{name} not found: run scripts/system-deps.sh (installs 'mosquitto')")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    def __init__(self, folder: Path, users: dict[str, str] | None = None, tls: tuple[Path, Path] | None = None) -> None:
        """`users`: names and passwords it requires (anonymous clients are then refused);
        `tls`: its certificate and key (it then speaks TLS only)."""
        self.binary = _binary("mosquitto", MOSQUITTO)
        self.folder = folder
        self.port = _free_port()
        self.log = folder / "mosquitto.log"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {folder / 'data'}/",
            f"log_dest file {self.log}",
            "log_type all",
            # Under root, mosquitto would switch to its own user, who cannot read the test's folder.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        ]
        if users:
            passwords = folder / "passwords"
            passwd = _binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
            for number, (name, password) in enumerate(users.items()):
                create = ["-c"] if number == 0 else []
                subprocess.run([passwd, *create, "-b", str(passwords), name, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited ({self.process.returncode}): {error or self.logged()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """SIGTERM: it closes every connection and saves its state."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def logged(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    dup: bool

    def json(self) -> dict:
        return json.loads(self.payload)


class Subscriber:
    """A persistent MQTT session (clean session off, QoS 1) on `topic`, recording every
    message that reaches it; it reconnects by itself while the broker is away."""

    def __init__(
        self,
        broker: Mosquitto,
        topic: str = "#",
        client_id: str = "test-subscriber",
        *,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.topic = topic
        self.received: list[Received] = []
        self._changed = threading.Condition()
        self.client = Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=MQTTProtocolVersion.MQTTv311
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_connect = lambda client, *_: client.subscribe(self.topic, qos=1)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._subscribed = threading.Event()
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(START_TIMEOUT_S):
            raise RuntimeError("the subscriber could not subscribe")

    def _on_subscribe(self, *_: object) -> None:
        self._subscribed.set()

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        with self._changed:
            self.received.append(Received(message.topic, message.payload, bool(message.retain), bool(message.dup)))
            self._changed.notify_all()

    def wait_for(self, condition, timeout: float, what: str) -> None:
        """Wait until `condition(received)` holds; fails the test after `timeout` s."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self.received), timeout):
                topics = [r.topic for r in self.received]
                raise AssertionError(f"no {what} within {timeout:.0f} s; received: {topics}")

    def barrier(self, timeout: float = 10) -> None:
        """Return once everything the broker had received before this call has reached the
        subscriber: it publishes a message of its own on `test/barrier` (inside a `#`
        subscription) and waits for it, since the broker forwards in the order it receives."""
        token = f"{time.monotonic_ns()}".encode()
        self.client.publish("test/barrier", token, qos=1)
        self.wait_for(lambda r: any(m.payload == token for m in r), timeout, "the barrier message")
        with self._changed:
            self.received = [m for m in self.received if m.topic != "test/barrier"]

    def on(self, suffix: str) -> list[Received]:
        return [r for r in self.received if r.topic.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
