from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATASET = Path(os.environ.get("ANPR_DATASET", REPO.parent / "shared" / "datasets" / "openalpr-eu"))
# Photos used where a test needs a few real plates: spread over the set, no choice by content.
FEW_PHOTOS = 6

os.environ.setdefault("YOLO_VERBOSE", "False")

# Two kinds of test (markers registered in pyproject.toml):
# - system: real model weights, the annotated photos, encoded clips, the `anpr` command in a
#   subprocess, an RTSP, PostgreSQL or MQTT server: what `make test` runs besides the unit tests;
# - unit: none of those; `make test-unit` runs them in well under a minute, with the model
#   folder pointed at an empty one, so a unit test that loads weights fails.
# A test is a system test when it uses one of these fixtures (or a PostgreSQL parameter), or is
# marked `system` itself (it reads the weights without a fixture).
SYSTEM_FIXTURES = frozenset(
    {
        "detector",
        "ppocr",
        "easyocr_recogniser",
        "anpr_cli",
        "postgres",
        "server",
        "mqtt_broker",
        "dataset",
        "few_photos",
        "small_dataset",
        "clip_h264",
        "few",
        "clips",
        "h264_clip",
        "ocr_plates",
    }
)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        system = (
            item.get_closest_marker("system") is not None
            or bool(SYSTEM_FIXTURES & set(item.fixturenames))
            or "postgresql" in params.values()
        )
        item.add_marker(pytest.mark.system if system else pytest.mark.unit)


# An allowed deployment that stores reads (FR-FPS): the tests of reading use it.
PARKING_CONFIG = REPO / "configs" / "paris-fps.yaml"


@pytest.fixture(scope="session")
def dataset() -> Path:
    if not (DATASET / "SOURCE.md").is_file():
        pytest.fail(f"annotated dataset not found at {DATASET} (set ANPR_DATASET)")
    return DATASET


@pytest.fixture(scope="session")
def few_photos(dataset):
    from benchmarks.clips import dataset_photos

    return dataset_photos(dataset, FEW_PHOTOS)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, few_photos) -> Path:
    """A copy of a few annotated photos, in the dataset's own layout."""
    folder = tmp_path_factory.mktemp("small-dataset")
    for photo, _ in few_photos:
        shutil.copy(photo, folder / photo.name)
        shutil.copy(photo.with_suffix(".txt"), folder / photo.with_suffix(".txt").name)
    return folder


@pytest.fixture(scope="session")
def clip_h264(tmp_path_factory, few_photos) -> Path:
    """1080p H.264, 25 fps, one 1.0 s passage per photo (6 photos: 150 frames)."""
    from benchmarks.clips import build_clip

    path = tmp_path_factory.mktemp("clips") / "passages.mp4"
    build_clip(few_photos, path, (1920, 1080), 25, 1.0, "h264")
    return path


@pytest.fixture(scope="session")
def detector():
    from anpr.reading.detect import YoloPlateDetector

    return YoloPlateDetector()


@pytest.fixture(scope="session")
def ppocr():
    from anpr.reading.ocr import PpOcrRecogniser

    return PpOcrRecogniser()


@pytest.fixture(scope="session")
def easyocr_recogniser():
    from anpr.reading.ocr import EasyOcrRecogniser

    return EasyOcrRecogniser()


@pytest.fixture(scope="session")
def postgres():
    sys.path.insert(0, str(REPO / "tests"))
    from support.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """An empty database, once a SQLite file and once a real PostgreSQL one."""
    from sqlalchemy import create_engine

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    engine = create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def anpr_cli(tmp_path_factory):
    """The installed `anpr` command, run in a subprocess as a user would; by default in a
    working folder of the test's own, where the files a run makes by default (key file,
    audit checkpoints, spool) go."""
    import subprocess

    exe = shutil.which("anpr") or str(Path(sys.executable).parent / "anpr")
    workdir = tmp_path_factory.mktemp("cwd")

    def run(*args: str, cwd: Path | None = None, timeout: float = 300):
        return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd or workdir, timeout=timeout)

    run.cwd = workdir  # type: ignore[attr-defined]

    return run
