"""The test RTSP server (tests/support) really streams an H.264 file that OpenCV can read."""

from __future__ import annotations

import subprocess
import time

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

try:  # tests/ on sys.path (no tests/__init__.py)
    from support.rtsp import RtspServer, rtsp_available
except ImportError:  # tests is a package
    from tests.support.rtsp import RtspServer, rtsp_available

WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 25, 3
TOTAL_FRAMES = FPS * SECONDS


@pytest.fixture(scope="module")
def h264_clip(tmp_path_factory) -> str:
    """A 3 s, 640x360, 25 fps H.264 MP4 with moving content (1 s GOP, no B-frames)."""
    out = tmp_path_factory.mktemp("rtsp") / "clip.mp4"
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={SECONDS}",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        str(FPS),
        "-bf",
        "0",
        "-movflags",
        "+faststart",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return str(out)


@pytest.fixture(scope="module", autouse=True)
def _require_gstreamer_rtsp():
    ok, why = rtsp_available()
    if not ok:
        pytest.fail(f"RTSP test server unavailable: {why}", pytrace=False)


@pytest.fixture(autouse=True)
def _rtsp_over_tcp(monkeypatch):
    # RTP interleaved in the RTSP TCP connection: no UDP port negotiation and no packet
    # loss on large key frames when the machine is busy, so frame counts are
    # deterministic.  (UDP also works on 127.0.0.1.)
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


def read_frames(url: str, max_frames: int, budget_s: float = 15.0) -> list[np.ndarray]:
    cap = cv2.VideoCapture(
        url,
        cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10_000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5_000],
    )
    frames: list[np.ndarray] = []
    try:
        assert cap.isOpened(), f"cv2.VideoCapture could not open {url}"
        deadline = time.monotonic() + budget_s
        while len(frames) < max_frames and time.monotonic() < deadline:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    return frames


def test_opencv_reads_frames_from_rtsp_server(h264_clip):
    with RtspServer(h264_clip) as srv:
        assert srv.url.startswith("rtsp://127.0.0.1:") and srv.url.endswith("/stream")
        frames = read_frames(srv.url, TOTAL_FRAMES)
        assert srv.running, srv.stderr_text()
    assert len(frames) >= 60, f"read only {len(frames)} frames"
    assert all(f.shape == (HEIGHT, WIDTH, 3) for f in frames)
    # the content moves: consecutive frames differ, and the stream starts at the start
    assert np.abs(frames[0].astype(np.int16) - frames[10].astype(np.int16)).mean() > 1.0


def test_restart_on_same_port_serves_again(h264_clip):
    with RtspServer(h264_clip) as srv:
        url, port = srv.url, srv.port
        assert len(read_frames(url, 10)) == 10
        srv.restart()
        assert srv.running and srv.port == port and srv.url == url
        frames = read_frames(url, 25)
        assert len(frames) == 25
        assert frames[0].shape == (HEIGHT, WIDTH, 3)
    assert not srv.running


def test_loop_restarts_file_at_end_of_stream(h264_clip):
    with RtspServer(h264_clip, loop=True) as srv:
        frames = read_frames(srv.url, TOTAL_FRAMES + 25)
    assert len(frames) == TOTAL_FRAMES + 25, f"read only {len(frames)} frames with --loop"
    # second pass shows the same pictures as the first (the file restarted)
    a, b = frames[5].astype(np.int16), frames[5 + TOTAL_FRAMES].astype(np.int16)
    assert np.abs(a - b).mean() < 2.0
