"""Crop sets read through the detector: each crop set into a real scene (anpr/measure/transplant.py),
then detected, cut and read as in the pipeline (`anpr eval --scenes`)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from anpr.errors import DatasetError
from anpr.measure.eval import check_sets
from anpr.measure.transplant import SMALL_HEIGHT, Host, host_for, transplant
from tests.test_eval_sets import US_CROPS, _copy_crops, _crop_set


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A grey street with one dark plate-shaped box on it; the box's corners."""
    scene = np.full((400, 600, 3), 120, np.uint8)
    cv2.rectangle(scene, (250, 250), (370, 278), (20, 20, 20), -1)
    return scene, np.array([250, 250, 370, 278], np.float32)


def _crop() -> np.ndarray:
    """A white plate with black bars for characters: its content is easy to find again."""
    crop = np.full((80, 160, 3), 235, np.uint8)
    for x in range(12, 150, 20):
        cv2.rectangle(crop, (x, 20), (x + 10, 60), (0, 0, 0), -1)
    return crop


def test_a_transplant_replaces_the_host_plate_and_is_drawn_from_its_index_alone(tmp_path):
    scene, box = _scene()
    hosts = [Host(tmp_path / "a.jpg", box), Host(tmp_path / "b.jpg", box)]
    first_host, first_rng = host_for(3, hosts)
    again_host, again_rng = host_for(3, hosts)
    image, plate_box = transplant(_crop(), scene, box, first_rng)
    same, same_box = transplant(_crop(), scene, box, again_rng)
    assert first_host == again_host and np.array_equal(image, same) and np.array_equal(plate_box, same_box)
    _, other_box = transplant(_crop(), scene, box, host_for(4, hosts)[1])
    assert not np.array_equal(plate_box, other_box)

    x1, y1, x2, y2 = plate_box.astype(int)
    assert 0 <= x1 < x2 <= 600 and 0 <= y1 < y2 <= 400 and y2 - y1 >= SMALL_HEIGHT[0]
    assert image[y1:y2, x1:x2].max() > 200  # the white crop is there
    # the host's dark plate is painted out: nothing that dark is left outside the new plate
    outside = image.copy()
    outside[y1:y2, x1:x2] = 120
    assert outside.min() > 60
    assert scene[250:278, 250:370].max() == 20  # the host image itself is left as it was


def test_scenes_must_be_a_scene_set_and_come_with_a_crop_set(tmp_path):
    crops = _crop_set(tmp_path / "crops", [["a.png", "CA", "ABC123", "test"]])
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    cv2.imwrite(str(scenes / "s.jpg"), np.full((100, 100, 3), 90, np.uint8))
    (scenes / "s.txt").write_text("s.jpg\t10\t10\t40\t12\tAB123CD\n")
    assert check_sets([crops], "test", scenes) == {crops: True}
    with pytest.raises(DatasetError, match="is a crop set; the hosts must be scenes"):
        check_sets([crops], "test", crops)
    with pytest.raises(DatasetError, match="no crop set given"):
        check_sets([scenes], "test", scenes)


@pytest.mark.system  # the real detector and recogniser, real US crops set into the EU photos
def test_eval_reads_a_crop_set_by_hand_crop_and_through_the_detector(anpr_cli, dataset, tmp_path):
    folder = tmp_path / "us"
    chosen = _copy_crops(US_CROPS, folder, test=6)
    errors = tmp_path / "errors.jsonl"
    result = anpr_cli("eval", str(folder), "--scenes", str(dataset), "--json", "--errors", str(errors))
    assert result.returncode == 0, result.stderr
    hand, detected = json.loads(result.stdout)["sets"]
    assert (hand["via"], hand["images"], hand["detection_recall"]) == ("hand crops", 6, None)
    assert (detected["via"], detected["images"]) == ("through the detector", 6)
    assert detected["detection_recall"] is not None and detected["detection_recall"] > 0.5
    lines = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [line["via"] for line in lines] == ["hand crops"] * 6 + ["through the detector"] * 6
    # each transplanted scene is named by its crop and host, and read from a detection
    assert [line["image"].split("@")[0] for line in lines[6:]] == [row[0] for row in chosen]
    assert all(line["iou"] is not None for line in lines[6:])
    for measured, own in ((hand, lines[:6]), (detected, lines[6:])):
        assert measured["exact"] == pytest.approx(sum(line["right"] for line in own) / 6, abs=1e-4)
    again = json.loads(anpr_cli("eval", str(folder), "--scenes", str(dataset), "--json").stdout)["sets"][1]
    assert {k: v for k, v in again.items() if k != "ms_per_image"} == {
        k: v for k, v in detected.items() if k != "ms_per_image"
    }  # seeded: the same scenes, the same figures
