from __future__ import annotations

import io
import logging
import resource
import shutil
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest
from conftest import REPO

from anpr.config.settings import PipelineSettings, load_settings
from anpr.errors import SourceError
from anpr.reading.images import MAX_IMAGE_PIXELS, image_size, read_image
from anpr.reading.source import Frame, FrameReader, SourceStatus, Stride, VideoSource, open_source
from anpr.run.assemble import Models, read_lane
from anpr.run.pipeline import Lane, Pipeline, run_lanes
from benchmarks.clips import build_clip

SAMPLE = REPO / "samples" / "sample.mp4"  # 180 frames, 1920x1080


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


class _NoModel:
    """A detector that finds nothing and a recogniser never called: no weights."""

    identifier = "none"
    reject_below = 0.0
    lookalike_swaps = False

    def detect(self, images, confidence=None, input_size=None):
        raise AssertionError("no frame should reach the detector")


class _BatchCollector(Pipeline):
    """A Pipeline in the run loop that keeps the batches it is given and detects none of their frames."""

    def __init__(self, batch_size: int) -> None:
        super().__init__(_NoModel(), _NoModel(), [], PipelineSettings(batch=batch_size))
        self.batches = []

    def _frames_to_detect(self, batch):
        self.batches.append(batch)
        return []


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


def test_stride_delivers_every_nth_frame_covering_those_passed_over(clip_h264, small_dataset):
    frames = list(open_source(str(clip_h264)).frames(Stride(4)))
    assert [f.index for f in frames] == list(range(0, 150, 4))
    assert [f.covers for f in frames] == [1] + [4] * 37  # frame 148 covers 145-148
    assert all(f.image.shape == (1080, 1920, 3) for f in frames)
    photos = list(open_source(str(small_dataset)).frames(Stride(2)))
    assert [f.index for f in photos] == list(range(0, len(photos) * 2, 2))[: len(photos)]


def test_image_folder_and_single_image(small_dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="anpr.reading.source"):
        frames = list(open_source(str(small_dataset)).frames())
    photos = sorted(small_dataset.glob("*.jpg"))
    assert [f.index for f in frames] == list(range(len(photos)))
    # The annotations beside the photos are skipped, in one line that counts them.
    assert [r.getMessage() for r in caplog.records] == [
        f"folder {small_dataset}: {len(photos)} file(s) that are not images skipped "
        f"({', '.join(p.with_suffix('.txt').name for p in photos[:3])} and {len(photos) - 3} more)"
    ]
    image = photos[0]
    frames = list(open_source(str(image)).frames())
    assert len(frames) == 1 and frames[0].image.ndim == 3 and frames[0].index == 0


def test_image_folder_of_images(tmp_path, few_photos):
    for photo, _ in few_photos:
        (tmp_path / photo.name).write_bytes(photo.read_bytes())
    frames = list(open_source(str(tmp_path)).frames())
    assert [f.index for f in frames] == list(range(len(few_photos)))
    assert all(f.image.dtype == np.uint8 for f in frames)


# What OpenCV writes for each suffix a folder may hold (channels 4: with alpha): the header
# read before decoding must give the size OpenCV then decodes.
ENCODINGS = [
    (".jpg", [], 3),
    (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], 3),
    (".png", [], 3),
    (".png", [], 4),
    (".bmp", [], 3),
    (".bmp", [], 4),
    (".tiff", [], 3),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], 3),  # lossy: VP8
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], 3),  # lossless: VP8L
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], 4),  # lossy with alpha: the extended header, VP8X
]


@pytest.mark.parametrize("suffix, params, channels", ENCODINGS, ids=[f"{s}{p}x{c}" for s, p, c in ENCODINGS])
def test_the_size_in_an_image_header_is_the_size_decoded(tmp_path, suffix, params, channels):
    image = np.random.default_rng(1).integers(0, 255, (37, 53, channels), np.uint8)
    path = tmp_path / f"photo{suffix}"
    path.write_bytes(cv2.imencode(suffix, image, params)[1].tobytes())
    with path.open("rb") as file:
        assert image_size(file) == (53, 37)
    decoded = read_image(path)
    assert not isinstance(decoded, str) and decoded.shape == (37, 53, 3)


