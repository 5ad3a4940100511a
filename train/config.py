"""What a training run depends on, as one record (:class:`TrainConfig`) from which ``leaf-fer train``'s flags are
built; importing it loads neither torch nor OpenCV, so the CLI starts fast."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from leaf_fer.common import ConfigError

from .model_spec import FER2013_CLASSES, FERPLUS_CLASSES, ModelConfig

METHODS: tuple[str, ...] = ("supervised", "fixmatch", "leaf")
"""The training algorithms (``train/algorithms.py`` implements one ``train_step`` each, in this order)."""
CLASS_SETS = {"ferplus": FERPLUS_CLASSES, "fer2013": FER2013_CLASSES}
PRECISIONS = ("auto", "bf16", "fp32")
PLACEMENT_OPTIONS = ("output", "device", "threads", "precision")
"""Where and how fast a run trains, not what it computes (bf16 autocast changes its rounding, not its recipe)."""
KEEP = ("best", "last")
"""Which epoch's model ``model.safetensors`` holds: the best on validation, or the last (written when the run ends)."""
OUTPUT_OPTIONS = ("keep", "weight_ensemble", "soup_with")
"""What ``model.safetensors`` holds, not how the run trains: a finished run given other values writes its model again
(with ``keep: last``) without training again; ``keep: best`` refuses values other than its model file's (the best
epoch's weights are kept only there)."""
LEAF_LABELED_WEIGHT = 2.0
LEAF_CONTRASTIVE_WEIGHT = 0.0
LEAF_CONTRASTIVE_TEMPERATURE = 0.07
INPUT_PATH_OPTIONS = ("data", "extra_data", "anchor_data", "val_data", "ferplus_csv", "unlabeled_data", "init_weights",
                      "soup_with")
