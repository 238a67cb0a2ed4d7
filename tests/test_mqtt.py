"""The MQTT sink (issue 16, item 1), against a real Mosquitto broker started by the test.

The broker is Debian's `mosquitto` (tests/support/mosquitto.py), on a free port of
127.0.0.1, stopped and started again on the same port where a test needs an outage; a
persistent QoS 1 subscriber records everything that reaches it. A broker that is down
from the start is a closed port. Backoff time is the test's (the sink's clocks are
injected) except in the end-to-end run, which is the real `anpr run`.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from support.keys import TEST_KEYS
from support.live_run import LiveRun
from support.mosquitto import Mosquitto, Subscriber

from anpr.config.settings import load_settings
from anpr.errors import ConfigError, StoreError
from anpr.policy.engine import Policy
from anpr.policy.gate import PolicyGate
from anpr.reading.track import TrackEnd
from anpr.records import Outcome, Passage, PlateRead, PolicedRead
from anpr.sinks.catalog import make_sinks
from anpr.sinks.mqtt import MQTT_QUEUE, MqttSettings, expire_mqtt_queue
from anpr.sinks.mqtt_client import MqttSink, messages
from anpr.storage.outbox import Batch, Outbox
from anpr.storage.store import ReadStore

NOW = 1_800_000_000.0
DAY = 86_400.0
SAMPLE = REPO / "samples" / "sample.mp4"  # 180 frames, six vehicles one after the other: six passages
CLOSED_PORT = 1  # nothing listens there: a broker that is down


class Clock:
    def __init__(self) -> None:
        self.wall, self.mono = NOW, 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def _passage(plate: str, camera: str = "cam", delete_after: float = NOW + DAY, track: int = 1) -> Passage:
    return Passage(
        "rtsp://cam/x", camera, "criminal_investigation", "FR-LAPI-1", track, plate, 0.9, ((plate, 0.9),),
        "FR", "LLDDDLL", 0, 20, 0.0, 0.8, 4, delete_after,
    )  # fmt: skip


def _read(plate: str, frame: int = 0, delete_after: float = NOW + DAY) -> PolicedRead:
    read = PlateRead("rtsp://cam/x", frame, frame / 25, plate, plate, 0.9, 0.95, 0.96, (1, 2, 3, 4), "d", "o")
    return PolicedRead(read, "cam", "criminal_investigation", "FR-LAPI-1", delete_after, False)


def _settings(port: int, queue: Path, **keys) -> MqttSettings:
    values = {"type": "mqtt", "host": "127.0.0.1", "port": port, "tls": False, "client_id": "anpr-test"}
    return MqttSettings(**{**values, "queue_dir": str(queue), **keys})


def _sink(port: int, queue: Path, clock: Clock, **keys) -> MqttSink:
    return MqttSink(_settings(port, queue, **keys), clock=lambda: clock.wall, monotonic=lambda: clock.mono)


def _queued(queue: Path) -> list[dict]:
    return [json.loads(path.read_bytes()) for path in sorted(queue.glob("*.json"))]


def _plates(received) -> list[str]:
    return [m.json()["plate"] for m in received]


@pytest.fixture
def mqtt_broker(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker:
        yield broker


# --- settings ----------------------------------------------------------------------------------


def _config(tmp_path: Path, feed: str, controller: str = "gendarmerie", purpose: str = "criminal_investigation"):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"controller: {{type: {controller}, name: t}}\n"
        f"cameras: [{{id: cam, purposes: [{purpose}]}}]\n"
        f"purposes: {{{purpose}: {{safeguards: {{designated_agents: [a], human_review: true, signage: true}}, "
        "retention_days: 1, sinks: [store, feed]}}\n"
        f"sinks:\n  store: {{type: database}}\n  feed: {feed}\n"
    )
    return path


@pytest.mark.parametrize(
    ("feed", "error"),
    [
        ("{type: mqtt}", "missing key 'sinks.feed.host'"),
        ("{type: mqtt, host: 'mqtt://broker.example'}", "key 'sinks.feed.host': must be a host name or IP address"),
        ("{type: mqtt, host: 'a b'}", "key 'sinks.feed.host': must not contain spaces"),
        ("{type: mqtt, host: b, port: 0}", "key 'sinks.feed.port'"),
        ("{type: mqtt, host: b, topic_prefix: 'anpr/#'}", "key 'sinks.feed.topic_prefix': must not contain"),
        ("{type: mqtt, host: b, topic_prefix: '$SYS'}", "key 'sinks.feed.topic_prefix'"),
        ("{type: mqtt, host: b, topic_prefix: 'a//b'}", "key 'sinks.feed.topic_prefix'"),
        ("{type: mqtt, host: b, client_id: 'a/b'}", "key 'sinks.feed.client_id'"),
        ("{type: mqtt, host: b, username_env: 'USER; rm'}", "key 'sinks.feed.username_env'"),
        ("{type: mqtt, host: b, password_env: PW}", "password_env needs username_env"),
        ("{type: mqtt, host: b, key_file: k.pem}", "key_file needs cert_file"),
        ("{type: mqtt, host: b, tls: false, ca_file: ca.pem}", "tls: false turns off"),
        ("{type: mqtt, host: b, queue_max_mb: 0}", "key 'sinks.feed.queue_max_mb'"),
        ("{type: mqtt, host: b, password: secret}", "unknown key 'sinks.feed.password'"),
    ],
)
def test_bad_mqtt_settings_are_config_errors(tmp_path, feed, error):
    with pytest.raises(ConfigError) as refused:
        load_settings(_config(tmp_path, feed))
    assert error in str(refused.value)


def test_defaults_follow_tls_and_the_sink_name_and_certificates_are_relative_to_the_config(tmp_path):
    deployment = load_settings(_config(tmp_path, "{type: mqtt, host: broker.example, ca_file: ca.pem}")).deployment
    assert deployment is not None
    feed = deployment.sinks["feed"].for_sink("feed")
    assert isinstance(feed, MqttSettings)
    assert (feed.tls, feed.broker_port, feed.topic_prefix, feed.reads) == (True, 8883, "anpr", False)
    assert (feed.client_id, feed.queue_dir, feed.ca_file) == ("anpr-feed", "anpr-mqtt-feed", tmp_path / "ca.pem")
    assert _settings(1883, tmp_path).model_copy(update={"port": None}).broker_port == 1883  # plain MQTT


def test_mqtt_is_lawful_where_a_webhook_is_and_nowhere_else(tmp_path):
    lapi = load_settings(_config(tmp_path, "{type: mqtt, host: b}")).deployment
    assert lapi is not None and Policy(lapi).purpose("criminal_investigation").allowed
    fps = load_settings(_config(tmp_path, "{type: mqtt, host: b}", "municipality", "parking_fps")).deployment
    assert fps is not None
    refused = Policy(fps).purpose("parking_fps")
    assert not refused.allowed and "not to sink(s) 'feed' (mqtt)" in refused.reasons[0]


@pytest.mark.parametrize(
    ("environment", "error"),
    [
        ({}, "sink 'feed': environment variable ANPR_TEST_MQTT_USER (username_env) is not set or empty"),
        ({"ANPR_TEST_MQTT_USER": "u"}, "environment variable ANPR_TEST_MQTT_PW (password_env) is not set or empty"),
        ({"ANPR_TEST_MQTT_USER": "u", "ANPR_TEST_MQTT_PW": "a\nb"}, "(password_env) holds a line break"),
    ],
)
def test_missing_credentials_fail_when_the_sinks_are_built(tmp_path, monkeypatch, environment, error):
    for name in ("ANPR_TEST_MQTT_USER", "ANPR_TEST_MQTT_PW"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    variables = {"username_env": "ANPR_TEST_MQTT_USER", "password_env": "ANPR_TEST_MQTT_PW"}
    settings = _settings(CLOSED_PORT, tmp_path / "q", **variables)
    with pytest.raises(ConfigError) as refused:
        make_sinks({"feed": settings}, database=object())  # type: ignore[arg-type]
    assert error in str(refused.value) and "a\nb" not in str(refused.value)
    assert not (tmp_path / "q").exists()  # refused before its queue folder is made


def test_each_message_is_the_records_json_on_its_cameras_topic():
    passage, read = _passage("AB123CD", camera="gate/1+#"), _read("ZZ999ZZ")
    batch = Batch([read], passages=[passage])
    (read_topic, read_payload), (passage_topic, passage_payload) = messages("site/anpr", batch)
    assert (read_topic, passage_topic) == ("site/anpr/reads/cam", "site/anpr/passages/gate%2F1%2B%23")
    assert json.loads(passage_payload) == passage.to_dict() and json.loads(read_payload) == read.to_dict()
    assert json.loads(passage_payload)["key"] == passage.key and json.loads(passage_payload)["camera"] == "gate/1+#"


# --- the queue ---------------------------------------------------------------------------------


def test_a_batch_partly_delivered_keeps_only_the_rest(tmp_path):
    class Tally:
        lost_batches = lost_reads = expired_reads = 0

    outbox = Outbox(MQTT_QUEUE, tmp_path / "q", tally=Tally(), busy="")
    first, second = [_passage(p) for p in ("AA111AA", "BB222BB", "CC333CC")], [_passage("DD444DD")]
    outbox.put(Batch([], passages=first))
    outbox.put(Batch([_read("EE555EE")], passages=second))

    def fail_after_one(batch: Batch) -> None:
        batch.passages = batch.passages[1:]  # the first was acknowledged, then the connection dropped
        raise ConnectionError

    with pytest.raises(ConnectionError):
        outbox.send(fail_after_one, NOW, lambda: True)
    left = [[p["plate"] for p in b["passages"]] for b in _queued(tmp_path / "q")]
    assert left == [["BB222BB", "CC333CC"], ["DD444DD"]]
    assert (len(outbox.entries), outbox.passages, outbox.reads) == (2, 3, 1)
    sent: list[Batch] = []
    outbox.send(sent.append, NOW, lambda: True)
    assert [[p.plate for p in b.passages] for b in sent] == [["BB222BB", "CC333CC"], ["DD444DD"]]
    assert [r.read.plate for r in sent[1].reads] == ["EE555EE"] and outbox.entries == []
    outbox.close()


def test_retention_holds_in_the_queue_online_and_offline(tmp_path):
    clock = Clock()
    queue = tmp_path / "q"
    sink = _sink(CLOSED_PORT, queue, clock, reads=True)
    sink.write_passages([_passage("AA111AA", delete_after=NOW + 10), _passage("BB222BB", delete_after=NOW + 100)])
    sink.write([_read("CC333CC", delete_after=NOW + 10)])
    assert [len(b["passages"]) + len(b["reads"]) for b in _queued(queue)] == [2, 1]
    clock.advance(10)
    sink.write_passages([])  # each write applies retention first
    assert [[p["plate"] for p in b["passages"]] for b in _queued(queue)] == [["BB222BB"]]
    sink.close()
    assert expire_mqtt_queue(queue, NOW + 99) == 0
    settings = _settings(CLOSED_PORT, queue)
    assert settings.purge_files("feed", NOW + 100) == (1, f"MQTT queue {queue}")  # what `anpr db purge` calls
    assert not queue.exists()  # made by anpr and emptied: removed
    assert expire_mqtt_queue(queue, NOW) == 0  # missing: nothing to purge


def test_db_purge_reaches_the_mqtt_queue_even_while_the_database_is_down(tmp_path, anpr_cli):
    t0 = time.time()
    queue = tmp_path / "feed-queue"
    sink = MqttSink(_settings(CLOSED_PORT, queue), clock=lambda: t0)
    sink.write_passages([_passage("GONE111", delete_after=t0 + 10), _passage("KEPT222", delete_after=t0 + DAY)])
    sink.close()
    config = _config(tmp_path, f"{{type: mqtt, host: 127.0.0.1, tls: false, port: {CLOSED_PORT}, queue_dir: {queue}}}")
    unreachable = "postgresql+psycopg://anpr@127.0.0.1:1/anpr"
    done = anpr_cli("db", "purge", "--config", str(config), "--db", unreachable, "--now", str(t0 + 20))
    assert f"purged 1 read(s) and passage(s) past their deadline from MQTT queue {queue}" in done.stdout, done.stderr
    assert done.returncode == 2 and done.stderr.startswith("anpr: error: cannot open database")
    assert [[p["plate"] for p in batch["passages"]] for batch in _queued(queue)] == [["KEPT222"]]


def test_a_folder_that_is_not_an_mqtt_queue_is_refused_untouched(tmp_path):
    clock = Clock()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"no \.anpr-mqtt-queue marker"):
        _sink(CLOSED_PORT, tmp_path / "home", clock)
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["notes.txt"]
    webhook_queue = tmp_path / "hook"
    webhook_queue.mkdir()
    (webhook_queue / ".anpr-webhook-queue").write_text("anpr webhook queue")
    (webhook_queue / f"{'0' * 20}-{'a' * 32}.json").write_text("{}")
    with pytest.raises(StoreError, match="not an anpr MQTT queue"):
        _settings(CLOSED_PORT, webhook_queue).purge_files("feed", NOW)
    sink = _sink(CLOSED_PORT, tmp_path / "q", clock)
    with pytest.raises(StoreError, match="in use by another run"):
        _sink(CLOSED_PORT, tmp_path / "q", clock)
    sink.close()


def test_a_full_queue_loses_messages_with_one_warning_and_never_stops_the_run(tmp_path, caplog):
    clock = Clock()
    sink = _sink(CLOSED_PORT, tmp_path / "q", clock, queue_max_mb=1, reads=True)
    big = [_read("AB123CD", frame) for frame in range(3000)]  # well over 1 MB of JSON
    with caplog.at_level(logging.WARNING, logger="anpr.sinks"):
        sink.write(big)
        sink.write(big)
        sink.close()
    assert sink.status.lost_messages == 6000 and sink.status.queued_messages == 0
    assert sum("cannot queue a message" in r.getMessage() for r in caplog.records) == 1


def test_a_broker_that_does_not_answer_counts_as_down_and_the_run_goes_on(tmp_path, caplog):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="anpr.sinks"):
            sink = MqttSink(_settings(port, tmp_path / "q"), timeout=0.5)
            sink.write_passages([_passage("AA111AA")])
            sink.close()
    assert sink.status.last_error == f"MQTT broker 127.0.0.1:{port} failed: no answer within 0.5 s"
    assert [[p["plate"] for p in batch["passages"]] for batch in _queued(tmp_path / "q")] == [["AA111AA"]]
    assert sum("failed" in r.getMessage() for r in caplog.records) == 1


# --- the gate ----------------------------------------------------------------------------------


class _Feed:
    """A sink that takes reads and passages, as an MQTT sink does, and keeps them."""

    def __init__(self) -> None:
        self.reads: list[PolicedRead] = []
        self.calls: list[list[Passage]] = []

    def write(self, reads) -> None:
        self.reads.extend(reads)

    def write_passages(self, passages) -> None:
        self.calls.append(list(passages))


def test_the_gate_gives_passages_to_the_sinks_of_allowed_purposes_only(tmp_path):
    data = yaml.safe_load(_config(tmp_path, "{type: mqtt, host: b}").read_text())
    data["controller"]["type"] = "police_nationale"
    data["cameras"][0]["purposes"] = ["criminal_investigation", "public_order_event", "law_enforcement_request"]
    data["purposes"]["public_order_event"] = {
        "safeguards": {"designated_agents": ["a"], "administrative_decision": "AD-2026-1"},
        "sinks": ["feed"],
    }
    data["purposes"]["law_enforcement_request"] = {"retention_days": 1, "sinks": ["store", "feed"]}  # FR-MUN-REQ
    (tmp_path / "three.yaml").write_text(yaml.safe_dump(data))
    deployment = load_settings(tmp_path / "three.yaml").deployment
    assert deployment is not None
    store, feed = ReadStore(str(tmp_path / "db.sqlite"), TEST_KEYS), _Feed()
    gate = PolicyGate(Policy(deployment), deployment.cameras[0], store, {"store": store, "feed": feed})
    box = lambda f: (100.0 + 80 * f, 500.0, 160.0 + 80 * f, 515.0)  # noqa: E731 (moving right)
    gate.write(
        [
            PlateRead("clip.mp4", f, f / 25, "AB123CD", "AB123CD", 0.8, 0.9, 0.9, box(f), "d", "o",
                      candidates=(("AB123CD", 1.0),), track=7)
            for f in range(4)
        ]
    )  # fmt: skip
    gate.end_tracks("clip.mp4", [TrackEnd(7, 4, 4 / 25)])
    (call,) = feed.calls  # the two allowed purposes' passages, in one call
    assert sorted(p.purpose for p in call) == ["criminal_investigation", "public_order_event"]
    assert [p.purpose for p in store.passages()] == ["criminal_investigation"]  # the only one naming the store
    assert {r.purpose for r in feed.reads} == {"criminal_investigation", "public_order_event"}
    assert gate.tally.counted_for("law_enforcement_request", Outcome.BLOCKED) == 4  # seen, and nothing kept
    store.close()


# --- against a real broker ---------------------------------------------------------------------


def test_passages_and_reads_are_published_with_the_availability(mqtt_broker, tmp_path):
    clock = Clock()
    with Subscriber(mqtt_broker) as subscriber:
        sink = _sink(mqtt_broker.port, tmp_path / "q", clock, reads=True, topic_prefix="site/anpr")
        sink.write([_read("AA111AA", 0), _read("AA111AA", 3)])
        sink.write_passages([_passage("AA111AA")])
        sink.close()
        subscriber.barrier()
    topics = [m.topic for m in subscriber.received]
    assert topics == [
        "site/anpr/availability/anpr-test",
        "site/anpr/reads/cam",
        "site/anpr/reads/cam",
        "site/anpr/passages/cam",
        "site/anpr/availability/anpr-test",
    ]
    assert [m.payload for m in subscriber.on("availability/anpr-test")] == [b"online", b"offline"]
    assert [m.json()["frame"] for m in subscriber.on("reads/cam")] == [0, 3]
    assert sink.status.sent_messages == 3 and not (tmp_path / "q").exists()
    with Subscriber(mqtt_broker, client_id="late") as late:  # the availability is retained
        late.wait_for(lambda r: r, 10, "the retained availability")
    assert [(m.topic, m.payload, m.retain) for m in late.received] == [
        ("site/anpr/availability/anpr-test", b"offline", True)
    ]


@pytest.mark.system  # a broker of its own
def test_a_broker_down_from_the_start_gets_the_queue_at_the_next_run_in_order_and_once(tmp_path, caplog):
    clock = Clock()
    queue = tmp_path / "q"
    broker = Mosquitto(tmp_path / "broker")  # not started: its port is closed
    with caplog.at_level(logging.WARNING, logger="anpr.sinks"):
        first_run = _sink(broker.port, queue, clock)
        for plate in ("AA111AA", "BB222BB", "CC333CC"):
            first_run.write_passages([_passage(plate)])
            clock.advance(0.5)  # within the backoff: queued without a try
        first_run.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("failed" in w for w in warnings) == 1, warnings  # one warning per outage
    assert "3 passage(s) wait in" in warnings[-1]
    files = sorted(queue.glob("*.json"))
    assert len(files) == 3 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    with broker, Subscriber(broker) as subscriber:
        next_run = _sink(broker.port, queue, clock)  # sends what it finds at once
        subscriber.barrier()
        assert _plates(subscriber.on("passages/cam")) == ["AA111AA", "BB222BB", "CC333CC"]
        assert list(queue.glob("*.json")) == []
        next_run.write_passages([_passage("DD444DD")])
        next_run.close()
        subscriber.barrier()
    assert _plates(subscriber.on("passages/cam")) == ["AA111AA", "BB222BB", "CC333CC", "DD444DD"]
    assert not queue.exists()


def test_a_broker_restarted_between_writes_gets_every_message_once(mqtt_broker, tmp_path, caplog):
    clock = Clock()
    with Subscriber(mqtt_broker) as subscriber:
        sink = _sink(mqtt_broker.port, tmp_path / "q", clock)
        sink.write_passages([_passage("AA111AA")])
        subscriber.wait_for(lambda r: subscriber.on("passages/cam"), 10, "the first passage")
        mqtt_broker.stop()
        with caplog.at_level(logging.INFO, logger="anpr.sinks"):
            sink.write_passages([_passage("BB222BB")])  # the lost connection is noticed: queued
            sink.write_passages([_passage("CC333CC")])  # within the backoff: queued behind it
            assert len(list((tmp_path / "q").glob("*.json"))) == 2
            mqtt_broker.start()
            clock.advance(1)  # the backoff has passed
            sink.write_passages([_passage("DD444DD")])  # reconnects, sends the queue, then this one
        assert list((tmp_path / "q").glob("*.json")) == []
        sink.close()
        subscriber.barrier()
    first_copies = [m for m in subscriber.on("passages/cam") if not m.dup]  # a dup is the broker's own redelivery
    assert _plates(first_copies) == ["AA111AA", "BB222BB", "CC333CC", "DD444DD"]
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert sink.status.connections == 2 and sink.status.queued_messages == 2 and sink.status.sent_messages == 4


@pytest.mark.system  # a broker of its own
def test_credentials_come_from_the_environment(tmp_path, monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setenv("ANPR_TEST_MQTT_USER", "camera")
    monkeypatch.setenv("ANPR_TEST_MQTT_PW", "s3cret-pw")
    credentials = {"username_env": "ANPR_TEST_MQTT_USER", "password_env": "ANPR_TEST_MQTT_PW"}
    with (
        Mosquitto(tmp_path / "broker", users={"camera": "s3cret-pw", "reader": "r"}) as broker,
        Subscriber(broker, username="reader", password="r") as subscriber,
    ):
        sink = _sink(broker.port, tmp_path / "q", clock, **credentials)
        sink.write_passages([_passage("AA111AA")])
        sink.close()
        subscriber.barrier()
        monkeypatch.setenv("ANPR_TEST_MQTT_PW", "wrong-pw")
        with caplog.at_level(logging.WARNING, logger="anpr.sinks"):
            refused = _sink(broker.port, tmp_path / "q2", clock, **credentials)
            refused.write_passages([_passage("BB222BB")])
        assert "Not authorized" in (refused.status.last_error or "")
        assert len(list((tmp_path / "q2").glob("*.json"))) == 1
        refused.close()
    assert _plates(subscriber.on("passages/cam")) == ["AA111AA"]
    assert not any("s3cret" in r.getMessage() or "wrong-pw" in r.getMessage() for r in caplog.records)


@pytest.mark.system  # a broker of its own
def test_tls_with_a_private_ca(tmp_path):
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
    import ssl

    clock = Clock()
    with Mosquitto(tmp_path / "broker", tls=(cert, key)) as broker:
        untrusted = _sink(broker.port, tmp_path / "q1", clock, tls=True)  # the system's CAs do not know it
        untrusted.write_passages([_passage("AA111AA")])
        assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.status.last_error or "")
        untrusted.close()
        with Subscriber(broker, tls=ssl.create_default_context(cafile=str(cert))) as subscriber:
            trusted = _sink(broker.port, tmp_path / "q2", clock, tls=True, ca_file=cert)
            trusted.write_passages([_passage("BB222BB")])
            trusted.close()
            subscriber.barrier()
    assert _plates(subscriber.on("passages/cam")) == ["BB222BB"]
    assert len(list((tmp_path / "q1").glob("*.json"))) == 1
    with pytest.raises(ConfigError, match="cannot read ca_file"):
        _sink(broker.port, tmp_path / "q3", clock, tls=True, ca_file=tmp_path / "none.pem")


def test_the_broker_says_offline_when_a_run_dies(mqtt_broker, tmp_path):
    program = (
        "import sys, time\n"
        "from anpr.sinks.mqtt import MqttSettings\n"
        "from anpr.sinks.mqtt_client import MqttSink\n"
        f"MqttSink(MqttSettings(type='mqtt', host='127.0.0.1', port={mqtt_broker.port}, tls=False, "
        f"client_id='anpr-dies', queue_dir={str(tmp_path / 'q')!r}))\n"
        "print('connected', flush=True)\n"
        "time.sleep(60)\n"
    )
    with Subscriber(mqtt_broker, "anpr/availability/#") as subscriber:
        run = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
        try:
            assert run.stdout is not None and run.stdout.readline() == "connected\n"
            subscriber.wait_for(lambda r: r, 10, "online")
            run.send_signal(signal.SIGKILL)  # no close(): only the broker can say it
        finally:
            run.kill()
            run.wait()
        subscriber.wait_for(lambda r: len(r) >= 2, 10, "the last will")
    assert [(m.topic, m.payload) for m in subscriber.received] == [
        ("anpr/availability/anpr-dies", b"online"),
        ("anpr/availability/anpr-dies", b"offline"),
    ]


# --- end to end: `anpr run` with the broker restarted mid-run ----------------------------------


def test_anpr_run_with_the_broker_restarted_mid_run_publishes_each_passage_once(mqtt_broker, tmp_path, anpr_cli):
    """Issue 16's acceptance item: one camera feeds an allowed purpose (FR-LAPI-1) and a denied
    one (FR-MUN-REQ), both naming the MQTT sink; the broker is stopped after the first passage
    and started again on the same port once another passage was made while it was away."""
    queue = tmp_path / "mqtt-queue"
    config = {
        "controller": {"type": "gendarmerie", "name": "test"},
        "cameras": [{"id": "a2-pk142", "purposes": ["criminal_investigation", "law_enforcement_request"]}],
        "purposes": {
            "criminal_investigation": {"safeguards": {"designated_agents": ["agent"]}, "sinks": ["store", "feed"]},
            "law_enforcement_request": {"retention_days": 1, "sinks": ["store", "feed"]},
        },
        "sinks": {
            "store": {"type": "database"},
            "feed": {
                "type": "mqtt", "host": "127.0.0.1", "port": mqtt_broker.port, "tls": False,
                "topic_prefix": "anpr-test", "client_id": "anpr-acceptance", "queue_dir": str(queue),
            },
        },
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    db = tmp_path / "run.sqlite"
    with Subscriber(mqtt_broker, "#") as subscriber:
        args = (str(SAMPLE), "--config", str(tmp_path / "config.yaml"), "--db", str(db), "--jsonl", "--passages")
        with LiveRun(*args, cwd=anpr_cli.cwd) as run:
            run.wait_for(lambda o: True, 180, "a first passage")
            subscriber.wait_for(lambda r: subscriber.on("passages/a2-pk142"), 30, "the first passage on the broker")
            mqtt_broker.stop()
            made_while_down = run.wait_for(lambda o: True, 120, "a passage made while the broker is down")
            received_before_restart = len(subscriber.received)
            mqtt_broker.start()
            assert run.process.wait(timeout=180) == 0, run.stderr
            run.stop()
        rows = sqlite3.connect(db).execute("select key, plate, reads, purpose from passages").fetchall()
        subscriber.barrier()  # the run has ended: whatever it published has now been received
    stderr = run.stderr
    keys = {key for key, *_ in rows}
    assert len(rows) >= 4 and {purpose for *_, purpose in rows} == {"criminal_investigation"}
    assert [o["key"] for o in run.objects] == [key for key, *_ in rows]  # the run printed what it stored
    # A dup is the broker's own redelivery.
    published = [m.json() for m in subscriber.on("passages/a2-pk142") if not m.dup]
    counted = Counter(p["key"] for p in published)
    assert set(counted) == keys and set(counted.values()) == {1}, counted  # every passage exactly once
    # The passage made during the outage waited on disk: it reached the broker only after the restart.
    before_restart = [m.json()["key"] for m in subscriber.received[:received_before_restart] if "/passages/" in m.topic]
    assert made_while_down["key"] in keys and made_while_down["key"] not in before_restart
    for passage in published:
        assert (passage["key"], passage["plate"], passage["reads"], passage["purpose"]) in rows
    # Nothing of the denied purpose: no message, no topic but the passages' and the availability.
    topics = {m.topic for m in subscriber.received}
    assert topics == {"anpr-test/passages/a2-pk142", "anpr-test/availability/anpr-acceptance"}
    assert not any(b"law_enforcement_request" in m.payload or b"FR-MUN-REQ" in m.payload for m in subscriber.received)
    blocked = (
        sqlite3.connect(db)
        .execute(
            "select sum(count) from policy_counts where purpose = 'law_enforcement_request' and outcome = 'blocked'"
        )
        .fetchone()[0]
    )
    assert blocked >= 20  # the denied purpose saw every read, and kept none
    # The outage happened mid-run and was over before the run ended.
    assert "MQTT broker 127.0.0.1" in stderr and "failed: connection lost" in stderr, stderr
    assert "answers again" in stderr, stderr
    assert [m.payload for m in subscriber.on("availability/anpr-acceptance")][-1] == b"offline"
    assert not queue.exists()  # everything delivered: the queue folder anpr made is gone
    redelivered = len(subscriber.on("passages/a2-pk142")) - len(published)
    print(
        f"\nMQTT acceptance: {len(rows)} passages stored for criminal_investigation, each published exactly once "
        f"({redelivered} redelivery by the broker to the subscriber ignored); law_enforcement_request: {blocked} "
        f"reads blocked, 0 messages; the sink said: {[line for line in stderr.splitlines() if 'MQTT broker' in line]}"
    )