def test_a_jpeg_frame_header_is_found_after_its_metadata(tmp_path):
    """A camera's JPEG carries EXIF, an ICC profile and comments before its frame header."""
    image = np.full((48, 160, 3), 200, np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    segments = b"".join(
        marker + struct.pack(">H", len(body) + 2) + body
        for marker, body in [
            (b"\xff\xe1", b"Exif\0\0" + bytes(65000)),
            (b"\xff\xe2", b"ICC_PROFILE\0" + bytes(3000)),
            (b"\xff\xfe", b"camera 7, lane 2"),
        ]
    )
    path = tmp_path / "camera.jpg"
    path.write_bytes(jpeg[:2] + segments + b"\xff\xff" + jpeg[2:])  # and fill bytes before the next marker
    with path.open("rb") as file:
        assert image_size(file) == (160, 48)
    decoded = read_image(path)
    assert not isinstance(decoded, str) and decoded.shape == (48, 160, 3)


@pytest.mark.parametrize(
    "header",
    [
        b"MM\0*"
        + struct.pack(">IH", 8, 2)
        + struct.pack(">HHIHH", 256, 3, 1, 640, 0)
        + struct.pack(">HHII", 257, 4, 1, 480),
        b"II+\0"
        + struct.pack("<HHQQ", 8, 0, 16, 2)
        + struct.pack("<HHQQ", 256, 16, 1, 640)
        + struct.pack("<HHQHHI", 257, 3, 1, 480, 0, 0),
    ],
    ids=["big-endian TIFF", "BigTIFF"],
)
def test_tiff_headers_that_opencv_does_not_write(header):
    assert image_size(io.BytesIO(header)) == (640, 480)


def _blank_png(width: int, height: int) -> bytes:
    """A complete black PNG: a few hundred KB of file for any number of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(1)
    row = b"\0" * (1 + 3 * width)
    rows = b"".join(packer.compress(row * 100) for _ in range(height // 100)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_cap_is_refused_alone_and_skipped_in_a_folder_without_decoding(tmp_path):
    """A 12000x12000 PNG (144 megapixels, 2 MB of file, 432 MB decoded) is never decoded."""
    assert MAX_IMAGE_PIXELS < 12000 * 12000
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes())
    (folder / "b.png").write_bytes(_blank_png(12000, 12000))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(SourceError, match=r"image too large \(12000x12000 pixels, 144 megapixels"):
        open_source(str(folder / "b.png"))
    source = open_source(str(folder))
    frames = list(source.frames())
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert [f.index for f in frames] == [0]
    assert [name for name, _ in source.status.skipped] == ["b.png"]
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"


@pytest.mark.parametrize("name", ["http:clip.mp4", "concat:clip.mp4"])
def test_a_video_named_like_an_ffmpeg_url_is_read_as_the_file(tmp_path, monkeypatch, name):
    """FFmpeg takes `http:...` or `concat:...` for a protocol (it looked `clip.mp4` up as a host)."""
    shutil.copy(SAMPLE, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    source = open_source(name)
    frames = source.frames()
    first = next(frames)
    frames.close()
    assert source.frame_count == 180 and first.image.shape == (1080, 1920, 3) and first.source == name


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

    def frames(self, stride=None):
        image = np.zeros((8, 8, 3), np.uint8)
        for index in range(self.count):
            yield Frame(self.name, index, time.time(), image)
        self.produced.set()

    def close(self) -> None:
        pass


def test_a_file_is_decoded_two_batches_ahead_and_a_stream_a_whole_queue_ahead(clip_h264):
    """A file's decoder waits for the loop: more frames ahead would only hold memory; a live
    camera's queue absorbs the loop's pauses."""
    settings = load_settings(overrides={"pipeline": {"batch": 4, "queue": 50}})
    no_models = Models(_NoModel(), _NoModel())  # type: ignore[arg-type]  # nothing is detected here
    file_lane = read_lane("file", open_source(str(clip_h264)), settings, no_models, [])
    live_lane = read_lane("live", _FastLiveSource(10), settings, no_models, [])
    for lane in (file_lane, live_lane):
        lane.reader.close()
    assert (file_lane.reader.capacity, live_lane.reader.capacity) == (8, 50)
    assert file_lane.reader.stride.every == live_lane.reader.stride.every == 3  # video: every third frame


def test_live_source_drops_oldest_frames_instead_of_growing():
    source = _FastLiveSource(500)
    reader = FrameReader(source, capacity=10)
    assert source.produced.wait(10)  # all 500 decoded while nobody consumed
    received = [f.index for b in _batches(reader, 4) for f in b.frames]
    assert len(received) <= 11  # the queue never held more than its capacity
    assert reader.dropped == 500 - len(received)
    assert received == sorted(received) and received[-1] == 499  # the newest frames survive
