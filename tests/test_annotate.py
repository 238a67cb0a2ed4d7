"""The annotated video (`anpr run --annotate`): the sample through the real command, checked
with the real ffprobe and on its pixels; the recording, the masks and the refusals alone."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import supervision as sv
from conftest import PARKING_CONFIG, REPO

from anpr.errors import AnprError, ConfigError
from anpr.reading.track import UNTRACKED
from anpr.records import Passage, PlateRead, PolicedRead
from anpr.show.annotate import PRIVATE_MARGIN, Mask, VideoAnnotation, _Painter, _Span, check_target

SAMPLE = REPO / "samples" / "sample.mp4"
DENIED_CONFIG = REPO / "configs" / "valenciennes-2020.yaml"  # its only purpose is denied (FR-MUN-REQ)


def _probe(video: Path) -> dict:
    shown = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_frames,nb_read_frames,duration,r_frame_rate,width,height:format=duration,format_name",
         "-of", "json", str(video)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    probed = json.loads(shown.stdout)
    return {
        **probed["streams"][0],
        "container": probed["format"]["format_name"],
        "seconds": probed["format"]["duration"],
    }


def _frames(video: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    frames, index = {}, 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        if index in wanted:
            frames[index] = image
        index += 1
    capture.release()
    return frames


def _sharpness(image: np.ndarray, where: np.ndarray | None = None) -> float:
    """Variance of the Laplacian (of the grey image), over `where` (a boolean mask) or all of it."""
    laplacian = cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F)
    return float(laplacian[where].var() if where is not None else laplacian.var())


def _region(shape: tuple[int, ...], box: tuple[float, ...], grow: float = 0.0, above: float = 0.0) -> np.ndarray:
    """A boolean mask of `box` grown by `grow` of its width on every side and by `above` px upwards."""
    x1, y1, x2, y2 = box
    margin = (x2 - x1) * grow
    where = np.zeros(shape[:2], bool)
    top = max(0, int(y1 - margin - above))
    where[top : int(y2 + margin), max(0, int(x1 - margin)) : int(x2 + margin)] = True
    return where


def _inside(box: tuple[float, ...], share: float = 0.15) -> tuple[float, ...]:
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * share, (y2 - y1) * share
    return x1 + dx, y1 + dy, x2 - dx, y2 - dy


def _label(image: np.ndarray, box: tuple[float, ...], track: int) -> np.ndarray | None:
    """The label drawn above `box`: the patch of the track's colour there, or None."""
    x1, y1 = int(box[0]), int(box[1])
    strip = image[max(0, y1 - 80) : y1 - 5, max(0, x1 - 20) : x1 + 300].astype(int)
    colour = np.array(sv.ColorPalette.DEFAULT.by_idx(track).as_bgr())
    ys, xs = np.nonzero(np.abs(strip - colour).max(axis=2) < 40)
    if len(ys) < 500:
        return None
    return strip[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8)


