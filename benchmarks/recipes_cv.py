"""Training recipes side by side by cross-validation by performer, and their weight-space ensembles (WiSE-FT).

For each recipe (``NAME=PATTERN``, ``{fold}`` in the pattern naming fold K's model; ``PATTERN+PATTERN...``: the
uniform average of several runs' fold-K models from the same initial weights, a model soup), each mixing share α and
each fold K, the model α · fold-K model + (1 − α) · its initial weights (the ``init_weights`` its metadata names) is scored
on TCCE fold K's held-out performers and on the held-out contempt photos, end to end on the crops of the live detector
cascade + aligner (cached, pixel for pixel what the pipeline classifies; no face counts as a miss), and on FER+
PublicTest (majority, 8 classes). α = 1 is the fine-tuned model, α = 0 the initial one. With ``--taus``, each mix is
also scored after post-hoc logit adjustment (Menon et al. 2021): log-probabilities minus τ · log of the class prior
the fold model's training loss saw (τ = 0: none). A guard against the contempt set's one-class, one-source confound:
the share of faces from a source no model trained on (``--other-faces``, UTKFace, no expression labels, few if any
contemptuous) that a model calls contempt. Numbers are means over the folds. Writes
OUTPUT/{results.json,results.md,tradeoff.png}.

    python benchmarks/recipes_cv.py --recipes 'default=runs/cvA{fold}/model.safetensors' \
        --alphas 0 0.5 0.6 0.7 0.8 0.9 1 [--taus 0 0.2 0.4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from leaf_fer.common import LeafFerError, atomic_write_bytes, atomic_write_json, new_figure
from leaf_fer.realtime.evaluate import report_from_answers
from leaf_fer.realtime.face_crops import crop_files
from leaf_fer.train.config import TrainConfig
from leaf_fer.train.data import labeled_files, load_npz, load_unlabeled_faces, targets_for
from leaf_fer.train.metrics import save_figure
from leaf_fer.train.model import LeafNet
from leaf_fer.train.model_spec import FERPLUS_CLASSES
from leaf_fer.train.trainer import predict_probabilities, prepare_splits, training_prior
from leaf_fer.train.weights import (
    WeightsMetadata,
    average_weights,
    fine_tuned_from,
    load_weights,
    mix_weights,
)

FOCUS = ("anger", "disgust", "fear")


class LabeledCrops:
    """One labeled image set's face crops (the live detector cascade + aligner) with their labels."""

    def __init__(self, path: Path) -> None:
        files, self.labels = labeled_files(path)
        faces = crop_files(files, progress=False)
        self.path, self.crops, self.found = str(path), torch.from_numpy(faces.crops), faces.found

    def report(self, log_probabilities: np.ndarray, classes: tuple[str, ...]):
        answers = [np.exp(p) if found else None for p, found in zip(log_probabilities, self.found)]
        return report_from_answers(self.path, self.labels, answers, classes)


def log_probabilities(net: LeafNet, images: torch.Tensor) -> np.ndarray:
    return np.log(np.maximum(predict_probabilities(net, images), 1e-12))


