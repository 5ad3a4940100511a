"""Tracker on synthetic boxes: faces entering, leaving, crossing and coming back."""

from __future__ import annotations

import numpy as np
import pytest

from leaf_fer.realtime.tracker import Tracker, box_iou
from leaf_fer.realtime.types import Detection


def det(cx: float, cy: float, size: float = 100.0) -> Detection:
    h = size / 2
    return Detection(box=(cx - h, cy - h, cx + h, cy + h), score=0.9)


def test_iou() -> None:
    a = np.array([0, 0, 10, 10.0])
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, np.array([5, 0, 15, 10.0])) == pytest.approx(50 / 150)
    assert box_iou(a, np.array([20, 20, 30, 30.0])) == 0.0


def test_moving_face_keeps_its_id() -> None:
    tracker = Tracker()
    ids = [tracker.update([det(100 + 15 * t, 200 + 5 * t)])[0] for t in range(40)]
    assert set(ids) == {1}


def test_faces_entering_and_leaving() -> None:
    tracker = Tracker(max_lost=5)
    assert tracker.update([det(100, 100)]) == [1]
    assert tracker.update([det(102, 100), det(500, 300)]) == [1, 2], "a new face gets a new id"
    assert tracker.update([det(500, 302), det(104, 100)]) == [2, 1], "ids follow faces, not list order"
    for _ in range(5):
        assert tracker.update([det(106, 100)]) == [1]
    assert tracker.ended_ids == []
    assert tracker.update([det(106, 100)]) == [1]
    assert tracker.ended_ids == [2], "face 2 gone for more than max_lost frames"
    assert tracker.update([det(500, 300)]) == [3], "a face after its track ended gets a new id"


def test_reappearance_within_max_lost_keeps_id() -> None:
    tracker = Tracker(max_lost=10)
    for t in range(10):
        tracker.update([det(200 + 4 * t, 200)])
    for _ in range(8):
        assert tracker.update([]) == []
    assert tracker.active_ids == []
    assert tracker.update([det(250, 205)]) == [1]
    assert tracker.update([det(254, 205)]) == [1]


def test_crossing_faces_keep_their_ids() -> None:
    """Two faces moving fast past each other: right after they cross, each detection is nearer the *other* face's
    last box, so only the velocity-predicted boxes keep the ids right."""
    tracker = Tracker()
    for t in range(15):
        a = det(100 + 30 * t, 200)
        b = det(505 - 30 * t, 210)
        swapped = t % 2 == 1
        ids = tracker.update([b, a] if swapped else [a, b])
        assert (ids[::-1] if swapped else ids) == [1, 2], f"frame {t}"


def test_occlusion_during_crossing() -> None:
    """One face hidden behind the other for a few frames comes back with its own id."""
    tracker = Tracker(max_lost=10)
    for t in range(41):
        a = det(100 + 10 * t, 200)
        b = det(500 - 10 * t, 210)
        visible = [a] if 17 <= t <= 23 else [a, b]
        ids = tracker.update(visible)
        assert ids[0] == 1
        if len(ids) == 2:
            assert ids[1] == 2, f"frame {t}"


def test_size_gate_rejects_a_different_face() -> None:
    tracker = Tracker()
    tracker.update([det(300, 300, size=200)])
    assert tracker.update([det(300, 300, size=50)]) == [2]


def test_reset_restarts_ids() -> None:
    tracker = Tracker()
    tracker.update([det(100, 100), det(400, 100)])
    tracker.reset()
    assert sorted(tracker.ended_ids) == [1, 2]
    assert tracker.update([det(400, 100)]) == [1]