def test_the_annotated_sample_has_every_frame_and_shows_only_the_labelled_plates(anpr_cli, ppocr, tmp_path):
    out_folder = tmp_path / "video"
    out_folder.mkdir()
    out = out_folder / "annotated.mp4"
    db = tmp_path / "reads.sqlite"
    # No --mask: the default is the private one.
    result = anpr_cli("run", str(SAMPLE), "--config", str(PARKING_CONFIG), "--db", str(db), "--jsonl",
                      "--annotate", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"annotated video {out}: 180 frames, 7.20 s, mask outside" in result.stderr

    source, annotated = _probe(SAMPLE), _probe(out)
    assert annotated["nb_read_frames"] == source["nb_read_frames"] == annotated["nb_frames"] == "180"
    assert annotated["duration"] == source["duration"] and annotated["seconds"] == source["seconds"] == "7.200000"
    for key in ("width", "height", "r_frame_rate"):
        assert annotated[key] == source[key]
    assert "mp4" in annotated["container"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert os.listdir(out_folder) == ["annotated.mp4"]  # no temporary file left beside it

    reads = [json.loads(line) for line in result.stdout.splitlines()]
    passages = sqlite3.connect(db).execute("select track, plate, first_frame from passages").fetchall()
    assert len(passages) == 6
    # At each passage's first frame (the label is the passage's from there on) and the frame
    # after it, which the stride passed over (the box is held there).
    first_reads = [
        next(r for r in reads if r["track"] == track and r["frame"] == first) for track, _, first in passages
    ]
    frames = {r["frame"] + step for r in first_reads for step in (0, 1)}
    before, after = _frames(SAMPLE, frames), _frames(out, frames)
    labels = []
    for read, (track, plate, first) in zip(first_reads, passages, strict=True):
        for frame in (first, first + 1):
            plate_box = _region(after[frame].shape, _inside(read["box"]))
            assert _sharpness(after[frame], plate_box) > 0.5 * _sharpness(before[frame], plate_box), (plate, frame)
            elsewhere = ~_region(after[frame].shape, read["box"], grow=0.3, above=100)
            # (0.14 in the passage of the least detailed photo, 0.01 to 0.05 in the others)
            assert _sharpness(after[frame], elsewhere) < 0.2 * _sharpness(before[frame], elsewhere), (plate, frame)
        label = _label(after[first], read["box"], track)
        assert label is not None, plate
        labels.append(label)
    # The labels say each passage's plate, from its first frame on.
    texts = ppocr.recognise(labels)
    for (_, plate, _), candidates in zip(passages, texts.candidates, strict=True):
        assert plate in [text for text, _ in candidates[:3]], (plate, candidates)


def test_a_denied_purpose_shows_no_plate_text_and_blurs_the_plates(anpr_cli, detector, tmp_path):
    clip = tmp_path / "two-passages.mp4"  # the sample's first two passages
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(SAMPLE), "-frames:v", "60", "-c:v", "libx264", "-crf", "18",
                    "-preset", "veryfast", str(clip)], check=True)  # fmt: skip
    out = tmp_path / "denied.mp4"
    db = tmp_path / "denied.sqlite"
    result = anpr_cli("run", str(clip), "--config", str(DENIED_CONFIG), "--db", str(db), "--demo",
                      "--annotate", str(out), "--mask", "none")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "60 frames, 2.40 s, mask none" in result.stderr
    # The middle of each passage (a frame the stride kept), and the next frame (passed over).
    frames = {15, 16, 45, 46}
    before, after = _frames(clip, frames), _frames(out, frames)
    ordered = sorted(frames)
    found = detector.detect([before[frame] for frame in ordered])
    plates = 0
    for position, frame in enumerate(ordered):
        image, shown = before[frame], after[frame]
        boxes = [tuple(float(v) for v in box) for box in found.xyxy[found.frame == position]]
        blurred = np.zeros(image.shape[:2], bool)
        for box in boxes:
            plates += 1
            # The plate, and above it, where a label would be: blurred, nothing drawn.
            plate = _region(image.shape, box, grow=0.05, above=40)
            assert _sharpness(shown, plate) < 0.2 * _sharpness(image, plate), (frame, box)
            # The blurred patch, with a band around it: the run's box is not quite this one,
            # and the patch's own border is an edge.
            blurred |= _region(image.shape, box, grow=PRIVATE_MARGIN + 0.25)
        # Everywhere else (a grid of tiles) nothing is sharper than the input: no label, no
        # box line, and no sharpening.
        for y in range(0, image.shape[0], 120):
            for x in range(0, image.shape[1], 120):
                tile = np.zeros(image.shape[:2], bool)
                tile[y : y + 120, x : x + 120] = True
                tile &= ~blurred
                if tile.sum() > 2000:
                    assert _sharpness(shown, tile) <= 1.1 * _sharpness(image, tile) + 10, (frame, x, y)
    assert plates >= 3  # the detector finds the plate in most of the 4 frames


@pytest.mark.parametrize(
    ("where", "source", "error"),
    [
        ("missing/out.mp4", SAMPLE, "cannot write"),
        ("out.mp4", REPO / "samples", "needs a video file"),
    ],
)
def test_an_annotation_that_cannot_be_made_is_refused_before_the_run(anpr_cli, tmp_path, where, source, error):
    db = tmp_path / "never.sqlite"
    result = anpr_cli("run", str(source), "--config", str(PARKING_CONFIG), "--db", str(db),
                      "--annotate", str(tmp_path / where))  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("anpr: error: --annotate") and error in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()  # refused before anything was opened


# --- without the models --------------------------------------------------------------------


