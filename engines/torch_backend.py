"""PyTorch backend: the reference every other backend is checked against (needs ``pip install 'leaf-fer[train]'``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from leaf_fer.train.model import InferenceModel
from leaf_fer.train.weights import load_weights

from .predictor import Predictor


class TorchPredictor(Predictor):
    """PyTorch eager FP32 on CPU (or CUDA when asked): the reference every other backend is checked against."""

    backend_name = "torch"

    def __init__(self, weights: str | os.PathLike[str] | None = None, device: str = "cpu") -> None:
        net, metadata = load_weights(weights)
        super().__init__(metadata)
        self.weights_path = Path(weights) if weights else None
        self.device = torch.device(device)
        self.model = InferenceModel(net).to(self.device).eval()

    @torch.inference_mode()
    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(pixels).to(self.device)).float().cpu().numpy()
