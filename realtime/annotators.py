"""Composable overlay annotators (cv2 drawing only): each draws one thing of a :class:`FrameResult` onto an image.

Usage mirrors supervision: ``for annotator in annotators: scene = annotator.annotate(scene, result)``; every
annotator draws in place and returns the scene. Boxes, tags and bars share one colour per expression, and the bar
panels are laid out around the faces so that they cover neither the faces, nor the tags, nor each other.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Protocol

import cv2
import numpy as np

from .types import FacePrediction, FrameResult

Color = tuple[int, int, int]
Rect = tuple[int, int, int, int]
"""x1, y1, x2, y2 in pixels, exclusive of x2 and y2."""
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
"""BGR colour of each expression: its box, its tag's edge, its bar, and the GUI's bars and plot."""
FONT = cv2.FONT_HERSHEY_DUPLEX
TAG_BACKGROUND: Color = (32, 32, 32)
TEXT_COLOR: Color = (255, 255, 255)
COMPACT_ROWS = 3
"""Classes a bar panel keeps (the most likely) when the full panel does not fit beside its face."""


def class_color(name: str) -> Color:
    return CLASS_COLORS.get(name, (200, 200, 200))


def text_style(image_height: int, lines_per_height: float) -> tuple[float, int, int]:
    """Font scale, stroke thickness and cap height (px) for text ``1/lines_per_height`` of the image high.

    Never under 11 px, where the Hershey "a" still has its open counter, nor over 30 px.
    """
    height = int(min(30, max(11, round(image_height / lines_per_height))))
    thickness = 1 if height < 22 else 2
    return cv2.getFontScaleFromHeight(FONT, height, thickness), thickness, height


def _face_color(face: FacePrediction, classes: Sequence[str]) -> Color:
    return class_color(classes[face.label_index()])


def _box(face: FacePrediction) -> Rect:
    x1, y1, x2, y2 = (int(round(v)) for v in face.detection.box)
    return x1, y1, x2 + 1, y2 + 1


def _cover(rects: np.ndarray, others: list[Rect]) -> np.ndarray:
    """The area of ``others`` that each of ``rects`` (N x 4) covers."""
    if not others:
        return np.zeros(len(rects), dtype=np.int64)
    a, b = rects[:, None, :], np.asarray(others)[None, :, :]
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return (np.clip(w, 0, None) * np.clip(h, 0, None)).sum(axis=1)


def _clamp(rect: Rect, shape: tuple[int, ...]) -> Rect:
    """``rect`` shifted (not resized) into the image as far as it fits."""
    dx = max(-rect[0], min(0, shape[1] - rect[2]))
    dy = max(-rect[1], min(0, shape[0] - rect[3]))
    return rect[0] + dx, rect[1] + dy, rect[2] + dx, rect[3] + dy


def label_tags(shape: tuple[int, ...], result: FrameResult) -> list[tuple[Rect, str]]:
    """Each face's ``#id label 87%`` tag, at the first free spot of: above its box, below it (each flush with the
    box's left edge, then with its right edge), shifted into the image; where none is free, at the spot that covers
    the least of the earlier tags, then of the faces."""
    scale, thickness, height = text_style(shape[0], 36)
    pad = max(3, height // 3)
    boxes = [_box(face) for face in result.faces]
    tags: list[tuple[Rect, str]] = []
    for face, box in zip(result.faces, boxes):
        index = face.label_index()
        text = f"#{face.track_id} {result.classes[index]} {face.smoothed[index] * 100:.0f}%"
        w, h = cv2.getTextSize(text, FONT, scale, thickness)[0][0] + 2 * pad, height + 2 * pad
        spots = np.array([_clamp((left, top, left + w, top + h), shape)
                          for top in (box[1] - h - 1, box[3] + 1) for left in (box[0], box[2] - w)])
        best = int(np.lexsort((_cover(spots, boxes), _cover(spots, [rect for rect, _ in tags])))[0])
        x1, y1, x2, y2 = (int(v) for v in spots[best])
        tags.append(((x1, y1, x2, y2), text))
    return tags


class Annotator(Protocol):
    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray: ...


class BoxAnnotator:
    """The face box, in the colour of the face's most likely expression."""

    def __init__(self, thickness: int = 2) -> None:
        self.thickness = thickness

    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        for face in result.faces:
            x1, y1, x2, y2 = (int(round(v)) for v in face.detection.box)
            cv2.rectangle(scene, (x1, y1), (x2, y2), _face_color(face, result.classes), self.thickness, cv2.LINE_AA)
        return scene


