"""`leaf-fer train` (needs ``pip install 'leaf-fer[train]'``); nothing heavy is imported until it runs."""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import fields
from pathlib import Path

from leaf_fer.common import ConfigError

from .config import (
    LEAF_CONTRASTIVE_TEMPERATURE,
    LEAF_CONTRASTIVE_WEIGHT,
    LEAF_LABELED_WEIGHT,
    TrainConfig,
    read_config_file,
)

OPTION_HELP = {
    "data": "training faces: .npz, fer2013.csv, a labels CSV (file,label), RAF-DB's list file, an AffectNet CSV, "
            "or an image folder with one sub-folder per class (full-size images go through the face detector + aligner)",
    "extra_data": "further labeled sets in any --data format, each PATH or PATH@WEIGHT (draws per face per epoch)",
    "init_weights": "start from these weights (.safetensors of the same network) instead of from scratch",
    "logit_adjustment": "τ of the logit-adjusted loss against the class prior (0: off; 1: balanced-error optimal)",
    "mixup": "α of Mixup on the labeled view: faces and targets blended with another of the batch, λ ~ Beta(α, α) "
             "(0: off)",
    "keep": "which epoch's model model.safetensors holds: best (on validation) or last; a finished run given last "
            "(or another --weight-ensemble) writes its final model without training again",
    "weight_ensemble": "the fine-tuned weights' share in model.safetensors, the rest from --init-weights (WiSE-FT; "
                       "1: fine-tuned only); validation scores and selects the mixed model",
    "soup_with": "unmixed models of other runs from the same --init-weights (model.safetensors of runs with "
                 "--weight-ensemble 1, such as this recipe with another --seed), averaged with this run's fine-tuned "
                 "weights before the --weight-ensemble mix (a uniform model soup); a finished run given them writes "
                 "its model again",
    "posed_label_weight": "labels CSVs with vote shares: the weight of the file's label against the observers' votes",
    "domain_augment": "labeled view with illumination, low resolution, noise, occluders and wider framing jitter",
    "domain_augment_main": "with --domain-augment, the --data faces get it too (--no-domain-augment-main: only "
                           "--extra-data faces; --data keeps the plain view)",
    "distill_initial": "the --data faces' targets move this share of the way to the --init-weights model's "
                       "predictions on the same view (learning without forgetting; 0: off)",
    "anchor_data": "faces without labels (any --unlabeled-data form), each PATH or PATH@WEIGHT, trained toward the "
                   "--init-weights model's predictions on the same view: what it says on a source no labeled set "
                   "came from (such as: not contempt) is kept",
    "ferplus_csv": "fer2013new.csv (FER+ votes) to pair with fer2013.csv",
    "val_data": "validation faces (default: a stratified --val-fraction of --data)",
    "unlabeled_data": "extra unlabeled faces: npz with 'images', image(s), folder, or a glob like 'annotations/**/*.faces.npz'",
    "classes": "ferplus (8 classes, vote distributions) or fer2013 (7 classes)",
    "label_fraction": "stratified, seeded fraction of --data that keeps its labels; the rest is unlabeled",
    "method": "supervised, fixmatch or leaf",
    "backbone": "resnet-xs, resnet-s or resnet-m",
    "semantic_level": "LEAF's semantic-level gated experts (--no-semantic-level for the ablation)",
    "instance_level": "LEAF's instance-level gated experts (--no-instance-level for the ablation)",
    "category_level": "LEAF's ambiguous pseudo-labels with the ranking loss (off: hard pseudo-labels)",
    "contrastive_weight": f"weight of SimCLR on low-confidence unlabeled faces (LEAF; published 0.1, default {LEAF_CONTRASTIVE_WEIGHT:g}: it costs accuracy from scratch)",
    "contrastive_temperature": f"SimCLR temperature (LEAF; default {LEAF_CONTRASTIVE_TEMPERATURE:g} as published)",
    "labeled_weight": f"weight of the labeled loss against 1 for the pseudo-label loss (LEAF; default {LEAF_LABELED_WEIGHT:g}, published 0.5)",
    "agreement_thresholds": "scale confidence thresholds by the labeled targets' mean top vote share (default on)",
    "distribution_alignment": "align LEAF's pseudo-labels to the labeled class prior (ReMixMatch; default off)",
    "rank_below_threshold": "LEAF's ranking loss also on unlabeled faces below the thresholds (default off)",
    "iterations_per_epoch": "steps per epoch (0: one pass over the labeled faces)",
    "device": "auto, cpu or cuda",
    "output": "run folder: checkpoint, log, curves, confusion matrix, model.safetensors",
    "threads": "torch CPU threads (0: torch's default)",
    "precision": "auto (bf16 autocast where the CPU has native bf16, else fp32), bf16 or fp32",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    train_parser = subparsers.add_parser(
        "train", help="train a LEAF model (supervised, FixMatch or LEAF)",
        description="Under `torchrun --nproc-per-node N -m leaf_fer train ...`, N processes train in "
                    "DistributedDataParallel (gloo on CPU, NCCL on CUDA, one GPU each): every process takes "
                    "1/N of each --batch-size (and --unlabeled-batch-size) global batch; rank 0 writes the run folder.")
    train_parser.add_argument("--config", type=Path, help="YAML file of training options; flags override it")
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            train_parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                      help=OPTION_HELP.get(field.name))
        elif str(field.type).startswith("list"):
            train_parser.add_argument(flag, dest=field.name, nargs="+", default=None, help=OPTION_HELP.get(field.name))
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            train_parser.add_argument(flag, dest=field.name, type=kind, default=None,
                                      help=OPTION_HELP.get(field.name, f"default {field.default}"))
    train_parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --output")
    train_parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    train_parser.set_defaults(func=run_train)


TRAIN_PACKAGES = ("torch", "safetensors", "yaml")
"""What ``leaf-fer[train]`` adds that training imports."""


def require_train_extra() -> None:
    """One clear line instead of an import error when the package was installed without ``[train]``."""
    missing = [name for name in TRAIN_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"training needs {', '.join(missing)}: pip install 'leaf-fer[train]'")


def load_train_config(args: argparse.Namespace) -> TrainConfig:
    values = read_config_file(args.config) if args.config else {}
    for field in fields(TrainConfig):
        value = getattr(args, field.name)
        if value is not None:
            values[field.name] = value
    return TrainConfig.from_dict(values)


def run_train(args: argparse.Namespace) -> int:
    require_train_extra()
    from .trainer import train

    result = train(load_train_config(args), restart=args.restart, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        best = f"best validation accuracy {100 * result['best_accuracy']:.2f}% at epoch {result['best_epoch']}"
        if result["kept"] == "last":
            best = (f"last epoch {result['kept_epoch']}: validation accuracy {100 * result['kept_accuracy']:.2f}% "
                    f"({best})")
        print(f"{best}; weights: {result['weights']}")
    return 0
