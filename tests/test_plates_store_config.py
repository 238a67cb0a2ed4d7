from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.keys import TEST_KEYS

from anpr.config.settings import load_settings
from anpr.errors import ConfigError, StoreError
from anpr.reading.plates import PLATE_ALPHABET, normalise, same_plate
from anpr.records import PlateRead, PolicedRead
from anpr.storage.store import ReadStore, database_url


@pytest.mark.parametrize(
    "raw, plate",
    [
        ("ab-123-cd", "AB123CD"),
        ("PP·587 AO", "PP587AO"),
        ("  wa 5666 0 ", "WA56660"),
        ("É12", "E12"),
        ("皖A12", "A12"),
        ("", ""),
    ],
)
def test_normalise(raw, plate):
    assert normalise(raw) == plate


@given(st.text())
def test_normalise_keeps_only_the_plate_alphabet_and_is_idempotent(text):
    plate = normalise(text)
    assert set(plate) <= set(PLATE_ALPHABET)
    assert normalise(plate) == plate


def test_same_plate_folds_o_and_zero_only():
    assert same_plate("RKO99AN", "rk-099an")
    assert not same_plate("RK199AN", "RK099AN")


def _read(plate: str, frame: int) -> PolicedRead:
    read = PlateRead(
        "clip.mp4",
        frame,
        1700000000.0 + frame,
        plate,
        plate.lower(),
        0.8,
        0.9,
        0.88,
        (10.0, 20.0, 110.0, 50.0),
        "plate-yolov8n@abc",
        "ppocrv4-rec@def",
    )
    return PolicedRead(read, "cam-1", "parking_fps", "FR-FPS", 1700086400.0 + frame, hit=False)


def _round_trip(store: ReadStore) -> None:
    reads = [_read("AB123CD", 1), _read("XY987ZT", 2)]
    store.write(reads)
    store.write([])
    assert store.count() == 2
    assert store.reads() == reads
    assert store.reads(source="other") == []
    assert store.reads(plate="XY987ZT") == reads[1:]
    assert store.purge(now=1700086400.9) == 0  # no deadline has passed yet
    assert store.purge(now=1700086401.5) == 1  # the first read's deadline has
    assert store.reads() == reads[1:]
    assert store.purge(now=1700086402.0) == 1  # a deadline is inclusive
    assert store.count() == 0


def test_sqlite_round_trip(tmp_path):
    path = tmp_path / "reads.sqlite"
    store = ReadStore(str(path), TEST_KEYS)
    assert not path.exists()  # nothing is created before the first write
    _round_trip(store)
    store.write([_read("AB123CD", 5)])
    row = (
        sqlite3.connect(path).execute("select plate, camera, purpose, rule_id, delete_after, x2 from reads").fetchone()
    )
    assert row == ("AB123CD", "cam-1", "parking_fps", "FR-FPS", 1700086405.0, 110.0)
    store.close()


def test_purged_reads_leave_no_trace_in_the_sqlite_file(tmp_path):
    path = tmp_path / "reads.sqlite"
    store = ReadStore(str(path), TEST_KEYS)
    store.write([_read("QW12ERT", 1), _read("ZX98CVB", 2)])
    assert store.purge(now=1700086402.0) == 2
    store.close()
    content = path.read_bytes()
    assert b"QW12ERT" not in content and b"ZX98CVB" not in content


def test_postgresql_round_trip(postgres):
    store = ReadStore(postgres.new_database(), TEST_KEYS)
    _round_trip(store)
    store.close()


def test_store_errors_are_clear(tmp_path):
    with pytest.raises(StoreError, match="folder does not exist"):
        ReadStore(str(tmp_path / "nowhere" / "x.sqlite"), TEST_KEYS)
    with pytest.raises(StoreError, match="invalid database URL"):
        ReadStore("nosuchdialect://x", TEST_KEYS)
    unreachable = ReadStore("postgresql+psycopg://anpr@127.0.0.1:1/none", TEST_KEYS)
    with pytest.raises(StoreError, match="cannot open database"):
        unreachable.check()


def test_database_url():
    assert database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("x.sqlite").startswith("sqlite:////") and database_url(None).endswith("/anpr.sqlite")


def test_settings_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("pipeline:\n  batch: 4\n  ocr: easyocr\ndetector:\n  input_size: 416\n")
    settings = load_settings(path, {"pipeline": {"batch": 16, "ocr": None}})
    assert settings.pipeline.batch == 16 and settings.pipeline.ocr == "easyocr"
    assert settings.detector.input_size == 416 and settings.detector.confidence == 0.25


@pytest.mark.parametrize(
    "text, message",
    [
        ("pipeline:\n  batchsize: 4\n", "unknown key 'pipeline.batchsize'"),
        ("pipeline:\n  batch: -3\n", "key 'pipeline.batch'"),
        ("pipeline:\n  batch: lots\n", "key 'pipeline.batch'"),
        ("detector:\n  input_size: 500\n", "multiple of 32"),
        ("pipeline:\n  ocr: tesseract\n", "key 'pipeline.ocr'"),
        ("- a\n- b\n", "expected a mapping"),
        ("pipeline: [\n", "not valid YAML"),
    ],
)
def test_invalid_config_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_settings(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_invalid_flag_value():
    with pytest.raises(ConfigError, match=r"command-line option: key 'pipeline\.batch'"):
        load_settings(None, {"pipeline": {"batch": 0}})
