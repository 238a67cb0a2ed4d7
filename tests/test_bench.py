"""`anpr bench` reports figures measured in its own run; speed itself is never asserted here."""

from __future__ import annotations

import json

import cv2
import pytest

from benchmarks.clips import build_clip


def test_bench_json_holds_measured_figures_and_consistent_ratios(anpr_cli, few_photos, tmp_path):
    clip = tmp_path / "bench.mp4"
    build_clip(few_photos[:2], clip, (1280, 720), 25, 0.6, "h264")  # 30 frames
    chart = tmp_path / "bench.png"
    result = anpr_cli(
        "bench", str(clip), "--json", "--naive-frames", "4", "--batch", "4", "--plot", str(chart), timeout=600
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"decode_fps", "naive_fps", "fps", "speedup_vs_naive", "fraction_of_decode", "peak_rss_mb"} <= report.keys()
    assert report["frames"] == 30 and report["naive_frames"] == 4 and report["reads_stored"] > 0
    assert all(report[k] > 0 for k in ("decode_fps", "naive_fps", "fps", "peak_rss_mb"))
    assert report["speedup_vs_naive"] == pytest.approx(report["fps"] / report["naive_fps"], rel=0.01, abs=0.01)
    assert report["fraction_of_decode"] == pytest.approx(report["fps"] / report["decode_fps"], rel=0.01, abs=1e-4)
    # Where the time went: every stage ran, and each alone is at least as fast as all of them
    # together (its seconds are a part of the run's).
    assert set(report["stage_fps"]) == {"detect", "track", "read", "keep"}
    assert all(fps >= report["fps"] * 0.99 for fps in report["stage_fps"].values())
    assert sum(report["frames"] / fps for fps in report["stage_fps"].values()) <= report["frames"] / report["fps"]
    image = cv2.imread(str(chart))
    assert image is not None and image.shape[1] > 600 and image.std() > 10  # a drawn chart, not a blank page


def test_bench_plot_does_not_go_with_streams(anpr_cli, tmp_path):
    result = anpr_cli("bench", str(tmp_path / "none.mp4"), "--streams", "2", "--plot", str(tmp_path / "b.png"))
    assert result.returncode == 2 and "--plot" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bench_on_a_missing_video(anpr_cli, tmp_path):
    result = anpr_cli("bench", str(tmp_path / "none.mp4"))
    assert result.returncode == 2 and result.stderr.startswith("anpr: error: no such video")
