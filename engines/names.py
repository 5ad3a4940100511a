"""The backend and precision names, defined once; importing this module loads nothing heavy."""

from __future__ import annotations

BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "torch")
"""What ``--backend`` accepts: ``auto`` picks TensorRT on an NVIDIA GPU with TensorRT, else ONNX Runtime, else torch."""
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "int8")
"""What ``--precision`` accepts: ``auto`` is each backend's own: FP16 engines on TensorRT, INT8 on ONNX Runtime on the
CPU (about twice as fast per face as FP32, with FP32's top-1 on 98-99% of faces from other datasets:
``benchmarks/precision_fidelity.py``), FP32 on ONNX Runtime with a CUDA provider and on torch."""
SUPPORTED: dict[str, tuple[str, ...]] = {"tensorrt": ("fp16",), "onnxruntime": ("fp32", "fp16", "int8"), "torch": ("fp32",)}
"""The precisions each backend runs."""

BENCH_BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "onnxruntime-fp16", "onnxruntime-int8", "tensorrt")
"""What ``leaf-fer bench-engines`` and ``leaf-fer bench`` time: each backend, ONNX Runtime at each of its precisions
(plain ``onnxruntime`` is FP32)."""
DEFAULT_BATCHES: tuple[int, ...] = (1, 4, 16)
"""``bench-engines``' default batch sizes."""
REQUIRED_ORT_SPEEDUP = 1.5
"""``bench-engines`` fails unless ONNX Runtime is at least this much faster than torch eager at batch 1."""


def bench_backend(name: str) -> tuple[str, str]:
    """A :data:`BENCH_BACKENDS` name → (backend, precision): ``onnxruntime-int8`` → (onnxruntime, int8),
    ``onnxruntime`` → (onnxruntime, fp32), any other backend at its own precision (auto)."""
    backend, _, precision = name.partition("-")
    return backend, precision or ("fp32" if backend == "onnxruntime" else "auto")
