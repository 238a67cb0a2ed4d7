from __future__ import annotations

import json
import socket
import sqlite3

import pytest
from conftest import PARKING_CONFIG
from support.keys import TEST_KEYS

from anpr.reading.plates import same_plate


def _passages(clip):
    return json.loads(clip.with_suffix(".json").read_text())["passages"]


def test_run_stores_reads_of_every_passage(anpr_cli, clip_h264, tmp_path):
    db = tmp_path / "reads.sqlite"
    # Every frame detected and read (video's defaults skip frames and settled plates).
    config = tmp_path / "every-frame.yaml"
    config.write_text(PARKING_CONFIG.read_text() + "pipeline:\n  stride: 1\n  settle_reads: 0\n")
    result = anpr_cli("run", str(clip_h264), "--config", str(config), "--db", str(db), "--batch", "6", "--show-plates")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = (
        sqlite3.connect(db)
        .execute("select frame, time, plate, confidence, x1, y1, x2, y2, detector_model, ocr_model from reads")
        .fetchall()
    )
    assert len(rows) >= 100  # most of the 150 frames show a readable plate
    for frame, time, _plate, confidence, x1, y1, x2, y2, detector_model, ocr_model in rows:
        assert 0 <= frame < 150 and time == pytest.approx(frame / 25)
        assert 0 < confidence <= 1 and 0 <= x1 < x2 <= 1920 and 0 <= y1 < y2 <= 1080
        assert detector_model.startswith("plate-yolov8n") and ocr_model.startswith("ppocrv4-rec@")
    # Per-frame accuracy is about 0.75 before multi-frame voting: all passages but two
    # must have their plate read right in at least a third of their frames.
    passages = _passages(clip_h264)
    well_read = 0
    for passage in passages:
        frames = range(passage["first_frame"], passage["last_frame"] + 1)
        right = sum(1 for frame, _, plate, *_ in rows if frame in frames and same_plate(plate, passage["plate"]))
        well_read += right >= len(frames) / 3
    assert well_read >= len(passages) - 2
    assert "frames/s" in result.stderr and "plate" in result.stdout


def test_a_service_run_ends_with_counts_not_plates(anpr_cli, clip_h264, tmp_path):
    """stdout is a pipe here, as a service's is (its journal keeps it longer than any retention)."""
    db = tmp_path / "reads.sqlite"
    quiet = anpr_cli("run", str(clip_h264), "--config", str(PARKING_CONFIG), "--db", str(db))
    assert quiet.returncode == 0, quiet.stderr
    plates = {p for (p,) in sqlite3.connect(db).execute("select plate from reads")}
    assert plates and quiet.stdout == ""
    assert not any(plate in quiet.stderr for plate in plates)
    assert "reads kept" in quiet.stderr  # the counts are still said
    for flag in ("--passages", ""):
        shown = anpr_cli(
            "run",
            str(clip_h264),
            "--config",
            str(PARKING_CONFIG),
            "--db",
            str(db),
            "--show-plates",
            *([flag] if flag else []),
        )
        assert shown.returncode == 0 and any(plate in shown.stdout for plate in plates)


def test_run_jsonl_writes_one_object_per_read(anpr_cli, clip_h264, tmp_path):
    db = tmp_path / "reads.sqlite"
    result = anpr_cli("run", str(clip_h264), "--config", str(PARKING_CONFIG), "--db", str(db), "--jsonl")
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    stored = sqlite3.connect(db).execute("select count(*) from reads").fetchone()[0]
    assert len(objects) == stored > 0
    for obj in objects:
        assert {"source", "frame", "time", "plate", "confidence", "box", "candidates", "country"} <= obj.keys()
        assert obj["candidates"][0][0] == obj["plate"]
        assert obj["source"] == str(clip_h264) and len(obj["box"]) == 4


def test_run_passages_reports_each_vehicle_once(anpr_cli, clip_h264, tmp_path):
    from anpr.measure.eval import score_passages

    result = anpr_cli(
        "run",
        str(clip_h264),
        "--config",
        str(PARKING_CONFIG),
        "--db",
        str(tmp_path / "p.sqlite"),
        "--jsonl",
        "--passages",
    )
    assert result.returncode == 0, result.stderr
    reported = [json.loads(line) for line in result.stdout.splitlines()]
    for passage in reported:
        assert {
            "plate",
            "confidence",
            "candidates",
            "country",
            "format",
            "first_frame",
            "last_frame",
            "first_time",
            "last_time",
            "reads",
        } <= passage.keys()
        assert passage["candidates"][0][0] == passage["plate"] and passage["first_frame"] <= passage["last_frame"]
    scored = score_passages(_passages(clip_h264), reported)
    assert scored["exactly_once_right"] >= 5 / 6 and scored["spurious"] <= 1 / 6, scored


