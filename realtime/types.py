"""Typed records that flow between pipeline stages: frame → detections → tracks → predictions → frame result."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded BGR frame from a source.

    ``index`` counts frames read from the source (gaps mean a live source dropped stale frames); ``timestamp_s`` is
    the media time (video) or the time since the source opened (live); ``captured_at`` is ``time.perf_counter()`` when
    the frame was decoded, for end-to-end latency; ``still`` marks independent images (no tracking across them).
    """

    index: int
    timestamp_s: float
    image: np.ndarray
    source: str = ""
    decode_ms: float = 0.0
    captured_at: float = 0.0
    still: bool = False


@dataclass(frozen=True)
class Detection:
    """A face found by the detector: pixel box (x1, y1, x2, y2), score, and six keypoints in pixels.

    Keypoint order (MediaPipe BlazeFace): right eye, left eye, nose tip, mouth centre, right ear tragion,
    left ear tragion (right/left from the subject's point of view).
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((6, 2), dtype=np.float32))


@dataclass(frozen=True)
class FacePrediction:
    """One tracked face in one frame with its raw and smoothed class probabilities."""

    track_id: int
    detection: Detection
    probabilities: np.ndarray
    smoothed: np.ndarray

    def label_index(self) -> int:
        return int(np.argmax(self.smoothed))


@dataclass
class StageTimings:
    """Milliseconds spent in each stage for one frame."""

    decode_ms: float = 0.0
    detect_ms: float = 0.0
    track_align_ms: float = 0.0
    infer_ms: float = 0.0
    smooth_ms: float = 0.0
    draw_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.decode_ms + self.detect_ms + self.track_align_ms + self.infer_ms + self.smooth_ms + self.draw_ms


@dataclass
class FrameResult:
    """Everything the pipeline knows about one frame; ``annotated`` is filled by the overlay stage.

    ``latency_ms`` runs from capture to result, so for a live source it includes the time the frame waited in the
    source's buffer; 0 when the capture time is unknown. ``crops`` are the aligned model inputs, one per face, valid
    until the pipeline processes the next frame (copy them to keep them).
    """

    frame: Frame
    faces: list[FacePrediction]
    classes: tuple[str, ...]
    timings: StageTimings
    annotated: np.ndarray | None = None
    latency_ms: float = 0.0
    crops: np.ndarray | None = None
