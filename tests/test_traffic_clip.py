"""The traffic clip generator (benchmarks/clips.py): vehicles crossing a road scene, with their truth."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np

from benchmarks.clips import CROSSING_SECONDS, annotated_vehicles, build_traffic_clip, plan


def test_the_plan_draws_every_kind_of_gap_between_vehicles():
    photos = [(Path(f"car{i}.jpg"), f"AB{i:03d}CD") for i in range(200)]
    vehicles, total = plan(photos, 25, np.random.default_rng(7))
    gaps = np.array([b.start - (a.start + a.frames) for a, b in itertools.pairwise(vehicles)])
    assert (gaps < 0).mean() > 0.05  # two vehicles on screen at once
    assert (gaps == 0).mean() > 0.05  # bumper to bumper
    assert (gaps >= 25).mean() > 0.1  # a second or more of empty road
    assert all(25 * CROSSING_SECONDS[0] <= v.frames <= 25 * CROSSING_SECONDS[1] for v in vehicles)
    assert total > max(v.start + v.frames for v in vehicles)
    assert {v.leftwards for v in vehicles} == {True, False} and any(v.blurred for v in vehicles)


def test_a_traffic_clip_shows_each_vehicle_crossing_within_its_truth(tmp_path, few_photos):
    path = tmp_path / "traffic.mp4"
    photos = few_photos[:4]
    passages = build_traffic_clip(annotated_vehicles(photos), path, (1280, 720), 25, seed=3)
    meta = json.loads(path.with_suffix(".json").read_text())
    vehicles = meta["vehicles"]
    assert [p.plate for p in passages] == [plate for _, plate in photos] == [v["plate"] for v in vehicles]
    for passage, vehicle in zip(meta["passages"], vehicles, strict=True):
        # The plate is wholly on screen for part of the crossing: not as it enters nor as it leaves.
        assert vehicle["start"] < passage["first_frame"] < passage["last_frame"] < vehicle["start"] + vehicle["frames"]
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == max(v["start"] + v["frames"] for v in vehicles) + 12
    assert frames[0].shape == (720, 1280, 3)
    # A vehicle on screen changes the frame; the burned-in clock changes every frame.
    first = meta["passages"][0]
    middle = (first["first_frame"] + first["last_frame"]) // 2
    empty = frames[-1].astype(np.int16)
    assert np.abs(frames[middle].astype(np.int16) - empty)[100:-60].mean() > 3
    assert np.abs(frames[1][:60, :600].astype(np.int16) - frames[0][:60, :600]).max() > 100
