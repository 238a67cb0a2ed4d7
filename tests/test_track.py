from __future__ import annotations

import numpy as np
import pytest

from anpr.measure.eval import score_passages
from anpr.reading.track import (
    READABLE_HEIGHT,
    UNTRACKED,
    PassageBuilder,
    PlateTracker,
    SettledPlates,
    TrackEnd,
    moved,
    readability,
    vote,
)
from anpr.records import PlateRead, PolicedRead
from anpr.run.pipeline import is_cut, thumbnail


def read(plate: str, frame: int, x: float = 100.0, confidence: float = 0.8, source: str = "cam") -> PlateRead:
    return PlateRead(
        source,
        frame,
        frame / 25,
        plate,
        plate,
        confidence,
        0.9,
        0.9,
        (x, 50.0, x + 120, 80.0),
        "d",
        "o",
        candidates=((plate, 1.0),),
    )


def read_of(
    candidates: tuple[tuple[str, float], ...], frame: int, detector_confidence: float = 0.9, height: float = 30.0
) -> PlateRead:
    plate = candidates[0][0]
    return PlateRead(
        "cam",
        frame,
        frame / 25,
        plate,
        plate,
        0.8,
        candidates[0][1],
        detector_confidence,
        (100.0, 50.0, 220.0, 50.0 + height),
        "d",
        "o",
        candidates=candidates,
    )


def test_vote_pools_every_reads_candidates():
    # No read has RK776AI first, but it is in all three reads' candidates.
    reads = [
        read_of((("RK776A1", 0.55), ("RK776AI", 0.45)), 0),
        read_of((("PK776AI", 0.5), ("RK776AI", 0.5)), 1),
        read_of((("RK776AT", 0.6), ("RK776AI", 0.4)), 2),
    ]
    voted = vote(reads)
    assert voted.plate == "RK776AI" and voted.format == "LLDDDLL"
    assert voted.candidates[0][0] == "RK776AI" and 0 < voted.confidence <= 1


def test_vote_prefers_a_complete_registration_to_a_frequent_clipped_read():
    # Three clipped reads of BA302OZ put "3A302" first; the full plate fits a format and wins.
    reads = [read_of((("3A302", 0.6), ("BA302OZ", 0.4)), f) for f in range(3)]
    assert vote(reads).plate == "BA302OZ"


def test_vote_weights_reads_by_detector_confidence():
    sure = read_of((("AB123CD", 1.0),), 0, detector_confidence=0.9)
    doubtful = [read_of((("AB128CD", 1.0),), f, detector_confidence=0.2) for f in (1, 2)]
    assert vote([sure, *doubtful]).plate == "AB123CD"


def test_vote_weighs_reads_of_small_plates_by_their_size():
    # Two reads of the plate seen 12 px high (far off) against one seen 40 px high (close by).
    far = [read_of((("AB128CD", 1.0),), f, height=12.0) for f in (0, 1)]
    close = read_of((("AB123CD", 1.0),), 2, height=40.0)
    assert vote([*far, close]).plate == "AB123CD"
    # From READABLE_HEIGHT up, size no longer counts: two reads outvote one, however large.
    assert readability(read_of((("X", 1.0),), 0, height=READABLE_HEIGHT)) == 1.0
    big = [read_of((("AB128CD", 1.0),), f, height=READABLE_HEIGHT) for f in (0, 1)]
    assert vote([*big, read_of((("AB123CD", 1.0),), 2, height=200.0)]).plate == "AB128CD"


def test_vote_weighs_fitted_candidates_and_does_not_swap_again():
    # Each read's candidates were fitted to the layouts when it was read (with look-alike
    # swaps only for a recogniser that needs them): the vote weighs them by format...
    reads = [read_of((("RK7S5AJ", 0.7), ("RK755AJ", 0.3)), f) for f in range(2)]
    assert vote(reads).plate == "RK755AJ"
    # ...and never rewrites a read: an all-digit 2368 stays 2368, not Indiana's DDDL 236B.
    assert vote([read("2368", 0), read("2368", 1)], regions=("US",)).plate == "2368"


def _run_tracker(tracker, frames, stride=1):
    """Every `stride`-th frame's boxes through the tracker, as the loop feeds it (frames at
    25 fps): the ids, and the tracks ended after each frame."""
    ids, ended = [], []
    for number in range(0, len(frames), stride):
        boxes = np.asarray(frames[number], np.float32).reshape(-1, 4)
        ids.append(tracker.update(number, number / 25, boxes, np.full(len(boxes), 0.8, np.float32)).tolist())
        ended.append([end.track for end in tracker.ended()])
    return ids, ended


