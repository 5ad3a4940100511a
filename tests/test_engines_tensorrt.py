"""TensorRT backend: cache keys, sidecar mismatch → rebuild or refusal (run everywhere, no TensorRT needed), and the
real engine build + inference checked against torch FP32 (skipped, saying why, without TensorRT or a CUDA GPU)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _engines_data import accuracy, load_public_test, predict_all

from leaf_fer.engines import EngineError, EngineMismatchError, TorchPredictor
from leaf_fer.engines.artifacts import (
    TrtBuildInfo,
    TrtEnvironment,
    artifact_filename,
    cache_key,
    check_compatible,
    config_key,
    load_artifact,
    read_sidecar,
    sidecar_path,
)
from leaf_fer.engines.tensorrt_backend import (
    EngineBuildRequest,
    build_plan,
    ensure_engine,
    open_engine,
    tensorrt_unavailable_reason,
    timing_cache_path,
)
from leaf_fer.train.model import LeafNet, ModelConfig
from leaf_fer.train.weights import WeightsMetadata, default_weights_path, model_hash, save_weights

H100 = TrtEnvironment("10.9.0.34", "NVIDIA H100 80GB HBM3", "9.0")
A100 = TrtEnvironment("10.9.0.34", "NVIDIA A100-SXM4-40GB", "8.0")


class RecordingBuilder:
    """Test double for the TensorRT build step: records each request and returns a payload naming it."""

    def __init__(self) -> None:
        self.requests: list[EngineBuildRequest] = []

    def __call__(self, request: EngineBuildRequest) -> tuple[bytes, TrtBuildInfo]:
        self.requests.append(request)
        shape = lambda batch: [batch, 1, request.input_size, request.input_size]  # noqa: E731
        info = TrtBuildInfo(
            version=request.env.version,
            gpu_name=request.env.gpu_name,
            compute_capability=request.env.compute_capability,
            strongly_typed=build_plan(request.env.version, True).strongly_typed,
            source_onnx="model.onnx",
            profile={"min": shape(1), "opt": shape(request.opt_batch), "max": shape(request.max_batch)},
        )
        return f"engine:{request.env.gpu_name}:{request.max_batch}:{len(self.requests)}".encode(), info


def test_cache_key_changes_with_every_component() -> None:
    base = cache_key("abcd", "tensorrt", max_batch=16, env=H100)
    assert base == cache_key("abcd", "tensorrt", max_batch=16, env=H100)
    variants = [
        cache_key("abce", "tensorrt", max_batch=16, env=H100),
        cache_key("abcd", "tensorrt", max_batch=8, env=H100),
        cache_key("abcd", "tensorrt", max_batch=16, env=replace(H100, version="11.0.0")),
        cache_key("abcd", "tensorrt", max_batch=16, env=replace(H100, gpu_name="NVIDIA L4")),
        cache_key("abcd", "tensorrt", max_batch=16, env=replace(H100, compute_capability="8.9")),
        cache_key("abcd", "onnx"),
    ]
    assert len({base, *variants}) == len(variants) + 1
    model = {"classes": ["a", "b"]}
    name = artifact_filename("abcd", "tensorrt", model=model, max_batch=16, env=H100)
    assert name.startswith(f"leaf_fer-abcd-{config_key(model)}-trt10.9.0.34-nvidia-h100-80gb-hbm3-b16-")
    assert name.endswith(f"{base}.engine")
    reversed_classes = artifact_filename("abcd", "tensorrt", model={"classes": ["b", "a"]}, max_batch=16, env=H100)
    assert reversed_classes != name, "an edit of the weights' JSON metadata is another engine"


def test_build_plan_uses_the_fp16_flag_on_trt10_and_strong_typing_on_trt11() -> None:
    assert build_plan("10.9.0", has_fp16_flag=True) == build_plan("10.0.1", has_fp16_flag=True)
    trt10 = build_plan("10.9.0", has_fp16_flag=True)
    assert (trt10.strongly_typed, trt10.fp16_onnx) == (False, False)
    trt11 = build_plan("11.2.0", has_fp16_flag=False)
    assert (trt11.strongly_typed, trt11.fp16_onnx) == (True, True)
    assert build_plan("10.14.0", has_fp16_flag=False).strongly_typed


def test_engine_is_built_once_per_key_and_rebuilt_when_corrupt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    builder = RecordingBuilder()
    first = ensure_engine(None, env=H100, max_batch=16, cache_dir=tmp_path, builder=builder)
    assert ensure_engine(None, env=H100, max_batch=16, cache_dir=tmp_path, builder=builder) == first
    assert len(builder.requests) == 1
    request = builder.requests[0]
    assert (request.max_batch, request.opt_batch, request.input_size) == (16, 4, 48)
    assert request.timing_cache == timing_cache_path(tmp_path, H100)
    assert request.timing_cache.parent == tmp_path / "tensorrt" and "h100" in request.timing_cache.name

    sidecar = read_sidecar(first)
    assert (sidecar.target, sidecar.precision, sidecar.max_batch) == ("tensorrt", "fp16", 16)
    assert sidecar.model_hash == model_hash(default_weights_path()) and len(sidecar.classes) == 8
    assert sidecar.tensorrt is not None and sidecar.tensorrt.environment == H100
    assert sidecar.tensorrt.profile == {"min": [1, 1, 48, 48], "opt": [4, 1, 48, 48], "max": [16, 1, 48, 48]}
    raw = json.loads(sidecar_path(first).read_text())
    assert {"version", "gpu_name", "compute_capability", "profile"} <= set(raw["tensorrt"])

    other_gpu = ensure_engine(None, env=A100, max_batch=16, cache_dir=tmp_path, builder=builder)
    bigger = ensure_engine(None, env=H100, max_batch=32, cache_dir=tmp_path, builder=builder)
    assert len({first, other_gpu, bigger}) == 3 and len(builder.requests) == 3

    first.write_bytes(b"bit rot")
    with caplog.at_level(logging.WARNING, logger="leaf_fer.engines.tensorrt_backend"):
        assert ensure_engine(None, env=H100, max_batch=16, cache_dir=tmp_path, builder=builder) == first
    assert len(builder.requests) == 4 and "checksum" in caplog.text
    assert load_artifact(first, target="tensorrt").sha256 == hashlib.sha256(first.read_bytes()).hexdigest()


def test_engine_for_another_gpu_is_refused_or_rebuilt(tmp_path: Path) -> None:
    builder = RecordingBuilder()
    built = ensure_engine(None, env=A100, max_batch=8, output_dir=tmp_path / "shipped", cache_dir=tmp_path, builder=builder)
    assert built.parent == tmp_path / "shipped"

    with pytest.raises(EngineMismatchError) as refused:
        open_engine(built, env=H100, rebuild=False, cache_dir=tmp_path, builder=builder)
    message = str(refused.value)
    assert "\n" not in message and "NVIDIA A100-SXM4-40GB (compute 8.0)" in message
    assert "NVIDIA H100 80GB HBM3 (compute 9.0)" in message and "leaf-fer compile --target tensorrt" in message
    assert len(builder.requests) == 1

    rebuilt = open_engine(built, env=H100, rebuild=True, cache_dir=tmp_path, builder=builder)
    assert rebuilt != built and len(builder.requests) == 2
    sidecar = read_sidecar(rebuilt)
    assert sidecar.tensorrt is not None and sidecar.tensorrt.environment == H100 and sidecar.max_batch == 8
    assert open_engine(built, env=A100, cache_dir=tmp_path, builder=builder) == built

    newer_trt = replace(A100, version="10.12.0")
    with pytest.raises(EngineMismatchError, match="TensorRT 10.9.0.34 on .* this machine has TensorRT 10.12.0"):
        check_compatible(read_sidecar(built), built, env=newer_trt)


def test_engine_of_other_weights_is_not_rebuilt_from_the_wrong_model(tmp_path: Path) -> None:
    net = LeafNet(ModelConfig(backbone="resnet-xs"))
    other = save_weights(net, tmp_path / "xs.safetensors", WeightsMetadata(model=net.config))
    builder = RecordingBuilder()
    built = ensure_engine(other, env=A100, max_batch=4, output_dir=tmp_path / "shipped", cache_dir=tmp_path, builder=builder)
    with pytest.raises(EngineMismatchError) as wrong_model:
        open_engine(built, env=H100, rebuild=True, cache_dir=tmp_path, builder=builder)
    assert "cannot rebuild" in str(wrong_model.value) and "\n" not in str(wrong_model.value)
    with pytest.raises(EngineMismatchError, match="compiled from model"):
        open_engine(built, env=A100, weights=default_weights_path(), cache_dir=tmp_path, builder=builder)
    assert open_engine(built, env=H100, weights=other, rebuild=True, cache_dir=tmp_path, builder=builder) != built
    assert len(builder.requests) == 2


@pytest.fixture(scope="module")
def tensorrt_ready() -> None:
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def trt_cache(tensorrt_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trt-cache")


def test_tensorrt_engine_agrees_with_torch_fp32(trt_cache: Path) -> None:
    from leaf_fer.engines.tensorrt_backend import TrtPredictor

    images, labels = load_public_test()
    predictor = TrtPredictor(cache_dir=trt_cache, max_batch=16)
    assert predictor.backend_name == "tensorrt" and predictor.max_batch == 16
    reference = predict_all(TorchPredictor(), images)
    probs = np.concatenate([predictor.predict(images[i : i + 100]) for i in range(0, len(images), 100)])
    assert probs.shape == reference.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    assert np.abs(probs - reference).max() < 0.05
    assert (probs.argmax(1) == reference.argmax(1)).mean() >= 0.995
    assert abs(accuracy(probs, labels) - accuracy(reference, labels)) <= 0.003
    np.testing.assert_allclose(predictor.predict(images[:1]), probs[:1], atol=2e-3)

    sidecar = predictor.sidecar
    assert sidecar.tensorrt is not None and sidecar.tensorrt.environment == predictor.environment
    assert sidecar.tensorrt.profile["max"] == [16, 1, 48, 48]
    timing_cache = timing_cache_path(trt_cache, predictor.environment)
    assert timing_cache.is_file() and timing_cache.stat().st_size > 0
    built_at = predictor.engine_path.stat().st_mtime_ns
    again = TrtPredictor(cache_dir=trt_cache, max_batch=16)
    assert again.engine_path == predictor.engine_path and again.engine_path.stat().st_mtime_ns == built_at


def test_tensorrt_refuses_corrupt_and_foreign_engines(trt_cache: Path, tmp_path: Path) -> None:
    from leaf_fer.engines.tensorrt_backend import TrtPredictor, detect_environment

    engine = ensure_engine(None, env=detect_environment(), max_batch=16, cache_dir=trt_cache)
    corrupt = tmp_path / "corrupt" / engine.name
    corrupt.parent.mkdir()
    payload = engine.read_bytes()[: engine.stat().st_size // 2]
    corrupt.write_bytes(payload)
    data = json.loads(sidecar_path(engine).read_text())
    data["sha256"] = hashlib.sha256(payload).hexdigest()
    sidecar_path(corrupt).write_text(json.dumps(data))
    with pytest.raises(EngineError, match="cannot deserialize"):
        TrtPredictor(corrupt, rebuild=False)

    foreign = tmp_path / "foreign" / engine.name
    foreign.parent.mkdir()
    shutil.copy(engine, foreign)
    data = json.loads(sidecar_path(engine).read_text())
    data["tensorrt"]["gpu_name"] = "Some Other GPU"
    sidecar_path(foreign).write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match="Some Other GPU"):
        TrtPredictor(foreign, rebuild=False)
    rebuilt = TrtPredictor(foreign, rebuild=True, cache_dir=trt_cache)
    assert rebuilt.engine_path == engine
