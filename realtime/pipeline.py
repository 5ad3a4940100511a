"""The per-frame pipeline: detect → track → align → one batched inference → smooth → draw.

``Pipeline.process(frame)`` does one frame and fills the per-stage timings; ``Pipeline.run(frames)`` maps it over any
frame iterable (a :mod:`sources` generator, a live source). The CLI's ``annotate``/``bench`` and the GUI are thin
layers on this class.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

from leaf_fer.engines import PRECISIONS, Predictor
from leaf_fer.engines import create_predictor as create_engine_predictor

from .align import align_faces
from .annotators import (
    Annotator,
    BoxAnnotator,
    HudAnnotator,
    KeypointAnnotator,
    LabelAnnotator,
    ProbabilityBarsAnnotator,
)
from .detector import MODEL_FILES, CascadeDetector
from .smoothing import ProbabilitySmoother
from .tracker import Tracker
from .types import Detection, FacePrediction, Frame, FrameResult, StageTimings

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
"""Backend names accepted by :class:`PipelineConfig` (the engines' ``create_predictor`` names)."""


@dataclass
class PipelineConfig:
    """Everything that shapes the pipeline's output; the defaults suit a webcam or a close-up video.

    ``fallback_detector``: where MediaPipe finds no face, OpenCV's YuNet looks again (faces that fill the frame, small,
    dark or group shots). ``min_detection_confidence`` 0.65: real faces in the test clips score 0.88-0.97 with the short-range model,
    while an animated title scores up to 0.61. ``threads``: CPU threads for inference (0 = the backend's default);
    one thread keeps per-frame latency steady, since a batch of a few 48x48 faces gains little from more and an
    OpenMP team competing with other busy cores stalls for tens to hundreds of milliseconds. ``precision``: ``auto``
    (the backend's own: FP16 on TensorRT, FP32 elsewhere), ``fp32``, ``fp16`` or ``int8`` (ONNX Runtime, statically
    quantised). ``detect_max_side``: frames larger than this (longer side, px) are detected on a downscaled copy and
    the boxes and keypoints mapped back (0 = full size); alignment always reads the full-resolution frame. The
    detectors look at 128-640 px inputs anyway, so this only saves the cost of handing them a large frame.
    """

    weights: str | os.PathLike[str] | None = None
    backend: str = "auto"
    precision: str = "auto"
    detector_range: str = "short"
    fallback_detector: bool = True
    min_detection_confidence: float = 0.65
    smoothing_alpha: float = 0.7
    max_faces: int = 8
    max_lost: int = 15
    detect_max_side: int = 640
    threads: int = 1
    draw: bool = True
    draw_boxes: bool = True
    draw_keypoints: bool = False
    draw_labels: bool = True
    draw_bars: bool = True
    draw_hud: bool = True

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.detector_range not in MODEL_FILES:
            raise ValueError(f"detector range must be one of {', '.join(MODEL_FILES)}; got {self.detector_range!r}")
        if not 0.0 <= self.min_detection_confidence <= 1.0:
            raise ValueError(f"min detection confidence must be in [0, 1]; got {self.min_detection_confidence}")
        if not 0.0 <= self.smoothing_alpha < 1.0:
            raise ValueError(f"smoothing alpha must be in [0, 1) (0 = off); got {self.smoothing_alpha}")
        if self.max_faces < 1:
            raise ValueError(f"max faces must be >= 1; got {self.max_faces}")
        if self.max_lost < 0:
            raise ValueError(f"max lost frames must be >= 0; got {self.max_lost}")
        if self.detect_max_side < 0:
            raise ValueError(f"detect max side must be >= 0 (0 = full size); got {self.detect_max_side}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = backend default); got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["weights"] = os.fspath(self.weights) if self.weights is not None else None
        return data


def create_predictor(config: PipelineConfig) -> Predictor:
    """The engines' predictor for ``config.backend``, ``config.precision`` and ``config.weights``, using
    ``config.threads`` CPU threads."""
    return create_engine_predictor(config.weights, config.backend, precision=config.precision,
                                   threads=config.threads or None)


class Overlay:
    """The drawing stage: the annotators ``config`` enables, applied in order, in place."""

    def __init__(self, config: PipelineConfig, backend: str) -> None:
        self.hud = HudAnnotator(backend)
        chosen: list[tuple[bool, Annotator]] = [
            (config.draw_boxes, BoxAnnotator()),
            (config.draw_keypoints, KeypointAnnotator()),
            (config.draw_bars, ProbabilityBarsAnnotator()),
            (config.draw_labels, LabelAnnotator()),
            (config.draw_hud, self.hud),
        ]
        self.annotators = [annotator for enabled, annotator in chosen if enabled]

    def draw(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        for annotator in self.annotators:
            scene = annotator.annotate(scene, result)
        return scene


def scaled_detection(detection: Detection, small: tuple[int, ...], width: int, height: int) -> Detection:
    """``detection`` found on a downscaled copy of shape ``small``, in the pixels of the ``width`` x ``height``
    frame."""
    sx, sy = width / small[1], height / small[0]
    x1, y1, x2, y2 = detection.box
    x1, y1 = min(max(x1 * sx, 0.0), width - 1.0), min(max(y1 * sy, 0.0), height - 1.0)
    box = (x1, y1, min(max(x2 * sx, x1 + 1.0), float(width)), min(max(y2 * sy, y1 + 1.0), float(height)))
    return Detection(box, detection.score, (detection.keypoints * np.array([sx, sy], np.float32)).astype(np.float32))


class Pipeline:
    """Detect, track, align, classify, smooth and draw the faces of each frame.

    The model and the detector are loaded and warmed up here, so the first frame costs no more than the others.
    Pass ``predictor`` to share one already-loaded model (the pipeline then does not close it). Frames marked
    ``still`` are processed independently (image-mode detection, fresh track ids, no smoothing); other frames are
    treated as one continuous video until :meth:`reset`.
    """

    def __init__(self, config: PipelineConfig | None = None, predictor: Predictor | None = None) -> None:
        self.config = config or PipelineConfig()
        self.config.validate()
        self._owns_predictor = predictor is None
        self.predictor = predictor if predictor is not None else create_predictor(self.config)
        size = self.predictor.input_size
        self._crops = np.zeros((self.config.max_faces, size, size), dtype=np.uint8)
        try:
            self.predictor.predict(self._crops[:1])
            self.detector = CascadeDetector(self.config.detector_range, self.config.min_detection_confidence,
                                            max_faces=self.config.max_faces, fallback=self.config.fallback_detector)
            self.detector.warmup()
        except BaseException:
            if self._owns_predictor:
                self.predictor.close()
            raise
        self.tracker = Tracker(max_lost=self.config.max_lost)
        self.smoother = ProbabilitySmoother(self.config.smoothing_alpha)
        self.overlay = Overlay(self.config, self.predictor.backend_name)
        self._small: np.ndarray | None = None
        self._rgb: np.ndarray | None = None
        self._gray: np.ndarray | None = None
        self._closed = False

    @property
    def classes(self) -> tuple[str, ...]:
        return self.predictor.classes

    @property
    def backend_name(self) -> str:
        return self.predictor.backend_name

    def reset(self) -> None:
        """Start a new, unrelated video: forget tracks (ids restart from 1) and smoothing state."""
        self.tracker.reset()
        self.smoother.reset()

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        buffer = getattr(self, name)
        if buffer is None or buffer.shape != shape:
            buffer = np.empty(shape, dtype=np.uint8)
            setattr(self, name, buffer)
        return buffer

    def process(self, frame: Frame) -> FrameResult:
        """Run every stage on one BGR frame → :class:`FrameResult` with timings (and ``annotated`` when drawing)."""
        if self._closed:
            raise RuntimeError("pipeline is closed")
        image = frame.image
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 frame [H, W, 3], got {image.dtype} {image.shape}")
        timings = StageTimings(decode_ms=frame.decode_ms)
        t0 = time.perf_counter()
        height, width = image.shape[:2]
        limit = self.config.detect_max_side
        scale = max(height, width) / limit if limit and max(height, width) > limit else 1.0
        small = image
        if scale > 1.0:
            size = (max(1, round(width / scale)), max(1, round(height / scale)))
            small = self._buffer("_small", (size[1], size[0], 3))
            cv2.resize(image, size, dst=small, interpolation=cv2.INTER_AREA)
        rgb = self._buffer("_rgb", small.shape)
        cv2.cvtColor(small, cv2.COLOR_BGR2RGB, dst=rgb)
        timestamp_ms = None if frame.still else int(round(frame.timestamp_s * 1000.0))
        detections = self.detector.detect(rgb, timestamp_ms)
        if scale > 1.0:
            detections = [scaled_detection(d, small.shape, width, height) for d in detections]
        t1 = time.perf_counter()
        if frame.still:
            self.reset()
        track_ids = self.tracker.update(detections)
        self.smoother.forget(self.tracker.ended_ids)
        gray = self._buffer("_gray", image.shape[:2])
        cv2.cvtColor(image, cv2.COLOR_BGR2GRAY, dst=gray)
        crops = align_faces(gray, detections, self.predictor.input_size, out=self._crops)
        t2 = time.perf_counter()
        if detections:
            probabilities = self.predictor.predict(crops)
        else:
            probabilities = np.zeros((0, len(self.classes)), dtype=np.float32)
        t3 = time.perf_counter()
        smoothed = self.smoother.update(track_ids, probabilities)
        faces = [
            FacePrediction(track_id, detection, probabilities[i], smoothed[i])
            for i, (track_id, detection) in enumerate(zip(track_ids, detections))
        ]
        t4 = time.perf_counter()
        timings.detect_ms = (t1 - t0) * 1e3
        timings.track_align_ms = (t2 - t1) * 1e3
        timings.infer_ms = (t3 - t2) * 1e3
        timings.smooth_ms = (t4 - t3) * 1e3
        result = FrameResult(frame=frame, faces=faces, classes=self.classes, timings=timings, crops=crops)
        if self.config.draw:
            result.annotated = self.overlay.draw(image.copy(), result)
        end = time.perf_counter()
        timings.draw_ms = (end - t4) * 1e3
        if frame.captured_at:
            result.latency_ms = (end - frame.captured_at) * 1e3 + frame.decode_ms
        return result

    def run(self, frames: Iterable[Frame]) -> Iterator[FrameResult]:
        """Process frames lazily, one result per frame."""
        for frame in frames:
            yield self.process(frame)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.detector.close()
        if self._owns_predictor:
            self.predictor.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
