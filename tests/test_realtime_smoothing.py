"""Temporal smoothing: fewer label flips, off when alpha is 0, state per track."""

from __future__ import annotations

import numpy as np
import pytest

from leaf_fer.realtime.smoothing import ProbabilitySmoother


def _flickering_sequence(frames: int = 300, seed: int = 0) -> np.ndarray:
    """A face that is 'happiness' throughout, but noisy per-frame predictions often put 'neutral' on top."""
    rng = np.random.default_rng(seed)
    base = np.array([0.35, 0.45, 0.05, 0.05, 0.04, 0.02, 0.02, 0.02])
    noisy = np.clip(base + rng.normal(0, 0.12, size=(frames, 8)), 1e-3, None)
    return (noisy / noisy.sum(axis=1, keepdims=True)).astype(np.float32)


def _label_changes(probs: np.ndarray) -> int:
    labels = probs.argmax(axis=1)
    return int((labels[1:] != labels[:-1]).sum())


def test_smoothing_reduces_flicker() -> None:
    raw = _flickering_sequence()
    smoother = ProbabilitySmoother(alpha=0.7)
    smoothed = np.concatenate([smoother.update([1], p[None]) for p in raw])
    assert _label_changes(raw) > 40
    assert _label_changes(smoothed) < _label_changes(raw) / 3
    assert (smoothed.argmax(axis=1) == 1).mean() > (raw.argmax(axis=1) == 1).mean()
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0, atol=1e-5)


def test_follows_a_real_change_within_a_few_frames() -> None:
    smoother = ProbabilitySmoother(alpha=0.7)
    sad = np.array([[0.1, 0.05, 0.05, 0.7, 0.04, 0.02, 0.02, 0.02]], np.float32)
    happy = np.array([[0.1, 0.7, 0.05, 0.05, 0.04, 0.02, 0.02, 0.02]], np.float32)
    for _ in range(20):
        smoother.update([7], sad)
    frames_to_switch = next(i for i in range(1, 20) if smoother.update([7], happy).argmax() == 1)
    assert frames_to_switch <= 3


def test_alpha_zero_is_off() -> None:
    raw = _flickering_sequence(50)
    smoother = ProbabilitySmoother(alpha=0.0)
    for p in raw:
        np.testing.assert_array_equal(smoother.update([1], p[None])[0], p)


def test_tracks_are_independent_and_forgotten() -> None:
    smoother = ProbabilitySmoother(alpha=0.9)
    a = np.eye(8, dtype=np.float32)[[0]]
    b = np.eye(8, dtype=np.float32)[[1]]
    smoother.update([1, 2], np.concatenate([a, b]))
    out = smoother.update([2, 1], np.concatenate([a, b]))
    assert out[0].argmax() == 1 and out[1].argmax() == 0, "each track keeps its own history"
    smoother.forget([1])
    assert smoother.tracked_ids == [2]
    np.testing.assert_array_equal(smoother.update([1], b)[0], b[0])  # a forgotten track starts fresh


@pytest.mark.parametrize("alpha", [-0.1, 1.0, 1.5])
def test_invalid_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        ProbabilitySmoother(alpha)


def test_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="track ids"):
        ProbabilitySmoother().update([1, 2], np.zeros((1, 8), np.float32))
