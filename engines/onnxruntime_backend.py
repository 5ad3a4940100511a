"""ONNX Runtime backend: runs a compiled .onnx (FP32, FP16 or INT8) checked against its sidecar."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from leaf_fer.common import ConfigError, one_line
from leaf_fer.train.weights import WeightsMetadata, model_hash, read_metadata

from .artifacts import ONNX_TARGETS, EngineError, EngineMismatchError, check_compatible, load_artifact
from .onnx_store import ensure_onnx
from .predictor import Predictor

ORT_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    RuntimeError,
)


def default_threads() -> int:
    """``$LEAF_FER_ORT_THREADS``, else half the cores (at most 4): the face crops are tiny and latency-bound."""
    configured = os.environ.get("LEAF_FER_ORT_THREADS")
    if configured:
        try:
            threads = int(configured)
        except ValueError as exc:
            raise ConfigError(f"LEAF_FER_ORT_THREADS must be a whole number, got {configured!r}") from exc
        if threads < 1:
            raise ConfigError(f"LEAF_FER_ORT_THREADS must be at least 1, got {threads}")
        return threads
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class OrtPredictor(Predictor):
    """ONNX Runtime with graph optimisation level ALL; compiles the ONNX of ``precision`` into the cache when given no
    artifact."""

    backend_name = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        weights: str | os.PathLike[str] | None = None,
        precision: str = "fp32",
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        if model_path is None:
            model_path = ensure_onnx(weights, precision=precision, cache_dir=cache_dir)
        path = Path(model_path)
        sidecar = load_artifact(path)
        if sidecar.target not in ONNX_TARGETS.values():
            raise EngineMismatchError(f"{path}: a {sidecar.target!r} artifact cannot run on onnxruntime")
        if weights is not None:
            check_compatible(sidecar, path, model_hash=model_hash(weights), classes=read_metadata(weights).model.classes)
        super().__init__(WeightsMetadata(model=sidecar.model_config))
        self.sidecar = sidecar
        self.model_path = path
        self.precision = sidecar.precision
        self.threads = threads if threads is not None else default_threads()
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        available = ort.get_available_providers()
        chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self._session = ort.InferenceSession(str(path), options, providers=chosen)
        except ORT_LOAD_ERRORS as exc:
            raise EngineError(f"{path}: onnxruntime cannot load it ({one_line(exc)[:300]})") from exc
        self.providers = self._session.get_providers()
        self._check_io(path)

    def _check_io(self, path: Path) -> None:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        expected_in, expected_out = self.sidecar.input, self.sidecar.output
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineMismatchError(f"{path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        if inputs[0].name != expected_in["name"] or outputs[0].name != expected_out["name"]:
            raise EngineMismatchError(
                f"{path}: tensors {inputs[0].name!r} → {outputs[0].name!r} differ from the sidecar's "
                f"{expected_in['name']!r} → {expected_out['name']!r}"
            )
        if list(inputs[0].shape[1:]) != list(expected_in["shape"][1:]):
            raise EngineMismatchError(f"{path}: input shape {inputs[0].shape} differs from the sidecar's {expected_in['shape']}")
        if outputs[0].shape[-1] != len(self.classes):
            raise EngineMismatchError(f"{path}: outputs {outputs[0].shape[-1]} classes, its sidecar names {len(self.classes)}")
        embedded = self._session.get_modelmeta().custom_metadata_map.get("leaf_fer.model_hash")
        if embedded is not None and embedded != self.sidecar.model_hash:
            raise EngineMismatchError(f"{path}: holds model {embedded}, its sidecar says {self.sidecar.model_hash}")
        self._input, self._output = inputs[0].name, outputs[0].name

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def close(self) -> None:
        self.__dict__.pop("_session", None)
