"""TensorRT backend: FP16 engine built from the ONNX with an optimisation profile for 1..N faces and a timing cache.

TensorRT is optional (``pip install '.[tensorrt]'``) and imported only when this backend is used. TensorRT 10 builds
the FP32 ONNX with ``BuilderFlag.FP16``; TensorRT 11 (no weak typing) builds the mixed-precision FP16 ONNX as a
strongly typed network. Inference runs on torch CUDA tensors through ``set_tensor_address`` / ``execute_async_v3``.
An engine is tied to its TensorRT version and GPU: a mismatching one is rebuilt (from the weights) or refused.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from leaf_fer.common import ConfigError, atomic_write_bytes, cache_root, one_line
from leaf_fer.train.weights import WeightsMetadata, default_weights_path, model_hash, read_metadata

from .artifacts import (
    INPUT_NAME,
    OUTPUT_NAME,
    BackendUnavailableError,
    EngineError,
    EngineMismatchError,
    Sidecar,
    TrtBuildInfo,
    TrtEnvironment,
    artifact_filename,
    check_compatible,
    load_artifact,
    model_cache_dir,
    write_artifact,
)
from .onnx_store import ensure_onnx
from .predictor import Predictor

log = logging.getLogger(__name__)

SUPPORTED_MAJOR_VERSIONS = (10, 11)
DEFAULT_MAX_BATCH = 16
DEFAULT_WORKSPACE_BYTES = 1 << 30
INSTALL_HINT = "pip install 'leaf-fer[tensorrt]'"


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`BackendUnavailableError` saying why not."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT is not installed ({INSTALL_HINT}): {exc}") from exc
    version = str(getattr(trt, "__version__", "unknown"))
    if _major(version) not in SUPPORTED_MAJOR_VERSIONS:
        raise BackendUnavailableError(f"TensorRT {version} is not supported (need 10.x or 11.x)")
    return trt


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here (None when it can); does not import tensorrt when it is absent or there is no GPU."""
    reasons = []
    if importlib.util.find_spec("tensorrt") is None:
        reasons.append(f"TensorRT is not installed ({INSTALL_HINT})")
    if not torch.cuda.is_available():
        reasons.append("no CUDA GPU (torch.cuda.is_available() is False)")
    if reasons:
        return "; ".join(reasons)
    try:
        import_tensorrt()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def detect_environment(trt: ModuleType | None = None) -> TrtEnvironment:
    """TensorRT version plus name and compute capability of the current CUDA device."""
    trt = trt if trt is not None else import_tensorrt()
    if not torch.cuda.is_available():
        raise BackendUnavailableError("no CUDA GPU (torch.cuda.is_available() is False)")
    device = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    return TrtEnvironment(str(trt.__version__), torch.cuda.get_device_name(device), f"{major}.{minor}")


@dataclass(frozen=True)
class BuildPlan:
    """How FP16 is obtained: weak typing (FP32 ONNX + BuilderFlag.FP16) or a strongly typed FP16 ONNX."""

    strongly_typed: bool
    fp16_onnx: bool


def build_plan(trt_version: str, has_fp16_flag: bool) -> BuildPlan:
    """TensorRT 10 with ``BuilderFlag.FP16`` → weak typing; TensorRT 11 (flag removed) → strongly typed FP16 ONNX."""
    if _major(trt_version) >= 11 or not has_fp16_flag:
        return BuildPlan(strongly_typed=True, fp16_onnx=True)
    return BuildPlan(strongly_typed=False, fp16_onnx=False)


@dataclass(frozen=True)
class EngineBuildRequest:
    """Everything a builder needs; the ONNX it parses is compiled into ``onnx_dir``."""

    weights: Path
    onnx_dir: Path
    env: TrtEnvironment
    input_size: int
    max_batch: int
    opt_batch: int
    timing_cache: Path
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES


EngineBuilder = Callable[[EngineBuildRequest], tuple[bytes, TrtBuildInfo]]


