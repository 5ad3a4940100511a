"""What the LEAF network is, without torch: the class sets, the backbones and :class:`ModelConfig`, the config stored
in the weights' JSON metadata. The runtime (ONNX Runtime) reads these; ``model.py`` builds the network from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

FERPLUS_CLASSES: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
FER2013_CLASSES: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")

BACKBONES: dict[str, dict[str, Any]] = {
    "resnet-xs": {"widths": (16, 32, 64, 128), "strides": (1, 2, 2, 2)},
    "resnet-s": {"widths": (24, 48, 96, 192), "strides": (1, 2, 2, 2)},
    "resnet-m": {"widths": (32, 64, 128, 256), "strides": (1, 2, 2, 2)},
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in the weights' JSON metadata."""

    backbone: str = "resnet-s"
    num_classes: int = 8
    classes: tuple[str, ...] = FERPLUS_CLASSES
    input_size: int = 48
    embed_dim: int = 128
    num_experts: int = 4
    expert_hidden: int = 64
    semantic_level: bool = True
    instance_level: bool = True
    dropout: float = 0.3
    embedding_scale: float = 8.0
    pixel_mean: float = 0.5
    pixel_std: float = 0.25

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        values = dict(data)
        if "classes" in values:
            values["classes"] = tuple(values["classes"])
        config = cls(**values)
        if len(config.classes) != config.num_classes:
            raise ValueError(f"{config.num_classes} classes declared but {len(config.classes)} names given")
        if config.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {config.backbone!r}; known: {sorted(BACKBONES)}")
        return config
