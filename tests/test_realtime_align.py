"""Alignment geometry: eyes levelled and placed where FER2013 has them, large faces filtered before the warp, one
batched crop array."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from realtime_media import media_file

from leaf_fer.realtime.align import (
    EYE_CENTER,
    EYE_DISTANCE,
    MIN_ANTIALIAS_SIGMA,
    align_faces,
    alignment_matrix,
    antialias_sigma,
)
from leaf_fer.realtime.detector import FaceDetector
from leaf_fer.realtime.sources import read_image
from leaf_fer.realtime.types import Detection

SIZE = 48


def face(eye_mid: tuple[float, float], iod: float, roll_deg: float, mouth_drop: float | None = None) -> Detection:
    """Keypoints of an upright face of inter-ocular distance ``iod`` rolled by ``roll_deg`` around the eye midpoint."""
    a = math.radians(roll_deg)
    ux, uy = math.cos(a), math.sin(a)
    down = (-uy, ux)
    drop = mouth_drop if mouth_drop is not None else iod * 1.05
    mx, my = eye_mid
    kp = np.array(
        [
            [mx - ux * iod / 2, my - uy * iod / 2],
            [mx + ux * iod / 2, my + uy * iod / 2],
            [mx + down[0] * drop * 0.55, my + down[1] * drop * 0.55],
            [mx + down[0] * drop, my + down[1] * drop],
            [mx - ux * iod, my - uy * iod],
            [mx + ux * iod, my + uy * iod],
        ],
        dtype=np.float32,
    )
    return Detection(box=(mx - iod, my - iod, mx + iod, my + 1.6 * iod), score=0.9, keypoints=kp)


def _apply(matrix: np.ndarray, point: np.ndarray) -> np.ndarray:
    return matrix[:, :2] @ point + matrix[:, 2]


@pytest.mark.parametrize("roll", [0.0, 25.0, -40.0, 170.0])
def test_eyes_land_level_at_fer2013_positions(roll: float) -> None:
    det = face((320.0, 200.0), iod=80.0, roll_deg=roll)
    m = alignment_matrix(det, SIZE)
    right, left, mouth = (_apply(m, det.keypoints[i]) for i in (0, 1, 3))
    assert right[1] == pytest.approx(left[1], abs=1e-6), "eyes level"
    assert abs(left[0] - right[0]) == pytest.approx(EYE_DISTANCE * SIZE, rel=1e-6)
    mid = (right + left) / 2
    np.testing.assert_allclose(mid, [EYE_CENTER[0] * SIZE, EYE_CENTER[1] * SIZE], atol=1e-6)
    assert mouth[1] > mid[1] + 10, "mouth below the eyes: the crop is upright"


def test_turned_head_is_not_blown_up() -> None:
    """Yaw shrinks the eye distance but not the eye-mouth distance; scale follows the larger face-size estimate."""
    frontal = alignment_matrix(face((300.0, 200.0), iod=80.0, roll_deg=0.0, mouth_drop=84.0), SIZE)
    turned = alignment_matrix(face((300.0, 200.0), iod=40.0, roll_deg=0.0, mouth_drop=84.0), SIZE)
    scale = lambda m: math.hypot(m[0, 0], m[0, 1])  # noqa: E731
    assert scale(turned) == pytest.approx(scale(frontal), rel=0.05)


def test_box_fallback_without_keypoints() -> None:
    det = Detection(box=(100.0, 100.0, 200.0, 200.0), score=0.9)
    m = alignment_matrix(det, SIZE)
    centre = _apply(m, np.array([150.0, 150.0]))
    assert 0 < centre[0] < SIZE and 0 < centre[1] < SIZE
    assert m[0, 1] == 0.0, "no rotation without keypoints"


def test_align_real_face_batches_into_reused_buffer() -> None:
    image = read_image(media_file("multi_face.jpg"))
    with FaceDetector("full") as detector:
        detections = detector.detect(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    buffer = np.zeros((8, SIZE, SIZE), np.uint8)
    crops = align_faces(gray, detections, SIZE, out=buffer)
    assert crops.shape == (len(detections), SIZE, SIZE) and crops.dtype == np.uint8
    assert np.shares_memory(crops, buffer), "crops are written into the caller's buffer"
    for crop in crops:
        assert crop.std() > 20, "a face has contrast, not a flat patch"
        # eye row darker than the cheek row below it (eyes, brows) — the crop is a face at FER2013's framing
        eye_row = crop[int(EYE_CENTER[1] * SIZE) - 2 : int(EYE_CENTER[1] * SIZE) + 2, 8:40].mean()
        cheek_row = crop[int(0.6 * SIZE) - 2 : int(0.6 * SIZE) + 2, 8:40].mean()
        assert eye_row < cheek_row


def test_align_rejects_color() -> None:
    with pytest.raises(ValueError, match="grayscale"):
        align_faces(np.zeros((10, 10, 3), np.uint8), [], SIZE)


def _bare_warp(gray: np.ndarray, detection: Detection) -> np.ndarray:
    matrix = alignment_matrix(detection, SIZE)
    return cv2.warpAffine(gray, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_a_large_face_is_low_pass_filtered_before_the_warp() -> None:
    stripes = np.tile(np.array([40, 215], np.uint8), (720, 640))
    large = face((640.0, 300.0), 100.0, 0.0)
    assert antialias_sigma(alignment_matrix(large, SIZE)) > 2.0, "about 5.8 frame pixels per crop pixel"
    bare, filtered = _bare_warp(stripes, large), align_faces(stripes, [large], SIZE)[0]
    assert bare.std() > 30, "a bare bilinear warp aliases 2-pixel stripes into a pattern"
    assert filtered.std() < 3 and abs(float(filtered.mean()) - 127.5) < 3, "filtered, they average to flat gray"


def test_the_filter_follows_the_face_and_matches_filtering_the_whole_frame() -> None:
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur((rng.random((720, 1280)) * 255).astype(np.uint8), (0, 0), 1.0)
    frame = cv2.normalize(frame, None, 0, 255, cv2.NORM_MINMAX)
    for iod in (40.0, 100.0):
        detection = face((640.0, 300.0), iod, 10.0)
        sigma = antialias_sigma(alignment_matrix(detection, SIZE))
        whole = _bare_warp(cv2.GaussianBlur(frame, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE), detection)
        crop = align_faces(frame, [detection], SIZE)[0]
        if sigma < 2:
            np.testing.assert_array_equal(crop, whole, err_msg=f"iod {iod}: the Gaussian alone, on the face's region")
        else:
            off, bare_off = (float(np.abs(c.astype(int) - whole).mean()) for c in (crop, _bare_warp(frame, detection)))
            assert off < 0.1 * frame.std() and off < bare_off / 5, f"iod {iod}: an area step, then the Gaussian"
    small = face((640.0, 300.0), 20.0, 0.0)
    assert antialias_sigma(alignment_matrix(small, SIZE)) < MIN_ANTIALIAS_SIGMA, "a face about the crop's size"
    np.testing.assert_array_equal(align_faces(frame, [small], SIZE)[0], _bare_warp(frame, small))
    corner = face((15.0, 12.0), 100.0, 0.0)
    assert align_faces(frame, [corner], SIZE).shape == (1, SIZE, SIZE), "a face over the frame's edge still crops"
    sliver = face((-60.0, 300.0), 100.0, 0.0)
    assert align_faces(frame[:, :1], [sliver], SIZE).shape == (1, SIZE, SIZE), "a face off a 1-pixel-wide frame"


@pytest.mark.parametrize("iod", [100.0, 200.0])
def test_the_area_step_keeps_the_geometry_wherever_the_face_sits(iod: float) -> None:
    """A blob lands where the warp's matrix puts it, whatever the parity of the region the area step shrinks."""
    ys, xs = np.mgrid[0:720, 0:1280]
    for dx in (0.0, 0.5, 1.0, 1.5, 2.3):
        detection = face((640.0 + dx, 300.0 + dx / 2), iod, 0.0)
        matrix = alignment_matrix(detection, SIZE)
        assert antialias_sigma(matrix) >= 2, "the area step runs"
        target = np.array([36.0, 36.0])
        blob = cv2.invertAffineTransform(matrix) @ np.append(target, 1.0)
        spread = 0.05 * iod
        frame = (200 * np.exp(-((xs - blob[0]) ** 2 + (ys - blob[1]) ** 2) / (2 * spread**2))).astype(np.uint8)
        crop = align_faces(frame, [detection], SIZE)[0].astype(float)
        v, u = np.mgrid[0:SIZE, 0:SIZE]
        centroid = np.array([(crop * u).sum(), (crop * v).sum()]) / crop.sum()
        np.testing.assert_allclose(centroid, target, atol=0.03, err_msg=f"face shifted by {dx} px")
