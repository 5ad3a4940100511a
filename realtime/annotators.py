"""Composable overlay annotators (cv2 drawing only): each draws one thing of a :class:`FrameResult` onto an image.

Usage mirrors supervision: ``for annotator in annotators: scene = annotator.annotate(scene, result)``; every
annotator draws in place and returns the scene.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from .types import FacePrediction, FrameResult

Color = tuple[int, int, int]
PALETTE: tuple[Color, ...] = (
    (255, 128, 0),
    (0, 200, 255),
    (80, 220, 60),
    (255, 0, 200),
    (0, 90, 255),
    (200, 200, 0),
    (160, 60, 255),
    (0, 255, 160),
    (255, 90, 90),
    (120, 180, 255),
)
"""BGR colours cycled by track id, so one face keeps its colour."""
CLASS_COLORS: dict[str, Color] = {
    "neutral": (180, 180, 180),
    "happiness": (0, 215, 255),
    "surprise": (255, 200, 0),
    "sadness": (200, 90, 40),
    "anger": (40, 40, 230),
    "disgust": (40, 160, 60),
    "fear": (170, 60, 170),
    "contempt": (60, 120, 200),
}
FONT = cv2.FONT_HERSHEY_SIMPLEX


def track_color(track_id: int) -> Color:
    return PALETTE[(track_id - 1) % len(PALETTE)]


def class_color(name: str) -> Color:
    return CLASS_COLORS.get(name, (200, 200, 200))


def _font_scale(image: np.ndarray) -> float:
    """Text scale that stays readable from 360p to 1080p."""
    return max(0.4, min(image.shape[0] / 720.0, 1.2) * 0.6)


class Annotator(Protocol):
    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray: ...


class BoxAnnotator:
    """The face box, in the track's colour."""

    def __init__(self, thickness: int = 2) -> None:
        self.thickness = thickness

    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        for face in result.faces:
            x1, y1, x2, y2 = (int(round(v)) for v in face.detection.box)
            cv2.rectangle(scene, (x1, y1), (x2, y2), track_color(face.track_id), self.thickness, cv2.LINE_AA)
        return scene


class KeypointAnnotator:
    """The six detector keypoints (eyes, nose tip, mouth, ears)."""

    def __init__(self, radius: int = 2) -> None:
        self.radius = radius

    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        for face in result.faces:
            color = track_color(face.track_id)
            for x, y in face.detection.keypoints:
                cv2.circle(scene, (int(round(x)), int(round(y))), self.radius, color, -1, cv2.LINE_AA)
        return scene


class LabelAnnotator:
    """``#id label 87%`` on a filled tag above the box (below it when the box touches the top edge)."""

    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        scale = _font_scale(scene)
        thickness = max(1, int(round(scale * 2)))
        for face in result.faces:
            index = face.label_index()
            text = f"#{face.track_id} {result.classes[index]} {face.smoothed[index] * 100:.0f}%"
            (tw, th), baseline = cv2.getTextSize(text, FONT, scale, thickness)
            x1, y1, _, y2 = (int(round(v)) for v in face.detection.box)
            top = y1 - th - baseline - 4
            if top < 0:
                top = y2
            x1 = min(max(x1, 0), max(scene.shape[1] - tw - 4, 0))
            cv2.rectangle(scene, (x1, top), (x1 + tw + 4, top + th + baseline + 4), track_color(face.track_id), -1)
            cv2.putText(scene, text, (x1 + 2, top + th + 2), FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
        return scene


class ProbabilityBarsAnnotator:
    """Small horizontal bars, one per class, beside the box (right side, or left when there is no room)."""

    def __init__(self, bar_width: int = 60, use_smoothed: bool = True) -> None:
        self.bar_width = bar_width
        self.use_smoothed = use_smoothed

    def _draw(self, scene: np.ndarray, face: FacePrediction, classes: Sequence[str], scale: float) -> None:
        probs = face.smoothed if self.use_smoothed else face.probabilities
        text_scale = scale * 0.6
        row = max(8, int(round(18 * scale)))
        label_w = cv2.getTextSize("hap", FONT, text_scale, 1)[0][0] + 4
        panel_w = label_w + self.bar_width + 4
        x1, y1, x2, _ = (int(round(v)) for v in face.detection.box)
        left = x2 + 4 if x2 + 4 + panel_w <= scene.shape[1] else max(x1 - 4 - panel_w, 0)
        top = min(max(y1, 0), max(scene.shape[0] - row * len(classes), 0))
        for i, (name, p) in enumerate(zip(classes, probs)):
            y = top + i * row
            cv2.putText(scene, name[:3], (left, y + row - 3), FONT, text_scale, (255, 255, 255), 1, cv2.LINE_AA)
            bx = left + label_w
            cv2.rectangle(scene, (bx, y + 2), (bx + self.bar_width, y + row - 2), (60, 60, 60), -1)
            filled = int(round(float(p) * self.bar_width))
            if filled > 0:
                cv2.rectangle(scene, (bx, y + 2), (bx + filled, y + row - 2), class_color(name), -1)

    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        scale = _font_scale(scene)
        for face in result.faces:
            self._draw(scene, face, result.classes, scale)
        return scene


class HudAnnotator:
    """Top-left readout: processing FPS (smoothed over frames), latency, backend and face count."""

    def __init__(self, backend: str = "", fps_smoothing: float = 0.9) -> None:
        self.backend = backend
        self.fps_smoothing = fps_smoothing
        self.fps = 0.0
        self._last: float | None = None

    def tick(self) -> float:
        """Register one processed frame and return the smoothed FPS."""
        now = time.perf_counter()
        if self._last is not None and now > self._last:
            instant = 1.0 / (now - self._last)
            self.fps = instant if self.fps == 0.0 else self.fps_smoothing * self.fps + (1 - self.fps_smoothing) * instant
        self._last = now
        return self.fps

    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        fps = self.tick()
        if result.frame.captured_at:
            latency = (time.perf_counter() - result.frame.captured_at) * 1e3 + result.timings.decode_ms
        else:
            latency = result.timings.total_ms
        text = f"{fps:4.1f} FPS  {latency:5.1f} ms  {self.backend}  faces: {len(result.faces)}"
        scale = _font_scale(scene)
        (tw, th), baseline = cv2.getTextSize(text, FONT, scale, 1)
        cv2.rectangle(scene, (0, 0), (tw + 10, th + baseline + 10), (0, 0, 0), -1)
        cv2.putText(scene, text, (5, th + 5), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
        return scene
