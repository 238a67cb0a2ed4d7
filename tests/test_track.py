from __future__ import annotations

import pytest

from anpr.eval import score_passages
from anpr.records import PlateRead
from anpr.track import PassageTracker, vote


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


def read_of(candidates: tuple[tuple[str, float], ...], frame: int, detector_confidence: float = 0.9) -> PlateRead:
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
        (100.0, 50.0, 220.0, 80.0),
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


def test_vote_weighs_fitted_candidates_and_does_not_swap_again():
    # Each read's candidates were fitted to the layouts when it was read (with look-alike
    # swaps only for a recogniser that needs them): the vote weighs them by format...
    reads = [read_of((("RK7S5AJ", 0.7), ("RK755AJ", 0.3)), f) for f in range(2)]
    assert vote(reads).plate == "RK755AJ"
    # ...and never rewrites a read: an all-digit 2368 stays 2368, not Indiana's DDDL 236B.
    assert vote([read("2368", 0), read("2368", 1)], regions=("US",)).plate == "2368"


def test_tracker_groups_one_vehicle_and_splits_at_a_cut():
    tracker = PassageTracker(max_gap=5, min_reads=2)
    first = [read("AB123CD", f, x=100 + 3 * f) for f in range(10)] + [read("A8123CD", 10, x=130)]
    # Next vehicle at the same place right after a cut: the boxes overlap, the texts don't.
    second = [read("ZX987YT", f, x=130) for f in range(11, 20)]
    closed = tracker.update(first + second)  # the first closes at frame 16, more than 5 after its last read
    passages = closed + tracker.flush()
    assert [len(p.reads) for p in closed] == [11]
    assert [len(p.reads) for p in passages] == [11, 9]
    assert [p.vote().plate for p in passages] == ["AB123CD", "ZX987YT"]


def test_plates_of_one_series_are_not_one_passage():
    from anpr.track import text_similarity

    assert text_similarity("RK857AI", "RK576AH") < 0.5
    assert text_similarity("RK776A1", "RK776AI") > 0.8
    tracker = PassageTracker(max_gap=5, min_reads=2)
    reads = [read("RK857AI", f) for f in range(5)] + [read("RK576AH", f) for f in range(5, 10)]
    assert [p.vote().plate for p in tracker.update(reads) + tracker.flush()] == ["RK857AI", "RK576AH"]


def test_tracker_closes_after_a_gap_and_drops_single_reads():
    tracker = PassageTracker(max_gap=5, min_reads=2)
    assert tracker.update([read("AB123CD", 0), read("AB123CD", 1), read("QQ1", 3, x=900)]) == []
    closed = tracker.update([read("XY555ZZ", 20, x=500)])
    assert [p.vote().plate for p in closed] == ["AB123CD"]  # QQ1, seen once, is not a passage
    assert tracker.flush() == []  # XY555ZZ was seen once too


def test_tracker_keeps_sources_apart():
    tracker = PassageTracker(max_gap=5, min_reads=1)
    tracker.update([read("AB123CD", 0, source="a"), read("AB123CD", 0, source="b")])
    assert len(tracker.flush()) == 2


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
