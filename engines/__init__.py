"""Inference engines: one :class:`Predictor` interface over torch, ONNX Runtime and TensorRT.

``create_predictor(backend="auto")`` picks TensorRT on an NVIDIA GPU with TensorRT, else ONNX Runtime, else torch.
Backend modules (and onnxruntime / onnx) load on first use; ``tensorrt`` is imported only when TensorRT is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .artifacts import (
    BackendUnavailableError,
    EngineError,
    EngineMismatchError,
    Sidecar,
    TrtEnvironment,
    default_cache_dir,
    read_sidecar,
)
from .factory import BACKENDS, PRECISIONS, create_predictor
from .predictor import Predictor, TorchPredictor

_LAZY = {
    "OrtPredictor": ".onnxruntime_backend",
    "TrtPredictor": ".tensorrt_backend",
    "compile_onnx": ".export",
    "convert_to_fp16": ".export",
    "ferplus_accuracy": ".quantize",
    "ensure_onnx": ".export",
    "ensure_engine": ".tensorrt_backend",
    "run_benchmark": ".benchmark",
}

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendUnavailableError",
    "EngineError",
    "EngineMismatchError",
    "Predictor",
    "Sidecar",
    "TorchPredictor",
    "TrtEnvironment",
    "create_predictor",
    "default_cache_dir",
    "read_sidecar",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
