"""Face detection: MediaPipe Tasks' ``FaceDetector`` (BlazeFace short- or full-range model), OpenCV's YuNet, and the
cascade the pipeline uses: MediaPipe first, YuNet on what MediaPipe misses (all models shipped in assets/)."""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401  (imported first, so that its exit hook runs after ours; see below)
import os
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Literal

import cv2
import numpy as np
from mediapipe import Image, ImageFormat
from mediapipe.tasks.python import BaseOptions, vision
from mediapipe.tasks.python.components.containers.detections import Detection as MediaPipeDetection

from leaf_fer.common import ConfigError

from .types import Detection

DetectorRange = Literal["short", "full"]
MODEL_FILES: dict[str, str] = {
    "short": "face_detection_short_range.tflite",
    "full": "face_detection_full_range_sparse.tflite",
}
YUNET_MODEL_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_MAX_SIDE = 640
"""YuNet runs on a copy whose longer side is at most this (its export's native 640x640): cost stays ~10 ms per frame."""
YUNET_MIN_SIDE = 160
"""Smaller images are upscaled to this longer side first: YuNet misses 21% of FER2013's 48x48 faces at their size
and 3% at 3x (``benchmarks/detectors.py``)."""
YUNET_EYE_DROP = 0.073
YUNET_MOUTH_DROP = 0.125
"""How far below YuNet's eye points and mouth-corner midpoint MediaPipe places its eye and mouth keypoints, in
inter-ocular distances (medians over 200 faces both found, ``benchmarks/detectors.py``): YuNet's points are moved
there, so the aligner (whose geometry was measured with MediaPipe) frames a face alike whichever detector found it."""
KEYPOINT_NAMES: tuple[str, ...] = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")


def detection_size(shape: tuple[int, ...], max_side: int) -> tuple[int, int] | None:
    """The (width, height) an image of ``shape`` is shrunk to for detection, or None when it is detected as it is
    (``max_side`` 0: always)."""
    height, width = shape[:2]
    if not max_side or max(height, width) <= max_side:
        return None
    scale = max(height, width) / max_side
    return max(1, round(width / scale)), max(1, round(height / scale))


def scaled_detection(detection: Detection, small: tuple[int, ...], full: tuple[int, ...]) -> Detection:
    """``detection`` found on a downscaled copy of shape ``small``, in the pixels of the image of shape ``full``."""
    height, width = full[:2]
    sx, sy = width / small[1], height / small[0]
    x1, y1, x2, y2 = detection.box
    x1, y1 = min(max(x1 * sx, 0.0), width - 1.0), min(max(y1 * sy, 0.0), height - 1.0)
    box = (x1, y1, min(max(x2 * sx, x1 + 1.0), float(width)), min(max(y2 * sy, y1 + 1.0), float(height)))
    return Detection(box, detection.score, (detection.keypoints * np.array([sx, sy], np.float32)).astype(np.float32))
WARMUP_CALLS = 8
"""Blank detections run while a model loads (stderr hidden): they take the first-call cost, and they make LiteRT's
once-per-process "input tensor memory is not aligned" warning, which depends on where an image happens to be
allocated, fire there rather than on a user's first frame."""


def asset_bytes(name: str) -> bytes:
    return (resources.files("leaf_fer.realtime") / "assets" / name).read_bytes()


def model_bytes(detector_range: DetectorRange) -> bytes:
    """The shipped .tflite model for ``"short"`` (faces within ~2 m) or ``"full"`` (up to ~5 m, group shots)."""
    if detector_range not in MODEL_FILES:
        raise ConfigError(f"detector range must be one of {sorted(MODEL_FILES)}, got {detector_range!r}")
    return asset_bytes(MODEL_FILES[detector_range])


@contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """Hide what LiteRT/absl print straight to file descriptor 2 while a model loads, warms up or closes.

    Those lines (accelerator registration, one-time warnings) are noise for users; if the block fails, the captured
    text is written to stderr after all so nothing diagnostic is lost.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))


class FaceDetector:
    """Detect faces in RGB uint8 frames → :class:`Detection` (pixel box, score, six pixel keypoints), best first.

    ``detect(rgb, timestamp_ms)`` uses the Tasks VIDEO running mode (timestamps are forced strictly increasing, so a
    restarted video or a second file simply continues); ``detect(rgb)`` without a timestamp uses the IMAGE mode for
    independent stills. Each mode's Tasks object is created on first use and closed by :meth:`close`.
    """

    def __init__(
        self,
        detector_range: DetectorRange = "short",
        min_confidence: float = 0.65,
        max_faces: int | None = None,
        min_suppression: float = 0.3,
    ) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ConfigError(f"min detection confidence must be in [0, 1], got {min_confidence}")
        self.detector_range = detector_range
        self.min_confidence = min_confidence
        self.max_faces = max_faces
        self.min_suppression = min_suppression
        self._model = model_bytes(detector_range)
        self._tasks: dict[str, vision.FaceDetector] = {}
        self._last_timestamp_ms = -1

    def _task(self, mode: vision.RunningMode) -> vision.FaceDetector:
        task = self._tasks.get(mode.name)
        if task is None:
            options = vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_buffer=self._model),
                running_mode=mode,
                min_detection_confidence=self.min_confidence,
                min_suppression_threshold=self.min_suppression,
            )
            with native_stderr_hidden():
                task = vision.FaceDetector.create_from_options(options)
                for size in range(64, 64 + WARMUP_CALLS):
                    blank = Image(image_format=ImageFormat.SRGB, data=np.zeros((size, size, 3), np.uint8))
                    if mode == vision.RunningMode.VIDEO:
                        self._last_timestamp_ms += 1
                        task.detect_for_video(blank, self._last_timestamp_ms)
                    else:
                        task.detect(blank)
            self._tasks[mode.name] = task
            _OPEN_DETECTORS.add(self)
        return task

    def warmup(self, video: bool = True) -> None:
        """Load the model now (first-call cost out of the hot path)."""
        self._task(vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE)

    def detect(self, rgb: np.ndarray, timestamp_ms: int | None = None) -> list[Detection]:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {rgb.dtype} {rgb.shape}")
        image = Image(image_format=ImageFormat.SRGB, data=rgb)
        if timestamp_ms is None:
            result = self._task(vision.RunningMode.IMAGE).detect(image)
        else:
            task = self._task(vision.RunningMode.VIDEO)
            self._last_timestamp_ms = max(int(timestamp_ms), self._last_timestamp_ms + 1)
            result = task.detect_for_video(image, self._last_timestamp_ms)
        height, width = rgb.shape[:2]
        detections = [self._convert(d, width, height) for d in result.detections]
        detections.sort(key=lambda d: d.score, reverse=True)
        return detections[: self.max_faces] if self.max_faces else detections

    @staticmethod
    def _convert(raw: MediaPipeDetection, width: int, height: int) -> Detection:
        box = raw.bounding_box
        x1 = min(max(float(box.origin_x), 0.0), width - 1.0)
        y1 = min(max(float(box.origin_y), 0.0), height - 1.0)
        x2 = min(max(float(box.origin_x + box.width), x1 + 1.0), float(width))
        y2 = min(max(float(box.origin_y + box.height), y1 + 1.0), float(height))
        keypoints = np.array([[k.x * width, k.y * height] for k in raw.keypoints or []], dtype=np.float32)
        if keypoints.shape != (6, 2):
            keypoints = np.zeros((6, 2), dtype=np.float32)
        score = float(raw.categories[0].score) if raw.categories else 0.0
        return Detection(box=(x1, y1, x2, y2), score=score, keypoints=keypoints)

    def close(self) -> None:
        tasks, self._tasks = self._tasks, {}
        with native_stderr_hidden():
            for task in tasks.values():
                task.close()

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_OPEN_DETECTORS: weakref.WeakSet[FaceDetector] = weakref.WeakSet()
"""Detectors with an open MediaPipe task."""


def _close_open_detectors() -> None:
    for detector in list(_OPEN_DETECTORS):
        detector.close()


# MediaPipe closes a task through a concurrent.futures thread pool, which refuses work once the interpreter has begun
# to shut down, so a detector nobody closed would print a traceback at exit. Threads' exit hooks run last-registered
# first: registered after the pool module's own hook, this one runs before it.
threading._register_atexit(_close_open_detectors)


class YuNetDetector:
    """OpenCV's YuNet (``cv2.FaceDetectorYN``) → :class:`Detection`, best first, on RGB uint8 frames.

    YuNet gives five landmarks (eyes, nose tip, mouth corners); they become the six MediaPipe keypoints the aligner
    reads: the mouth is the corners' midpoint and each ear tragion is placed where the box edge meets the eye line.
    Frames whose longer side exceeds :data:`YUNET_MAX_SIDE` are detected on a downscaled copy, images smaller than
    :data:`YUNET_MIN_SIDE` on an upscaled one. A new frame size costs one network reshape (~0.1-0.4 s), once.
    """

    def __init__(self, min_confidence: float = 0.6, max_faces: int | None = None, min_suppression: float = 0.3) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ConfigError(f"min detection confidence must be in [0, 1], got {min_confidence}")
        self.max_faces = max_faces
        self._net = cv2.FaceDetectorYN.create(
            "onnx", np.frombuffer(asset_bytes(YUNET_MODEL_FILE), np.uint8), np.zeros(0, np.uint8), (320, 320),
            min_confidence, min_suppression, 5000)
        self._bgr: np.ndarray | None = None

    def warmup(self, video: bool = True) -> None:
        self.detect(np.zeros((240, 320, 3), np.uint8))

    def detect(self, rgb: np.ndarray, timestamp_ms: int | None = None) -> list[Detection]:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {rgb.dtype} {rgb.shape}")
        height, width = rgb.shape[:2]
        longer = max(height, width)
        scale = YUNET_MAX_SIDE / longer if longer > YUNET_MAX_SIDE else max(1.0, YUNET_MIN_SIDE / longer)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        small = rgb if scale == 1.0 else cv2.resize(rgb, size, interpolation=interpolation)
        if self._bgr is None or self._bgr.shape != small.shape:
            self._bgr = np.empty_like(small)
        cv2.cvtColor(small, cv2.COLOR_RGB2BGR, dst=self._bgr)
        self._net.setInputSize(size)
        _, faces = self._net.detect(self._bgr)
        detections = [self._convert(row, scale, width, height) for row in ([] if faces is None else faces)]
        detections.sort(key=lambda d: d.score, reverse=True)
        return detections[: self.max_faces] if self.max_faces else detections

    @staticmethod
    def _convert(row: np.ndarray, scale: float, width: int, height: int) -> Detection:
        x, y, w, h = (float(v) / scale for v in row[:4])
        right_eye, left_eye, nose, mouth_right, mouth_left = row[4:14].reshape(5, 2).astype(np.float64) / scale
        eye_vec = left_eye - right_eye
        down = np.array([-eye_vec[1], eye_vec[0]])
        right_eye, left_eye = right_eye + YUNET_EYE_DROP * down, left_eye + YUNET_EYE_DROP * down
        mouth = (mouth_right + mouth_left) / 2.0 + YUNET_MOUTH_DROP * down
        eye_y = (right_eye[1] + left_eye[1]) / 2.0
        keypoints = np.array([right_eye, left_eye, nose, mouth, (x, eye_y), (x + w, eye_y)], dtype=np.float32)
        x1, y1 = min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)
        x2, y2 = min(max(x + w, x1 + 1.0), float(width)), min(max(y + h, y1 + 1.0), float(height))
        return Detection(box=(x1, y1, x2, y2), score=float(row[14]), keypoints=keypoints)

    def close(self) -> None:
        self._net = None

    def __enter__(self) -> "YuNetDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CascadeDetector:
    """The pipeline's detector: MediaPipe (``detector_range``) first; on a frame where it finds no face, YuNet.

    MediaPipe's short-range model misses faces that fill the frame, small or dark faces and group photos; YuNet finds
    them (``benchmarks/detectors.py``) and costs nothing on frames where MediaPipe already found a face. ``fallback``
    False leaves MediaPipe alone. ``last_detector`` names who found the faces of the latest frame.
    """

    def __init__(self, detector_range: DetectorRange = "short", min_confidence: float = 0.65,
                 max_faces: int | None = None, fallback: bool = True) -> None:
        self.primary = FaceDetector(detector_range, min_confidence, max_faces=max_faces)
        self.fallback = YuNetDetector(max_faces=max_faces) if fallback else None
        self.last_detector = "mediapipe"

    def warmup(self, video: bool = True) -> None:
        self.primary.warmup(video)
        if self.fallback is not None:
            self.fallback.warmup(video)

    def detect(self, rgb: np.ndarray, timestamp_ms: int | None = None) -> list[Detection]:
        detections = self.primary.detect(rgb, timestamp_ms)
        self.last_detector = "mediapipe"
        if not detections and self.fallback is not None:
            detections = self.fallback.detect(rgb)
            self.last_detector = "yunet"
        return detections

    def close(self) -> None:
        self.primary.close()
        if self.fallback is not None:
            self.fallback.close()

    def __enter__(self) -> "CascadeDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
