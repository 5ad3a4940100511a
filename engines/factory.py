"""Pick and build a predictor: ``auto`` takes TensorRT on an NVIDIA GPU with TensorRT, else ONNX Runtime, else torch
(among the backends that run the precision asked for)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os

from leaf_fer.common import ConfigError

from .artifacts import BackendUnavailableError
from .names import BACKENDS, PRECISIONS, SUPPORTED
from .predictor import Predictor

log = logging.getLogger(__name__)

PathArg = str | os.PathLike[str] | None


def onnxruntime_unavailable_reason() -> str | None:
    """Why ONNX Runtime cannot be used (None when it can)."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError as exc:
        return f"onnxruntime is not importable ({exc})"
    return None


def onnxruntime_auto_precision() -> str:
    """What ``auto`` runs on ONNX Runtime: FP32 where it has a CUDA provider, else INT8 (see :data:`PRECISIONS`)."""
    import onnxruntime

    return "fp32" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "int8"


def torch_unavailable_reason() -> str | None:
    """Why the torch backend cannot be used (None when it can): torch comes with ``leaf-fer[train]``."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install 'leaf-fer[train]')"
    return None


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot be used (None when it can); never imports tensorrt (or torch) where it is absent."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'leaf-fer[tensorrt]')"
    if importlib.util.find_spec("torch") is None:
        return "TensorRT is installed but torch, which holds its GPU buffers, is not (pip install 'leaf-fer[tensorrt]')"
    from .tensorrt_backend import tensorrt_unavailable_reason as probe

    return probe()


def create_predictor(
    weights: PathArg = None,
    backend: str = "auto",
    cache_dir: PathArg = None,
    *,
    artifact: PathArg = None,
    precision: str = "auto",
    max_batch: int = 16,
    threads: int | None = None,
) -> Predictor:
    """A :class:`Predictor` for ``backend``; its ``backend_name`` says which ran and ``backend_reason`` why.

    ``artifact`` is a compiled .onnx (onnxruntime) or .engine (tensorrt), which ``auto`` runs on its own backend
    and a precision other than ``auto`` must match; without it the backend compiles from the weights into the cache
    once and reuses the result. ``precision``: ``auto`` (each backend's own: FP16 engines on
    TensorRT, INT8 on ONNX Runtime on the CPU, FP32 on ONNX Runtime with CUDA and on torch) or one of
    :data:`SUPPORTED`'s; ``auto`` as backend then picks the first backend that runs it (``int8`` and ``fp32``: ONNX
    Runtime).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if artifact is not None:
        backend = _artifact_backend(artifact, backend, precision)
    if backend != "auto" and precision != "auto" and precision not in SUPPORTED[backend]:
        raise BackendUnavailableError(
            f"the {backend} backend runs {' or '.join(SUPPORTED[backend])}, not {precision}; "
            f"{precision} runs on {', '.join(b for b, p in SUPPORTED.items() if precision in p)}"
        )
    check_backend(backend)
    if backend == "tensorrt":
        return _tensorrt(weights, cache_dir, artifact, max_batch, "requested")
    if backend == "onnxruntime":
        return _onnxruntime(weights, cache_dir, artifact, precision, threads, "requested")
    if backend == "torch":
        return _torch(weights, threads, "requested")

    skipped: list[str] = []
    reason = tensorrt_unavailable_reason()
    if reason is None and precision in ("auto", "fp16"):
        return _tensorrt(weights, cache_dir, artifact, max_batch, "auto: NVIDIA GPU with TensorRT")
    skipped.append(f"TensorRT skipped: {reason or f'it builds FP16 engines, {precision} asked'}")
    reason = onnxruntime_unavailable_reason()
    if reason is None:
        return _onnxruntime(weights, cache_dir, None, precision, threads, "auto; " + "; ".join(skipped))
    skipped.append(f"ONNX Runtime skipped: {reason}")
    if precision not in ("auto", "fp32"):
        raise BackendUnavailableError(f"no backend runs {precision} here: " + "; ".join(skipped))
    reason = torch_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError("no backend runs here: " + "; ".join([*skipped, f"torch skipped: {reason}"]))
    return _torch(weights, threads, "auto; " + "; ".join(skipped))


def _artifact_backend(artifact: PathArg, backend: str, precision: str) -> str:
    """The backend that runs ``artifact`` (``auto``: the artifact's own); a precision other than ``auto`` must be
    the artifact's."""
    from .artifacts import ONNX_TARGETS, load_artifact

    sidecar = load_artifact(artifact)
    own = "onnxruntime" if sidecar.target in ONNX_TARGETS.values() else "tensorrt"
    if backend not in ("auto", own):
        raise ConfigError(f"{artifact}: {sidecar.target} artifacts run on {own}, not on {backend}")
    if precision not in ("auto", sidecar.precision):
        raise ConfigError(f"{artifact}: its precision is {sidecar.precision}, not {precision}; leave the precision on auto")
    return own


def check_backend(backend: str) -> None:
    """Raise :class:`BackendUnavailableError` when ``backend`` cannot run here (``auto`` always can); ``annotate``
    calls it before its inputs start, so a run over many inputs fails with one line, not one per input."""
    if backend == "auto":
        return
    probe, name = {"tensorrt": (tensorrt_unavailable_reason, "TensorRT"),
                   "onnxruntime": (onnxruntime_unavailable_reason, "ONNX Runtime"),
                   "torch": (torch_unavailable_reason, "torch")}[backend]
    reason = probe()
    if reason is not None:
        raise BackendUnavailableError(f"{name} backend unavailable: {reason}")


def _announce(predictor: Predictor, reason: str) -> Predictor:
    predictor.backend_reason = reason
    log.info("inference backend: %s", predictor.describe())
    return predictor


def _tensorrt(weights: PathArg, cache_dir: PathArg, artifact: PathArg, max_batch: int, reason: str) -> Predictor:
    from .tensorrt_backend import TrtPredictor

    return _announce(TrtPredictor(artifact, weights=weights, cache_dir=cache_dir, max_batch=max_batch), reason)


def _onnxruntime(
    weights: PathArg, cache_dir: PathArg, artifact: PathArg, precision: str, threads: int | None, reason: str
) -> Predictor:
    from .onnxruntime_backend import OrtPredictor

    if precision == "auto":
        precision = onnxruntime_auto_precision()
    predictor = OrtPredictor(artifact, weights=weights, precision=precision, cache_dir=cache_dir, threads=threads)
    return _announce(predictor, reason)


def _torch(weights: PathArg, threads: int | None, reason: str) -> Predictor:
    import torch

    from .torch_backend import TorchPredictor

    if threads is not None:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return _announce(TorchPredictor(weights, device=device), reason)


__all__ = ["check_backend", "create_predictor", "onnxruntime_unavailable_reason", "tensorrt_unavailable_reason", "torch_unavailable_reason"]
