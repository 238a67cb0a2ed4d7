"""`anpr eval` on both kinds of annotated set: scenes (openalpr layout) and plate crops
(labels.csv with splits); the per-image error lines and the character confusions."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from anpr.errors import DatasetError
from anpr.measure.eval import ImageResult, confusions, is_crop_set, load_crop_labels

US_CROPS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "openalpr-us-crops"
BR_CROPS = US_CROPS.parent / "openalpr-br-crops"


def _copy_crops(source: Path, folder: Path, test: int, train: int = 0) -> list[list[str]]:
    """The first `test` crops of the test split (and `train` of the train split) of a crop
    set, copied into `folder` with their own labels.csv; the rows copied."""
    with (source / "labels.csv").open(newline="") as file:
        rows = list(csv.reader(file))[1:]
    chosen = [r for r in rows if r[3] == "test"][:test] + [r for r in rows if r[3] == "train"][:train]
    folder.mkdir()
    for row in chosen:
        shutil.copy(source / row[0], folder / row[0])
    with (folder / "labels.csv").open("w", newline="") as file:
        csv.writer(file).writerows([["image", "region", "plate", "split"], *chosen])
    return chosen


def _result(expected: str, read: str | None) -> ImageResult:
    return ImageResult("x.png", expected, read, None, ((read, 0.9),) if read else (), 0.9)


def test_confusions_count_substitutions_drops_and_additions_of_wrong_reads_only():
    results = [
        _result("AB5CD", "ABSCD"),  # 5 read as S
        _result("XY5ZT", "XYSZT"),  # again
        _result("AB123", "AB12"),  # 3 dropped
        _result("AB12", "AB129"),  # 9 added
        _result("AB0CD", "ABOCD"),  # O and 0 are one glyph: right, no confusion
        _result("QQ111", "QQ111"),  # right
        _result("ZZ999", None),  # not found: nothing to align
    ]
    assert confusions(results) == [("5", "S", 2), ("3", "", 1), ("", "9", 1)]
    assert confusions(results, top=1) == [("5", "S", 2)]


def _crop_set(folder: Path, rows: list[list[str]], header: str = "image,region,plate,split") -> Path:
    folder.mkdir(exist_ok=True)
    for row in rows:
        cv2.imwrite(str(folder / row[0]), np.full((20, 60, 3), 200, np.uint8))
    with (folder / "labels.csv").open("w", newline="") as file:
        file.write(header + "\n")
        csv.writer(file).writerows(rows)
    return folder


def test_crop_labels_are_read_by_split(tmp_path):
    folder = _crop_set(tmp_path / "set", [["a.png", "CA", "ABC123", "train"], ["b.png", "TX", "XYZ789", "test"]])
    assert is_crop_set(folder) and not is_crop_set(tmp_path)
    assert [label.plate for label in load_crop_labels(folder, "test")] == ["XYZ789"]
    assert [label.region for label in load_crop_labels(folder, None)] == ["CA", "TX"]


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([["a.png", "CA", "ABC123", "train"]], "image,plate", "the first line must be"),
        ([["a.png", "CA", "ABC123", "validation"]], "image,region,plate,split", "split must be train or test"),
        ([["a.png", "CA", "ABC123", "train"]], "image,region,plate,split", "no crops in split 'test'"),
    ],
)
def test_malformed_crop_sets_are_one_line_errors(tmp_path, rows, header, message):
    folder = _crop_set(tmp_path / "set", rows, header)
    with pytest.raises(DatasetError, match=message):
        load_crop_labels(folder, "test")


def test_a_crop_named_but_missing_is_an_error(tmp_path):
    folder = _crop_set(tmp_path / "set", [["a.png", "CA", "ABC123", "test"]])
    (folder / "a.png").unlink()
    with pytest.raises(DatasetError, match="image not found"):
        load_crop_labels(folder, "test")


@pytest.mark.system  # the real recogniser, on real US crops
def test_eval_on_a_crop_set_writes_one_error_line_per_crop(anpr_cli, tmp_path):
    folder = tmp_path / "crops"
    chosen = _copy_crops(US_CROPS, folder, test=6, train=2)
    errors = tmp_path / "errors.jsonl"
    errors.write_text("an older file, open to all\n")
    errors.chmod(0o644)
    result = anpr_cli("eval", str(folder), "--json", "--errors", str(errors))
    assert result.returncode == 0, result.stderr
    assert errors.stat().st_mode & 0o777 == 0o600  # it holds plates: replaced as anpr's private file
    summary = json.loads(result.stdout)
    assert {"images", "detection_recall", "exact", "top3", "ms_per_image", "confusions"} <= summary.keys()
    assert summary["images"] == 6 and summary["detection_recall"] is None  # the test split only; nothing detected
    lines = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [line["image"] for line in lines] == [row[0] for row in chosen[:6]]
    assert [line["expected"] for line in lines] == [row[2] for row in chosen[:6]]
    assert summary["exact"] == pytest.approx(sum(line["right"] for line in lines) / 6, abs=1e-4)
    for line in lines:
        assert line["candidates"] and line["read"] == line["candidates"][0][0]
        assert line["confidence"] == line["candidates"][0][1]
    everything = anpr_cli("eval", str(folder), "--json", "--split", "all")
    assert json.loads(everything.stdout)["images"] == 8


@pytest.mark.system  # the real recogniser, on real US and Brazilian crops
def test_eval_of_several_sets_measures_each_and_charts_them(anpr_cli, tmp_path):
    us, br = tmp_path / "us", tmp_path / "br"
    _copy_crops(US_CROPS, us, test=5)
    _copy_crops(BR_CROPS, br, test=4)
    errors, chart = tmp_path / "errors.jsonl", tmp_path / "eval.png"
    result = anpr_cli("eval", str(us), str(br), "--json", "--errors", str(errors), "--plot", str(chart))
    assert result.returncode == 0, result.stderr
    sets = json.loads(result.stdout)["sets"]
    assert [(s["dataset"], s["split"], s["via"], s["images"]) for s in sets] == [
        (str(us), "test", "hand crops", 5),
        (str(br), "test", "hand crops", 4),
    ]
    lines = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [line["dataset"] for line in lines] == [str(us)] * 5 + [str(br)] * 4
    for measured in sets:  # each set's figures are its own lines'
        own = [line for line in lines if line["dataset"] == measured["dataset"]]
        assert measured["exact"] == pytest.approx(sum(line["right"] for line in own) / len(own), abs=1e-4)
    alone = json.loads(anpr_cli("eval", str(br), "--json").stdout)
    assert {k: v for k, v in sets[1].items() if k not in ("dataset", "split", "via", "ms_per_image")} == {
        k: v for k, v in alone.items() if k != "ms_per_image"
    }
    image = cv2.imread(str(chart))
    assert image is not None and image.shape[1] > 600 and image.std() > 10  # a drawn chart, not a blank page


def test_eval_plot_into_a_missing_folder_fails_before_any_model(anpr_cli, tmp_path):
    folder = _crop_set(tmp_path / "set", [["a.png", "CA", "ABC123", "test"]])
    result = anpr_cli("eval", str(folder), "--plot", str(tmp_path / "no" / "eval.png"))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"anpr: error: cannot write {tmp_path / 'no' / 'eval.png'}: folder {tmp_path / 'no'} does not exist"
    )
