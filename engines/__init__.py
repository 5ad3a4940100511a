"""Inference engines: one :class:`Predictor` interface over ONNX Runtime, TensorRT and torch.

``create_predictor(backend="auto")`` picks TensorRT on an NVIDIA GPU with TensorRT, else ONNX Runtime, else torch.
Every name below loads its module on first use, so importing the package costs nothing; ``tensorrt`` is imported only
when TensorRT is used, torch only by the torch backend and by compiling.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BACKENDS": ".names",
    "PRECISIONS": ".names",
    "BackendUnavailableError": ".artifacts",
    "EngineError": ".artifacts",
    "EngineMismatchError": ".artifacts",
    "Sidecar": ".artifacts",
    "TrtEnvironment": ".artifacts",
    "read_sidecar": ".artifacts",
    "create_predictor": ".factory",
    "Predictor": ".predictor",
    "OrtPredictor": ".onnxruntime_backend",
    "TorchPredictor": ".torch_backend",
    "TrtPredictor": ".tensorrt_backend",
    "compile_onnx": ".export",
    "convert_to_fp16": ".export",
    "ensure_onnx": ".onnx_store",
    "ensure_engine": ".tensorrt_backend",
    "run_benchmark": ".benchmark",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