def test_run_with_config_file_and_easyocr(anpr_cli, small_dataset, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for photo in small_dataset.glob("*.jpg"):
        (images / photo.name).write_bytes(photo.read_bytes())
    config = tmp_path / "run.yaml"
    config.write_text(
        PARKING_CONFIG.read_text()
        + f"pipeline:\n  batch: 3\n  ocr: easyocr\nstore:\n  url: {tmp_path / 'cfg.sqlite'}\n"
    )
    result = anpr_cli("run", str(images), "--config", str(config))
    assert result.returncode == 0, result.stderr
    models = sqlite3.connect(tmp_path / "cfg.sqlite").execute("select distinct ocr_model from reads").fetchall()
    assert [m[0].split("@")[0] for m in models] == ["easyocr-english-g2"]


def test_run_into_postgresql(anpr_cli, postgres, small_dataset, tmp_path):
    from anpr.storage.store import ReadStore

    images = tmp_path / "images"
    images.mkdir()
    for photo in small_dataset.glob("*.jpg"):
        (images / photo.name).write_bytes(photo.read_bytes())
    url = postgres.new_database()
    # A copy: with a database that is no SQLite file, the key and the checkpoints go next to
    # the config, which must not be the repository's configs/ folder.
    config = tmp_path / PARKING_CONFIG.name
    config.write_bytes(PARKING_CONFIG.read_bytes())
    result = anpr_cli("run", str(images), "--config", str(config), "--db", url, "--jsonl")
    assert result.returncode == 0, result.stderr
    reported = [json.loads(line) for line in result.stdout.splitlines()]
    store = ReadStore(url, TEST_KEYS)
    stored = store.reads()
    store.close()
    assert len(stored) == len(reported) >= 4
    assert [(r.read.frame, r.read.plate) for r in stored] == [(o["frame"], o["plate"]) for o in reported]


def test_eval_json_on_the_annotated_set(anpr_cli, dataset):
    result = anpr_cli("eval", str(dataset), "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"images", "detection_recall", "exact", "top3", "ms_per_image", "confusions"}
    assert all(len(c) == 3 and c[2] >= 1 for c in report["confusions"])  # [expected, read, count], most first
    assert report["images"] == 108
    assert report["detection_recall"] >= 0.95
    # Measured 0.963 / 0.9815 (benchmarks/RESULTS.md). One image is 0.009: the top-3 floor
    # leaves room for one image to change on another CPU's float rounding.
    assert report["exact"] >= 0.95
    assert report["top3"] >= 0.97 and report["top3"] >= report["exact"]
    assert report["ms_per_image"] > 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bad_inputs(tmp_path):
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(bytes(range(256)) * 400)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "car.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 10)
    (mixed / "notes.txt").write_text("not an image")
    return {
        "missing file": [str(tmp_path / "nope.mp4")],
        "corrupt video": [str(noise)],
        "zero-byte video": [str(empty)],
        "unanswered rtsp": [f"rtsp://127.0.0.1:{_closed_port()}/stream"],
        "folder with non-images": [str(mixed)],
        "bad batch": [str(noise), "--batch", "0"],
        "unknown ocr": [str(noise), "--ocr", "tesseract"],
    }


def test_invalid_config_is_one_line_error(anpr_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("controller:\n  type: municipality\n  nme: typo\n")
    for config, message in (
        (tmp_path / "missing.yaml", "config file not found"),
        (bad, "unknown key 'controller.nme'"),
    ):
        result = anpr_cli("run", "x.mp4", "--config", str(config), "--db", str(tmp_path / "x.sqlite"))
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "x.sqlite").exists()


def test_bad_input_gives_one_line_error_and_writes_nothing(anpr_cli, tmp_path):
    for case, args in _bad_inputs(tmp_path).items():
        db = tmp_path / f"{case.replace(' ', '-')}.sqlite"
        result = anpr_cli("run", *args, "--config", str(PARKING_CONFIG), "--db", str(db), timeout=60)
        assert result.returncode == 2, (case, result.stderr)
        # Besides the purposes announced, a folder says what it skipped (a warning) before its error.
        lines = [
            line
            for line in result.stderr.strip().splitlines()
            if not line.startswith(("anpr: purpose ", "anpr: warning: "))
        ]
        assert len(lines) == 1 and lines[0].startswith("anpr: error: "), (case, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
        assert not db.exists(), case


def test_eval_on_a_folder_without_annotations(anpr_cli, tmp_path):
    result = anpr_cli("eval", str(tmp_path), "--json")
    assert result.returncode == 2 and result.stderr.startswith("anpr: error: no annotations")