"""Options naming files to read: in a YAML config, relative ones are read from the YAML's own folder (``output`` stays
relative to the current folder, where the run is started)."""
WEIGHTED_PATH_OPTIONS = ("extra_data", "anchor_data")
"""Options whose paths may carry ``@WEIGHT`` (:func:`split_extra`)."""
POSED_LABEL_WEIGHT = 0.5
"""With vote shares, the target is this much the file's label (posed or majority) and the rest the observers' votes
(the default of ``leaf-fer train --posed-label-weight``)."""


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint and in the shipped weights' metadata."""

    data: str = ""
    extra_data: list[str] = field(default_factory=list)
    ferplus_csv: str | None = None
    val_data: str | None = None
    unlabeled_data: str | None = None
    val_fraction: float = 0.1
    classes: str = "ferplus"
    label_fraction: float = 1.0
    method: str = "supervised"
    backbone: str = "resnet-s"
    semantic_level: bool = True
    instance_level: bool = True
    category_level: bool = True
    contrastive_weight: float = LEAF_CONTRASTIVE_WEIGHT
    contrastive_temperature: float = LEAF_CONTRASTIVE_TEMPERATURE
    labeled_weight: float = LEAF_LABELED_WEIGHT
    agreement_thresholds: bool = True
    distribution_alignment: bool = False
    rank_below_threshold: bool = False
    epochs: int = 30
    iterations_per_epoch: int = 0
    batch_size: int = 128
    unlabeled_batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    ema_decay: float = 0.999
    dropout: float = 0.3
    device: str = "auto"
    seed: int = 0
    output: str = "runs/default"
    threads: int = 0
    precision: str = "auto"
    max_train_samples: int = 0
    init_weights: str | None = None
    logit_adjustment: float = 0.0
    domain_augment: bool = False
    domain_augment_main: bool = True
    distill_initial: float = 0.0
    anchor_data: list[str] = field(default_factory=list)
    posed_label_weight: float = POSED_LABEL_WEIGHT
    soup_with: list[str] = field(default_factory=list)
    weight_ensemble: float = 1.0
    mixup: float = 0.0
    keep: str = "best"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training option(s): {sorted(unknown)}")
        config = cls(**data)
        config.validate()
        return config

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("no training data given (--data PATH: .npz, fer2013.csv or an image folder)")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose from {list(METHODS)}")
        if self.classes not in CLASS_SETS:
            raise ConfigError(f"unknown class set {self.classes!r}; choose from {sorted(CLASS_SETS)}")
        if self.method != "supervised" and self.label_fraction >= 1.0 and not self.unlabeled_data:
            raise ConfigError(f"method {self.method!r} needs unlabeled data: set a label fraction below 1 "
                             "or give --unlabeled-data (npz or folder of face crops)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose from {list(PRECISIONS)}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("epochs must be ≥ 1 and batch size ≥ 2")
        for spec in (*self.extra_data, *self.anchor_data):
            split_extra(spec)
        if self.logit_adjustment < 0:
            raise ConfigError(f"logit adjustment must be ≥ 0, got {self.logit_adjustment}")
        if self.keep not in KEEP:
            raise ConfigError(f"unknown keep {self.keep!r}; choose from {list(KEEP)}")
        if self.mixup < 0:
            raise ConfigError(f"mixup must be ≥ 0, got {self.mixup}")
        if not 0 < self.weight_ensemble <= 1:
            raise ConfigError(f"weight ensemble must be in (0, 1], got {self.weight_ensemble}")
        if not 0 <= self.distill_initial <= 1:
            raise ConfigError(f"distill initial must be in [0, 1], got {self.distill_initial}")
        if self.distill_initial and not self.init_weights:
            raise ConfigError("distilling the initial model needs one: give --init-weights")
        if self.anchor_data and not self.init_weights:
            raise ConfigError("anchor faces take the initial model's predictions as targets: give --init-weights")
        if self.soup_with and not self.init_weights:
            raise ConfigError("a soup averages runs fine-tuned from one model: give --init-weights")
        if self.weight_ensemble < 1 and not self.init_weights:
            raise ConfigError("a weight ensemble below 1 mixes in the initial weights: give --init-weights")

    def model_config(self) -> ModelConfig:
        classes = CLASS_SETS[self.classes]
        return ModelConfig(backbone=self.backbone, num_classes=len(classes), classes=classes, dropout=self.dropout,
                           semantic_level=self.semantic_level, instance_level=self.instance_level)


def split_extra(spec: str) -> tuple[str, float]:
    """``PATH`` or ``PATH@WEIGHT`` → (path, weight): each face of that set is drawn ``WEIGHT`` times per epoch on
    average (the main data's faces once), so a small set counts for more and a one-class set for less. An ``@`` that
    belongs to an existing path is the path's."""
    path, _, weight = spec.rpartition("@")
    if not path:
        return spec, 1.0
    try:
        value = float(weight)
    except ValueError:
        if Path(spec).exists():
            return spec, 1.0
        raise ConfigError(f"{spec!r}: expected PATH or PATH@WEIGHT with a number") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{spec!r}: the weight must be a number > 0")
    return path, value




def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options of a YAML config, with relative input paths (:data:`INPUT_PATH_OPTIONS`) made relative to the
    current folder instead of the YAML's, so a config works from wherever it is run."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    for name in INPUT_PATH_OPTIONS:
        value = values.get(name)
        if isinstance(value, list):
            values[name] = [_beside(str(item), path.parent, name in WEIGHTED_PATH_OPTIONS) for item in value]
        elif isinstance(value, str):
            values[name] = _beside(value, path.parent, name in WEIGHTED_PATH_OPTIONS)
    return values


def _beside(value: str, folder: Path, weighted: bool) -> str:
    """``value`` (``PATH``, or ``PATH@WEIGHT`` for extra and anchor data) with a relative PATH read from ``folder``."""
    spec, at, weight = value.rpartition("@") if weighted and "@" in value else (value, "", "")
    if Path(spec).expanduser().is_absolute():
        return value
    return os.path.relpath(folder / spec) + at + weight
