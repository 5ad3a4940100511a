"""Qt-free settings record shared by the command line and the window."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS: tuple[str, ...] = ("auto", "onnxruntime", "torch", "tensorrt")
DETECTOR_RANGES: tuple[str, ...] = ("short", "full")


@dataclass(frozen=True)
class GuiSettings:
    """Pipeline settings the window exposes; the worker turns them into a realtime ``PipelineConfig``."""

    weights: str | None = None
    backend: str = "auto"
    detector_range: str = "short"
    fallback_detector: bool = True
    min_detection_confidence: float = 0.65
    smoothing: float = 0.7
    max_faces: int = 8

    def validate(self) -> "GuiSettings":
        """Raise ``ValueError`` for out-of-range values; returns ``self`` for chaining."""
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.detector_range not in DETECTOR_RANGES:
            raise ValueError(f"detector range must be 'short' or 'full', got {self.detector_range!r}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if not 0.0 < self.min_detection_confidence < 1.0:
            raise ValueError(f"min confidence must be in (0, 1), got {self.min_detection_confidence}")
        if self.max_faces < 1:
            raise ValueError(f"max faces must be at least 1, got {self.max_faces}")
        return self
