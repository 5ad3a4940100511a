"""Temporal smoothing of each track's class probabilities (exponential moving average) so labels do not flicker."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from leaf_fer.common import ConfigError


class ProbabilitySmoother:
    """Per-track EMA: ``s_t = alpha * s_{t-1} + (1 - alpha) * p_t``; ``alpha = 0`` turns smoothing off.

    At 25-30 fps, ``alpha = 0.7`` averages over roughly the last 3 frames (time constant ``1 / (1 - alpha)``
    frames, about 0.1 s): enough to stop single-frame label flips, short enough to follow a real change of
    expression within a few frames. A track's state lives until :meth:`forget` (its track ended) or :meth:`reset`.
    """

    def __init__(self, alpha: float = 0.7) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ConfigError(f"smoothing alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self._state: dict[int, np.ndarray] = {}

    def update(self, track_ids: Sequence[int], probabilities: np.ndarray) -> np.ndarray:
        """Smooth this frame's probabilities [N, C] of the tracks ``track_ids`` → smoothed [N, C] float32."""
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if len(track_ids) != len(probabilities):
            raise ValueError(f"{len(track_ids)} track ids for {len(probabilities)} probability rows")
        if self.alpha == 0.0:
            return probabilities.copy()
        smoothed = np.empty_like(probabilities)
        for row, track_id in enumerate(track_ids):
            previous = self._state.get(track_id)
            if previous is None or previous.shape != probabilities[row].shape:
                current = probabilities[row].copy()
            else:
                current = self.alpha * previous + (1.0 - self.alpha) * probabilities[row]
            self._state[track_id] = current
            smoothed[row] = current
        return smoothed

    def forget(self, track_ids: Iterable[int]) -> None:
        for track_id in track_ids:
            self._state.pop(track_id, None)

    def reset(self) -> None:
        self._state.clear()

    @property
    def tracked_ids(self) -> list[int]:
        return sorted(self._state)
