"""Shared fixtures: where the shared data and media live (tests skip, saying why, when absent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # research/ is not installed: its tests import it from the checkout
    sys.path.insert(0, str(REPO_ROOT))


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


@pytest.fixture(scope="session")
def small_val(publictest_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 validation faces: validating all of PublicTest would take most of each tiny epoch."""
    data = np.load(publictest_npz)
    path = tmp_path_factory.mktemp("val") / "val.npz"
    np.savez(path, images=data["images"][:200], ferplus_votes=data["ferplus_votes"][:200], labels=data["labels"][:200])
    return path
