"""One predictor interface over every inference backend: uint8 faces [N, H, W] → class probabilities [N, C]."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from leaf_fer.train.weights import WeightsMetadata


class Predictor(ABC):
    """Common interface; every backend returns float32 probabilities that sum to 1 per face."""

    backend_name: str = "abstract"
    backend_reason: str = ""
    precision: str = "fp32"

    def __init__(self, metadata: WeightsMetadata) -> None:
        self.metadata = metadata
        self.classes: tuple[str, ...] = tuple(metadata.model.classes)
        self.input_size: int = metadata.model.input_size

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """faces: uint8 [N, H, W] with H = W = ``input_size`` → float32 probabilities [N, C]."""
        faces = np.asarray(faces)
        if faces.ndim == 2:
            faces = faces[None]
        if faces.ndim != 3 or faces.shape[1:] != (self.input_size, self.input_size):
            raise ValueError(f"expected faces of shape [N, {self.input_size}, {self.input_size}], got {faces.shape}")
        if faces.dtype != np.uint8:
            raise ValueError(f"expected uint8 faces (0-255), got {faces.dtype}")
        if len(faces) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        pixels = faces.astype(np.float32)[:, None]
        return np.asarray(self._run(pixels), dtype=np.float32)

    @abstractmethod
    def _run(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: float32 [N, 1, H, W] in [0, 255] → probabilities [N, C]."""

    def describe(self) -> str:
        """One line: which backend runs at which precision, and why it was chosen when that was automatic."""
        name = f"{self.backend_name} {self.precision.upper()}"
        return f"{name} ({self.backend_reason})" if self.backend_reason else name

    def close(self) -> None:
        """Release backend resources (sessions, device buffers)."""

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