def _kept(
    frame: int, box: tuple[float, float, float, float], track: int | None, plate: str, detected: float = 0.9
) -> PolicedRead:
    read = PlateRead("cam.mp4", frame, frame / 25, plate, plate, 0.9, 0.9, detected, box, "d", "o", ((plate, 1.0),),
                     track=track)  # fmt: skip
    return PolicedRead(read, "cam", "parking_fps", "FR-FPS", 1e10, False)


def _passage(track: int, plate: str, reads: int) -> Passage:
    return Passage("cam.mp4", "cam", "parking_fps", "FR-FPS", track, plate, 0.9, ((plate, 0.9),), None, None,
                   0, 9, 0.0, 0.36, reads, 1e10)  # fmt: skip


def test_the_recording_labels_each_track_from_what_the_gate_kept(tmp_path):
    annotation = VideoAnnotation(tmp_path / "out.mp4", Mask.OUTSIDE, "cam", str(SAMPLE))
    # Frames 0, 3, 6, 9 looked at (stride 3); track 1 seen at 3 and 6, track 2 (no read
    # kept: a denied purpose's, or rejected) at 6, and a box of no track at 9.
    annotation.seen(0, np.zeros((0, 4)), np.zeros(0, int))
    annotation.seen(3, np.array([[10, 10, 50, 20]]), np.array([1]))
    annotation.seen(6, np.array([[20, 10, 60, 20], [100, 100, 140, 110]]), np.array([1, 2]))
    annotation.seen(9, np.array([[200, 10, 240, 20]]), np.array([UNTRACKED]))
    annotation.write([_kept(3, (10, 10, 50, 20), 1, "AB123CD"), _kept(6, (20, 10, 60, 20), 1, "AB123CO", 0.6)])
    annotation.write([_kept(6, (20, 10, 60, 20), 1, "AB123CO", 0.6)])  # kept by a second purpose: one read
    assert annotation.label(1) == "AB123CD"  # the vote of its kept reads while no passage (0.9 against 0.6)
    annotation.write_passages([_passage(1, "AB123CE", 2), _passage(1, "AB123CF", 1)])
    assert annotation.label(1) == "AB123CE"  # the passage with the most reads
    assert annotation.label(2) is None
    one, two, untracked = sorted(annotation.spans(), key=lambda span: span.frames[0])
    # A labelled plate is shown from its first sighting, held up to the next frame looked at.
    assert (one.label, one.first, one.last) == ("AB123CE", 3, 8.0)
    assert one.box_at(3).tolist() == [10, 10, 50, 20]
    assert one.box_at(4).tolist() == pytest.approx([13.33, 10, 53.33, 20], abs=0.01)  # on its way to frame 6
    assert one.box_at(8).tolist() == [20, 10, 60, 20]
    # A plate no purpose kept is blurred from the frame after the last look without it.
    assert (two.label, two.first, two.last) == (None, 4, 8.0)
    assert (untracked.label, untracked.first, untracked.last) == (None, 7, float("inf"))


def test_another_cameras_reads_are_not_recorded(tmp_path):
    annotation = VideoAnnotation(tmp_path / "out.mp4", Mask.OUTSIDE, "cam", str(SAMPLE))
    annotation.seen(0, np.array([[10, 10, 50, 20]]), np.array([0]))
    other = _kept(0, (10, 10, 50, 20), 0, "AB123CD")
    annotation.write([PolicedRead(other.read, "cam2", "parking_fps", "FR-FPS", 1e10, False)])
    annotation.write_passages([replace(_passage(0, "AB123CD", 3), camera="cam2")])
    assert annotation.label(0) is None


def _noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("mask", "background_blurred", "labelled_blurred"),
    [(Mask.OUTSIDE, True, False), (Mask.PLATES, False, True), (Mask.NONE, False, False)],
)
def test_each_mask_blurs_what_it_says_and_a_plate_no_purpose_kept_always(mask, background_blurred, labelled_blurred):
    image = _noise()
    labelled = _plate_at((40, 150, 120, 170), "AB123CD")
    private = _plate_at((200, 150, 280, 170), None)
    shown = _Painter(mask).paint(image, [labelled, private], 0)
    assert shown.shape == image.shape and shown.dtype == image.dtype

    def blurred(y1: int, y2: int, x1: int, x2: int) -> bool:
        return _sharpness(shown[y1:y2, x1:x2]) < 0.1 * _sharpness(image[y1:y2, x1:x2])

    assert blurred(152, 168, 205, 275)  # the plate no purpose kept, whatever the mask
    assert blurred(152, 168, 50, 110) is labelled_blurred  # inside the labelled plate's box
    assert blurred(0, 100, 0, 320) is background_blurred  # the top of the frame, no plate there
    if not background_blurred:
        assert np.array_equal(shown[:100], image[:100])  # left as it was, not sharpened
    assert not np.array_equal(shown[125:148, 40:150], image[125:148, 40:150])  # the label, above the box