def adjusted(log_p: np.ndarray, log_prior: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment, renormalised: log softmax(log p − τ · log prior)."""
    shifted = log_p - tau * log_prior
    return shifted - np.logaddexp.reduce(shifted, axis=1, keepdims=True)


def training_log_prior(metadata: WeightsMetadata) -> np.ndarray:
    """Log of the class distribution the model's training loss saw (its run's data, drawn by weight)."""
    config = dict(metadata.training["config"], init_weights=None, weight_ensemble=1.0)
    splits = prepare_splits(TrainConfig.from_dict(config))
    return training_prior(*splits.annotated()).log().numpy()


def initial_weights(path: str, metadata: WeightsMetadata, loaded: dict[str, LeafNet]) -> LeafNet:
    """The weights the model at ``path`` was fine-tuned from (loaded once per file into ``loaded``)."""
    init = metadata.training.get("config", {}).get("init_weights")
    if not init:
        raise LeafFerError(f"{path}: trained without --init-weights, so it has no initial weights to mix with")
    if init not in loaded:
        loaded[init] = load_weights(init)[0]
    return loaded[init]


def soup(spec: str) -> tuple[LeafNet, WeightsMetadata]:
    """The model at ``spec``, or the uniform average of the models at ``PATH+PATH...`` (one initial model's runs), with
    the first one's metadata."""
    members = [load_weights(path) for path in spec.split("+")]
    if len({fine_tuned_from(metadata) for _, metadata in members}) > 1:
        named = [metadata.training.get("config", {}).get("init_weights") for _, metadata in members]
        raise LeafFerError(f"{spec}: the models were fine-tuned from different initial weights {named}")
    return average_weights([net for net, _ in members]), members[0][1]


def measure(pattern: str, alphas: list[float], taus: list[float], tcce: dict[int, LabeledCrops],
            contempt: LabeledCrops, publictest: tuple[torch.Tensor, np.ndarray], other_faces: torch.Tensor,
            loaded: dict[str, LeafNet]) -> list[dict[str, object]]:
    folds = list(tcce)
    paths = {fold: pattern.format(fold=fold) for fold in folds}
    finetuned = {fold: soup(path) for fold, path in paths.items()}
    inits = ({fold: initial_weights(paths[fold], finetuned[fold][1], loaded) for fold in folds}
             if min(alphas) < 1 else {})
    log_priors = ({fold: training_log_prior(finetuned[fold][1]) for fold in folds} if any(taus)
                  else {fold: np.zeros(len(FERPLUS_CLASSES)) for fold in folds})
    per_fold: dict[tuple[float, float], list[dict]] = {}
    for alpha in alphas:
        for fold in folds:
            net = finetuned[fold][0] if alpha == 1 else mix_weights(finetuned[fold][0], inits[fold], alpha)
            classes = net.config.classes
            outputs = [log_probabilities(net, images)
                       for images in (tcce[fold].crops, contempt.crops, publictest[0], other_faces)]
            for tau in taus:
                on_tcce, on_contempt, on_publictest, on_other = (adjusted(out, log_priors[fold], tau) for out in outputs)
                report = tcce[fold].report(on_tcce, classes)
                per_fold.setdefault((alpha, tau), []).append({
                    "fold": fold, "accuracy": report.scores.accuracy, "macro_recall": report.macro_recall,
                    "per_class_recall": report.scores.per_class_recall,
                    "contempt_recall": contempt.report(on_contempt, classes).scores.per_class_recall["contempt"],
                    "publictest": float((on_publictest.argmax(axis=1) == publictest[1]).mean()),
                    "other_contempt": float((on_other.argmax(axis=1) == classes.index("contempt")).mean())})
    rows = []
    for (alpha, tau), scored in per_fold.items():
        means = {key: float(np.mean([row[key] for row in scored]))
                 for key in ("accuracy", "macro_recall", "contempt_recall", "publictest", "other_contempt")}
        rows.append({"alpha": alpha, "tau": tau, **means, "folds": scored,
                     "per_class_recall": {name: float(np.mean([row["per_class_recall"][name] for row in scored]))
                                          for name in scored[0]["per_class_recall"]}})
    return rows


def adjusting(results: dict[str, list[dict]]) -> bool:
    return any(row["tau"] for rows in results.values() for row in rows)


def markdown(results: dict[str, list[dict]], command: str) -> str:
    tau_header, tau_rule = (" τ |", "---|") if adjusting(results) else ("", "")
    lines = ["# Training recipes by cross-validation, and their weight-space ensembles (WiSE-FT)", "",
             f"`{command}`", "",
             ("Means over the folds; TCCE: each fold model on its own held-out performers, end to end (no face counts "
              "as a miss); contempt: held-out web photos; PublicTest: FER+ majority, 8 classes. α = 1: the fine-tuned "
              "models; α = 0: the initial weights; τ: post-hoc logit adjustment (0: none); other faces called contempt: "
              "the share of the --other-faces set (another source, no expression labels) predicted contempt."), "",
             f"| recipe | α |{tau_header} TCCE accuracy | TCCE macro recall | " + " | ".join(f"TCCE {c}" for c in FOCUS)
             + " | contempt recall | other faces called contempt | PublicTest |",
             f"|---|---|{tau_rule}" + "---|" * (5 + len(FOCUS))]
    for name, rows in results.items():
        for row in rows:
            cells = [row["accuracy"], row["macro_recall"], *(row["per_class_recall"][c] for c in FOCUS),
                     row["contempt_recall"], row["other_contempt"], row["publictest"]]
            tau = f" {row['tau']:g} |" if tau_header else ""
            lines.append(f"| {name} | {row['alpha']:g} |{tau} " + " | ".join(f"{100 * v:.1f}%" for v in cells[:-1])
                         + f" | {100 * cells[-1]:.2f}% |")
    lines += ["", "Per fold, the fine-tuned models (α = 1, τ = 0): TCCE macro recall / fear recall / PublicTest, %:", "",
              "| recipe | " + " | ".join(f"fold {row['fold']}" for row in next(iter(results.values()))[0]["folds"])
              + " |", "|---|" + "---|" * len(next(iter(results.values()))[0]["folds"])]
    for name, rows in results.items():
        for row in rows:
            if row["alpha"] == 1 and row["tau"] == 0:
                lines.append(f"| {name} | " + " | ".join(
                    f"{100 * f['macro_recall']:.1f} / {100 * f['per_class_recall']['fear']:.1f} / "
                    f"{100 * f['publictest']:.2f}" for f in row["folds"]) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict]], path: Path) -> None:
    fig = new_figure(6.5, 4.5)
    ax = fig.add_subplot()
    for name, all_rows in results.items():
        for tau in sorted({row["tau"] for row in all_rows}):
            rows = [row for row in all_rows if row["tau"] == tau]
            x = [100 * row["publictest"] for row in rows]
            y = [100 * row["macro_recall"] for row in rows]
            ax.plot(x, y, "o-", label=f"{name}, τ={tau:g}" if adjusting(results) else name)
            for row, xi, yi in zip(rows, x, y):
                ax.annotate(f"α={row['alpha']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("FER+ PublicTest accuracy (%)")
    ax.set_ylabel("TCCE held-out macro recall (%)")
    ax.set_title("Fine-tuned ↔ initial weights")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", required=True, metavar="NAME=PATTERN",
                        help="fold models, {fold} in the pattern; PATTERN+PATTERN averages several runs' models")
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    parser.add_argument("--taus", nargs="+", type=float, default=[0.0],
                        help="post-hoc logit adjustment strengths to score each mix at (0: none)")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--splits", type=Path, default=Path("runs/splits"))
    parser.add_argument("--contempt", type=Path, default=Path("runs/splits/contempt_test.csv"))
    parser.add_argument("--publictest", type=Path, default=Path("../shared/data/fer2013_publictest.npz"))
    parser.add_argument("--other-faces", type=Path, default=Path("../shared/data/unlabeled/utkface_crop_part1"),
                        help="faces of another source without expression labels (image folder)")
    parser.add_argument("--other-limit", type=int, default=3000, help="seeded sample of that many of them")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("reports/recipes_cv"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_npz(args.publictest)
    targets = targets_for(data, FERPLUS_CLASSES)
    rows = np.flatnonzero(targets.hard >= 0)
    publictest = torch.from_numpy(np.ascontiguousarray(data.images[rows])), targets.hard[rows]
    contempt = LabeledCrops(args.contempt)
    tcce = {fold: LabeledCrops(args.splits / f"tcce_fold{fold}_test.csv") for fold in args.folds}
    other_faces = torch.from_numpy(load_unlabeled_faces(args.other_faces, args.other_limit))
    results, loaded = {}, {}
    for spec in args.recipes:
        name, _, pattern = spec.partition("=")
        results[name] = measure(pattern, args.alphas, args.taus, tcce, contempt, publictest, other_faces, loaded)
        print(f"{name}: " + "; ".join(f"α={r['alpha']:g} τ={r['tau']:g} macro recall {100 * r['macro_recall']:.1f}% "
                                      f"PublicTest {100 * r['publictest']:.2f}%" for r in results[name]), flush=True)
    command = "python benchmarks/recipes_cv.py --recipes " + " ".join(f"'{r}'" for r in args.recipes) + \
              " --alphas " + " ".join(f"{a:g}" for a in args.alphas)
    if args.taus != parser.get_default("taus"):
        command += " --taus " + " ".join(f"{t:g}" for t in args.taus)
    for option in ("other_faces", "other_limit"):
        if getattr(args, option) != parser.get_default(option):
            command += f" --{option.replace('_', '-')} {getattr(args, option)}"
    if args.folds != parser.get_default("folds"):
        command += " --folds " + " ".join(map(str, args.folds))
    if args.output != parser.get_default("output"):
        command += f" --output {args.output}"
    atomic_write_json(args.output / "results.json",
                      {"command": command, "inits": sorted(loaded), "folds": args.folds, "results": results})
    atomic_write_bytes(args.output / "results.md", markdown(results, command).encode())
    plot(results, args.output / "tradeoff.png")
    print(f"wrote {args.output}/results.md")


if __name__ == "__main__":
    main()
