"""Face alignment: one similarity warp per face from the eye keypoints straight to the model's FER2013-like crop.

The geometry constants are FER2013's own, measured with the shipped full-range detector on 625 PublicTest faces
(each 48x48 face upscaled 2x onto a padded canvas, keypoints mapped back; medians): the eye midpoint sits at
(24.2, 18.5) px = (0.50, 0.385) of the crop, the eyes are 17.3 px = 0.36 of the crop apart, the mouth is 18.3 px =
0.38 of the crop below the eye midpoint, and the detector's box is 42.5 px = 0.885 of the crop wide, centred at
y = 25.3 px = 0.526. A crop made with these numbers frames a live face the way FER2013 framed its faces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from .types import Detection

EYE_CENTER = (0.5, 0.385)
"""Where the midpoint between the eyes lands, as fractions of the crop's width and height."""
EYE_DISTANCE = 0.36
"""Inter-ocular distance as a fraction of the crop width."""
EYE_MOUTH_DISTANCE = 0.38
"""Eye-midpoint-to-mouth distance as a fraction of the crop height."""
BOX_WIDTH = 0.885
"""Detector box width as a fraction of the crop (fallback when keypoints are unusable)."""
BOX_CENTER_Y = 0.526
"""Detector box centre height as a fraction of the crop (fallback)."""
MIN_KEYPOINT_SPAN_PX = 2.0
ANTIALIAS = "gaussian (f - 1) / 2 after an integer area downscale of whole step x step blocks"
"""How a face larger than the crop is filtered before the warp (:func:`align_faces`); crop caches are keyed by it."""
MIN_ANTIALIAS_SIGMA = 0.25
"""Below this blur (a face at most 1.5x the crop's size) the warp samples the frame unfiltered."""


def alignment_matrix(detection: Detection, size: int) -> np.ndarray:
    """2x3 affine matrix mapping frame pixels to a ``size`` x ``size`` crop of the face.

    Rotation levels the eyes (the mouth decides which way is down, so upside-down or mirrored keypoints still give
    an upright crop). Scale uses the larger of two face-size estimates, inter-ocular distance and eye-to-mouth
    distance, so a turned head (eyes closer) or a tilted one (mouth closer) is not blown up. Without usable
    keypoints the box is used, upright.
    """
    kp = np.asarray(detection.keypoints, dtype=np.float64)
    right_eye, left_eye, mouth = kp[0], kp[1], kp[3]
    eye_mid = (right_eye + left_eye) / 2.0
    eye_vec = left_eye - right_eye
    iod = float(np.hypot(*eye_vec))
    eye_mouth = float(np.hypot(*(mouth - eye_mid)))
    if max(iod, eye_mouth) >= MIN_KEYPOINT_SPAN_PX:
        angle = math.atan2(eye_vec[1], eye_vec[0]) if iod >= MIN_KEYPOINT_SPAN_PX else 0.0
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        down = mouth - eye_mid
        if -sin_a * down[0] + cos_a * down[1] < 0:
            cos_a, sin_a = -cos_a, -sin_a
        face_px = max(iod / EYE_DISTANCE, eye_mouth / EYE_MOUTH_DISTANCE)
        anchor, target = eye_mid, (EYE_CENTER[0] * size, EYE_CENTER[1] * size)
    else:
        x1, y1, x2, y2 = detection.box
        cos_a, sin_a = 1.0, 0.0
        face_px = max(x2 - x1, 1.0) / BOX_WIDTH
        anchor, target = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0]), (0.5 * size, BOX_CENTER_Y * size)
    scale = size / face_px
    a, b = scale * cos_a, scale * sin_a
    return np.array(
        [
            [a, b, target[0] - (a * anchor[0] + b * anchor[1])],
            [-b, a, target[1] - (-b * anchor[0] + a * anchor[1])],
        ],
        dtype=np.float64,
    )


def antialias_sigma(matrix: np.ndarray) -> float:
    """The Gaussian blur (in frame pixels) that a warp by ``matrix`` needs before sampling: (f - 1) / 2 for a
    downscale by f frame pixels per crop pixel (scikit-image's rule), 0 when the face is not larger than the crop."""
    frame_px_per_crop_px = 1.0 / math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))
    return max(0.0, (frame_px_per_crop_px - 1.0) / 2.0)


def _prefiltered(gray: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The frame region the crop samples, blurred by :func:`antialias_sigma`, and the matrix that warps it: only that
    region is filtered, so the cost follows the face, not the frame."""
    sigma = antialias_sigma(matrix)
    if sigma < MIN_ANTIALIAS_SIGMA:
        return gray, matrix
    corners = cv2.invertAffineTransform(matrix) @ np.array([[0, size, 0, size], [0, 0, size, size], [1, 1, 1, 1]], float)
    margin = math.ceil(3 * sigma) + 2
    height, width = gray.shape
    x0, y0 = (max(0, math.floor(v) - margin) for v in corners.min(axis=1))
    x1, y1 = min(width, math.ceil(corners[0].max()) + margin), min(height, math.ceil(corners[1].max()) + margin)
    if x1 <= x0 or y1 <= y0:
        return gray, matrix
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], float)
    step = int(sigma) // 2 + 1
    if step > 1 and min(x1 - x0, y1 - y0) >= step:
        columns, rows = (x1 - x0) // step, (y1 - y0) // step
        region = cv2.resize(gray[y0:y0 + rows * step, x0:x0 + columns * step], (columns, rows),
                            interpolation=cv2.INTER_AREA)
        shifted[:, 2] += shifted[:, :2] @ np.full(2, (step - 1) / 2.0)
        shifted[:, :2] *= step
        sigma = antialias_sigma(shifted)
    else:
        region = gray[y0:y1, x0:x1]
    if sigma >= MIN_ANTIALIAS_SIGMA:
        region = cv2.GaussianBlur(region, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    return region, shifted


def align_faces(
    gray: np.ndarray, detections: Sequence[Detection], size: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Warp every detected face of a grayscale frame to ``size`` x ``size`` uint8 → array [N, size, size].

    A face larger than the crop is low-pass filtered first (:func:`antialias_sigma`): a bare bilinear warp of a large
    face aliases its fine detail into a sharper, noisier crop than FER2013's, whose faces were resized with filtering.
    ``out`` (shape [M, size, size], M >= N) is reused when given so the hot path allocates nothing; the result is a
    view of its first N crops. Pixels outside the frame replicate the border (FER2013 crops have no black corners).
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a grayscale uint8 frame [H, W], got {gray.dtype} {gray.shape}")
    count = len(detections)
    if out is None or out.shape[0] < count or out.shape[1:] != (size, size):
        out = np.empty((max(count, 1), size, size), dtype=np.uint8)
    for i, detection in enumerate(detections):
        source, matrix = _prefiltered(gray, alignment_matrix(detection, size), size)
        cv2.warpAffine(source, matrix, (size, size), dst=out[i], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out[:count]
