"""INT8 ONNX: ONNX Runtime's static QDQ quantisation, calibrated on aligned face crops.

Weights are quantised per output channel to int8 with a 7-bit range (``reduce_range``: on CPUs without VNNI,
AVX2's u8 x s8 products saturate at full range), activations per tensor to uint8 with the MinMax ranges seen on the
calibration faces. The default calibration set is the aligned faces of the shipped sample video (472 frames, one
face, through the live detector and aligner, as ``annotate`` sees them); an npz of crops (``images`` uint8 [N, H, W],
e.g. what ``annotate --save-faces`` keeps) can replace it. ``leaf_fer.realtime.evaluate.evaluate_npz``
checks the INT8 model against FP32 on a FER+ npz.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .artifacts import EngineError

MAX_CALIBRATION_FACES = 512
CALIBRATION_BATCH = 8


def sample_video_faces(size: int) -> np.ndarray:
    """The aligned face of every frame of the shipped sample video where one is found, uint8 [N, size, size]."""
    from leaf_fer.realtime.annotate import sample_video
    from leaf_fer.realtime.face_crops import CropSettings, FaceCropper
    from leaf_fer.realtime.sources import VideoFileSource

    cropper = FaceCropper(CropSettings(size=size))
    try:
        faces = [face for frame in VideoFileSource(sample_video()) if (face := cropper.crop(frame.image)) is not None]
    finally:
        cropper.close()
    return np.stack(faces)


def calibration_faces(path: str | os.PathLike[str] | None, size: int) -> tuple[np.ndarray, str]:
    """Calibration crops (at most :data:`MAX_CALIBRATION_FACES`, evenly spaced) and a line saying what they are."""
    if path is None:
        faces, origin = sample_video_faces(size), "sample video faces"
    else:
        try:
            with np.load(path, allow_pickle=False) as data:
                faces = data["images"]
        except (OSError, ValueError, KeyError) as exc:
            raise EngineError(f"{path}: not an npz of face crops with an 'images' array ({exc})") from exc
        origin = Path(path).name
    if faces.dtype != np.uint8 or faces.ndim != 3 or faces.shape[1:] != (size, size) or len(faces) < CALIBRATION_BATCH:
        raise EngineError(
            f"{origin}: calibration needs at least {CALIBRATION_BATCH} uint8 faces of {size}x{size}, got {faces.dtype} "
            f"{faces.shape}"
        )
    faces = faces[np.linspace(0, len(faces) - 1, min(len(faces), MAX_CALIBRATION_FACES)).round().astype(int)]
    digest = hashlib.sha256(np.ascontiguousarray(faces).tobytes()).hexdigest()[:16]
    return faces, f"{origin}, {len(faces)} faces, sha256 {digest}"


class _Faces:
    """ONNX Runtime's CalibrationDataReader over equal batches of face crops."""

    def __init__(self, faces: np.ndarray) -> None:
        usable = len(faces) - len(faces) % CALIBRATION_BATCH
        self._batches = iter(faces[:usable].astype(np.float32)[:, None].reshape(-1, CALIBRATION_BATCH, 1, *faces.shape[1:]))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"pixels": batch}


def quantize_int8(fp32_path: str | os.PathLike[str], faces: np.ndarray) -> onnx.ModelProto:
    """The QDQ INT8 model of the FP32 ONNX at ``fp32_path``, calibrated on ``faces``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="leaf-fer-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(quantized), _Faces(faces), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=output_head(onnx.load(str(prepared))),
        )
        return onnx.load(str(quantized))


def output_head(model: onnx.ModelProto) -> list[str]:
    """The nodes that make the graph's output from the last quantised tensor: the output's producer (the softmax) and
    the producer of its input (the classifier). They stay FP32, so the probabilities are not rounded to 8 bits (they
    sum to 1, and two classes do not tie at the same step) and the logits keep their resolution."""
    producers = {output: node for node in model.graph.node for output in node.output}
    softmax = producers[model.graph.output[0].name]
    head = [softmax.name]
    if softmax.input[0] in producers:
        head.append(producers[softmax.input[0]].name)
    return head
