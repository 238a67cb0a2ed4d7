"""The loop's work savings: stride (the reader's), motion gate, settled plates. Real models, real frames."""

from __future__ import annotations

import json

import cv2
from conftest import PARKING_CONFIG
from support.reads import CollectedReads

from anpr.config.settings import PipelineSettings
from anpr.reading.source import Frame, FrameBatch, FrameReader, open_source
from anpr.run.pipeline import Lane, Pipeline, run_lanes


def _frames(few_photos, still: int) -> list[Frame]:
    first, second = (cv2.imread(str(p)) for p, _ in few_photos[:2])
    images = [first] * still + [second] * 2
    return [Frame("test", i, i / 25, image) for i, image in enumerate(images)]


def test_motion_gate_skips_a_still_scene(detector, ppocr, few_photos):
    sink = CollectedReads()
    pipeline = Pipeline(detector, ppocr, [sink], PipelineSettings(motion_threshold=2.0))
    pipeline.process(FrameBatch(_frames(few_photos, still=6)))
    assert pipeline.skipped["still"] == 6  # 5 repeats of the first photo, 1 of the second
    assert sorted({r.frame for r in sink.reads}) == [0, 6]


def test_stride_makes_images_of_every_nth_frame_only_and_counts_the_rest(detector, ppocr, clip_h264):
    """The stride is the reader's: frames it passes over are grabbed (the codec needs them)
    but never converted nor queued; the run still counts them, and the pipeline knows why
    they were not detected."""
    sink = CollectedReads()
    pipeline = Pipeline(detector, ppocr, [sink], PipelineSettings(stride=3, settle_reads=0))
    reader = FrameReader(open_source(str(clip_h264)), capacity=8, stride=3)
    lane = Lane("test", reader, pipeline)
    run_lanes([lane])
    assert reader.status.received == 150  # every frame of the clip was decoded ...
    assert lane.stats.frames == 150  # ... and counted as processed (the last two too: passed over at the end)
    # 2 of every 3 never became an image: 98 before the last detected frame (147), 2 after it
    assert (pipeline.skipped["stride"], reader.stride.passed) == (98, 2)
    assert sink.reads and {r.frame % 3 for r in sink.reads} == {0}


def test_settled_plates_are_not_read_again_and_passages_stay_right(anpr_cli, clip_h264, tmp_path):
    from anpr.measure.eval import score_passages

    config = tmp_path / "saving.yaml"
    config.write_text(PARKING_CONFIG.read_text() + "pipeline:\n  stride: 2\n  settle_reads: 3\n")
    result = anpr_cli(
        "run", str(clip_h264), "--config", str(config), "--db", str(tmp_path / "s.sqlite"), "--jsonl", "--passages"
    )
    assert result.returncode == 0, result.stderr
    reported = [json.loads(line) for line in result.stdout.splitlines()]
    truth = json.loads(clip_h264.with_suffix(".json").read_text())["passages"]
    assert score_passages(truth, reported)["exactly_once_right"] >= 5 / 6
    reads = sum(p["reads"] for p in reported)
    assert reads < 150 / 2  # fewer reads than detected frames: settled plates were not read again
