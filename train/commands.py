"""`leaf-fer train` and `leaf-fer evaluate`."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path

import yaml

from leaf_fer.realtime.commands import add_pipeline_options, pipeline_config

from .ablation import DEFAULT_VARIANTS, OPT_IN_VARIANTS, VARIANTS
from .algorithms import LEAF_CONTRASTIVE_TEMPERATURE, LEAF_CONTRASTIVE_WEIGHT, LEAF_LABELED_WEIGHT
from .trainer import TrainConfig


OPTION_HELP = {
    "data": "training faces: .npz, fer2013.csv, a labels CSV (file,label), RAF-DB's list file, an AffectNet CSV, "
            "or an image folder with one sub-folder per class (full-size images go through the face detector + aligner)",
    "extra_data": "further labeled sets in any --data format, each PATH or PATH@WEIGHT (draws per face per epoch)",
    "init_weights": "start from these weights (.safetensors of the same network) instead of from scratch",
    "logit_adjustment": "τ of the logit-adjusted loss against the class prior (0: off; 1: balanced-error optimal)",
    "posed_label_weight": "labels CSVs with vote shares: the weight of the file's label against the observers' votes",
    "domain_augment": "labeled view with illumination, low resolution, noise, occluders and wider framing jitter",
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

    ablate_parser = subparsers.add_parser("ablate", help="semi-supervised protocol: methods and LEAF ablations x seeds")
    ablate_parser.add_argument("--config", type=Path, help="YAML of base training options (data, budget, fraction)")
    ablate_parser.add_argument("--variants", nargs="+", default=None, help="any of: " + ", ".join(VARIANTS) + " (default: all but " + ", ".join(OPT_IN_VARIANTS) + ")")
    ablate_parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ablate_parser.add_argument("--output", type=Path, default=Path("runs/ablation"))
    ablate_parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, CPU threads split between them")
    ablate_parser.add_argument("--merge", nargs="+", type=Path, default=[], metavar="RESULTS_JSON",
                               help="earlier results.json of the same protocol whose runs join the table "
                                    "(a run trained here replaces the same variant and seed)")
    ablate_parser.add_argument("--report-only", action="store_true",
                               help="train nothing: write the report of the --merge runs to --output")
    ablate_parser.add_argument("--no-progress", action="store_true")
    ablate_parser.set_defaults(func=run_ablate)

    eval_parser = subparsers.add_parser(
        "evaluate", help="accuracy, macro recall and per-class recall: on model-size faces (npz) or end to end",
        description="An .npz of 48x48 faces scores the model alone. Class sub-folders or a labels CSV (file, label) "
                    "of full-size images run the whole pipeline (detector, aligner, model): no-face rate, accuracy, "
                    "macro recall, per-class recall, confusion PNG and JSON.")
    eval_parser.add_argument("--data", type=Path, required=True,
                             help="npz (images + ferplus_votes or labels), a class-folder tree or a labels CSV")
    eval_parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    eval_parser.add_argument("--output", type=Path,
                             help="folder for evaluation.json and confusion.png (default: none)")
    eval_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_pipeline_options(eval_parser)
    eval_parser.set_defaults(func=run_evaluate)


def load_train_config(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, object] = {}
    if args.config:
        if not args.config.is_file():
            raise ValueError(f"{args.config}: config file not found")
        loaded = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a mapping of option: value")
        values.update(loaded)
    for field in fields(TrainConfig):
        value = getattr(args, field.name)
        if value is not None:
            values[field.name] = value
    return TrainConfig.from_dict(values)


def run_train(args: argparse.Namespace) -> int:
    from .trainer import train

    result = train(load_train_config(args), restart=args.restart, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best validation accuracy {100 * result['best_accuracy']:.2f}% at epoch {result['best_epoch']}; "
              f"weights: {result['weights']}")
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from .ablation import rewrite_report, run_ablation

    values = yaml.safe_load(args.config.read_text()) if args.config else {}
    values = dict(values or {}, method="leaf")
    base = TrainConfig.from_dict(values)
    if args.report_only:
        report = rewrite_report(base, args.merge, args.output)
    else:
        report = run_ablation(base, args.variants or DEFAULT_VARIANTS, args.seeds, args.output,
                              progress=not args.no_progress, jobs=args.jobs, merge=args.merge)
    print(Path(args.output / "results.md").read_text())
    return 0 if report["runs"] else 1


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_weights
    from .weights import atomic_write_bytes

    if args.data.suffix != ".npz":
        from leaf_fer.realtime.evaluate import evaluate_end_to_end, write_report

        report = evaluate_end_to_end(args.data, pipeline_config(args, draw=False), progress=not args.no_progress)
        print(report.summary())
        if args.json:
            atomic_write_bytes(args.json, json.dumps(report.to_dict(), indent=2).encode())
        if args.output:
            write_report(report, args.output, f"{args.data.name}, end to end")
            print(f"evaluate: wrote {args.output}/evaluation.json, confusion.png")
        return 0
    from .metrics import plot_confusion

    scores, protocol = evaluate_weights(args.weights, args.data)
    print(f"{args.data} ({protocol}, {len(scores.classes)} classes)")
    print(scores.summary())
    payload = json.dumps({"data": str(args.data), "protocol": protocol, **scores.to_dict()}, indent=2).encode()
    if args.json:
        atomic_write_bytes(args.json, payload)
    if args.output:
        atomic_write_bytes(args.output / "evaluation.json", payload)
        plot_confusion(scores, args.output / "confusion.png", f"{args.data.name}, {protocol}")
        print(f"evaluate: wrote {args.output}/evaluation.json, confusion.png")
    return 0
