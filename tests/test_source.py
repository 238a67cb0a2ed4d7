from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from anpr.errors import SourceError
from anpr.pipeline import Lane, run_lanes
from anpr.source import Frame, FrameReader, SourceStatus, VideoSource, open_source
from benchmarks.clips import build_clip


def test_video_file_frames_and_media_time(clip_h264):
    source = open_source(str(clip_h264))
    assert isinstance(source, VideoSource) and not source.live
    frames = list(source.frames())
    source.close()
    assert len(frames) == 150
    assert [f.index for f in frames] == list(range(150))
    assert all(f.image.shape == (1080, 1920, 3) for f in frames[:3])
    times = np.array([f.time for f in frames])
    assert times[0] == 0.0 and times[-1] == pytest.approx(149 / 25)
    assert np.allclose(np.diff(times), 1 / 25)
    assert {f.source for f in frames} == {str(clip_h264)}


@pytest.mark.parametrize("codec, container", [("h265", "mp4"), ("h264", "mkv"), ("h264", "avi"), ("h265", "mkv")])
def test_codecs_and_containers(tmp_path, few_photos, codec, container):
    path = tmp_path / f"clip.{container}"
    build_clip(few_photos[:2], path, (640, 360), 25, 0.4, codec)
    frames = list(open_source(str(path)).frames())
    assert len(frames) == 20 and frames[0].image.shape == (360, 640, 3)
    assert [f.index for f in frames] == list(range(20))


class _BatchCollector:
    """Stands in for a Pipeline in the run loop: keeps the batches it is given."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.batches = []

    def process(self, batch):
        self.batches.append(batch)
        return []

    def finish(self) -> None:
        self.finished = True


def _batches(reader: FrameReader, size: int) -> list:
    """Every batch the run loop takes from `reader`, to the end of its source."""
    collector = _BatchCollector(size)
    run_lanes([Lane("test", reader, collector)])
    return collector.batches


def test_reader_batches_keep_every_frame_of_a_file_in_order(clip_h264):
    reader = FrameReader(open_source(str(clip_h264)), capacity=8)
    batches = _batches(reader, 7)
    indices = [f.index for b in batches for f in b.frames]
    assert indices == list(range(150))
    assert all(len(b) == 7 for b in batches[:-1]) and reader.dropped == 0


def test_image_folder_and_single_image(small_dataset):
    with pytest.raises(SourceError, match="not images"):
        open_source(str(small_dataset))  # the annotation .txt files are not images
    image = next(small_dataset.glob("*.jpg"))
    frames = list(open_source(str(image)).frames())
    assert len(frames) == 1 and frames[0].image.ndim == 3 and frames[0].index == 0


def test_image_folder_of_images(tmp_path, few_photos):
    for photo, _ in few_photos:
        (tmp_path / photo.name).write_bytes(photo.read_bytes())
    frames = list(open_source(str(tmp_path)).frames())
    assert [f.index for f in frames] == list(range(len(few_photos)))
    assert all(f.image.dtype == np.uint8 for f in frames)


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.mp4", "no such file"),
        (lambda p: _write(p / "empty.mp4", b""), "empty"),
        (
            lambda p: _write(p / "noise.mp4", np.random.default_rng(0).bytes(50_000)),
            "cannot open video|no decodable frame",
        ),
        (lambda p: _write(p / "notes.mkv", b"not a video"), "cannot open video|no decodable"),
        (lambda p: _write(p / "bad.jpg", b"\x00" * 100), "not a readable image"),
    ],
)
def test_bad_inputs_are_clear_errors(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        open_source(str(make(tmp_path)))


def test_rtsp_url_that_nobody_answers(tmp_path):
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SourceError, match="cannot connect to stream"):
        open_source(f"rtsp://127.0.0.1:{port}/stream")
    assert time.monotonic() - started < 30


class _FastLiveSource:
    """A live source that produces frames faster than the consumer takes them."""

    name = "synthetic-live"
    live = True

    def __init__(self, count: int) -> None:
        self.count = count
        self.produced = threading.Event()
        self.status = SourceStatus()

    def frames(self):
        image = np.zeros((8, 8, 3), np.uint8)
        for index in range(self.count):
            yield Frame(self.name, index, time.time(), image)
        self.produced.set()

    def close(self) -> None:
        pass


def test_live_source_drops_oldest_frames_instead_of_growing():
    source = _FastLiveSource(500)
    reader = FrameReader(source, capacity=10)
    assert source.produced.wait(10)  # all 500 decoded while nobody consumed
    received = [f.index for b in _batches(reader, 4) for f in b.frames]
    assert len(received) <= 11  # the queue never held more than its capacity
    assert reader.dropped == 500 - len(received)
    assert received == sorted(received) and received[-1] == 499  # the newest frames survive
