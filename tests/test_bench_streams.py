"""`anpr bench --streams`: N copies of a clip as N live cameras of one run. The figures are
checked for presence and consistency; speed itself is never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

from benchmarks.clips import build_clip


def _anpr(*args: str, cwd) -> subprocess.CompletedProcess:
    """This worktree's `anpr` (not the installed one), in a subprocess as a user would run it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "anpr", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_two_paced_cameras_report_their_frames_drops_latency_and_cost(few_photos, tmp_path):
    clip = tmp_path / "site.mp4"
    build_clip(few_photos[:1], clip, (1280, 720), 25, 1.0, "h264")  # 25 frames: less than a reader's queue
    result = _anpr("bench", str(clip), "--streams", "2", "--json", "--batch", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    site = json.loads(result.stdout)
    assert site["streams"] == 2 and site["paced"] is True and site["clip_fps"] == 25.0
    assert [c["camera"] for c in site["cameras"]] == ["cam1", "cam2"]
    assert site["frames"] == 50 and site["dropped"] == 0  # a queue of 64 frames never overflows on 25
    assert isinstance(site["holds_real_time"], bool)
    assert site["seconds"] > 0 and site["fps"] > 0 and site["cpu_seconds"] > 0 and site["peak_rss_mb"] > 0
    assert site["reads_stored"] == sum(c["reads"] for c in site["cameras"]) > 0
    for camera in site["cameras"]:
        assert camera["frames"] == 25 and camera["dropped"] == 0 and camera["fps"] > 0
        assert 0 < camera["frame_latency_median_ms"] <= camera["frame_latency_p99_ms"]
        assert 0 < camera["latency_median_ms"] <= camera["latency_p99_ms"]
    assert not list(tmp_path.glob("*.sqlite")) and not (tmp_path / "anpr.key").exists()  # all in a temporary folder


def test_streams_must_be_a_count_or_auto(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    result = _anpr("bench", str(clip), "--streams", "many", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("anpr: error: --streams must be")
