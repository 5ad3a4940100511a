"""The per-frame pipeline: detect → track → align → one batched inference → smooth → draw.

``Pipeline.process(frame)`` does one frame and fills the per-stage timings; ``Pipeline.run(frames)`` maps it over any
frame iterable (a :mod:`sources` generator, a live source). The CLI's ``annotate``/``bench`` and the GUI are thin
layers on this class.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from leaf_fer.engines import Predictor
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
from .detector import CascadeDetector, detection_size, scaled_detection
from .settings import PipelineConfig
from .smoothing import ProbabilitySmoother
from .tracker import Tracker
from .types import FacePrediction, Frame, FrameResult, StageTimings

__all__ = ["Overlay", "Pipeline", "PipelineConfig", "create_predictor"]


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


class Pipeline:
    """Detect, track, align, classify, smooth and draw the faces of each frame.

    The model and the detector are loaded and warmed up here, so the first frame costs no more than the others.
    Pass ``predictor`` to share one already-loaded model (the pipeline then does not close it). Frames marked
    ``still`` are processed independently (image-mode detection, fresh track ids, no smoothing); other frames are
    treated as one continuous video until :meth:`reset`. ``config.threads`` (when not 0) also sets OpenCV's thread
    count, which is process-wide.
    """

    def __init__(self, config: PipelineConfig | None = None, predictor: Predictor | None = None) -> None:
        self.config = config or PipelineConfig()
        self.config.validate()
        if self.config.threads:
            cv2.setNumThreads(self.config.threads)
        self._owns_predictor = predictor is None
        self.predictor = predictor if predictor is not None else create_predictor(self.config)
        size = self.predictor.input_size
        self._crops = np.zeros((self.config.max_faces, size, size), dtype=np.uint8)
        detector: CascadeDetector | None = None
        try:
            self.predictor.predict(self._crops[:1])
            detector = CascadeDetector(self.config.detector_range, self.config.min_detection_confidence,
                                       max_faces=self.config.max_faces, fallback=self.config.fallback_detector)
            detector.warmup()
        except BaseException:
            if detector is not None:
                detector.close()
            if self._owns_predictor:
                self.predictor.close()
            raise
        self.detector = detector
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

    @property
    def precision(self) -> str:
        """The precision the backend runs (``auto`` resolved): fp32, fp16 or int8."""
        return self.predictor.precision

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
        size = detection_size(image.shape, self.config.detect_max_side)
        small = image
        if size is not None:
            small = self._buffer("_small", (size[1], size[0], 3))
            cv2.resize(image, size, dst=small, interpolation=cv2.INTER_AREA)
        rgb = self._buffer("_rgb", small.shape)
        cv2.cvtColor(small, cv2.COLOR_BGR2RGB, dst=rgb)
        timestamp_ms = None if frame.still else int(round(frame.timestamp_s * 1000.0))
        detections = self.detector.detect(rgb, timestamp_ms)
        if size is not None:
            detections = [scaled_detection(d, small.shape, image.shape) for d in detections]
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
