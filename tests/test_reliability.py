"""Issue 6: streams that drop, several cameras, shutdown by signal (real RTSP server, real models)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import PARKING_CONFIG, REPO
from support.live_run import LiveRun
from support.rtsp import RtspServer

from anpr.reading.source import FrameReader, Reconnect, SourceState, VideoSource

SAMPLE = REPO / "samples" / "sample.mp4"  # 180 frames of H.264, 1920x1080, 25 fps
QUICK_RECONNECT = {"stall_seconds": 3, "reconnect_first_delay": 0.2, "reconnect_max_delay": 2}


def _config(tmp_path, cameras=None) -> str:
    config = yaml.safe_load(PARKING_CONFIG.read_text())
    config["stream"] = QUICK_RECONNECT
    if cameras is not None:
        template = config["cameras"][0]
        config["cameras"] = [{**template, "id": camera_id, "source": source} for camera_id, source in cameras]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _events(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _reconnections(log) -> list[float]:
    """When the camera connected again after each drop, as the status log says."""
    events = [e for e in _events(log) if e["event"] == "camera"] if log.exists() else []
    return [
        e["since"]
        for before, e in itertools.pairwise(events)
        if (before["state"], e["state"]) == ("reconnecting", "connected")
    ]


def _stored(db) -> list[tuple]:
    return sqlite3.connect(db).execute("select camera, frame, plate from reads order by id").fetchall()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_live_run_survives_three_server_restarts(clip_h264, tmp_path):
    db, log = tmp_path / "live.sqlite", tmp_path / "status.jsonl"
    with (
        RtspServer(clip_h264, loop=True) as server,
        LiveRun(server.url, "--config", _config(tmp_path), "--db", str(db), "--jsonl", "--log-json", str(log)) as run,
    ):
        run.wait_for(lambda o: True, 120, "a first read")
        for number in range(1, 4):
            server.restart()
            # A live frame's time is when it is taken from the connection, and frames the old
            # connection had buffered come after the restart: wait for the reconnection itself.
            _wait(lambda n=number: len(_reconnections(log)) >= n, 120, f"reconnection {number}")
            back = _reconnections(log)[number - 1]
            run.wait_for(lambda o, after=back: o["time"] > after, 120, f"a read of a frame sent after restart {number}")
        took = run.stop(signal.SIGTERM)
    assert run.process.returncode == 0, run.stderr
    assert took < 30
    events = _events(log)
    assert events[-1]["event"] == "run.end"
    camera = events[-1]["cameras"]["scan-car-07"]
    assert camera["reconnects"] == 3, camera
    states = [e["state"] for e in events if e["event"] == "camera"]
    assert states.count("reconnecting") == 3 and states[-1] in ("connected", "ended"), states
    # Each restart closed the connection at once: said so, and over once reconnected.
    reasons = [e["error"] for e in events if e["event"] == "camera" and e["state"] == "reconnecting"]
    assert all(r.startswith("stream ended") for r in reasons), reasons
    assert camera["last_error"] is None, camera
    assert "3 reconnections" in run.stderr
    assert [("scan-car-07", o["frame"], o["plate"]) for o in run.objects] == _stored(db)
    print(
        f"\n{len(run.objects)} reads reported and stored, {camera['reconnects']} reconnections, "
        f"exit {run.process.returncode} {took:.1f} s after SIGTERM"
    )


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.05)


def test_a_stream_that_ends_or_stalls_says_which_and_forgets_it_once_back():
    """A server that goes away closes the connection at once; a hung one keeps it open and
    sends nothing. The reason for reconnecting says which, and is cleared once the stream
    is back and when it ends cleanly."""
    reconnect = Reconnect(stall_seconds=2, first_delay=0.2, max_delay=1)
    with RtspServer(SAMPLE, loop=True) as server:
        source = VideoSource(server.url, live=True, reconnect=reconnect)
        reader = FrameReader(source)  # decodes in the background; a live source drops what is not taken
        status = source.status
        try:
            _wait(lambda: status.received > 10, 30, "frames")
            server.restart()
            _wait(lambda: status.reconnects == 1, 60, "reconnection after the restart")
            assert status.last_error is None
            os.kill(server.process.pid, signal.SIGSTOP)  # hung: the connection stays open, nothing comes
            try:
                _wait(lambda: status.state is SourceState.RECONNECTING, 30, "reconnecting while the server hangs")
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            _wait(lambda: status.reconnects == 2, 60, "reconnection once the server goes on")
        finally:
            reader.close()
    reasons = [why for _, state, why in status.changes if state is SourceState.RECONNECTING]
    assert len(reasons) == 2 and reasons[0] == "stream ended: the server closed it or the connection dropped"
    assert re.fullmatch(r"stream stalled: no frame for [234] s", reasons[1]), reasons  # 2 s, and a loaded machine
    assert status.state is SourceState.ENDED and status.last_error is None


def test_a_dead_camera_does_not_stop_the_others_and_joins_when_it_comes_up(clip_h264, tmp_path):
    db, log = tmp_path / "two.sqlite", tmp_path / "status.jsonl"
    dead_port = _free_port()
    with RtspServer(clip_h264, loop=True) as alive:
        config = _config(tmp_path, [("gate-a", alive.url), ("gate-b", f"rtsp://127.0.0.1:{dead_port}/stream")])
        with LiveRun("--config", config, "--db", str(db), "--jsonl", "--log-json", str(log)) as run:
            run.wait_for(lambda o: o["camera"] == "gate-a", 120, "a read from the live camera")
            assert "camera gate-b is down" in run.stderr
            with RtspServer(clip_h264, port=dead_port, loop=True):
                run.wait_for(lambda o: o["camera"] == "gate-b", 120, "a read from the camera that came up")
                run.wait_for(lambda o: o["camera"] == "gate-a", 60, "more reads from the first camera")
                run.stop(signal.SIGTERM)
    assert run.process.returncode == 0, run.stderr
    b_states = [e["state"] for e in _events(log) if e["event"] == "camera" and e["camera"] == "gate-b"]
    assert b_states[:2] == ["reconnecting", "connected"], b_states
    stored = _stored(db)
    assert {camera for camera, _, _ in stored} == {"gate-a", "gate-b"}
    assert [(o["camera"], o["frame"], o["plate"]) for o in run.objects] == stored


def test_no_reachable_camera_is_a_one_line_error(tmp_path):
    config = _config(
        tmp_path, [("gate-a", f"rtsp://127.0.0.1:{_free_port()}/s"), ("gate-b", f"rtsp://127.0.0.1:{_free_port()}/s")]
    )
    run = LiveRun("--config", config, "--db", str(tmp_path / "none.sqlite"))
    assert run.process.wait(timeout=120) == 2
    time.sleep(0.2)
    assert run.stderr.strip().splitlines()[-1].startswith("anpr: error: no camera can be reached: gate-a")
    assert "Traceback" not in run.stderr and not (tmp_path / "none.sqlite").exists()


def test_sigterm_drains_the_frames_in_flight_and_stores_every_reported_read(clip_h264, tmp_path):
    db = tmp_path / "file.sqlite"
    with LiveRun(str(clip_h264), "--config", str(PARKING_CONFIG), "--db", str(db), "--jsonl") as run:
        run.wait_for(lambda o: True, 120, "a first read")
        took = run.stop(signal.SIGTERM)
    assert run.process.returncode == 0, run.stderr
    assert took < 60
    stored = _stored(db)
    assert [("scan-car-07", o["frame"], o["plate"]) for o in run.objects] == stored
    # It stopped early: the clip has 150 frames, the queue holds 64 beyond the first batch.
    assert max(frame for _, frame, _ in stored) < 149


@pytest.mark.system  # the run loads the real weights unless the signal comes first
def test_sigterm_while_the_run_is_set_up_ends_it_cleanly(tmp_path):
    """SIGTERM as soon as the run has announced its purposes: it is still opening the
    source, the database and the models. The run ends with status 0, not killed (143), and
    what it wrote is whole: its audit log verifies and every read it printed is stored."""
    config = yaml.safe_load(PARKING_CONFIG.read_text())
    config["store"] = {
        "key_file": str(tmp_path / "anpr.key"),
        "audit_checkpoints": str(tmp_path / "anpr-audit.checkpoints"),
        "spool_dir": str(tmp_path / "spool"),
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    db, options = tmp_path / "early.sqlite", ("--config", str(tmp_path / "config.yaml"))
    with LiveRun(str(SAMPLE), *options, "--db", str(db), "--jsonl") as run:
        deadline = time.monotonic() + 60
        while "purpose parking_fps: allowed" not in run.stderr:
            assert time.monotonic() < deadline and run.process.poll() is None, run.stderr
            time.sleep(0.01)
        run.stop(signal.SIGTERM)
    assert run.process.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "anpr: error" not in run.stderr
    if "stopped before the run started" in run.stderr:  # the signal came before anything was opened
        assert not db.exists()
        return
    exe = shutil.which("anpr") or str(Path(sys.executable).parent / "anpr")
    verify = subprocess.run([exe, "audit", "verify", *options, "--db", str(db)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert [("scan-car-07", o["frame"], o["plate"]) for o in run.objects] == _stored(db)


def test_postgresql_stopped_for_30_s_mid_run_loses_and_duplicates_nothing(clip_h264, tmp_path):
    """A live run into PostgreSQL, with an allowed and a denied purpose on its camera: the
    server is stopped for 30 s and started again while reads keep arriving."""
    import sqlalchemy
    from support.postgres import PostgresServer

    with PostgresServer() as server:
        url = server.new_database()
        config = yaml.safe_load((PARKING_CONFIG.parent / "mixed-camera.yaml").read_text())
        config["store"] = {"spool_dir": str(tmp_path / "spool")}
        config["sinks"]["police_export"]["path"] = str(tmp_path / "police.jsonl")
        log = tmp_path / "status.jsonl"
        with RtspServer(clip_h264, loop=True) as stream:
            config["cameras"][0]["source"] = stream.url
            (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
            with LiveRun(
                "--config", str(tmp_path / "config.yaml"), "--db", url, "--jsonl", "--log-json", str(log)
            ) as run:
                run.wait_for(lambda o: True, 120, "a first read")
                server.stop()
                stopped = time.time()
                run.wait_for(lambda o: o["time"] > stopped, 60, "a read while the database is down")
                time.sleep(max(0.0, stopped + 30 - time.time()))
                server.start()
                started = time.time()
                run.wait_for(lambda o: o["time"] > started + 2, 60, "a read after the database is back")
                run.stop(signal.SIGTERM)
        assert run.process.returncode == 0, run.stderr
        reported = [o["key"] for o in run.objects]
        during = [o for o in run.objects if stopped < o["time"] < started]
        assert during, "no read was reported during the outage"
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            stored = connection.execute(sqlalchemy.text("select key, purpose from reads")).all()
        engine.dispose()
        keys = [key for key, _ in stored]
        assert len(keys) == len(set(keys)), "a read was stored twice"
        assert set(keys) == set(reported) and len(keys) == len(reported), "a reported read is missing"
        assert {purpose for _, purpose in stored} == {"parking_fps"}  # nothing for the denied purpose
        assert not (tmp_path / "police.jsonl").exists()
        assert not (tmp_path / "spool").exists()  # everything sent; an empty spool leaves nothing
        statuses = [e for e in _events(log) if e["event"] == "status" and "database" in e]
        assert any(not e["database"]["database_up"] for e in statuses)
        assert "read(s) spooled" in run.stderr
        print(
            f"\n{len(reported)} reads reported, {len(during)} during the 30 s outage, {len(keys)} stored, "
            f"{len(set(keys))} distinct; purposes stored: {sorted({p for _, p in stored})}"
        )
