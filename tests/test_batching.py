"""Batching across cameras: every camera's frames in one detector call, every camera's crops in
one recogniser call per round of the run loop, and each camera's reads as if it ran alone.

Real models on real clips; the calls are counted by proxies around the real networks (each
call still goes through the model)."""

from __future__ import annotations

import time

import pytest
from conftest import PARKING_CONFIG
from support.reads import CollectedReads

from anpr.config.settings import load_settings
from anpr.reading.source import open_source
from anpr.run.assemble import Models, load_models, read_lane
from anpr.run.pipeline import run_lanes
from benchmarks.clips import build_clip


class _Counting:
    """The real detector or recogniser, its calls counted (with the number of images in each)."""

    def __init__(self, model) -> None:
        self._model = model
        self.calls: list[tuple[int, int | None]] = []  # (images or crops, input size)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def detect(self, images, confidence=None, input_size=None):
        self.calls.append((len(images), input_size))
        return self._model.detect(images, confidence, input_size)

    def recognise(self, crops):
        self.calls.append((len(crops), None))
        return self._model.recognise(crops)


@pytest.fixture(scope="module")
def other_clip(tmp_path_factory, few_photos):
    """720p, other photos than clip_h264's first ones, in another order: 75 frames."""
    path = tmp_path_factory.mktemp("other") / "other.mp4"
    build_clip(few_photos[:2:-1], path, (1280, 720), 25, 1.0, "h264")
    return path


@pytest.fixture(scope="module")
def models():
    return load_models(load_settings(PARKING_CONFIG))


def _run(clips, models, overrides=None):
    """The clips as cameras of one run loop: each camera's reads (frame, plate, track, box),
    and per round that worked: (detector calls, recogniser calls, images per detector call)."""
    settings = load_settings(PARKING_CONFIG, overrides)
    detector, recogniser = _Counting(models.detector), _Counting(models.recogniser)
    counted = Models(detector, recogniser)  # type: ignore[arg-type]
    sinks = [CollectedReads() for _ in clips]
    lanes = [
        read_lane(f"cam{i}", open_source(str(clip)), settings, counted, [sink], ("FR",))
        for i, (clip, sink) in enumerate(zip(clips, sinks, strict=True))
    ]
    # Every camera's queue filled before the loop starts, so the first rounds hold all cameras.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
        lane.reader._queue.full() or lane.reader._decoder_done.is_set() for lane in lanes
    ):
        time.sleep(0.01)
    rounds, seen = [], [0, 0, 0]

    def progress(lanes) -> None:
        frames = sum(lane.stats.frames for lane in lanes)
        if frames != seen[0]:
            rounds.append((len(detector.calls) - seen[1], len(recogniser.calls) - seen[2], detector.calls[seen[1] :]))
        seen[:] = [frames, len(detector.calls), len(recogniser.calls)]

    run_lanes(lanes, progress=progress)
    reads = [[(r.frame, r.plate, r.track, tuple(round(v, 1) for v in r.box)) for r in sink.reads] for sink in sinks]
    return reads, rounds, [lane.stats.frames for lane in lanes]


def test_two_cameras_read_as_each_alone_with_one_call_per_input_size_and_round(clip_h264, other_clip, models):
    alone_a, rounds_a, _ = _run([clip_h264], models)
    alone_b, rounds_b, _ = _run([other_clip], models)
    together, rounds, frames = _run([clip_h264, other_clip], models)
    assert frames == [150, 75]
    assert alone_a[0] and alone_b[0]  # both clips have plates to read
    assert together == [alone_a[0], alone_b[0]]
    # Looking where things move (the default for video) looks at whole frames (input 640)
    # and at windows around vehicles (input 320): at most one network call for each per
    # round, whatever the number of cameras; one recogniser call for all crops.
    assert all(detector <= 2 and recogniser <= 1 for detector, recogniser, _ in rounds)
    assert all(len({size for _, size in calls}) == len(calls) for _, _, calls in rounds)
    # The first round holds both cameras' first batches: their whole frames in one call.
    # A batch spans 8 frames of a source, of which the reader keeps 3 (stride 3: frames 0,
    # 3 and 6), all looked at whole while the background model learns the scene.
    assert rounds[0][2][0][0] == 3 + 3
    assert sum(r[0] for r in rounds) < sum(r[0] for r in rounds_a) + sum(r[0] for r in rounds_b)


def test_whole_frame_search_is_one_detector_call_per_round_for_all_cameras(clip_h264, other_clip, models):
    alone, _, _ = _run([other_clip], models, {"detector": {"video_search": "whole"}})
    together, rounds, frames = _run([clip_h264, other_clip], models, {"detector": {"video_search": "whole"}})
    assert frames == [150, 75]
    assert alone[0] and together[1] == alone[0]
    assert all(detector == 1 and recogniser <= 1 for detector, recogniser, _ in rounds)
    assert sum(recogniser for _, recogniser, _ in rounds) > 0
    assert max(calls[0][0] for _, _, calls in rounds) == 3 + 3  # both cameras' frames in one call
