"""ONNX export (FP32, dynamic batch axis), the FP16 and INT8 variants, and the on-disk cache of all three.

The exported graph is :class:`~leaf_fer.train.model.InferenceModel`: ``pixels`` float32 [batch, 1, H, W] in
[0, 255] → ``probs`` float32 [batch, C]. The FP16 variant keeps FP32 inputs and outputs and keeps numerically
sensitive ops (softmax, reductions, L2 normalisation, division) in FP32, with explicit Cast nodes at each boundary, so
that TensorRT 11 can build it as a strongly typed network.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import leaf_fer
from leaf_fer.common import ConfigError, one_line
from leaf_fer.train.model import InferenceModel, LeafNet
from leaf_fer.train.weights import WeightsMetadata, default_weights_path, load_weights, model_hash

from .artifacts import (
    INPUT_NAME,
    ONNX_TARGETS,
    OUTPUT_NAME,
    PRECISIONS,
    EngineError,
    Sidecar,
    artifact_filename,
    write_artifact,
)

OPSET = 18
FP16_MAX = float(np.finfo(np.float16).max)
FP16_OPS = frozenset(
    {
        "Add", "AveragePool", "Conv", "ConvTranspose", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "LeakyRelu",
        "MatMul", "MaxPool", "Mul", "PRelu", "Relu", "Sigmoid", "Sub", "Tanh",
    }
)
MOVE_OPS = frozenset(
    {"Concat", "Expand", "Flatten", "Gather", "Identity", "Pad", "Reshape", "Slice", "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze"}
)
TYPE_ONLY_OPS = frozenset({"Shape", "Size"})
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")
"""Loggers that narrate every export (registrations, optimisation passes); only their errors are shown."""


def export_onnx_model(net: LeafNet, *, opset: int = OPSET) -> onnx.ModelProto:
    """Export the inference graph (normalisation + network + softmax) with a dynamic batch axis; checked."""
    model = InferenceModel(net).eval()
    size = net.config.input_size
    sample = torch.full((2, 1, size, size), 128.0)
    batch = torch.export.Dim("batch", min=1)
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _exporter_errors_only(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (sample,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            dynamic_shapes={"pixels": {0: batch}},
            verbose=False,
        )
    if program is None:
        raise EngineError("torch.onnx.export returned no program")
    proto = program.model_proto
    for value in (*proto.graph.input, *proto.graph.output):
        del value.metadata_props[:]
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    check_onnx(proto, "exported model")
    return proto


@contextlib.contextmanager
def _exporter_errors_only() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Mixed-precision copy with FP32 graph I/O and explicit Casts at every precision boundary.

    Arithmetic in :data:`FP16_OPS` runs in FP16; data-movement ops (:data:`MOVE_OPS`) keep the precision of their
    data; everything else (Softmax, reductions, ReduceL2 / Div / Clip of the L2 normalisation, ...) runs in FP32.
    """
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    graph = model_copy.graph
    for node in graph.node:
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            raise EngineError(f"FP16 conversion does not support control flow (node {node.name or node.op_type})")
    original = _tensor_types(model_copy)
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def standard(node: onnx.NodeProto) -> bool:
        return node.domain in ("", "ai.onnx")

    current = dict(original)
    for name, init in initializers.items():
        users = consumers.get(name, [])
        if init.data_type == TensorProto.FLOAT and users and all(standard(u) and u.op_type in FP16_OPS for u in users):
            values = np.clip(numpy_helper.to_array(init), -FP16_MAX, FP16_MAX).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(values, name))
            current[name] = TensorProto.FLOAT16

    graph_outputs = {value.name for value in graph.output}
    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            out = f"{name}__to_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [out], name=f"{out}__cast", to=to))
            casts[(name, to)] = out
            current[out] = to
        return casts[(name, to)]

    def precision(node: onnx.NodeProto) -> int | None:
        if not standard(node):
            return TensorProto.FLOAT
        if node.op_type in TYPE_ONLY_OPS:
            return None
        if node.op_type in FP16_OPS:
            return TensorProto.FLOAT16
        if node.op_type in MOVE_OPS:
            data = {current[n] for n in node.input if n and n not in initializers and original.get(n) == TensorProto.FLOAT}
            return TensorProto.FLOAT16 if data == {TensorProto.FLOAT16} else TensorProto.FLOAT
        return TensorProto.FLOAT

    for node in graph.node:
        want = precision(node)
        if want is None:
            nodes.append(node)
            continue
        for index, name in enumerate(node.input):
            if name and original.get(name) == TensorProto.FLOAT and current[name] != want:
                node.input[index] = cast(name, want)
        nodes.append(node)
        if want != TensorProto.FLOAT16:
            continue
        for index, name in enumerate(node.output):
            if original.get(name) != TensorProto.FLOAT:
                continue
            if name in graph_outputs:
                half = f"{name}__fp16"
                node.output[index] = half
                current[half] = TensorProto.FLOAT16
                nodes.append(helper.make_node("Cast", [half], [name], name=f"{name}__cast_out", to=TensorProto.FLOAT))
            else:
                current[name] = TensorProto.FLOAT16

    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    converted = onnx.shape_inference.infer_shapes(model_copy, strict_mode=True)
    check_onnx(converted, "FP16 model")
    return converted


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor in the main graph (after strict shape inference)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise EngineError(f"cannot infer tensor types of the ONNX graph ({one_line(exc)})") from exc
    types = {init.name: init.data_type for init in inferred.graph.initializer}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    missing = [name for node in inferred.graph.node for name in node.output if name and name not in types]
    if missing:
        raise EngineError(f"cannot infer the type of {len(missing)} tensors (first: {missing[0]})")
    return types


