"""Issue 26, cases 15 and 17: the transports that leave the run.

15: MQTT topics are injective (a camera id is percent-encoded into one level) and the level
after the prefix says what a topic carries, so no camera publishes where the availability
lives; a real Mosquitto broker (tests/support/mosquitto.py) receives them.
17: `anpr run --cluster auto` starts a local Ray instance of its own when none runs and
leaves nothing of it: no process, no ~/.ray/auth_token, no Ray folder; a real run against
a real PostgreSQL server, with a home and a temporary folder of the test's own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from pydantic import ValidationError
from support.mosquitto import Mosquitto, Subscriber

from anpr.records import Passage, PlateRead, PolicedRead
from anpr.sinks.mqtt import MqttSettings
from anpr.sinks.mqtt_client import MqttSink

NOW = time.time()
# Ids that collided (a/b and a_b were both a_b), named the availability's level, or carried a
# C1 control (U+0085, a line break to some readers) or a line separator into a topic; and one
# spelled as another's encoding.
CAMERAS = ["a/b", "a_b", "a%2Fb", "availability", "a\x85b", "a\u2028b", "+", "#", "gare-é"]


def _passage(camera: str) -> Passage:
    return Passage(
        "rtsp://cam/x", camera, "criminal_investigation", "FR-LAPI-1", 1, "AB123CD", 0.9, (("AB123CD", 0.9),),
        "FR", "LLDDDLL", 0, 20, 0.0, 0.8, 4, NOW + 86_400,
    )  # fmt: skip


def _read(camera: str) -> PolicedRead:
    read = PlateRead("rtsp://cam/x", 0, 0.0, "AB123CD", "AB123CD", 0.9, 0.95, 0.96, (1, 2, 3, 4), "d", "o")
    return PolicedRead(read, camera, "criminal_investigation", "FR-LAPI-1", NOW + 86_400, False)


@pytest.fixture
def mqtt_broker(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker:
        yield broker


def test_each_camera_publishes_on_a_topic_of_its_own_and_never_where_the_availability_is(mqtt_broker, tmp_path):
    settings = MqttSettings(
        type="mqtt", host="127.0.0.1", port=mqtt_broker.port, tls=False, client_id="anpr-test",
        reads=True, queue_dir=str(tmp_path / "q"),
    )  # fmt: skip
    with (
        Subscriber(mqtt_broker) as everything,
        Subscriber(mqtt_broker, "anpr/availability/#", client_id="state") as state,
    ):
        sink = MqttSink(settings)
        sink.write([_read(camera) for camera in CAMERAS])
        sink.write_passages([_passage(camera) for camera in CAMERAS])
        sink.close()
        everything.barrier()
        state.wait_for(lambda r: len(r) >= 2, 10, "online and offline")
    assert sink.status.sent_messages == 2 * len(CAMERAS)
    for kind in ("reads", "passages"):
        published = [m for m in everything.received if m.topic.startswith(f"anpr/{kind}/")]
        topics = [m.topic for m in published]
        assert len(set(topics)) == len(CAMERAS), topics  # one topic per camera: none shared
        for message in published:
            level = message.topic.removeprefix(f"anpr/{kind}/")
            # One printable ASCII level, no wildcard, that gives the camera's id back.
            assert level.isascii() and level.isprintable() and not set(level) & set("/+#"), level
            assert unquote(level) == message.json()["camera"]
    # The availability's level carries the run's state and nothing else.
    assert [(m.topic, m.payload) for m in state.received] == [
        ("anpr/availability/anpr-test", b"online"),
        ("anpr/availability/anpr-test", b"offline"),
    ]
    assert {m.topic.split("/")[1] for m in everything.received} == {"reads", "passages", "availability"}


@pytest.mark.parametrize("prefix", ["anpr\x85", "site\u2028anpr", "anpr\u202e"])
def test_a_topic_prefix_with_a_c1_control_or_a_line_separator_is_refused(prefix):
    with pytest.raises(ValidationError, match="control characters or line separators"):
        MqttSettings(type="mqtt", host="broker", topic_prefix=prefix)


# --- 17: `--cluster auto` leaves the user's Ray state as it found it ----------------------------


def _marked(mark: str) -> list[int]:
    """The processes whose environment holds `mark`: the run's and whatever it started."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or a zombie
            continue
    return found


@pytest.mark.system  # Ray, PostgreSQL and the models on a node: a minute or two
def test_cluster_auto_stops_the_ray_instance_it_started_and_leaves_no_token_or_folder(postgres, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # Short: Ray's sockets live under it, and a socket path is at most 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    mark = f"ANPR_TEST_MARK={secrets.token_hex(8)}"
    config = {
        "controller": {"type": "municipality", "name": "Ville", "jurisdiction": "FR"},
        # Nothing answers there: the camera waits for its stream, and the run goes on until stopped.
        "cameras": [{"id": "cam-1", "source": "rtsp://127.0.0.1:1/live", "purposes": ["parking_fps"]}],
        "purposes": {
            "parking_fps": {
                "legal_basis": "CGCT L2333-87", "safeguards": {"human_review": True, "signage": True},
                "retention_days": 1, "sinks": ["store"],
            }
        },
        "sinks": {"store": {"type": "database"}},
    }  # fmt: skip
    (tmp_path / "city.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / "status.jsonl"
    name, value = mark.split("=")
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(temp), name: value}
    env.pop("RAY_ADDRESS", None)
    args = ["run", "--config", str(tmp_path / "city.yaml"), "--cluster", "auto", "--db", postgres.new_database()]
    command = [sys.executable, "-m", "anpr", *args, "--log-json", str(log)]
    try:
        with (tmp_path / "stderr").open("w") as stderr:
            run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path, env=env)
        try:
            deadline = time.monotonic() + 300
            while '"run.start"' not in (log.read_text() if log.exists() else ""):
                assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()[-3000:]
                time.sleep(0.5)
            assert len(_marked(mark)) > 1  # the run, and the Ray instance it started
            run.send_signal(signal.SIGTERM)
            assert run.wait(timeout=120) == 0, (tmp_path / "stderr").read_text()[-3000:]
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert not [path for path in home.rglob("*") if "ray" in path.name.lower()]  # no ~/.ray/auth_token
        # No Ray folder, its own or the shared one (onnxruntime's session file `.ses` is not Ray's).
        assert not [path for path in temp.iterdir() if "ray" in path.name]
        deadline = time.monotonic() + 30
        while _marked(mark) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _marked(mark) == []  # every process of the instance it started has stopped
        said = (tmp_path / "stderr").read_text()
        assert "no Ray instance ran on this machine: started one for this run, stopped at its end" in said
    finally:
        shutil.rmtree(temp, ignore_errors=True)
