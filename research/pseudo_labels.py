"""Which unlabeled faces a trained semi-supervised run's pseudo-labels cover, scored against their true labels.

For each run folder (a `research.ablation` or `leaf-fer train` output with `model.safetensors`), rebuilds the run's
split from its recorded config, recomputes the class-adaptive thresholds the way training does (the EMA teacher's mean
confidence on correctly classified labeled faces, never below the floor), and pseudo-labels the unlabeled faces on
their clean view.
With the faces' true FER+ labels (which no method reads while training) it reports how many pass, how often the
passing pseudo-labels are right, and where the model's mistakes lie: what passes is what the model already knows.
Below the thresholds it reports how often LEAF's ambiguous positive set (smallest top-k reaching the scaled 0.9 mass)
holds the true class: what a ranking loss on those faces would push up.
Writes reports/pseudo_labels/{pseudo_labels.md,pseudo_labels.json,pseudo_labels.png}.

    python -m research.pseudo_labels runs/ablation_9000/leaf_seed0 runs/ablation_9000/supervised_seed0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from leaf_fer.common import atomic_write_bytes
from leaf_fer.train.algorithms import Algorithm, Leaf
from leaf_fer.train.config import TrainConfig
from leaf_fer.train.losses import ambiguous_positive_mask
from leaf_fer.train.metrics import save_figure
from leaf_fer.train.trainer import confidence_ceiling, predict_probabilities, prepare_splits, refresh_thresholds
from leaf_fer.train.weights import load_weights


def analyse_run(run: Path) -> dict:
    """Pass rate, pseudo-label precision and the model's errors on the run's unlabeled faces, overall and per class."""
    net, metadata = load_weights(run / "model.safetensors")
    config = TrainConfig.from_dict(metadata.training["config"])
    splits = prepare_splits(config)
    classes = list(net.config.classes)
    algorithm = Algorithm(net, len(classes), autocast=False,
                          confidence_ceiling=confidence_ceiling(config, splits.labeled_targets))
    refresh_thresholds(algorithm, net, splits)
    thresholds = algorithm.thresholds.numpy()
    rows = splits.unlabeled_hard >= 0
    truth = splits.unlabeled_hard[rows].astype(int)
    probs = predict_probabilities(net, splits.unlabeled_images[torch.from_numpy(rows)])
    pseudo, confidence = probs.argmax(1), probs.max(1)
    passes = confidence >= thresholds[pseudo]
    right = pseudo == truth
    positive = ambiguous_positive_mask(torch.from_numpy(probs), Leaf.positive_mass * algorithm.confidence_ceiling).numpy()
    covered = positive[np.arange(len(truth)), truth]
    below, below_errors = ~passes, ~passes & ~right
    per_class = {}
    for index, name in enumerate(classes):
        of_class = truth == index
        labelled_as = passes & (pseudo == index)
        per_class[name] = {
            "faces": int(of_class.sum()),
            "threshold": float(thresholds[index]),
            "pass_rate": float(passes[of_class].mean()) if of_class.any() else None,
            "accuracy": float(right[of_class].mean()) if of_class.any() else None,
            "pseudo_labels": int(labelled_as.sum()),
            "precision": float(right[labelled_as].mean()) if labelled_as.any() else None,
        }
    return {
        "run": str(run), "method": config.method, "seed": config.seed,
        "steps": config.epochs * config.iterations_per_epoch, "best_epoch": metadata.training.get("epoch"),
        "validation_accuracy": metadata.metrics.get("validation", {}).get("accuracy"),
        "unlabeled_faces": int(rows.sum()), "accuracy": float(right.mean()), "pass_rate": float(passes.mean()),
        "precision": float(right[passes].mean()) if passes.any() else None,
        "accuracy_below_thresholds": float(right[below].mean()) if below.any() else None,
        "errors_passing": float(passes[~right].mean()) if (~right).any() else None,
        "positive_set_size_below": float(positive[below].sum(1).mean()) if below.any() else None,
        "true_class_in_positive_set_below": float(covered[below].mean()) if below.any() else None,
        "errors_below_with_true_class_in_positive_set": float(covered[below_errors].mean()) if below_errors.any() else None,
        "per_class": per_class,
    }


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def classes_count(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown(results: list[dict]) -> str:
    lines = ["Unlabeled faces of each run's split with a FER+ majority label, pseudo-labelled by the run's best EMA "
             "teacher on their clean view, thresholds recomputed as in training.", "",
             "| run | method | seed | steps | val acc % | unlabeled acc % | pass % | precision of passing % | "
             "acc below thresholds % | errors that pass % | positive set below (classes) | true class in it % | "
             "of errors below % |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['method']} | {r['seed']} | {r['steps']:,} | {percent(r['validation_accuracy'])} | "
                     f"{percent(r['accuracy'])} | {percent(r['pass_rate'])} | {percent(r['precision'])} | "
                     f"{percent(r['accuracy_below_thresholds'])} | {percent(r['errors_passing'])} | "
                     f"{classes_count(r['positive_set_size_below'])} | {percent(r['true_class_in_positive_set_below'])} | "
                     f"{percent(r['errors_below_with_true_class_in_positive_set'])} |")
    classes = list(results[0]["per_class"]) if results else []
    lines += ["", "Per true class: share of its faces that pass / accuracy on its faces (%); faces per class from the "
              "first run.", "", "| run | " + " | ".join(f"{c} ({results[0]['per_class'][c]['faces']:,})" for c in classes) + " |",
              "|---|" + "---|" * len(classes)]
    for r in results:
        cells = [f"{percent(r['per_class'][c]['pass_rate'])} / {percent(r['per_class'][c]['accuracy'])}" for c in classes]
        lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(results[0]["per_class"])
    x = np.arange(len(classes))
    width = 0.8 / len(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for offset, r in enumerate(results):
        label = f"{r['method']} seed {r['seed']}"
        for ax, key in zip(axes, ("pass_rate", "accuracy")):
            values = [100 * (r["per_class"][c][key] or 0.0) for c in classes]
            ax.bar(x + (offset - (len(results) - 1) / 2) * width, values, width, label=label)
    for ax, title in zip(axes, ("unlabeled faces that pass the thresholds, per true class",
                                "model's accuracy on the unlabeled faces, per true class")):
        ax.set_xticks(x, classes, rotation=30)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("%")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with model.safetensors")
    parser.add_argument("--output", type=Path, default=Path("reports/pseudo_labels"))
    args = parser.parse_args()
    missing = [str(run) for run in args.runs if not (run / "model.safetensors").is_file()]
    if missing:
        raise SystemExit(f"no model.safetensors in: {', '.join(missing)}")
    torch.set_num_threads(1)
    results = [analyse_run(run) for run in args.runs]
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.output / "pseudo_labels.json", json.dumps(results, indent=2).encode())
    table = markdown(results)
    atomic_write_bytes(args.output / "pseudo_labels.md", table.encode())
    plot(results, args.output / "pseudo_labels.png")
    print(table)


if __name__ == "__main__":
    main()