def build_serialized_engine(request: EngineBuildRequest) -> tuple[bytes, TrtBuildInfo]:
    """Build the FP16 engine with the TensorRT Python API; updates the timing cache file."""
    trt = import_tensorrt()
    plan = build_plan(str(trt.__version__), hasattr(trt.BuilderFlag, "FP16"))
    onnx_path = ensure_onnx(request.weights, precision="fp16" if plan.fp16_onnx else "fp32", output_dir=request.onnx_dir)
    logger = _trt_logger(trt)
    builder = trt.Builder(logger)
    strongly_typed_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(strongly_typed_flag) if plan.strongly_typed and strongly_typed_flag is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT cannot parse it ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_bytes)
    if not plan.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        _prefer_fp32_for_sensitive_layers(trt, network, config)
    size = request.input_size
    shapes = {name: [batch, 1, size, size] for name, batch in (("min", 1), ("opt", request.opt_batch), ("max", request.max_batch))}
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(profile)
    _attach_timing_cache(config, request.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    atomic_write_bytes(request.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    info = TrtBuildInfo(
        version=request.env.version,
        gpu_name=request.env.gpu_name,
        compute_capability=request.env.compute_capability,
        strongly_typed=plan.strongly_typed,
        source_onnx=onnx_path.name,
        profile=shapes,
    )
    return bytes(memoryview(serialized)), info


def _prefer_fp32_for_sensitive_layers(trt: ModuleType, network: Any, config: Any) -> None:
    """Weak typing (TensorRT 10): ask for FP32 softmax, reductions and normalisation layers."""
    sensitive = {getattr(trt.LayerType, name) for name in ("SOFTMAX", "REDUCE", "NORMALIZATION") if hasattr(trt.LayerType, name)}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in sensitive:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)


def _attach_timing_cache(config: Any, path: Path) -> None:
    """Reuse the timing cache file when it loads; start an empty one otherwise."""
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    log.warning("%s: timing cache unusable, starting a new one", path)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def timing_cache_path(cache_dir: str | os.PathLike[str] | None, env: TrtEnvironment) -> Path:
    """One timing cache per TensorRT version and GPU, shared by every model."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    slug = re.sub(r"[^a-z0-9.]+", "-", f"trt{env.version}-{env.gpu_name}-sm{env.compute_capability}".lower()).strip("-")
    return root / "tensorrt" / f"timing-{slug}.cache"


def engine_sidecar(metadata: WeightsMetadata, weights_hash: str, max_batch: int, info: TrtBuildInfo) -> Sidecar:
    config = metadata.model
    return Sidecar(
        target="tensorrt",
        precision="fp16",
        artifact="",
        model_hash=weights_hash,
        model=config.to_dict(),
        input={"name": INPUT_NAME, "shape": ["batch", 1, config.input_size, config.input_size], "dtype": "float32", "range": [0, 255]},
        output={"name": OUTPUT_NAME, "shape": ["batch", config.num_classes], "dtype": "float32", "kind": "softmax"},
        max_batch=max_batch,
        created_with={"tensorrt": info.version, "torch": torch.__version__},
        tensorrt=info,
    )


def ensure_engine(
    weights: str | os.PathLike[str] | None = None,
    *,
    env: TrtEnvironment,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    builder: EngineBuilder = build_serialized_engine,
) -> Path:
    """The engine for these weights on this TensorRT + GPU + max batch, built when missing, stale or corrupt."""
    if max_batch < 1:
        raise ConfigError(f"max batch must be at least 1, got {max_batch}")
    weights_path = Path(weights) if weights is not None else default_weights_path()
    weights_hash = model_hash(weights_path)
    metadata = read_metadata(weights_path)
    directory = Path(output_dir) if output_dir is not None else model_cache_dir(cache_dir, weights_hash)
    path = directory / artifact_filename(weights_hash, "tensorrt", model=metadata.model.to_dict(), max_batch=max_batch,
                                         env=env)
    if path.is_file() and not force:
        try:
            sidecar = load_artifact(path, target="tensorrt")
            check_compatible(sidecar, path, model_hash=weights_hash, env=env, max_batch=max_batch)
            return path
        except EngineError as exc:
            log.warning("rebuilding the TensorRT engine: %s", exc)
    opt = opt_batch if opt_batch is not None else min(4, max_batch)
    if not 1 <= opt <= max_batch:
        raise ConfigError(f"optimal batch {opt} must be within 1..{max_batch}")
    log.info("building the TensorRT engine for model %s on %s (batch 1..%d)", weights_hash, env.describe(), max_batch)
    request = EngineBuildRequest(
        weights=weights_path,
        onnx_dir=directory,
        env=env,
        input_size=metadata.model.input_size,
        max_batch=max_batch,
        opt_batch=opt,
        timing_cache=timing_cache_path(cache_dir, env),
    )
    payload, info = builder(request)
    return write_artifact(path, payload, engine_sidecar(metadata, weights_hash, max_batch, info))


def open_engine(
    engine_path: str | os.PathLike[str],
    *,
    env: TrtEnvironment,
    weights: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    builder: EngineBuilder = build_serialized_engine,
) -> Path:
    """A given engine checked against this machine: returned as is, rebuilt into the cache, or refused."""
    path = Path(engine_path)
    sidecar = load_artifact(path, target="tensorrt")
    expected_hash = model_hash(weights) if weights is not None else None
    try:
        check_compatible(sidecar, path, model_hash=expected_hash, env=env)
        return path
    except EngineMismatchError as exc:
        if not rebuild:
            raise
        weights_path = Path(weights) if weights is not None else default_weights_path()
        if model_hash(weights_path) != sidecar.model_hash:
            raise EngineMismatchError(
                f"{exc}; cannot rebuild it: the weights {weights_path.name} are model {model_hash(weights_path)}, "
                f"the engine was compiled from {sidecar.model_hash} (pass the matching --weights)"
            ) from exc
        log.warning("%s; rebuilding into the cache", exc)
    return ensure_engine(
        weights_path, env=env, max_batch=sidecar.max_batch or DEFAULT_MAX_BATCH, cache_dir=cache_dir, builder=builder
    )


class TrtPredictor(Predictor):
    """TensorRT FP16 engine on the current CUDA device; batches above the engine's max batch run in chunks."""

    backend_name = "tensorrt"

    def __init__(
        self,
        engine_path: str | os.PathLike[str] | None = None,
        *,
        weights: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        rebuild: bool = True,
    ) -> None:
        trt = import_tensorrt()
        env = detect_environment(trt)
        if engine_path is None:
            path = ensure_engine(weights, env=env, max_batch=max_batch, cache_dir=cache_dir)
        else:
            path = open_engine(engine_path, env=env, weights=weights, rebuild=rebuild, cache_dir=cache_dir)
        sidecar = load_artifact(path, target="tensorrt")
        super().__init__(WeightsMetadata(model=sidecar.model_config))
        self.sidecar, self.engine_path, self.environment = sidecar, path, env
        self.precision = sidecar.precision
        self.max_batch = int(sidecar.max_batch or max_batch)
        self._runtime = trt.Runtime(_trt_logger(trt))
        try:
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        except (RuntimeError, TypeError, ValueError) as exc:
            raise EngineError(f"{path}: TensorRT cannot deserialize it ({one_line(exc)}); recompile it") from exc
        if self._engine is None:
            raise EngineError(f"{path}: TensorRT cannot deserialize it (corrupt, or built by another TensorRT); recompile it")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"{path}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != [sidecar.input["name"]] or outputs != [sidecar.output["name"]]:
            raise EngineMismatchError(f"{path}: engine tensors {inputs} → {outputs} differ from its sidecar")
        self._input_name, self._output_name = inputs[0], outputs[0]
        device = torch.device("cuda", torch.cuda.current_device())
        size = self.input_size
        self._input = torch.empty(
            (self.max_batch, 1, size, size), dtype=_torch_dtype(trt, self._engine.get_tensor_dtype(inputs[0])), device=device
        )
        self._output = torch.empty(
            (self.max_batch, len(self.classes)), dtype=_torch_dtype(trt, self._engine.get_tensor_dtype(outputs[0])), device=device
        )
        self._stream = torch.cuda.Stream(device)
        self._context.set_tensor_address(self._input_name, self._input.data_ptr())
        self._context.set_tensor_address(self._output_name, self._output.data_ptr())

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        results = []
        size = self.input_size
        for start in range(0, len(pixels), self.max_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(pixels[start : start + self.max_batch]))
            count = len(chunk)
            with torch.cuda.stream(self._stream):
                self._input[:count].copy_(chunk)
                if not self._context.set_input_shape(self._input_name, (count, 1, size, size)):
                    raise EngineError(f"TensorRT rejected input shape ({count}, 1, {size}, {size})")
                if not self._context.execute_async_v3(self._stream.cuda_stream):
                    raise EngineError("TensorRT inference failed (execute_async_v3 returned False)")
                results.append(self._output[:count].float().cpu().numpy())
        return np.concatenate(results)

    def close(self) -> None:
        for name in ("_context", "_engine", "_runtime", "_input", "_output"):
            self.__dict__.pop(name, None)


@functools.cache
def _trt_logger(trt: ModuleType) -> Any:
    """One TensorRT logger per process (TensorRT warns when builders and runtimes get different ones)."""
    return trt.Logger(trt.Logger.WARNING)


def _torch_dtype(trt: ModuleType, dtype: Any) -> torch.dtype:
    mapping = {trt.float32: torch.float32, trt.float16: torch.float16}
    if dtype not in mapping:
        raise EngineError(f"unsupported engine I/O type {dtype}")
    return mapping[dtype]


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return -1