def plate_box(x: float, y: float = 500.0, width: float = 50.0) -> list[float]:
    return [x, y, x + width, y + width / 4]


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_a_plate_crossing_faster_than_its_width_is_one_track(stride):
    # A 50 px plate crossing 1920 px in a second: 77 px a frame, detected every `stride` frames.
    tracker = PlateTracker(0.25, stride)
    frames = [[plate_box(77 * f, width=50 + 2 * f)] for f in range(24)]
    ids, _ = _run_tracker(tracker, frames, stride)
    seen = [i for frame in ids for i in frame]
    assert len(seen) == 24 // stride and len(set(seen)) == 1 and seen[0] != UNTRACKED  # the first box counts too


def test_two_vehicles_on_screen_are_two_tracks_and_tracks_end_when_lost():
    tracker = PlateTracker(0.25)
    # One plate moving right along one lane, another moving left along a lower lane.
    frames = [[plate_box(100 + 40 * f), plate_box(1700 - 40 * f, y=800)] for f in range(10)]
    frames += [[] for _ in range(20)]  # both leave: 0.8 s with no box
    ids, ended = _run_tracker(tracker, frames)
    assert all(len(set(frame)) == 2 for frame in ids[:10])
    assert {frame[0] for frame in ids[:10]} == {ids[0][0]} and {frame[1] for frame in ids[:10]} == {ids[0][1]}
    ended_at = [f for f, gone in enumerate(ended) if gone]
    assert sorted(i for gone in ended for i in gone) == sorted(ids[0]) and ended_at and ended_at[0] > 10
    assert tracker.end_all() == []


def test_a_vehicle_after_a_gap_is_a_new_track():
    tracker = PlateTracker(0.25)
    frames = [[plate_box(100 + 40 * f)] for f in range(8)] + [[] for _ in range(15)]
    frames += [[plate_box(100 + 40 * f)] for f in range(8)]  # the next one, same lane, same speed
    ids, _ = _run_tracker(tracker, frames)
    first, second = {i for frame in ids[:8] for i in frame}, {i for frame in ids[23:] for i in frame}
    assert len(first) == len(second) == 1 and first != second
    assert [(e.track, e.last_frame, e.last_time) for e in tracker.end_all()] == [
        (min(second), 30, 30 / 25)
    ]  # its last box


def policed(plate, frame, track, x=100.0, delete_after=1000.0, hit=False, source="cam"):
    read = PlateRead(
        source, frame, frame / 25, plate, plate, 0.8, 0.9, 0.9, (x, 50.0, x + 120, 80.0), "d", "o",
        candidates=((plate, 1.0),), track=track,
    )  # fmt: skip
    return PolicedRead(read, "cam-1", "parking_fps", "FR-FPS", delete_after, hit)


def test_a_track_becomes_one_passage_when_it_ends():
    builder = PassageBuilder(regions=("FR",))
    builder.add([policed("AB123CD", f, 7, x=100 + 60 * f, delete_after=1000 + f) for f in range(5)])
    builder.add([policed("AB128CD", 5, 7, x=400, hit=True), policed("ZZ999ZZ", 5, 8, x=900)])
    assert builder.close("cam", [TrackEnd(99, 5, 0.2)]) == []  # a track none of whose reads were kept
    (passage,) = builder.close("cam", [TrackEnd(7, 5, 0.2)])
    assert (passage.plate, passage.reads, passage.track, passage.first_frame, passage.last_frame) == (
        "AB123CD", 6, 7, 0, 5
    )  # fmt: skip
    assert passage.delete_after == 1000 and passage.hit  # goes with its first read; a hit if any read was
    assert (passage.camera, passage.purpose, passage.rule_id) == ("cam-1", "parking_fps", "FR-FPS")
    assert builder.close("cam", [TrackEnd(7, 5, 0.2)]) == []  # closed once
    assert builder.close_all() == [] and builder.dropped == {"too few reads": 1}  # ZZ999ZZ, read once


def test_tracks_that_are_no_passage_are_dropped_and_counted():
    builder = PassageBuilder(regions=("FR",))
    builder.add([policed("1507400", f, 1, x=20) for f in range(30)])  # a clock: never moves
    builder.add([policed("AB1", f, 2, x=100 + 60 * f) for f in range(4)])  # too short for a French plate
    builder.add([policed("AB123CD", f, 3, x=100 + 60 * f, source="other") for f in range(3)])
    assert builder.close("cam", [TrackEnd(t, 40, 1.6) for t in (1, 2, 3)]) == []  # track 3 is another camera's
    assert builder.dropped == {"did not move (an overlay or a sign)": 1, "no plausible plate": 1}
    (passage,) = builder.close("other", [TrackEnd(3, 9, 9 / 25)])  # seen until frame 9, read until 2
    assert (passage.plate, passage.first_frame, passage.last_frame, passage.last_time) == ("AB123CD", 0, 9, 9 / 25)


