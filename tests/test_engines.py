"""engines/: ONNX export (FP32 + FP16), ONNX Runtime backend, artifacts and sidecars, `auto`, CLI, benchmark."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from _engines_data import accuracy, load_public_test, predict_all
from onnx import TensorProto

from leaf_fer.cli import main as cli_main
from leaf_fer.common import ConfigError
from leaf_fer.engines import (
    BackendUnavailableError,
    EngineError,
    EngineMismatchError,
    OrtPredictor,
    TorchPredictor,
    create_predictor,
    factory,
)
from leaf_fer.engines.artifacts import read_sidecar, sidecar_path
from leaf_fer.engines.benchmark import markdown_table, run_benchmark, summarize, write_report
from leaf_fer.engines.factory import tensorrt_unavailable_reason
from leaf_fer.engines.names import BENCH_BACKENDS, bench_backend
from leaf_fer.engines.onnx_store import ensure_onnx, shipped_onnx
from leaf_fer.realtime.evaluate import evaluate_npz
from leaf_fer.train.model import LeafNet, ModelConfig
from leaf_fer.train.weights import WeightsMetadata, default_weights_path, model_hash, save_weights

SENSITIVE_OPS = {"Softmax", "ReduceMean", "ReduceSum", "ReduceL2", "Div", "Clip"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def compiled_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped weights without the ONNX shipped beside them, so the backends compile their own."""
    folder = tmp_path_factory.mktemp("weights")
    shutil.copy(default_weights_path(), folder)
    shutil.copy(default_weights_path().with_suffix(".json"), folder)
    return folder / default_weights_path().name


@pytest.fixture(scope="module")
def onnx_paths(cache_dir: Path, compiled_weights: Path) -> dict[str, Path]:
    """FP32 and FP16 ONNX of the shipped weights, exported once for the module."""
    return {
        "fp32": ensure_onnx(compiled_weights, cache_dir=cache_dir),
        "fp16": ensure_onnx(compiled_weights, precision="fp16", cache_dir=cache_dir),
    }


@pytest.fixture(scope="module")
def public_test() -> tuple[np.ndarray, np.ndarray]:
    return load_public_test()


