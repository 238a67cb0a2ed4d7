"""Issue 26, cases 15 and 17: the transports that leave the run.

Cameras whose ids collide in MQTT topics or name the availability's level, published to a
real Mosquitto broker; `anpr run --cluster auto` started where no Ray instance runs, with a
home and a temporary folder of its own, and what it leaves there.
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

import yaml

from benchmarks.attacks.kit import ME, REPO, SAMPLE, Target, anpr, row, said, write_yaml

# Two ids that were one topic (a/b and a_b both a_b), one that published where the retained
# online/offline state lives, and one with a C1 control (NEL), which Mosquitto refuses in a topic.
CAMERAS = ["a/b", "a_b", "availability", "gare\x85nord"]
FRAMES = 60  # the sample's first passage, per camera


def run(target: Target) -> None:
    """Every attack of this group, each adding its row."""
    sys.path.insert(0, str(REPO / "tests"))
    mqtt_topics(target)
    mqtt_prefix(target)
    cluster_auto(target)


def _gendarmerie(target: Target, name: str, feed: dict, cameras: list[dict]) -> Path:
    """A gendarmerie config whose purpose publishes to `feed`, written with YAML's escapes: a
    raw U+0085 in a YAML file is a line break, read back as a space."""
    path = target.work / name
    data = {
        "controller": {"type": "gendarmerie", "name": "red team"},
        "cameras": cameras,
        "purposes": {"criminal_investigation": {"safeguards": {"designated_agents": [ME]}, "sinks": ["store", "feed"]}},
        "sinks": {"store": {"type": "database"}, "feed": {"type": "mqtt", "host": "127.0.0.1", "tls": False, **feed}},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def mqtt_topics(target: Target) -> None:
    from support.mosquitto import Mosquitto, Subscriber

    clip = target.work / "first-passage.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(SAMPLE), "-frames:v", str(FRAMES), "-an", str(clip)], check=True
    )
    cameras = [{"id": camera, "source": str(clip), "purposes": ["criminal_investigation"]} for camera in CAMERAS]
    with Mosquitto(target.work / "broker") as broker:
        feed = {"port": broker.port, "client_id": "anpr-red-team", "queue_dir": str(target.work / "mqtt-queue")}
        config = _gendarmerie(target, "mqtt.yaml", feed, cameras)
        with (
            Subscriber(broker) as everything,
            Subscriber(broker, "anpr/availability/#", client_id="state") as state,
        ):
            result = anpr("run", "--config", str(config), "--db", str(target.work / "mqtt.sqlite"), cwd=target.work)
            everything.barrier()
    passages = sorted({m.topic for m in everything.received if m.payload not in (b"online", b"offline")})
    queued = len(list((target.work / "mqtt-queue").glob("*.json")))
    row(
        "26.15",
        "cameras `a/b`, `a_b`, `availability` and `gare<U+0085>nord` publish passages to one broker",
        "anpr run --config mqtt.yaml (four cameras, an mqtt sink)",
        f"exit {result.returncode}; {len(passages)} topics for {len(CAMERAS)} cameras: "
        + ", ".join(f"`{topic}`" for topic in passages)
        + "; `anpr/availability/#` carried "
        + ", ".join(f"`{m.topic}` {m.payload.decode(errors='replace')[:24]}" for m in state.received)
        + f"; {queued} message(s) left queued",
    )


def mqtt_prefix(target: Target) -> None:
    for prefix, shown in (("anpr\u2028x", "U+2028"), ("anpr\x85x", "U+0085")):
        config = _gendarmerie(
            target, "prefix.yaml", {"topic_prefix": prefix}, [{"id": "cam", "purposes": ["criminal_investigation"]}]
        )
        row(
            "26.15",
            f"a `topic_prefix` holding {shown}",
            "anpr policy check prefix.yaml",
            said(anpr("policy", "check", str(config), cwd=target.work)),
        )


def _marked(mark: bytes) -> int:
    """How many processes hold `mark` in their environment: the run's and what it started."""
    count = 0
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            count += mark in environ.read_bytes()
        except OSError:  # gone meanwhile, or a zombie
            continue
    return count


def cluster_auto(target: Target) -> None:
    try:
        import ray  # noqa: F401
        from support.postgres import PostgresServer
    except ImportError as exc:  # reported in the table
        row("26.17", "`--cluster auto`", "-", f"not run: {exc}")
        return
    work = target.work / "cluster"
    home = work / "home"
    home.mkdir(parents=True)
    temp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # short: Ray's socket paths are at most 107 bytes
    config = write_yaml(
        work / "city.yaml",
        {
            "controller": {"type": "municipality", "name": "Ville", "jurisdiction": "FR"},
            # Nothing answers there: the camera waits for its stream and the run goes on until stopped.
            "cameras": [{"id": "cam-1", "source": "rtsp://127.0.0.1:1/live", "purposes": ["parking_fps"]}],
            "purposes": {
                "parking_fps": {
                    "legal_basis": "CGCT L2333-87",
                    "safeguards": {"human_review": True, "signage": True},
                    "retention_days": 1,
                    "sinks": ["store"],
                }
            },
            "sinks": {"store": {"type": "database"}},
        },
    )
    mark = secrets.token_hex(8)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(temp), "ANPR_RED_TEAM_MARK": mark}
    env.pop("RAY_ADDRESS", None)
    log, stderr = work / "status.jsonl", work / "stderr"
    try:
        with PostgresServer() as server:
            command = [sys.executable, "-m", "anpr", "run", "--config", str(config), "--cluster", "auto"]
            command += ["--db", server.new_database(), "--log-json", str(log)]
            with stderr.open("w") as err:
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=work, env=env)
            deadline = time.monotonic() + 600
            while process.poll() is None and time.monotonic() < deadline:
                if log.exists() and '"run.start"' in log.read_text():
                    break
                time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        time.sleep(5)  # Ray's processes end a moment after the driver
        left = sorted(str(p.relative_to(home)) for p in home.rglob("*") if "ray" in str(p.relative_to(home)).lower())
        row(
            "26.17",
            "`--cluster auto` where no Ray instance runs, then stopped (SIGTERM), with a HOME and TMPDIR of its own",
            "anpr run --config city.yaml --cluster auto --db postgresql+psycopg://...",
            f"exit {process.returncode}; in HOME: {', '.join(f'`~/{p}`' for p in left) or 'nothing of Ray'}; "
            f"in TMPDIR: {', '.join(f'`{p.name}`' for p in temp.iterdir() if 'ray' in p.name) or 'nothing of Ray'}; "
            f"Ray processes left: {_marked(f'ANPR_RED_TEAM_MARK={mark}'.encode())}",
        )
    finally:
        shutil.rmtree(temp, ignore_errors=True)