def check_onnx(model: onnx.ModelProto, what: str) -> None:
    """onnx.checker (full) plus the I/O contract: one input ``pixels`` and one output ``probs``, batch axis dynamic."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise EngineError(f"{what} fails onnx.checker ({one_line(exc)})") from exc
    inputs = [value.name for value in model.graph.input]
    outputs = [value.name for value in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise EngineError(f"{what}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, got {inputs} → {outputs}")
    for value in (*model.graph.input, *model.graph.output):
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type != TensorProto.FLOAT:
            raise EngineError(f"{what}: {value.name} is not float32")
        if not tensor_type.shape.dim or tensor_type.shape.dim[0].dim_param != "batch":
            raise EngineError(f"{what}: {value.name} has no dynamic batch axis")


def onnx_sidecar(
    model: onnx.ModelProto, metadata: WeightsMetadata, weights_hash: str, target: str, **created_with: str
) -> Sidecar:
    """The sidecar for an ONNX artifact of the given model (``created_with``: extra provenance, e.g. calibration)."""
    config = metadata.model
    return Sidecar(
        target=target,
        precision=PRECISIONS[target],
        artifact="",
        model_hash=weights_hash,
        model=config.to_dict(),
        input={
            "name": INPUT_NAME,
            "shape": ["batch", 1, config.input_size, config.input_size],
            "dtype": "float32",
            "range": [0, 255],
            "layout": "NCHW grayscale",
        },
        output={"name": OUTPUT_NAME, "shape": ["batch", config.num_classes], "dtype": "float32", "kind": "softmax"},
        opset=next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None),
        created_with={"leaf_fer": leaf_fer.__version__, "torch": torch.__version__, "onnx": onnx.__version__, **created_with},
    )


def serialize_onnx(model: onnx.ModelProto, weights_hash: str, classes: tuple[str, ...], precision: str) -> bytes:
    """Model bytes with the model hash, classes and precision in its metadata_props."""
    onnx.helper.set_model_props(
        model, {"leaf_fer.model_hash": weights_hash, "leaf_fer.classes": json.dumps(list(classes)), "leaf_fer.precision": precision}
    )
    return model.SerializeToString()


def compile_onnx(
    weights: str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str],
    *,
    precision: str = "fp32",
    calibration: str | os.PathLike[str] | None = None,
) -> Path:
    """Export the weights to ``output_dir`` as FP32 ONNX, plus the FP16 or INT8 variant when ``precision`` asks for it
    (INT8: calibrated on ``calibration``, an npz of face crops, or on the sample video's faces); returns the requested
    artifact."""
    if precision not in ONNX_TARGETS:
        raise ConfigError(f"ONNX precision must be one of {', '.join(ONNX_TARGETS)}; got {precision!r}")
    weights_path = Path(weights) if weights is not None else default_weights_path()
    net, metadata = load_weights(weights_path)
    weights_hash = model_hash(weights_path)
    output_dir = Path(output_dir)
    calibrated = calibration_set(calibration, metadata) if precision == "int8" else None
    fp32_model = export_onnx_model(net)
    classes = tuple(metadata.model.classes)
    fp32_path = output_dir / artifact_filename(weights_hash, "onnx", model=metadata.model.to_dict())
    write_artifact(fp32_path, serialize_onnx(fp32_model, weights_hash, classes, "fp32"), onnx_sidecar(fp32_model, metadata, weights_hash, "onnx"))
    if precision == "fp16":
        return write_fp16(fp32_model, metadata, weights_hash, output_dir)
    if calibrated is not None:
        return write_int8(fp32_path, metadata, weights_hash, output_dir, calibrated)
    return fp32_path


def write_fp16(fp32_model: onnx.ModelProto, metadata: WeightsMetadata, weights_hash: str, output_dir: Path) -> Path:
    fp16_model = convert_to_fp16(fp32_model)
    path = output_dir / artifact_filename(weights_hash, "onnx-fp16", model=metadata.model.to_dict())
    payload = serialize_onnx(fp16_model, weights_hash, tuple(metadata.model.classes), "fp16")
    return write_artifact(path, payload, onnx_sidecar(fp16_model, metadata, weights_hash, "onnx-fp16"))


def calibration_set(path: str | os.PathLike[str] | None, metadata: WeightsMetadata) -> tuple[np.ndarray, str]:
    from .quantize import calibration_faces

    return calibration_faces(path, metadata.model.input_size)


def write_int8(
    fp32_path: Path, metadata: WeightsMetadata, weights_hash: str, output_dir: Path, calibrated: tuple[np.ndarray, str]
) -> Path:
    from .quantize import quantize_int8

    faces, described = calibrated
    int8_model = quantize_int8(fp32_path, faces)
    check_onnx(int8_model, "INT8 model")
    path = output_dir / artifact_filename(weights_hash, "onnx-int8", model=metadata.model.to_dict())
    payload = serialize_onnx(int8_model, weights_hash, tuple(metadata.model.classes), "int8")
    return write_artifact(path, payload, onnx_sidecar(int8_model, metadata, weights_hash, "onnx-int8", calibration=described))