@pytest.fixture(scope="module")
def torch_probs(public_test: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return predict_all(TorchPredictor(), public_test[0])


@pytest.fixture(scope="module")
def ort_fp32_probs(onnx_paths: dict[str, Path], public_test: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return predict_all(OrtPredictor(onnx_paths["fp32"], threads=1), public_test[0])


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def test_exported_graph_is_checked_and_has_a_dynamic_batch_axis(onnx_paths: dict[str, Path]) -> None:
    model = onnx.load(str(onnx_paths["fp32"]))
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    in_dims = graph_input.type.tensor_type.shape.dim
    out_dims = graph_output.type.tensor_type.shape.dim
    assert (graph_input.name, graph_output.name) == ("pixels", "probs")
    assert in_dims[0].dim_param == "batch" and [d.dim_value for d in in_dims[1:]] == [1, 48, 48]
    assert out_dims[0].dim_param == "batch" and out_dims[1].dim_value == 8
    props = {p.key: p.value for p in model.metadata_props}
    assert props["leaf_fer.model_hash"] == model_hash(default_weights_path())
    sidecar = read_sidecar(onnx_paths["fp32"])
    assert (sidecar.target, sidecar.precision, sidecar.model_hash) == ("onnx", "fp32", props["leaf_fer.model_hash"])
    assert sidecar.input["shape"] == ["batch", 1, 48, 48] and sidecar.output["shape"] == ["batch", 8]


def test_onnx_predictor_runs_any_batch_size_consistently(
    onnx_paths: dict[str, Path], public_test: tuple[np.ndarray, np.ndarray]
) -> None:
    faces = public_test[0][:33]
    predictor = OrtPredictor(onnx_paths["fp32"], threads=1)
    together = predictor.predict(faces)
    one_by_one = np.concatenate([predictor.predict(face) for face in faces[:5]])
    assert together.shape == (33, 8) and together.dtype == np.float32
    np.testing.assert_allclose(together.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(one_by_one, together[:5], atol=1e-5)
    assert predictor.predict(faces[:0]).shape == (0, 8)
    with pytest.raises(ValueError, match=r"\[N, 48, 48\]"):
        predictor.predict(np.zeros((2, 32, 32), np.uint8))


def test_fp16_graph_keeps_sensitive_ops_and_io_in_fp32(onnx_paths: dict[str, Path]) -> None:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_paths["fp16"])), strict_mode=True)
    types = {init.name: init.data_type for init in model.graph.initializer}
    for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in (*model.graph.input, *model.graph.output))
    sensitive = [node for node in model.graph.node if node.op_type in SENSITIVE_OPS]
    assert {node.op_type for node in sensitive} >= {"Softmax", "ReduceL2", "Div"}
    for node in sensitive:
        float_inputs = [types[name] for name in node.input if types.get(name) in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        assert float_inputs and all(t == TensorProto.FLOAT for t in float_inputs), node.op_type
    convs = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm")]
    assert convs and all(types[node.input[1]] == TensorProto.FLOAT16 for node in convs)
    assert read_sidecar(onnx_paths["fp16"]).precision == "fp16"
    assert onnx_paths["fp16"].stat().st_size < 0.6 * onnx_paths["fp32"].stat().st_size


def test_onnxruntime_fp32_agrees_with_torch_on_the_public_test_set(
    torch_probs: np.ndarray, ort_fp32_probs: np.ndarray, public_test: tuple[np.ndarray, np.ndarray]
) -> None:
    assert len(torch_probs) == len(public_test[0]) == 3589
    assert np.abs(ort_fp32_probs - torch_probs).max() < 1e-4
    assert (ort_fp32_probs.argmax(1) == torch_probs.argmax(1)).mean() >= 0.999


def test_fp16_onnx_matches_fp32_top1_and_accuracy(
    onnx_paths: dict[str, Path],
    torch_probs: np.ndarray,
    ort_fp32_probs: np.ndarray,
    public_test: tuple[np.ndarray, np.ndarray],
) -> None:
    images, labels = public_test
    fp16_probs = predict_all(OrtPredictor(onnx_paths["fp16"], threads=1), images)
    assert (labels >= 0).sum() > 2500
    agreement = (fp16_probs.argmax(1) == ort_fp32_probs.argmax(1)).mean()
    assert agreement >= 0.995, f"FP16/FP32 top-1 agreement {agreement:.4f}"
    gap = abs(accuracy(fp16_probs, labels) - accuracy(ort_fp32_probs, labels))
    assert gap <= 0.003, f"FP16 accuracy differs from FP32 by {100 * gap:.2f} points"
    assert np.abs(fp16_probs - torch_probs).max() < 0.05
    assert (fp16_probs.argmax(1) == torch_probs.argmax(1)).mean() >= 0.995


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_the_shipped_model_has_its_onnx_beside_it_and_it_matches_a_fresh_compile(
    precision: str, onnx_paths: dict[str, Path], public_test: tuple[np.ndarray, np.ndarray], ort_fp32_probs: np.ndarray,
    tmp_path: Path,
) -> None:
    shipped = shipped_onnx(None, precision)
    assert shipped is not None, f"no {precision} ONNX beside the shipped weights: leaf-fer compile --target ... --output"
    assert shipped.parent == default_weights_path().parent
    assert ensure_onnx(None, precision=precision, cache_dir=tmp_path / "empty") == shipped
    assert read_sidecar(shipped).model_hash == model_hash(default_weights_path())
    probs = predict_all(OrtPredictor(shipped, weights=default_weights_path(), threads=1), public_test[0][:500])
    assert (probs.argmax(1) == ort_fp32_probs[:500].argmax(1)).mean() >= (0.99 if precision != "int8" else 0.97)
    edited = tmp_path / default_weights_path().name
    shutil.copy(default_weights_path(), edited)
    metadata = json.loads(default_weights_path().with_suffix(".json").read_text())
    metadata["model"]["classes"] = metadata["classes"] = metadata["model"]["classes"][::-1]
    edited.with_suffix(".json").write_text(json.dumps(metadata))
    shutil.copy(shipped, tmp_path / shipped.name)
    shutil.copy(sidecar_path(shipped), sidecar_path(tmp_path / shipped.name))
    assert shipped_onnx(edited, precision) is None, "a shipped ONNX of other metadata is not used"


def test_cached_onnx_is_reused_and_a_corrupt_cache_entry_is_recompiled(
    onnx_paths: dict[str, Path], compiled_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = onnx_paths["fp32"].stat().st_mtime_ns
    assert ensure_onnx(compiled_weights, cache_dir=onnx_paths["fp32"].parents[2]) == onnx_paths["fp32"]
    assert onnx_paths["fp32"].stat().st_mtime_ns == before

    copy = tmp_path / "cache"
    shutil.copytree(onnx_paths["fp32"].parents[2], copy)
    fp16 = copy / onnx_paths["fp16"].relative_to(onnx_paths["fp32"].parents[2])
    payload = bytearray(fp16.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    fp16.write_bytes(bytes(payload))
    with caplog.at_level(logging.WARNING, logger="leaf_fer.engines.onnx_store"):
        assert ensure_onnx(compiled_weights, precision="fp16", cache_dir=copy) == fp16
    assert "checksum" in caplog.text
    assert fp16.read_bytes() == onnx_paths["fp16"].read_bytes()


def _copy_artifact(source: Path, directory: Path) -> Path:
    target = directory / source.name
    shutil.copy(source, target)
    shutil.copy(sidecar_path(source), sidecar_path(target))
    return target


def _edit_sidecar(artifact: Path, /, **changes: object) -> None:
    data = json.loads(sidecar_path(artifact).read_text())
    data.update(changes)
    sidecar_path(artifact).write_text(json.dumps(data))


def test_edited_weights_metadata_gets_its_own_compiled_model(
    cache_dir: Path, onnx_paths: dict[str, Path], public_test: tuple[np.ndarray, np.ndarray], tmp_path: Path,
    compiled_weights: Path,
) -> None:
    weights = tmp_path / "reversed.safetensors"
    shutil.copy(default_weights_path(), weights)
    metadata = json.loads(default_weights_path().with_suffix(".json").read_text())
    metadata["model"]["classes"] = metadata["classes"] = metadata["classes"][::-1]
    weights.with_suffix(".json").write_text(json.dumps(metadata))

    reference = TorchPredictor(weights)
    compiled = OrtPredictor(weights=weights, cache_dir=cache_dir, threads=1)
    assert compiled.model_path != onnx_paths["fp32"], "same tensors, other metadata: another cache entry"
    assert compiled.classes == reference.classes == tuple(metadata["classes"])
    faces = public_test[0][:64]
    assert (compiled.predict(faces).argmax(1) == reference.predict(faces).argmax(1)).all()
    assert OrtPredictor(weights=compiled_weights, cache_dir=cache_dir).model_path == onnx_paths["fp32"], "the original stays cached"
    with pytest.raises(EngineMismatchError) as stale:
        OrtPredictor(onnx_paths["fp32"], weights=weights)
    assert "classes" in _one_line(stale)


def test_first_compile_prints_no_exporter_chatter(tmp_path: Path) -> None:
    net = LeafNet(ModelConfig(backbone="resnet-xs"))
    weights = save_weights(net, tmp_path / "xs.safetensors", WeightsMetadata(model=net.config))
    command = [sys.executable, "-m", "leaf_fer", "compile", "--weights", str(weights), "--output", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (result.stderr + result.stdout).splitlines()
    assert len(lines) == 3 and lines[0].startswith("compiling FP32 ONNX"), lines


def test_bad_artifacts_are_refused_with_one_line_errors(onnx_paths: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EngineError) as missing:
        OrtPredictor(tmp_path / "absent.onnx")
    assert "not found" in _one_line(missing)

    corrupt = _copy_artifact(onnx_paths["fp32"], tmp_path)
    payload = bytearray(corrupt.read_bytes())
    payload[100:200] = bytes(100)
    corrupt.write_bytes(bytes(payload))
    with pytest.raises(EngineError) as checksum:
        OrtPredictor(corrupt)
    assert "checksum" in _one_line(checksum)

    truncated_dir = tmp_path / "truncated"
    truncated_dir.mkdir()
    truncated = _copy_artifact(onnx_paths["fp32"], truncated_dir)
    truncated.write_bytes(truncated.read_bytes()[:50_000])
    _edit_sidecar(truncated, sha256=hashlib.sha256(truncated.read_bytes()).hexdigest())
    with pytest.raises(EngineError) as unloadable:
        OrtPredictor(truncated)
    assert "onnxruntime cannot load" in _one_line(unloadable)

    no_sidecar_dir = tmp_path / "no-sidecar"
    no_sidecar_dir.mkdir()
    lonely = no_sidecar_dir / onnx_paths["fp32"].name
    shutil.copy(onnx_paths["fp32"], lonely)
    with pytest.raises(EngineError) as no_sidecar:
        OrtPredictor(lonely)
    assert "sidecar missing" in _one_line(no_sidecar)

    sidecar_path(lonely).write_text("{not json")
    with pytest.raises(EngineError) as bad_json:
        OrtPredictor(lonely)
    assert "not valid JSON" in _one_line(bad_json)


def test_mismatched_sidecars_are_refused(onnx_paths: dict[str, Path], tmp_path: Path) -> None:
    other_model = tmp_path / "other.onnx"
    shutil.copy(onnx_paths["fp32"], other_model)
    sidecar = json.loads(sidecar_path(onnx_paths["fp32"]).read_text())
    sidecar.update(artifact="other.onnx", model_hash="0123456789abcdef")
    sidecar_path(other_model).write_text(json.dumps(sidecar))
    with pytest.raises(EngineMismatchError) as wrong_weights:
        OrtPredictor(other_model, weights=default_weights_path())
    assert "compiled from model 0123456789abcdef" in _one_line(wrong_weights)
    with pytest.raises(EngineMismatchError) as embedded:
        OrtPredictor(other_model)
    assert "holds model" in _one_line(embedded)

    seven = _copy_artifact(onnx_paths["fp32"], tmp_path)
    data = json.loads(sidecar_path(seven).read_text())
    data["model"]["classes"] = data["model"]["classes"][:7]
    data["model"]["num_classes"] = 7
    data["classes"] = data["classes"][:7]
    data["output"]["shape"] = ["batch", 7]
    sidecar_path(seven).write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError) as classes:
        OrtPredictor(seven)
    assert "7" in _one_line(classes)

    _edit_sidecar(seven, **{**json.loads(sidecar_path(onnx_paths["fp32"]).read_text()), "target": "tensorrt"})
    with pytest.raises(EngineError) as wrong_target:
        OrtPredictor(seven)
    assert "tensorrt" in _one_line(wrong_target).lower()


def test_auto_picks_the_best_available_backend_and_says_why(
    cache_dir: Path, onnx_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = tensorrt_unavailable_reason()
    if reason is None:
        assert create_predictor(backend="auto", cache_dir=cache_dir).backend_name == "tensorrt"
    else:
        chosen = create_predictor(backend="auto", cache_dir=cache_dir)
        assert chosen.backend_name == "onnxruntime"
        assert f"TensorRT skipped: {reason}" in chosen.backend_reason
        assert "TensorRT is not installed" in reason or "no CUDA GPU" in reason

    monkeypatch.setattr(factory, "tensorrt_unavailable_reason", lambda: "forced off by the test")
    ort_choice = create_predictor(backend="auto", cache_dir=cache_dir)
    assert ort_choice.backend_name == "onnxruntime" and "forced off by the test" in ort_choice.describe()
    assert ort_choice.model_path == shipped_onnx(None, factory.onnxruntime_auto_precision())
    with pytest.raises(BackendUnavailableError) as refused:
        create_predictor(backend="tensorrt", cache_dir=cache_dir)
    assert "forced off by the test" in _one_line(refused)

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    torch_choice = create_predictor(backend="auto", cache_dir=cache_dir)
    assert torch_choice.backend_name == "torch"
    assert "TensorRT skipped" in torch_choice.backend_reason and "ONNX Runtime skipped" in torch_choice.backend_reason
    with pytest.raises(ValueError, match="unknown backend"):
        create_predictor(backend="openvino")


def test_tensorrt_is_not_imported_by_the_package(tmp_path: Path) -> None:
    fake = tmp_path / "tensorrt"
    fake.mkdir()
    (fake / "__init__.py").write_text('__version__ = "0.0-fake"\n')
    script = textwrap.dedent(
        """
        import sys
        import leaf_fer.engines
        from leaf_fer.engines import artifacts, benchmark, commands, export, factory, onnxruntime_backend, tensorrt_backend
        from leaf_fer.cli import build_parser
        build_parser()
        print("tensorrt" in sys.modules)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_cli_compile_writes_artifact_and_sidecar(
    cache_dir: Path, onnx_paths: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli_main(["compile", "--target", "onnx-fp16", "--cache-dir", str(cache_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert Path(printed[0]) == shipped_onnx(None, "fp16") and "onnx-fp16 (fp16)" in printed[1], "shipped: not recompiled"

    net = LeafNet(ModelConfig(backbone="resnet-xs"))
    other = save_weights(net, tmp_path / "xs.safetensors", WeightsMetadata(model=net.config))
    assert cli_main(["compile", "--weights", str(other), "--output", str(tmp_path / "out")]) == 0
    artifact = Path(capsys.readouterr().out.splitlines()[0])
    sidecar = read_sidecar(artifact)
    assert artifact.parent == tmp_path / "out" and sidecar.model_hash == model_hash(other)
    assert sidecar.model["backbone"] == "resnet-xs"

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(other.read_bytes()[:1000])
    shutil.copy(other.with_suffix(".json"), broken.with_suffix(".json"))
    assert cli_main(["compile", "--weights", str(broken), "--output", str(tmp_path / "out2")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("leaf-fer compile: error:") and "checksum" in error and "\n" not in error

    if tensorrt_unavailable_reason() is not None:
        assert cli_main(["compile", "--target", "tensorrt", "--cache-dir", str(cache_dir)]) == 2
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and ("TensorRT" in error or "GPU" in error)


def test_int8_onnx_is_within_half_a_point_of_fp32_on_the_public_test_set(
    cache_dir: Path, onnx_paths: dict[str, Path], public_test: tuple[np.ndarray, np.ndarray], ort_fp32_probs: np.ndarray,
    publictest_npz: Path, compiled_weights: Path,
) -> None:
    int8 = ensure_onnx(compiled_weights, precision="int8", cache_dir=cache_dir)
    sidecar = read_sidecar(int8)
    assert (sidecar.target, sidecar.precision) == ("onnx-int8", "int8") and int8.name.endswith("-int8.onnx")
    assert sidecar.created_with["calibration"].startswith("sample video faces, ")
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, "QDQ format"
    assert int8.stat().st_size < 0.5 * onnx_paths["fp32"].stat().st_size
    images, labels = public_test
    predictor = OrtPredictor(int8, threads=1)
    int8_probs = predict_all(predictor, images)
    fp32_accuracy, int8_accuracy = accuracy(ort_fp32_probs, labels), accuracy(int8_probs, labels)
    assert abs(fp32_accuracy - int8_accuracy) <= 0.005, f"int8 {int8_accuracy:.4f} vs fp32 {fp32_accuracy:.4f}"
    assert (int8_probs.argmax(1) == ort_fp32_probs.argmax(1)).mean() >= 0.97
    np.testing.assert_allclose(int8_probs.sum(axis=1), 1.0, atol=1e-5, err_msg="the softmax head stays FP32")
    assert len(np.unique(int8_probs)) > 20 * 255, "probabilities are not rounded to 8 bits"
    assert evaluate_npz(predictor, publictest_npz)[0].accuracy == pytest.approx(int8_accuracy, abs=1e-9), "evaluate's"
    stamp = int8.stat().st_mtime_ns
    assert ensure_onnx(compiled_weights, precision="int8", cache_dir=cache_dir) == int8 and int8.stat().st_mtime_ns == stamp


def test_precision_picks_a_backend_that_runs_it(
    cache_dir: Path, onnx_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(factory, "tensorrt_unavailable_reason", lambda: None)
    chosen = create_predictor(precision="int8", cache_dir=cache_dir)
    assert chosen.backend_name == "onnxruntime" and chosen.precision == "int8"
    assert "TensorRT skipped: it builds FP16 engines, int8 asked" in chosen.backend_reason
    assert create_predictor(precision="fp32", cache_dir=cache_dir).model_path == shipped_onnx(None, "fp32")
    for backend, precision in (("torch", "int8"), ("tensorrt", "fp32"), ("torch", "fp16")):
        with pytest.raises(BackendUnavailableError, match=f"the {backend} backend runs .*, not {precision}"):
            create_predictor(backend=backend, precision=precision, cache_dir=cache_dir)
    with pytest.raises(ValueError, match="unknown precision"):
        create_predictor(precision="bf16")
    int8 = shipped_onnx(None, "int8")
    assert create_predictor(artifact=int8).model_path == int8, "auto runs an ONNX artifact on ONNX Runtime"
    with pytest.raises(ConfigError, match="its precision is int8, not fp32"):
        create_predictor(artifact=int8, precision="fp32")
    with pytest.raises(ConfigError, match="onnx-int8 artifacts run on onnxruntime, not on torch"):
        create_predictor(artifact=int8, backend="torch")


def test_tensorrt_without_torch_is_a_reason_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    installed = {"tensorrt": True, "torch": False}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: (object() if installed[name] else None) if name in installed
                        else find_spec(name, *args))
    assert "torch, which holds its GPU buffers, is not" in factory.tensorrt_unavailable_reason()


def test_auto_precision_on_onnxruntime_is_int8_on_the_cpu_and_fp32_with_cuda(
    cache_dir: Path, onnx_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    cpu_only = "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    chosen = create_predictor(backend="onnxruntime", cache_dir=cache_dir)
    assert chosen.precision == ("int8" if cpu_only else "fp32") and chosen.model_path == shipped_onnx(None, chosen.precision)
    assert f"onnxruntime {chosen.precision.upper()}" in chosen.describe()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert factory.onnxruntime_auto_precision() == "fp32"
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert factory.onnxruntime_auto_precision() == "int8"


def test_bench_names_map_to_a_backend_and_precision() -> None:
    assert [bench_backend(name) for name in BENCH_BACKENDS] == [
        ("torch", "auto"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8"), ("tensorrt", "auto")]


def test_cli_compiles_int8_on_a_given_calibration_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], train_npz: Path
) -> None:
    faces = tmp_path / "faces.npz"
    with np.load(train_npz) as train:
        np.savez(faces, images=train["images"][:64])
    assert cli_main(["compile", "--target", "onnx-int8", "--calibration", str(faces), "--output", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert Path(printed[0]).parent == tmp_path / "o" and "calibrated on faces.npz, 64 faces" in printed[1]
    (tmp_path / "bad.npz").write_text("not an npz")
    assert cli_main(["compile", "--target", "onnx-int8", "--calibration", str(tmp_path / "bad.npz"),
                     "--output", str(tmp_path / "o2")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("leaf-fer compile: error:") and "bad.npz" in error and "\n" not in error
    assert not (tmp_path / "o2").exists(), "refused before anything is compiled"
    assert cli_main(["compile", "--target", "onnx-int8", "--calibration", str(faces), "--cache-dir", str(tmp_path / "c")]) == 0
    chosen = create_predictor(precision="int8", cache_dir=tmp_path / "c")
    assert chosen.model_path.is_relative_to(tmp_path / "c"), "the INT8 model calibrated on the user's faces runs"
    assert "faces.npz" in read_sidecar(chosen.model_path).created_with["calibration"]


def test_summarize_reports_median_and_p95_per_face() -> None:
    stats = summarize("x", 4, [0.001] * 19 + [0.002])
    assert stats.median_ms_per_batch == pytest.approx(1.0)
    assert stats.p95_ms_per_batch == pytest.approx(1.05)
    assert stats.median_ms_per_face == pytest.approx(0.25)
    assert stats.p95_ms_per_face == pytest.approx(0.2625)


def test_benchmark_writes_json_markdown_and_png(cache_dir: Path, onnx_paths: dict[str, Path], tmp_path: Path) -> None:
    report = run_benchmark(
        backends=["torch", "onnxruntime", "tensorrt"], batches=[1, 3], iterations=3, warmup=1, threads=1,
        cache_dir=cache_dir, progress=False,
    )
    measured = {(r["backend"], r["batch"]) for r in report["results"]}
    assert {("torch", 1), ("torch", 3), ("onnxruntime", 1), ("onnxruntime", 3)} <= measured
    assert all(r["median_ms_per_face"] > 0 and r["p95_ms_per_face"] >= r["median_ms_per_face"] for r in report["results"])
    if tensorrt_unavailable_reason() is not None:
        assert "tensorrt" in report["skipped"] and ("tensorrt", 1) not in measured
    assert report["ort_vs_torch_batch1"]["ratio"] > 0
    paths = write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["results"] == report["results"]
    markdown = paths["markdown"].read_text()
    assert "| onnxruntime | 3 |" in markdown and markdown == "# Engine latency\n\n" + markdown_table(report)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
