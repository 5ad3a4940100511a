"""The pipeline's settings record: every option defined once, as a field whose metadata tells the command line
(flag, help, choices) and the GUI's settings form (label, range, step) how to offer it.

Light on purpose: ``leaf-fer --help`` builds its flags from here, so nothing heavy is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any

from leaf_fer.common import ConfigError
from leaf_fer.engines.names import BACKENDS, PRECISIONS

DETECTOR_RANGES: tuple[str, ...] = ("short", "full")
OPTION = "option"
"""The ``Field.metadata`` key of a field's :class:`Option`."""


@dataclass(frozen=True)
class Option:
    """How users see one :class:`PipelineConfig` field.

    ``flag``: its command-line flag ('' = none; a flag on a field that defaults to True turns it off). ``label``:
    its row in the GUI's settings form ('' = not in the form). ``minimum``/``maximum`` bound the values
    :meth:`PipelineConfig.validate` accepts (``maximum`` itself excluded when ``open_maximum``); the form's spin box
    spans ``minimum`` to ``form_maximum`` (default ``maximum``) in steps of ``step``. ``file_filter``: the field is a
    file, chosen in the form through a dialog with this filter.
    """

    help: str
    flag: str = ""
    label: str = ""
    choices: tuple[str, ...] = ()
    choice_labels: Mapping[str, str] = field(default_factory=dict)
    minimum: float | None = None
    maximum: float | None = None
    open_maximum: bool = False
    step: float = 1.0
    form_maximum: float | None = None
    file_filter: str = ""

    @property
    def in_form(self) -> bool:
        return bool(self.label)

    def form_range(self) -> tuple[float, float]:
        """The lowest and highest value the form offers."""
        top = self.form_maximum if self.form_maximum is not None else self.maximum
        if self.minimum is None or top is None:
            raise ValueError(f"option {self.label!r} has no form range")
        return self.minimum, top

    def check(self, name: str, value: Any) -> None:
        """Raise ``ValueError`` when ``value`` is not allowed for the field ``name``."""
        what = name.replace("_", " ")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{what} must be one of {', '.join(self.choices)}; got {value!r}")
        above = self.minimum is None or value >= self.minimum
        below = self.maximum is None or (value < self.maximum if self.open_maximum else value <= self.maximum)
        if above and below:
            return
        if self.maximum is None:
            raise ConfigError(f"{what} must be >= {self.minimum:g}; got {value}")
        closing = ")" if self.open_maximum else "]"
        raise ConfigError(f"{what} must be in [{self.minimum:g}, {self.maximum:g}{closing}; got {value}")


def setting(default: Any, option: Option) -> Any:
    """A dataclass field with ``default`` and the user-facing ``option``."""
    return field(default=default, metadata={OPTION: option})


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that shapes the pipeline's output; the defaults suit a webcam or a close-up video."""

    weights: str | os.PathLike[str] | None = setting(None, Option(
        "weights .safetensors (default: the shipped model)", flag="--weights", label="Model",
        file_filter="LEAF weights (*.safetensors);;All files (*)"))
    backend: str = setting("auto", Option(
        "inference backend", flag="--backend", label="Backend", choices=BACKENDS,
        choice_labels={"auto": "auto (best available)", "tensorrt": "TensorRT", "onnxruntime": "ONNX Runtime",
                       "torch": "torch"}))
    precision: str = setting("auto", Option(
        "inference precision: auto (the backend's own: FP16 on TensorRT, INT8 on ONNX Runtime on the CPU, else "
        "FP32), fp32, fp16, or int8 (ONNX Runtime, statically quantised, calibrated on face crops; `leaf-fer compile "
        "--target onnx-int8`)",
        flag="--precision", label="Precision", choices=PRECISIONS))
    detector_range: str = setting("short", Option(
        "short: faces within ~2 m, fastest; full: up to ~5 m, group shots", flag="--detector-range",
        label="Detector", choices=DETECTOR_RANGES,
        choice_labels={"short": "short (≈2 m)", "full": "full (≈5 m)"}))
    fallback_detector: bool = setting(True, Option(
        "a second look with OpenCV's YuNet on frames where MediaPipe finds no face (faces that fill the frame, "
        "small, dark or group shots)", flag="--no-fallback-detector", label="Fallback detector"))
    min_detection_confidence: float = setting(0.65, Option(
        "minimum face detection score; real faces in the test clips score 0.88-0.97 with the short-range model, an "
        "animated title up to 0.61", flag="--min-confidence", label="Min confidence", minimum=0.0, maximum=1.0,
        step=0.05))
    smoothing_alpha: float = setting(0.7, Option(
        "EMA weight of each track's past probabilities, 0 = off", flag="--smoothing", label="Smoothing",
        minimum=0.0, maximum=1.0, open_maximum=True, step=0.05, form_maximum=0.95))
    max_faces: int = setting(8, Option(
        "at most this many faces per frame", flag="--max-faces", label="Max faces", minimum=1, form_maximum=16))
    max_lost: int = setting(15, Option("frames a track outlives its face before its id ends", minimum=0))
    detect_max_side: int = setting(640, Option(
        "frames larger than this (longer side, px) are detected on a downscaled copy and the boxes and keypoints "
        "mapped back, 0 = full size; alignment always reads the full-resolution frame", minimum=0))
    threads: int = setting(1, Option(
        "CPU threads for inference and for OpenCV's per-frame work, 0 = the libraries' defaults; one keeps per-frame "
        "latency steady, since a batch of a few 48x48 faces and one frame's colour conversion, filter and warp gain "
        "little from more, and a thread team competing with busy cores stalls (benchmarks/opencv_threads.py)",
        minimum=0))
    draw: bool = True
    draw_boxes: bool = True
    draw_keypoints: bool = False
    draw_labels: bool = True
    draw_bars: bool = True
    draw_hud: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` for the first field whose value its :class:`Option` does not allow."""
        for item, option in option_fields():
            option.check(item.name, getattr(self, item.name))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["weights"] = os.fspath(self.weights) if self.weights is not None else None
        return data


def option_fields() -> list[tuple[Field[Any], Option]]:
    """The fields of :class:`PipelineConfig` that carry an :class:`Option`, in declaration order."""
    return [(item, item.metadata[OPTION]) for item in fields(PipelineConfig) if OPTION in item.metadata]


def option_of(name: str) -> Option:
    """The :class:`Option` of the field ``name``."""
    return next(option for item, option in option_fields() if item.name == name)
