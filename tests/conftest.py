"""Shared fixtures: where the shared data and media live (tests skip, saying why, when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("LEAF_FER_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "data").is_dir():
        pytest.skip(f"shared data folder not found at {path} (set LEAF_FER_SHARED)")
    return path


@pytest.fixture(scope="session")
def publictest_npz(shared: Path) -> Path:
    return shared / "data" / "fer2013_publictest.npz"


@pytest.fixture(scope="session")
def train_npz(shared: Path) -> Path:
    return shared / "data" / "fer2013_train.npz"
