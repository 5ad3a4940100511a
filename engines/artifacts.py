"""Compiled artifacts on disk: the JSON sidecar written beside every .onnx / .engine, cache keys and validation.

Every artifact ``x.onnx`` or ``x.engine`` has ``x.onnx.json`` / ``x.engine.json`` beside it, holding the model hash,
classes, input/output spec, precision and (for TensorRT) the TensorRT version, GPU and optimisation profile it was
built for, plus the artifact's SHA-256. Loading refuses, with one line, anything that does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leaf_fer.common import LeafFerError, atomic_write_bytes, file_sha256, one_line
from leaf_fer.common import cache_root as default_cache_root
from leaf_fer.train.model_spec import ModelConfig

FORMAT = "leaf-fer-engine/1"
TARGETS: tuple[str, ...] = ("onnx", "onnx-fp16", "onnx-int8", "tensorrt")
PRECISIONS: dict[str, str] = {"onnx": "fp32", "onnx-fp16": "fp16", "onnx-int8": "int8", "tensorrt": "fp16"}
SUFFIXES: dict[str, str] = {"onnx": ".onnx", "onnx-fp16": ".onnx", "onnx-int8": ".onnx", "tensorrt": ".engine"}
ONNX_TARGETS: dict[str, str] = {"fp32": "onnx", "fp16": "onnx-fp16", "int8": "onnx-int8"}
"""The ONNX artifact of each precision."""
INPUT_NAME = "pixels"
OUTPUT_NAME = "probs"


class EngineError(LeafFerError, ValueError):
    """A compiled artifact that is missing, corrupt, or does not match its sidecar, the model or this machine."""


class EngineMismatchError(EngineError):
    """A readable artifact built for another model, TensorRT version or GPU: rebuild it."""


class BackendUnavailableError(EngineError):
    """The backend cannot run here (package not installed, no GPU)."""


@dataclass(frozen=True)
class TrtEnvironment:
    """What a TensorRT engine is tied to: the TensorRT version and the GPU (name and compute capability)."""

    version: str
    gpu_name: str
    compute_capability: str

    def describe(self) -> str:
        return f"TensorRT {self.version} on {self.gpu_name} (compute {self.compute_capability})"


@dataclass
class TrtBuildInfo:
    """TensorRT facts recorded in an engine's sidecar."""

    version: str
    gpu_name: str
    compute_capability: str
    strongly_typed: bool
    source_onnx: str
    profile: dict[str, list[int]]

    @property
    def environment(self) -> TrtEnvironment:
        return TrtEnvironment(self.version, self.gpu_name, self.compute_capability)


@dataclass
class Sidecar:
    """The JSON written beside an artifact."""

    target: str
    precision: str
    artifact: str
    model_hash: str
    model: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any]
    sha256: str = ""
    max_batch: int | None = None
    opset: int | None = None
    created_with: dict[str, str] = field(default_factory=dict)
    tensorrt: TrtBuildInfo | None = None
    format: str = FORMAT

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.model["classes"])

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        order = ("format", "target", "precision", "artifact", "sha256", "model_hash", "classes", "input", "output",
                 "max_batch", "opset", "tensorrt", "created_with", "model")
        data["classes"] = list(self.classes)
        return {key: data[key] for key in order}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sidecar":
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("format") != FORMAT:
            raise ValueError(f"unsupported sidecar format {data.get('format')!r} (expected {FORMAT!r})")
        trt = data.get("tensorrt")
        sidecar = cls(
            target=str(data["target"]),
            precision=str(data["precision"]),
            artifact=str(data["artifact"]),
            model_hash=str(data["model_hash"]),
            model=dict(data["model"]),
            input=dict(data["input"]),
            output=dict(data["output"]),
            sha256=str(data["sha256"]),
            max_batch=None if data.get("max_batch") is None else int(data["max_batch"]),
            opset=None if data.get("opset") is None else int(data["opset"]),
            created_with=dict(data.get("created_with", {})),
            tensorrt=None if trt is None else TrtBuildInfo(**trt),
        )
        config = sidecar.model_config
        if sidecar.target not in TARGETS:
            raise ValueError(f"unknown target {sidecar.target!r}")
        if sidecar.target == "tensorrt" and sidecar.tensorrt is None:
            raise ValueError("a tensorrt sidecar without its TensorRT section")
        if "classes" in data and list(data["classes"]) != list(sidecar.classes):
            raise ValueError("classes disagree with the model config")
        if sidecar.output.get("shape", [None, None])[-1] != config.num_classes:
            raise ValueError(f"output width {sidecar.output.get('shape')} does not match {config.num_classes} classes")
        if list(sidecar.input.get("shape", []))[1:] != [1, config.input_size, config.input_size]:
            raise ValueError(f"input shape {sidecar.input.get('shape')} does not match the {config.input_size}px model")
        return sidecar


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    """``model.onnx`` → ``model.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def model_cache_dir(cache_root: str | os.PathLike[str] | None, model_hash: str) -> Path:
    """Where the artifacts compiled from one model live."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    return root / "engines" / model_hash


