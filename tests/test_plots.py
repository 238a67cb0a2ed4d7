"""The charts of `anpr eval --plot` and `anpr bench --plot`, from the summaries the commands print."""

from __future__ import annotations

import cv2
import pytest

from anpr.errors import ConfigError
from anpr.measure.plots import plot_bench, plot_eval

BENCH = {
    "video": "clip.mp4",
    "frames": 300,
    "detector": "onnx-int8",
    "stride": 3,
    "batch": 8,
    "decode_fps": 200.0,
    "fps": 60.0,
    "naive_fps": 3.0,
    "fraction_of_decode": 0.3,
    "stage_fps": {"detect": 110.0, "track": 9000.0, "read": 150.0, "keep": 2000.0},
}


def _drawn(path):
    image = cv2.imread(str(path))
    return image is not None and image.shape[1] > 600 and image.std() > 10


def test_an_eval_with_every_read_right_is_charted_without_confusions(tmp_path):
    summary = {"dataset": "set", "split": "test", "exact": 1.0, "top3": 1.0, "detection_recall": None, "confusions": []}
    plot_eval([summary], tmp_path / "eval.png")
    assert _drawn(tmp_path / "eval.png")


def test_a_bench_chart_shows_every_stage(tmp_path):
    plot_bench(BENCH, tmp_path / "bench.png")
    assert _drawn(tmp_path / "bench.png")


def test_a_chart_that_cannot_be_written_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^cannot write .*bench\.png: "):
        plot_bench(BENCH, tmp_path / "missing" / "bench.png")
