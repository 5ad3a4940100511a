"""Pick and build a predictor: ``auto`` takes TensorRT on an NVIDIA GPU with TensorRT, else ONNX Runtime, else torch."""

from __future__ import annotations

import importlib
import logging
import os

import torch

from .artifacts import BackendUnavailableError
from .predictor import Predictor, TorchPredictor

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "torch")
PathArg = str | os.PathLike[str] | None


def onnxruntime_unavailable_reason() -> str | None:
    """Why ONNX Runtime cannot be used (None when it can)."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError as exc:
        return f"onnxruntime is not importable ({exc})"
    return None


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot be used (None when it can); never imports tensorrt where it is absent."""
    from .tensorrt_backend import tensorrt_unavailable_reason as probe

    return probe()


def create_predictor(
    weights: PathArg = None,
    backend: str = "auto",
    cache_dir: PathArg = None,
    *,
    artifact: PathArg = None,
    fp16: bool = False,
    max_batch: int = 16,
    threads: int | None = None,
) -> Predictor:
    """A :class:`Predictor` for ``backend``; its ``backend_name`` says which ran and ``backend_reason`` why.

    ``artifact`` is a compiled .onnx (onnxruntime) or .engine (tensorrt); without it the backend compiles from the
    weights into the cache once and reuses the result. ``fp16`` selects the FP16 ONNX for onnxruntime.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "tensorrt":
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"TensorRT backend unavailable: {reason}")
        return _tensorrt(weights, cache_dir, artifact, max_batch, "requested")
    if backend == "onnxruntime":
        reason = onnxruntime_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"ONNX Runtime backend unavailable: {reason}")
        return _onnxruntime(weights, cache_dir, artifact, fp16, threads, "requested")
    if backend == "torch":
        return _torch(weights, threads, "requested")

    skipped: list[str] = []
    reason = tensorrt_unavailable_reason()
    if reason is None:
        return _tensorrt(weights, cache_dir, artifact, max_batch, "auto: NVIDIA GPU with TensorRT")
    skipped.append(f"TensorRT skipped: {reason}")
    reason = onnxruntime_unavailable_reason()
    if reason is None:
        onnx_artifact = artifact if artifact is not None and str(artifact).endswith(".onnx") else None
        return _onnxruntime(weights, cache_dir, onnx_artifact, fp16, threads, "auto; " + "; ".join(skipped))
    skipped.append(f"ONNX Runtime skipped: {reason}")
    return _torch(weights, threads, "auto; " + "; ".join(skipped))


def _announce(predictor: Predictor, reason: str) -> Predictor:
    predictor.backend_reason = reason
    log.info("inference backend: %s", predictor.describe())
    return predictor


def _tensorrt(weights: PathArg, cache_dir: PathArg, artifact: PathArg, max_batch: int, reason: str) -> Predictor:
    from .tensorrt_backend import TrtPredictor

    return _announce(TrtPredictor(artifact, weights=weights, cache_dir=cache_dir, max_batch=max_batch), reason)


def _onnxruntime(
    weights: PathArg, cache_dir: PathArg, artifact: PathArg, fp16: bool, threads: int | None, reason: str
) -> Predictor:
    from .onnxruntime_backend import OrtPredictor

    predictor = OrtPredictor(artifact, weights=weights, fp16=fp16, cache_dir=cache_dir, threads=threads)
    return _announce(predictor, reason)


def _torch(weights: PathArg, threads: int | None, reason: str) -> Predictor:
    if threads is not None:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return _announce(TorchPredictor(weights, device=device), reason)


__all__ = ["BACKENDS", "create_predictor", "onnxruntime_unavailable_reason", "tensorrt_unavailable_reason"]