def test_no_label_is_drawn_without_a_kept_read():
    image = _noise(1)
    shown = _Painter(Mask.NONE).paint(image, [_plate_at((200, 150, 280, 170), None)], 0)
    untouched = np.ones(image.shape[:2], bool)
    untouched[130:190, 180:300] = False  # the plate's box grown by PRIVATE_MARGIN (20 px)
    assert np.array_equal(shown[untouched], image[untouched])
    assert _sharpness(shown[150:170, 200:280]) < 0.1 * _sharpness(image[150:170, 200:280])


def _plate_at(box: tuple[float, float, float, float], label: str | None) -> _Span:
    return _Span(4 if label is None else 3, np.array([0]), np.array([box], float), 0, 0.0, label)


@pytest.mark.parametrize(
    ("out", "source", "error"),
    [
        ("out.mp4", "rtsp://user:secret@cam/stream", "a stream"),
        ("out.mp4", "photos", "not images"),
        ("out.mp4", "car.jpg", "not images"),
        ("out.mkv", "clip.mp4", "name it .mp4"),
        ("folder.mp4", "clip.mp4", "is a folder"),
        ("clip.mp4", "clip.mp4", "is the source itself"),
        ("missing/out.mp4", "clip.mp4", "cannot write"),
    ],
)
def test_what_cannot_be_annotated_is_refused_in_one_line(tmp_path, out, source, error):
    (tmp_path / "photos").mkdir()
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "clip.mp4").write_bytes(b"video")
    location = source if source.startswith("rtsp") else str(tmp_path / source)
    with pytest.raises(ConfigError, match=error) as refused:
        check_target(tmp_path / out, location)
    assert "secret" not in str(refused.value) and "\n" not in str(refused.value)


def test_a_video_that_cannot_be_written_leaves_no_file(tmp_path):
    not_a_video = tmp_path / "clip.mp4"
    not_a_video.write_bytes(b"not a video at all" * 100)
    annotation = VideoAnnotation(tmp_path / "out.mp4", Mask.OUTSIDE, "cam", str(not_a_video))
    with pytest.raises(AnprError, match="annotated video"):
        annotation.render()
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]


@pytest.mark.system  # ffmpeg makes the clip
def test_a_turned_video_is_annotated_upright_where_the_run_saw_its_plates(tmp_path):
    clip = tmp_path / "turned.mp4"  # stored 320x240, shown turned a quarter (as phones record)
    stored = tmp_path / "stored.mp4"
    made = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-frames:v", "10", "-c:v", "libx264", "-crf", "12"]
    subprocess.run(["ffmpeg", "-v", "error", *made, str(stored)], check=True)
    turned = ["-c", "copy", "-metadata:s:v:0", "rotate=90"]
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(stored), *turned, str(clip)], check=True)
    annotation = VideoAnnotation(tmp_path / "out.mp4", Mask.NONE, "cam", str(clip))
    box = (40.0, 200.0, 200.0, 240.0)  # where the run (OpenCV, which turns the frames) saw a plate
    for frame in range(10):
        annotation.seen(frame, np.array([box]), np.array([UNTRACKED]))
    video = annotation.render()
    assert (video.frames, video.seconds) == (10, 0.4)
    before, after = _frames(clip, {5}), _frames(tmp_path / "out.mp4", {5})
    assert before[5].shape == after[5].shape == (320, 240, 3)
    plate = _region(before[5].shape, box)
    assert _sharpness(after[5], plate) < 0.1 * _sharpness(before[5], plate)
    elsewhere = ~_region(before[5].shape, box, grow=PRIVATE_MARGIN + 0.05)
    assert np.abs(after[5][elsewhere].astype(int) - before[5][elsewhere]).mean() < 4