def test_a_plate_that_only_grows_has_moved():
    assert moved([(500 - 5 * f, 500, 560 + 5 * f, 515) for f in range(3)])  # approaching
    assert not moved([(500, 500 + f % 2, 560, 515) for f in range(9)])  # a clock: the detector's jitter only


def test_a_settled_track_is_judged_by_its_last_box_too():
    # Three reads, then the plate settled: its reads moved little, the track moved on.
    builder = PassageBuilder()
    builder.add([policed("AB123CD", f, 2, x=100 + f) for f in range(3)])
    (passage,) = builder.close("cam", [TrackEnd(2, 36, 36 / 25, (160.0, 50.0, 280.0, 80.0))])
    assert passage.last_frame == 36 and passage.reads == 3
    builder.add([policed("AB123CD", f, 3, x=100 + f) for f in range(3)])
    assert builder.close("cam", [TrackEnd(3, 36, 36 / 25, (102.0, 50.0, 222.0, 80.0))]) == []  # it never moved


def test_settled_plates_are_counted_per_track():
    settled = SettledPlates(settle_reads=2)
    settled.add([1, 1, 2, UNTRACKED], ["AB123CD", "AB123CD", "ZZ999ZZ", "AB123CD"])
    assert settled.settled(np.array([1, 2, UNTRACKED, 5])).tolist() == [True, False, False, False]
    settled.forget([1])
    assert settled.settled(np.array([1])).tolist() == [False]
    assert SettledPlates(settle_reads=0).settled(np.array([1, 2])).tolist() == [False, False]


def test_score_passages():
    truth = [
        {"plate": "AB123CD", "first_frame": 0, "last_frame": 49},
        {"plate": "RKO99AN", "first_frame": 50, "last_frame": 99},
        {"plate": "ZX987YT", "first_frame": 100, "last_frame": 149},
    ]
    reported = [
        {"plate": "AB123CD", "first_frame": 2, "last_frame": 47},
        {"plate": "RK099AN", "first_frame": 51, "last_frame": 70},  # O and 0 fold
        {"plate": "RK099AN", "first_frame": 75, "last_frame": 98},  # a duplicate
        {"plate": "ZX987YI", "first_frame": 100, "last_frame": 140},  # a wrong plate
        {"plate": "QQ111QQ", "first_frame": 10, "last_frame": 30},
    ]  # another car beside AB123CD
    scored = score_passages(truth, reported)
    assert scored["exactly_once_right"] == pytest.approx(1 / 3, abs=1e-4)
    assert scored["spurious"] == pytest.approx(4 / 5, abs=1e-4) and scored["missed"] == 0
    assert scored["spurious_beside_a_right_passage"] == 1


def test_score_passages_of_two_vehicles_on_screen_at_once():
    # The second vehicle enters before the first has left: each report goes to its own vehicle.
    truth = [
        {"plate": "AB123CD", "first_frame": 0, "last_frame": 40},
        {"plate": "EF456GH", "first_frame": 30, "last_frame": 70},
    ]
    reported = [
        {"plate": "EF456GH", "first_frame": 32, "last_frame": 40},  # middle 36: inside both
        {"plate": "AB123CD", "first_frame": 5, "last_frame": 38},
        {"plate": "XX000XX", "first_frame": 36, "last_frame": 42},  # nearer the second's middle
    ]
    scored = score_passages(truth, reported)
    assert scored["exactly_once_right"] == 1.0 and scored["missed"] == 0
    assert scored["wrong"] == [] and scored["spurious_beside_a_right_passage"] == 1


def test_a_cut_to_another_scene_is_told_from_a_vehicle_crossing():
    from benchmarks.clips import _road

    rng = np.random.default_rng(3)
    road = _road((1920, 1080), rng)
    with_car = road.copy()
    with_car[400:800, 300:1000] = (30, 40, 200)  # a red car front, a third of the frame wide
    other_scene = np.full_like(road, 25)
    other_scene[200:900, 200:1700] = 180  # another photo: bright, most of the frame
    assert not is_cut(thumbnail(road), thumbnail(with_car))
    assert is_cut(thumbnail(with_car), thumbnail(other_scene))
