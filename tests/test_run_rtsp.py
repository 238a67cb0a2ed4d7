from __future__ import annotations

import json
import signal
import sqlite3
import time

from conftest import PARKING_CONFIG
from support.live_run import LiveRun
from support.rtsp import RtspServer

from anpr.reading.plates import same_plate


def test_run_reads_plates_from_a_real_rtsp_stream(clip_h264, tmp_path):
    """A GStreamer RTSP server streams the 6-passage clip in real time; reads arrive.

    A stream never ends by itself for `anpr run` (when it stops, the run reconnects), so
    the test lets the clip play through and then stops the run with SIGTERM."""
    db = tmp_path / "live.sqlite"
    seconds = json.loads(clip_h264.with_suffix(".json").read_text())["passages"][-1]["last_frame"] / 25
    with (
        RtspServer(clip_h264) as server,
        LiveRun(server.url, "--config", str(PARKING_CONFIG), "--db", str(db), "--jsonl") as run,
    ):
        run.wait_for(lambda o: True, 120, "a first read")
        time.sleep(seconds + 5)
        run.stop(signal.SIGTERM)
    assert run.process.returncode == 0, run.stderr
    objects = run.objects
    assert objects and {o["source"] for o in objects} == {server.url}
    assert sqlite3.connect(db).execute("select count(*) from reads").fetchone()[0] == len(objects)
    # Live frames carry wall-clock time and arrive in order.
    times = [o["time"] for o in objects]
    assert times == sorted(times) and times[0] > 1.7e9
    passages = json.loads(clip_h264.with_suffix(".json").read_text())["passages"]
    seen = {p["plate"] for p in passages if any(same_plate(o["plate"], p["plate"]) for o in objects)}
    # The CPU pipeline is slower than real time at 1080p, so frames are dropped;
    # each passage still leaves several frames to read.
    assert len(seen) >= len(passages) - 2, (seen, sorted({o["plate"] for o in objects}))


def test_ctrl_c_ends_a_live_run_with_every_reported_read_stored(clip_h264, tmp_path):
    db = tmp_path / "live.sqlite"
    with (
        RtspServer(clip_h264, loop=True) as server,  # never ends by itself
        LiveRun(server.url, "--config", str(PARKING_CONFIG), "--db", str(db), "--jsonl") as run,
    ):
        run.wait_for(lambda o: True, 120, "a first read")
        took = run.stop(signal.SIGINT)
    assert run.process.returncode == 0, run.stderr
    assert took < 30
    stored = sqlite3.connect(db).execute("select frame, plate from reads order by id").fetchall()
    assert [(o["frame"], o["plate"]) for o in run.objects] == stored


def test_a_camera_url_with_credentials_is_read_stored_and_logged_without_them(clip_h264, tmp_path):
    """The password in a camera URL goes to the stream and nowhere else: not into the reads'
    source (JSON lines, database), the status log or any message. (This server asks for no
    credentials; tests/test_redact.py has an endpoint that asks and gets them.)"""
    db, status_log = tmp_path / "live.sqlite", tmp_path / "status.jsonl"
    with RtspServer(clip_h264, loop=True) as server:
        url = server.url.replace("rtsp://", "rtsp://admin:s3cret@")
        shown = server.url.replace("rtsp://", "rtsp://admin:***@")
        options = ("--config", str(PARKING_CONFIG), "--db", str(db), "--jsonl", "--log-json", str(status_log))
        with LiveRun(url, *options) as run:
            run.wait_for(lambda o: True, 120, "a first read")
            run.stop(signal.SIGTERM)
    assert run.process.returncode == 0, run.stderr
    assert run.objects and {o["source"] for o in run.objects} == {shown}
    with sqlite3.connect(db) as connection:
        assert connection.execute("select distinct source from reads").fetchall() == [(shown,)]
    events = [json.loads(line) for line in status_log.read_text().splitlines()]
    assert events[0]["event"] == "run.start" and events[0]["cameras"] == {"scan-car-07": shown}
    assert shown in run.stderr  # "reading ... as camera scan-car-07"
    for where, text in [
        ("stderr", run.stderr),
        ("JSON lines", json.dumps(run.objects)),
        ("status log", status_log.read_text()),
        ("database", db.read_bytes().decode("latin-1")),
    ]:
        assert "s3cret" not in text, where