def cache_key(
    model_hash: str, target: str, *, max_batch: int | None = None, env: TrtEnvironment | None = None
) -> str:
    """Short key naming an artifact: changes with the model, target, max batch and the TensorRT environment."""
    parts: dict[str, Any] = {"format": FORMAT, "model_hash": model_hash, "target": target, "max_batch": max_batch}
    if env is not None:
        parts.update(asdict(env))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def config_key(model: dict[str, Any]) -> str:
    """Short hash of a model config (architecture, classes, normalisation): what the weights' JSON adds to the tensors."""
    return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:8]


def artifact_filename(
    model_hash: str,
    target: str,
    *,
    model: dict[str, Any] | None = None,
    max_batch: int | None = None,
    env: TrtEnvironment | None = None,
) -> str:
    """``leaf_fer-<hash>-<config>-fp32.onnx`` (``-fp16``, ``-int8``),
    ``leaf_fer-<hash>-<config>-trt-<gpu>-b16-<key>.engine`` (``model``: the config the artifact is built with)."""
    if model is None:
        raise ValueError("an artifact name needs the model config")
    if target == "tensorrt":
        if env is None or max_batch is None:
            raise ValueError("a TensorRT artifact name needs the environment and the max batch")
        gpu = re.sub(r"[^a-z0-9]+", "-", env.gpu_name.lower()).strip("-")[:32] or "gpu"
        key = cache_key(model_hash, target, max_batch=max_batch, env=env)
        return f"leaf_fer-{model_hash}-{config_key(model)}-trt{env.version}-{gpu}-b{max_batch}-{key}.engine"
    return f"leaf_fer-{model_hash}-{config_key(model)}-{PRECISIONS[target]}{SUFFIXES[target]}"


def write_artifact(path: str | os.PathLike[str], payload: bytes, sidecar: Sidecar) -> Path:
    """Write the artifact, then its sidecar (with the artifact's SHA-256), each atomically."""
    path = Path(path)
    sidecar.artifact = path.name
    sidecar.sha256 = hashlib.sha256(payload).hexdigest()
    atomic_write_bytes(path, payload)
    atomic_write_bytes(sidecar_path(path), (json.dumps(sidecar.to_dict(), indent=2) + "\n").encode())
    return path


def read_sidecar(artifact: str | os.PathLike[str]) -> Sidecar:
    """The sidecar beside ``artifact``; :class:`EngineError` when missing or unreadable."""
    path = sidecar_path(artifact)
    if not path.is_file():
        raise EngineError(f"{path}: sidecar missing (every compiled artifact needs its .json; recompile with `leaf-fer compile`)")
    try:
        return Sidecar.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path}: sidecar is not valid JSON ({one_line(exc)})") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineError(f"{path}: invalid sidecar ({one_line(exc)})") from exc


def load_artifact(artifact: str | os.PathLike[str], *, target: str | None = None) -> Sidecar:
    """Check the artifact exists, has a sidecar of the right target and matches its checksum; return the sidecar."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise EngineError(f"{artifact}: compiled artifact not found")
    sidecar = read_sidecar(artifact)
    if target is not None and sidecar.target != target:
        raise EngineMismatchError(f"{artifact}: is a {sidecar.target!r} artifact, expected {target!r}")
    if sidecar.artifact != artifact.name:
        raise EngineMismatchError(f"{artifact}: sidecar describes {sidecar.artifact!r}, not this file")
    if file_sha256(artifact) != sidecar.sha256:
        raise EngineError(f"{artifact}: checksum does not match its sidecar (corrupt or replaced file; recompile it)")
    return sidecar


def check_compatible(
    sidecar: Sidecar,
    artifact: str | os.PathLike[str],
    *,
    model_hash: str | None = None,
    classes: tuple[str, ...] | None = None,
    env: TrtEnvironment | None = None,
    max_batch: int | None = None,
) -> None:
    """Raise :class:`EngineMismatchError` naming the first difference between the sidecar and what is expected."""
    if model_hash is not None and sidecar.model_hash != model_hash:
        raise EngineMismatchError(
            f"{artifact}: compiled from model {sidecar.model_hash}, but the weights are {model_hash} (recompile it)"
        )
    if classes is not None and tuple(classes) != sidecar.classes:
        raise EngineMismatchError(f"{artifact}: classes {list(sidecar.classes)} differ from the expected {list(classes)}")
    if env is not None:
        if sidecar.tensorrt is None:
            raise EngineMismatchError(f"{artifact}: no TensorRT build information in its sidecar")
        built = sidecar.tensorrt.environment
        if built != env:
            raise EngineMismatchError(
                f"{artifact}: built for {built.describe()}, but this machine has {env.describe()}; "
                "rebuild it with `leaf-fer compile --target tensorrt`"
            )
    if max_batch is not None and sidecar.max_batch is not None and max_batch > sidecar.max_batch:
        raise EngineMismatchError(f"{artifact}: built for at most {sidecar.max_batch} faces a batch, {max_batch} asked")
