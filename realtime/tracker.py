"""Track ids across frames: greedy association of detections to tracks on box overlap and centre distance.

Each track remembers its last box and a smoothed per-frame velocity; association compares detections with the
velocity-predicted box, so two faces crossing keep their ids. A track that misses detections stays alive for
``max_lost`` frames (with a widening search radius) and takes its id back when the face reappears.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from leaf_fer.common import ConfigError

from .types import Detection

MAX_EXTRAPOLATED_FRAMES = 3
"""A lost track's predicted box moves with its velocity for at most this many frames, then stays put."""


@dataclass
class Track:
    """One face followed over time."""

    track_id: int
    box: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    lost: int = 0
    hits: int = 1

    def predicted_box(self) -> np.ndarray:
        shift = self.velocity * min(self.lost + 1, MAX_EXTRAPOLATED_FRAMES)
        return self.box + np.concatenate([shift, shift])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


def _size(box: np.ndarray) -> float:
    return float(np.sqrt(max(box[2] - box[0], 1e-6) * max(box[3] - box[1], 1e-6)))


class Tracker:
    """Assign a stable integer id (from 1) to every detection of every frame.

    ``min_iou``: overlap that alone qualifies a match; ``max_distance``: centre distance, in face sizes, within which
    a detection can also match (grows by half per lost frame, up to 3x, for re-appearance); ``max_size_ratio``:
    matched boxes may not differ in size by more than this factor. ``ended_ids`` lists the ids dropped by the last
    :meth:`update` (lost for more than ``max_lost`` frames) so per-track state elsewhere can be freed.
    """

    def __init__(
        self,
        max_lost: int = 15,
        min_iou: float = 0.2,
        max_distance: float = 0.75,
        max_size_ratio: float = 2.0,
        velocity_smoothing: float = 0.5,
    ) -> None:
        if max_lost < 0:
            raise ConfigError(f"max_lost must be >= 0, got {max_lost}")
        self.max_lost = max_lost
        self.min_iou = min_iou
        self.max_distance = max_distance
        self.max_size_ratio = max_size_ratio
        self.velocity_smoothing = velocity_smoothing
        self.tracks: list[Track] = []
        self.ended_ids: list[int] = []
        self._next_id = 1

    def reset(self) -> None:
        """Forget all tracks (new video); ids restart from 1."""
        self.ended_ids = [t.track_id for t in self.tracks]
        self.tracks = []
        self._next_id = 1

    def _affinity(self, track: Track, predicted: np.ndarray, box: np.ndarray) -> float | None:
        size_t, size_d = _size(predicted), _size(box)
        if max(size_t, size_d) > self.max_size_ratio * min(size_t, size_d):
            return None
        iou = box_iou(predicted, box)
        gate = self.max_distance * (1.0 + 0.5 * min(track.lost, 4)) * size_t
        closeness = 1.0 - float(np.hypot(*(_centre(predicted) - _centre(box)))) / gate
        if iou < self.min_iou and closeness <= 0.0:
            return None
        return iou + max(closeness, 0.0)

    def update(self, detections: Sequence[Detection]) -> list[int]:
        """Associate this frame's detections with the tracks → one track id per detection, in detection order."""
        boxes = [np.asarray(d.box, dtype=np.float64) for d in detections]
        predicted = [t.predicted_box() for t in self.tracks]
        pairs: list[tuple[float, int, int]] = []
        for ti, track in enumerate(self.tracks):
            for di, box in enumerate(boxes):
                affinity = self._affinity(track, predicted[ti], box)
                if affinity is not None:
                    pairs.append((affinity, ti, di))
        pairs.sort(key=lambda p: (-p[0], self.tracks[p[1]].lost))
        track_of: dict[int, int] = {}
        used_tracks: set[int] = set()
        for _, ti, di in pairs:
            if ti in used_tracks or di in track_of:
                continue
            used_tracks.add(ti)
            track_of[di] = ti
        ids: list[int] = []
        for di, box in enumerate(boxes):
            ti = track_of.get(di)
            if ti is None:
                track = Track(self._next_id, box)
                self._next_id += 1
                self.tracks.append(track)
            else:
                track = self.tracks[ti]
                step = (_centre(box) - _centre(track.box)) / (track.lost + 1)
                k = self.velocity_smoothing
                track.velocity = k * track.velocity + (1.0 - k) * step if track.hits > 1 else step
                track.box, track.lost = box, 0
                track.hits += 1
            ids.append(track.track_id)
        matched = set(ids)
        self.ended_ids = []
        alive: list[Track] = []
        for track in self.tracks:
            if track.track_id not in matched:
                track.lost += 1
                if track.lost > self.max_lost:
                    self.ended_ids.append(track.track_id)
                    continue
            alive.append(track)
        self.tracks = alive
        return ids

    @property
    def active_ids(self) -> list[int]:
        """Ids of the tracks seen in the last update."""
        return [t.track_id for t in self.tracks if t.lost == 0]
