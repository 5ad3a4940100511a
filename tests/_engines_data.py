"""Shared helpers for the engines tests: the FER+ public test set and chunked prediction."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

CHUNK = 16


def shared_dir() -> Path:
    return Path(os.environ.get("LEAF_FER_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def ferplus_majority_labels(votes: np.ndarray) -> np.ndarray:
    """Index of the FER+ emotion (first 8 vote columns) holding more than half of all 10 columns' votes, else -1."""
    votes = votes.astype(np.int64)
    emotions = votes[:, :8]
    best = emotions.argmax(axis=1)
    majority = emotions[np.arange(len(votes)), best] * 2 > votes.sum(axis=1)
    return np.where(majority, best, -1)


def load_public_test() -> tuple[np.ndarray, np.ndarray]:
    """uint8 faces [N, 48, 48] and FER+ majority labels (-1 where none); skips when the data is absent."""
    path = shared_dir() / "data" / "fer2013_publictest.npz"
    if not path.is_file():
        pytest.skip(f"public test set not found at {path} (set LEAF_FER_SHARED)")
    with np.load(path) as data:
        return data["images"], ferplus_majority_labels(data["ferplus_votes"])


def predict_all(predictor, images: np.ndarray) -> np.ndarray:
    """Probabilities for every image, in small chunks, on one CPU thread (the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return np.concatenate([predictor.predict(images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)])
    finally:
        torch.set_num_threads(threads)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    rows = labels >= 0
    return float((probs[rows].argmax(axis=1) == labels[rows]).mean())
