"""What the training's camera does to a plate (training/augment.py)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from training.augment import CAMERAS, TWO_ROW_HEIGHT, _upright_box, cut


def test_the_upright_box_around_a_turned_plate_holds_all_of_it():
    plate = np.float32([[0, 0], [400, 0], [400, 100], [0, 100]])
    upright = _upright_box(plate, 15.0)
    side, height = np.linalg.norm(upright[1] - upright[0]), np.linalg.norm(upright[3] - upright[0])
    turn = np.radians(15.0)
    assert side == pytest.approx(400 * np.cos(turn) + 100 * np.sin(turn), rel=1e-4)
    assert height == pytest.approx(400 * np.sin(turn) + 100 * np.cos(turn), rel=1e-4)
    inside = [cv2.pointPolygonTest(upright.reshape(-1, 1, 2), (float(x), float(y)), True) for x, y in plate]
    assert min(inside) >= -1e-3 and max(inside) < 1.0  # every corner on the box's edge, none outside
    assert np.allclose(_upright_box(plate, 0.0), plate, atol=1e-3)


def _black_plate(width: int = 400, height: int = 100) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def test_a_tilted_cut_is_squarer_than_a_level_one():
    always = dataclasses.replace(CAMERAS["scene"], tilt_share=1.0, tilt=15.0)
    never = dataclasses.replace(CAMERAS["scene"], tilt_share=0.0)
    aspects = {}
    for name, camera in (("tilted", always), ("level", never)):
        crops = [cut(_black_plate(), np.random.default_rng(seed), True, camera) for seed in range(40)]
        aspects[name] = np.median([crop.shape[1] / crop.shape[0] for crop in crops])
    assert aspects["level"] > 3.0  # a 4:1 plate in a loose box
    assert aspects["tilted"] < 0.8 * aspects["level"]  # the upright box round a turned plate is squarer


def test_a_two_row_plate_is_cut_taller_at_its_physical_size_only_where_the_profile_says():
    plate = _black_plate(160, 100)
    for camera, ratio in (
        (CAMERAS["detector-cut"], 1.0),
        (dataclasses.replace(CAMERAS["hand-cut"], two_row_height=TWO_ROW_HEIGHT), 1.8),
    ):
        one = [cut(plate, np.random.default_rng(seed), True, camera, rows=1).shape[0] for seed in range(20)]
        two = [cut(plate, np.random.default_rng(seed), True, camera, rows=2).shape[0] for seed in range(20)]
        assert np.median(np.array(two) / np.array(one)) == pytest.approx(ratio, abs=0.03)
