"""Weights on disk: a safetensors file plus a JSON metadata file beside it. No pickle anywhere.

``model.safetensors`` holds the tensors; ``model.json`` holds the model config, classes, normalisation, the training
config, metrics and the data hash, and the SHA-256 of the safetensors file so a corrupt or swapped file is refused.
Reading the metadata needs no torch (the ONNX Runtime path uses it); saving and loading the tensors import torch.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leaf_fer.common import LeafFerError, atomic_write_bytes, file_sha256

from .model_spec import ModelConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .model import LeafNet

FORMAT = "leaf-fer-weights/1"


class WeightsError(LeafFerError, ValueError):
    """A weights file that is missing, corrupt or does not match its metadata."""


@dataclass
class WeightsMetadata:
    model: ModelConfig
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_hash: str = ""
    sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model.to_dict(),
            "classes": list(self.model.classes),
            "input": {"shape": [1, self.model.input_size, self.model.input_size], "dtype": "uint8", "color": "gray"},
            "normalisation": {"mean": self.model.pixel_mean, "std": self.model.pixel_std, "scale": 255.0},
            "training": self.training,
            "metrics": self.metrics,
            "data_hash": self.data_hash,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WeightsMetadata":
        if data.get("format") != FORMAT:
            raise WeightsError(f"unsupported weights format {data.get('format')!r} (expected {FORMAT!r})")
        return cls(
            model=ModelConfig.from_dict(data["model"]),
            training=data.get("training", {}),
            metrics=data.get("metrics", {}),
            data_hash=data.get("data_hash", ""),
            sha256=data.get("sha256", ""),
        )


def default_weights_path() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("leaf_fer.train") / "weights" / "leaf_fer_default.safetensors"))


def metadata_path(weights_path: str | os.PathLike[str]) -> Path:
    return Path(weights_path).with_suffix(".json")


def save_weights(net: "LeafNet", path: str | os.PathLike[str], metadata: WeightsMetadata) -> Path:
    """Write ``path`` (.safetensors) and its .json atomically; returns the safetensors path."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in net.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT})
        metadata.sha256 = file_sha256(tmp)
        metadata.model = net.config
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_bytes(metadata_path(path), json.dumps(metadata.to_dict(), indent=2).encode())
    return path


def read_metadata(path: str | os.PathLike[str]) -> WeightsMetadata:
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        raise WeightsError(f"{meta_file}: metadata file missing (expected beside {Path(path).name})")
    try:
        return WeightsMetadata.from_dict(json.loads(meta_file.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WeightsError(f"{meta_file}: unreadable metadata ({exc})") from exc
    except ValueError as exc:
        raise WeightsError(f"{meta_file}: {exc}") from exc


def load_weights(path: str | os.PathLike[str] | None = None) -> tuple["LeafNet", WeightsMetadata]:
    """Rebuild the network from its metadata and load the tensors (needs torch); refuse anything that does not
    match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import LeafNet

    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    metadata = read_metadata(path)
    if metadata.sha256 and file_sha256(path) != metadata.sha256:
        raise WeightsError(f"{path}: checksum does not match its metadata (corrupt or replaced file)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    net = LeafNet(metadata.model)
    expected = net.state_dict()
    if set(expected) != set(tensors):
        missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
        raise WeightsError(
            f"{path}: tensors do not match the model in its metadata (missing {len(missing)}, unexpected {len(unexpected)})"
        )
    for name, tensor in expected.items():
        if tensor.shape != tensors[name].shape:
            raise WeightsError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(tensor.shape)}")
    net.load_state_dict(tensors)
    return net.eval(), metadata


def average_weights(nets: "Sequence[LeafNet]", shares: "Sequence[float] | None" = None) -> "LeafNet":
    """A copy of ``nets[0]`` whose floating-point tensors are the ``shares``-weighted sum of ``nets``' (uniform when
    None; networks of one architecture); counters stay ``nets[0]``'s."""
    if not nets:
        raise ValueError("no networks to average")
    shares = [1 / len(nets)] * len(nets) if shares is None else list(shares)
    if len(shares) != len(nets):
        raise ValueError(f"{len(nets)} networks and {len(shares)} shares")
    states = [net.state_dict() for net in nets]
    averaged = copy.deepcopy(nets[0])
    averaged.load_state_dict({name: sum(share * state[name].to(tensor) for share, state in zip(shares, states))
                              if tensor.is_floating_point() else tensor for name, tensor in states[0].items()})
    return averaged


def mix_weights(finetuned: "LeafNet", init: "LeafNet", alpha: float) -> "LeafNet":
    """A weight-space ensemble (WiSE-FT, Wortsman et al. 2022): ``alpha`` · fine-tuned + (1 − alpha) · ``init`` (the
    weights it was fine-tuned from)."""
    return average_weights([finetuned, init], [alpha, 1 - alpha])


def model_hash(path: str | os.PathLike[str]) -> str:
    """Short content hash used to key compiled artifacts."""
    return file_sha256(path)[:16]


def fine_tuned_from(metadata: WeightsMetadata) -> str | None:
    """The content hash (:func:`model_hash`) of the weights a model was fine-tuned from, its training config's
    ``init_weights``; that path as named where the file is not here; None for a model trained from scratch."""
    init = metadata.training.get("config", {}).get("init_weights")
    return model_hash(init) if init and Path(init).is_file() else init