class KeypointAnnotator:
    """The six detector keypoints (eyes, nose tip, mouth, ears)."""

    def __init__(self, radius: int = 2) -> None:
        self.radius = radius

    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        for face in result.faces:
            color = _face_color(face, result.classes)
            for x, y in face.detection.keypoints:
                cv2.circle(scene, (int(round(x)), int(round(y))), self.radius, color, -1, cv2.LINE_AA)
        return scene


class LabelAnnotator:
    """``#id label 87%`` in white on a dark tag edged in the expression's colour (see :func:`label_tags`)."""

    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        scale, thickness, height = text_style(scene.shape[0], 36)
        pad = max(3, height // 3)
        for face, ((x1, y1, x2, y2), text) in zip(result.faces, label_tags(scene.shape, result)):
            cv2.rectangle(scene, (x1, y1), (x2 - 1, y2 - 1), TAG_BACKGROUND, -1)
            cv2.rectangle(scene, (x1, y1), (x1 + pad - 2, y2 - 1), _face_color(face, result.classes), -1)
            cv2.putText(scene, text, (x1 + pad, y2 - pad), FONT, scale, TEXT_COLOR, thickness, cv2.LINE_AA)
        return scene


class ProbabilityBarsAnnotator:
    """One bar per class on a darkened panel beside the face (see :meth:`layout` for where it goes)."""

    def __init__(self, use_smoothed: bool = True) -> None:
        self.use_smoothed = use_smoothed

    def layout(self, shape: tuple[int, ...], result: FrameResult) -> list[tuple[Rect, list[int]]]:
        """Each face's panel and the classes it shows, in face order.

        The first free spot wins: right of the box, left of it (both slid up and down along the box), then below
        and above it, each shifted into the image; a panel that fits nowhere keeps only its :data:`COMPACT_ROWS`
        most likely classes, and if that fits nowhere either, goes where it covers the least of the faces, then of
        the tags and panels.
        """
        row, label_w, bar_w = self._metrics(shape, result.classes)
        boxes = [_box(face) for face in result.faces]
        taken = [rect for rect, _ in label_tags(shape, result)]
        panels: list[tuple[Rect, list[int]]] = []
        for face, box in zip(result.faces, boxes):
            order = [int(i) for i in np.argsort(-self._probabilities(face), kind="stable")]
            options = [
                (shown, rect)
                for shown in (sorted(order), order[:COMPACT_ROWS])
                for rect in self._candidates(box, (label_w + bar_w + 6, row * len(shown) + 4), row)
            ]
            rects = np.array([rect for _, rect in options])
            dx = np.maximum(-rects[:, 0], np.minimum(0, shape[1] - rects[:, 2]))
            dy = np.maximum(-rects[:, 1], np.minimum(0, shape[0] - rects[:, 3]))
            rects += np.stack([dx, dy, dx, dy], axis=1)
            best = int(np.lexsort((_cover(rects, taken), _cover(rects, boxes)))[0])
            x1, y1, x2, y2 = (int(v) for v in rects[best])
            rect = (x1, y1, x2, y2)
            panels.append((rect, options[best][0]))
            taken.append(rect)
        return panels

    @staticmethod
    def _candidates(box: Rect, size: tuple[int, int], row: int) -> Iterator[Rect]:
        w, h = size
        x1, y1, x2, y2 = box
        tops = [y1 + k * row for k in sorted(range(1 - h // row, max(1, (y2 - y1) // row)), key=abs)]
        for left in (x2 + 4, x1 - 4 - w):
            for top in tops:
                yield left, top, left + w, top + h
        for top in (y2 + 4, y1 - 4 - h):
            for left in (x1, x2 - w):
                yield left, top, left + w, top + h

    @staticmethod
    def _metrics(shape: tuple[int, ...], classes: Sequence[str]) -> tuple[int, int, int]:
        """Row height, label width and bar width, in pixels."""
        scale, thickness, height = text_style(shape[0], 48)
        label_w = max((cv2.getTextSize(name[:3], FONT, scale, thickness)[0][0] for name in classes), default=0)
        return height + max(5, height // 2), label_w + 4, 5 * height

    def _probabilities(self, face: FacePrediction) -> np.ndarray:
        return np.asarray(face.smoothed if self.use_smoothed else face.probabilities, dtype=np.float64)

    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        scale, thickness, height = text_style(scene.shape[0], 48)
        row, label_w, bar_w = self._metrics(scene.shape, result.classes)
        for face, ((x1, y1, x2, y2), shown) in zip(result.faces, self.layout(scene.shape, result)):
            panel = scene[y1:y2, x1:x2]
            panel //= 3
            probs = self._probabilities(face)
            for k, i in enumerate(shown):
                name = result.classes[i]
                y = y1 + 2 + k * row
                baseline = (x1 + 2, y + (row + height) // 2)
                cv2.putText(scene, name[:3], baseline, FONT, scale, TEXT_COLOR, thickness, cv2.LINE_AA)
                bx = x1 + 2 + label_w
                cv2.rectangle(scene, (bx, y + 3), (bx + bar_w, y + row - 3), (70, 70, 70), -1)
                filled = int(round(float(probs[i]) * bar_w))
                if filled > 0:
                    cv2.rectangle(scene, (bx, y + 3), (bx + filled, y + row - 3), class_color(name), -1)
        return scene


class FpsMeter:
    """Frames per second over the last ``window_s`` seconds: frames counted over time, not an average of 1/Δt
    (which reads high whenever frame intervals vary)."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._ticks: deque[float] = deque()

    def tick(self, now: float | None = None) -> float:
        """Register one frame (at ``now``, default the current time) and return the rate."""
        now = time.perf_counter() if now is None else now
        self._ticks.append(now)
        while len(self._ticks) > 2 and now - self._ticks[0] > self.window_s:
            self._ticks.popleft()
        return self.fps

    @property
    def span_s(self) -> float:
        """Seconds between the first and the last frame counted."""
        return self._ticks[-1] - self._ticks[0] if self._ticks else 0.0

    @property
    def fps(self) -> float:
        span = self.span_s
        return (len(self._ticks) - 1) / span if span > 0 else 0.0

    def reset(self) -> None:
        """Forget past frames (after a pause, so that the pause does not count)."""
        self._ticks.clear()


class HudAnnotator:
    """Top-left readout: processing FPS (not on a still image), latency, backend and face count."""

    def __init__(self, backend: str = "") -> None:
        self.backend = backend
        self.meter = FpsMeter()

    def annotate(self, scene: np.ndarray, result: FrameResult) -> np.ndarray:
        if result.frame.captured_at:
            latency = (time.perf_counter() - result.frame.captured_at) * 1e3 + result.timings.decode_ms
        else:
            latency = result.timings.total_ms
        text = f"{latency:5.1f} ms  {self.backend}  faces: {len(result.faces)}"
        if not result.frame.still:
            text = f"{self.meter.tick():4.1f} FPS  {text}"
        scale, thickness, height = text_style(scene.shape[0], 40)
        width = cv2.getTextSize(text, FONT, scale, thickness)[0][0]
        cv2.rectangle(scene, (0, 0), (width + 10, height + 10), TAG_BACKGROUND, -1)
        cv2.putText(scene, text, (5, height + 5), FONT, scale, TEXT_COLOR, thickness, cv2.LINE_AA)
        return scene
