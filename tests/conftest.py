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
    from anpr.detect import YoloPlateDetector

    return YoloPlateDetector()


@pytest.fixture(scope="session")
def ppocr():
    from anpr.ocr import PpOcrRecogniser

    return PpOcrRecogniser()


@pytest.fixture(scope="session")
def easyocr_recogniser():
    from anpr.ocr import EasyOcrRecogniser

    return EasyOcrRecogniser()


@pytest.fixture(scope="session")
def postgres():
    sys.path.insert(0, str(REPO / "tests"))
    from support.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def anpr_cli():
    """The installed `anpr` command, run in a subprocess as a user would."""
    import subprocess

    exe = shutil.which("anpr") or str(Path(sys.executable).parent / "anpr")

    def run(*args: str, cwd: Path | None = None, timeout: float = 300):
        return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)

    return run
