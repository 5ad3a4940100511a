"""Semi-supervised protocol: every method and LEAF ablation at one label fraction, same budget, several seeds.

A research harness, not part of the installed package; from the repository root:

    python -m research.ablation --config research/configs/ssl_10pct.yaml --jobs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from leaf_fer.common import atomic_write_bytes
from leaf_fer.train.config import PLACEMENT_OPTIONS, TrainConfig, read_config_file
from leaf_fer.train.metrics import save_figure
from leaf_fer.train.trainer import train
from leaf_fer.train.weights import read_metadata

VARIANTS: dict[str, dict[str, Any]] = {
    "supervised": {"method": "supervised"},
    "fixmatch": {"method": "fixmatch"},
    "leaf": {"method": "leaf"},
    "leaf w/o semantic": {"method": "leaf", "semantic_level": False},
    "leaf w/o instance": {"method": "leaf", "instance_level": False},
    "leaf w/o category": {"method": "leaf", "category_level": False},
    "leaf + contrastive": {"method": "leaf", "contrastive_weight": 0.1},
    "leaf + alignment": {"method": "leaf", "distribution_alignment": True},
    "leaf + ranking below threshold": {"method": "leaf", "rank_below_threshold": True},
    "leaf w/o instance + ranking below threshold": {"method": "leaf", "instance_level": False,
                                                    "rank_below_threshold": True},
    "supervised on all labels": {"method": "supervised", "label_fraction": 1.0},
    "supervised w/o instance": {"method": "supervised", "instance_level": False},
    "supervised on all labels w/o instance": {"method": "supervised", "label_fraction": 1.0, "instance_level": False},
    "fixmatch w/o instance": {"method": "fixmatch", "instance_level": False},
}
# Run only when asked for. "supervised on all labels" is the oracle: the unlabeled faces with their true labels, same
# steps and batch; its lead over "supervised" is about the most the unlabeled faces could add at this budget. The two
# supervised variants without the instance-level experts tell whether that block costs accuracy without pseudo-labels;
# FixMatch without it is the semi-supervised baseline on the same network as "leaf w/o instance".
OPT_IN_VARIANTS = ("leaf + alignment", "leaf + ranking below threshold", "leaf w/o instance + ranking below threshold",
                   "supervised on all labels", "supervised w/o instance", "supervised on all labels w/o instance",
                   "fixmatch w/o instance")
DEFAULT_VARIANTS = [v for v in VARIANTS if v not in OPT_IN_VARIANTS]
BASELINE = "supervised"
PAIRED_KEY = f"vs_{BASELINE}"
LAST_EPOCHS = 10
# What every run used before the precision option: CPU training always ran in bf16 autocast.
PRECISION_BEFORE_THE_OPTION = "bf16"
LATE_PAIRED_KEY = f"last_{LAST_EPOCHS}_epochs_vs_{BASELINE}"
# The semi-supervised baseline every LEAF variant is also paired with, seed by seed.
SSL_BASELINE = "fixmatch"
SSL_PAIRED_KEY = f"vs_{SSL_BASELINE}"
SSL_LATE_PAIRED_KEY = f"last_{LAST_EPOCHS}_epochs_vs_{SSL_BASELINE}"
# What a LEAF level adds: the published recipe minus the variant that switches the level off, seed by seed.
PUBLISHED_RECIPE = "leaf"
LEVEL_SWITCHES = ("semantic_level", "instance_level", "category_level")
LEVEL_KEY = "level_adds"
LEVEL_LATE_KEY = f"level_adds_last_{LAST_EPOCHS}_epochs"
RUN_KEYS = ("variant", "seed", "accuracy", "macro_f1")
RUN_SPECIFIC = {"seed", *PLACEMENT_OPTIONS} | {key for overrides in VARIANTS.values() for key in overrides}


def variant_config(base: TrainConfig, variant: str, seed: int, output: Path) -> TrainConfig:
    """The run of one variant and seed; supervised-only trains on the same labeled fraction and ignores the rest."""
    name = variant.replace(" ", "_").replace("/", "")
    return replace(base, **VARIANTS[variant], seed=seed, output=str(output / f"{name}_seed{seed}"))


def run_ablation(base: TrainConfig, variants: list[str], seeds: list[int], output: Path, progress: bool = True,
                 jobs: int = 1, merge: list[Path] | tuple[Path, ...] = ()) -> dict[str, Any]:
    """Train every (variant, seed), seed by seed so that a full table of one seed comes first; each run resumes.

    With ``jobs`` > 1 that many runs train at once in worker processes, the CPU threads split between them (small
    networks use two single-thread processes better than one two-thread process). ``merge`` names earlier
    results.json files of the same protocol whose runs join the table (see ``load_merged_runs``).
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    if jobs < 1:
        raise ValueError(f"jobs must be ≥ 1, got {jobs}")
    merged = load_merged_runs(merge, base)
    output.mkdir(parents=True, exist_ok=True)
    planned = [(variant, seed) for seed in seeds for variant in variants]
    runs: list[dict[str, Any]] = []
    report: dict[str, Any] = {}

    def record(variant: str, seed: int, result: dict[str, Any]) -> None:
        nonlocal report
        best = result["history"][result["best_epoch"] - 1]
        metadata = read_metadata(result["weights"])
        validation = metadata.metrics.get("validation", {})
        runs.append({"variant": variant, "seed": seed, "accuracy": best["val_accuracy"],
                     "macro_f1": best["val_macro_f1"], "per_class_recall": validation.get("per_class_recall"),
                     "best_epoch": result["best_epoch"],
                     "train_seconds": result["elapsed_s"],
                     "precision": metadata.training.get("precision", PRECISION_BEFORE_THE_OPTION),
                     "history": [{"epoch": h["epoch"], "val_accuracy": h["val_accuracy"], "mask": h.get("mask")}
                                 for h in result["history"]]})
        report_reproduction(runs[-1], merged)
        report = write_report(base, combine_runs(runs, merged), output)

    if jobs == 1:
        for variant, seed in planned:
            print(f"== {variant}, seed {seed}", flush=True)
            record(variant, seed, train(variant_config(base, variant, seed, output), progress=progress))
        return report
    threads = base.threads or max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(train, replace(variant_config(base, variant, seed, output), threads=threads),
                               restart=False, progress=False):
                   (variant, seed) for variant, seed in planned}
        for future in as_completed(futures):
            variant, seed = futures[future]
            result = future.result()
            print(f"== {variant}, seed {seed}: {100 * result['best_accuracy']:.2f}%", flush=True)
            record(variant, seed, result)
    return report


PARENT_POLL_SECONDS = 1.0


def exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this training worker when the harness that started it is gone (killed, not only
    interrupted), instead of training on unseen into the same run folders as the next harness."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def protocol_of(base: TrainConfig) -> dict[str, Any]:
    """What every run of one table shares: the base training options less the variant's, the seed and the machine."""
    return {key: value for key, value in asdict(base).items() if key not in RUN_SPECIFIC}


def budget_of(base: TrainConfig) -> dict[str, Any]:
    return {"epochs": base.epochs, "iterations_per_epoch": base.iterations_per_epoch, "batch_size": base.batch_size,
            "unlabeled_batch_size": base.unlabeled_batch_size, "backbone": base.backbone}


def load_merged_runs(paths: list[Path] | tuple[Path, ...], base: TrainConfig) -> list[dict[str, Any]]:
    """Runs of earlier results.json files, checked to be of this protocol: same label fraction and budget, and the
    same base options where the file records them (reports written before they were recorded carry only the
    budget). Lets a table grow over sessions or machines without retraining what it already has."""
    merged: list[dict[str, Any]] = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
            fraction, budget, earlier_runs = report["label_fraction"], report["budget"], report["runs"]
            missing = sorted({key for run in earlier_runs for key in RUN_KEYS if key not in run})
        except FileNotFoundError:
            raise ValueError(f"{path}: ablation report not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not an ablation results.json ({error})") from None
        if missing:
            raise ValueError(f"{path}: not an ablation results.json (runs without {', '.join(missing)})")
        unknown = {run["variant"] for run in earlier_runs} - set(VARIANTS)
        if unknown:
            raise ValueError(f"{path}: unknown variant(s) {sorted(unknown)}; known: {list(VARIANTS)}")
        differing = [key for key, value in protocol_of(base).items()
                     if key in report.get("protocol", {}) and report["protocol"][key] != value]
        if fraction != base.label_fraction or budget != budget_of(base) or differing:
            detail = ", ".join(differing) or f"label fraction {fraction}, budget {budget}"
            raise ValueError(f"{path}: another protocol than this run's ({detail}); only the same protocol merges")
        merged.extend(earlier_runs)
    return merged


def rewrite_report(base: TrainConfig, merge: list[Path] | tuple[Path, ...], output: Path) -> dict[str, Any]:
    """The report of earlier runs only, nothing trained: joins results.json files of one protocol, or rewrites one
    in this version's tables and plots."""
    merged = load_merged_runs(merge, base)
    if not merged:
        raise ValueError("nothing to report: give the results.json to rewrite with --merge")
    return write_report(base, combine_runs([], merged), output)


def report_reproduction(run: dict[str, Any], merged: list[dict[str, Any]]) -> None:
    """Say whether a run trained here reproduces the merged run of the same variant and seed (it replaces it): the
    protocol is seeded, so on the same machine and thread count it reproduces to the last digit."""
    for earlier in merged:
        if (earlier["variant"], earlier["seed"]) == (run["variant"], run["seed"]):
            same = abs(run["accuracy"] - earlier["accuracy"]) < 1e-9
            print(f"{run['variant']}, seed {run['seed']}: {100 * run['accuracy']:.2f}% here, "
                  f"{100 * earlier['accuracy']:.2f}% in the merged report ({'reproduced' if same else 'DIFFERS'}; "
                  "the run trained here is kept)", flush=True)


def combine_runs(runs: list[dict[str, Any]], merged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This session's runs and the merged ones, a run trained here replacing a merged run of the same variant and
    seed; ordered seed by seed, variants in the harness's order (baselines, LEAF, ablations, opt-in variants)."""
    combined = {**{(r["variant"], r["seed"]): r for r in merged}, **{(r["variant"], r["seed"]): r for r in runs}}
    order = list(VARIANTS)
    return sorted(combined.values(), key=lambda r: (r["seed"], order.index(r["variant"])))


def write_report(base: TrainConfig, runs: list[dict[str, Any]], output: Path) -> dict[str, Any]:
    """results.json, results.md and results.png of the runs so far (rewritten after every run, atomically)."""
    summary = summarise(runs)
    report = {"label_fraction": base.label_fraction, "budget": budget_of(base), "protocol": protocol_of(base),
              "seeds": sorted({r["seed"] for r in runs}), "runs": runs, "summary": summary}
    atomic_write_bytes(output / "results.json", json.dumps(report, indent=2).encode())
    atomic_write_bytes(output / "results.md", markdown_table(report).encode())
    plot_summary(summary, output / "results.png", base.label_fraction)
    plot_learning(runs, output / "learning.png", base.iterations_per_epoch)
    return report


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        acc = np.array([r["accuracy"] for r in runs if r["variant"] == variant]) * 100
        f1 = np.array([r["macro_f1"] for r in runs if r["variant"] == variant]) * 100
        summary[variant] = {"accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
                            "macro_f1_mean": float(f1.mean()), "macro_f1_std": float(f1.std()), "n": int(len(acc))}
        recalls = [r["per_class_recall"] for r in runs if r["variant"] == variant and r.get("per_class_recall")]
        if recalls:
            summary[variant]["recall_mean"] = {cls: float(np.mean([100 * recall[cls] for recall in recalls]))
                                               for cls in recalls[0]}
            summary[variant]["recall_n"] = len(recalls)
        comparisons = [(PAIRED_KEY, best_accuracy, BASELINE), (LATE_PAIRED_KEY, late_accuracy, BASELINE)]
        if VARIANTS.get(variant, {}).get("method") == "leaf":
            comparisons += [(SSL_PAIRED_KEY, best_accuracy, SSL_BASELINE),
                            (SSL_LATE_PAIRED_KEY, late_accuracy, SSL_BASELINE)]
        for key, score, baseline in comparisons:
            paired = paired_difference(runs, variant, score, baseline)
            if paired:
                summary[variant][key] = paired
        if switches_off_a_level(variant):
            for key, score in ((LEVEL_KEY, best_accuracy), (LEVEL_LATE_KEY, late_accuracy)):
                paired = paired_difference(runs, PUBLISHED_RECIPE, score, baseline=variant)
                if paired:
                    summary[variant][key] = paired
    return summary


def switches_off_a_level(variant: str) -> bool:
    """True for the ablations of the published recipe that switch one of LEAF's three levels off and change nothing
    else."""
    overrides = VARIANTS.get(variant, {})
    return any(overrides == {"method": "leaf", level: False} for level in LEVEL_SWITCHES)


def best_accuracy(run: dict[str, Any]) -> float | None:
    return run["accuracy"]


def late_accuracy(run: dict[str, Any]) -> float | None:
    """Mean validation accuracy over the last ``LAST_EPOCHS`` epochs: free of the best-epoch selection, which picks
    the luckiest of many noisy epochs on a 2,862-face validation set."""
    history = run.get("history") or []
    if len(history) < LAST_EPOCHS:
        return None
    return float(np.mean([epoch["val_accuracy"] for epoch in history[-LAST_EPOCHS:]]))


def paired_difference(runs: list[dict[str, Any]], variant: str,
                      score: Callable[[dict[str, Any]], float | None] = best_accuracy,
                      baseline: str = BASELINE) -> dict[str, Any] | None:
    """Accuracy points of ``variant`` minus ``baseline`` trained on the same split (same seed), seed by seed: the
    seeds' splits move every method together, so the paired difference is what tells a method's effect. ``score``
    reads a run's accuracy (default: at the best epoch); runs it gives None are left out."""
    if variant == baseline:
        return None
    scored = [(r, score(r)) for r in runs if r["variant"] in (baseline, variant)]
    reference = {r["seed"]: value for r, value in scored if r["variant"] == baseline and value is not None}
    paired = [(r["seed"], value) for r, value in scored
              if r["variant"] == variant and r["seed"] in reference and value is not None]
    if not paired:
        return None
    deltas = [100 * (value - reference[seed]) for seed, value in paired]
    return {"per_seed": deltas, "seeds": [seed for seed, _ in paired], "mean": float(np.mean(deltas)),
            "std": float(np.std(deltas)), "ahead": sum(d > 0 for d in deltas), "n": len(deltas)}


def versus(paired: dict[str, Any] | None) -> str:
    if not paired:
        return "—"
    if paired["n"] == 1:
        return f"{paired['mean']:+.2f} (seed {paired['seeds'][0]} only)"
    return (f"{paired['mean']:+.2f} ± {paired['std']:.2f} (ahead on {paired['ahead']} of {paired['n']} seeds: "
            + ", ".join(f"{d:+.2f}" for d in paired["per_seed"]) + ")")


def mean_and_spread(mean: float, std: float, n: int) -> str:
    """``mean ± std`` over the seeds; one seed has no spread to show."""
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def precision_note(runs: list[dict[str, Any]]) -> list[str]:
    """Which runs trained in fp32 where the others used bf16 autocast."""
    fp32 = [f"{r['variant']} seed {r['seed']}" for r in runs
            if r.get("precision", PRECISION_BEFORE_THE_OPTION) == "fp32"]
    if not fp32 or len(fp32) == len(runs):
        return []
    return [f"Trained in fp32 (a CPU without native bf16): {', '.join(fp32)}; every other run in bf16 autocast.", ""]


def markdown_table(report: dict[str, Any]) -> str:
    budget = report["budget"]
    lines = [f"Label fraction {100 * report['label_fraction']:.0f}%, seeds {report['seeds']}, backbone {budget['backbone']}, "
             f"{budget['epochs']} epochs x {budget['iterations_per_epoch'] or 'auto'} iterations, batch "
             f"{budget['batch_size']} labeled + {budget['unlabeled_batch_size']} unlabeled. Validation: FER+ majority, "
             "best epoch of the EMA teacher (mean ± std over seeds).", "",
             *precision_note(report["runs"]),
             f"| method | accuracy % | macro-F1 % | accuracy vs {BASELINE}, same split (points) | "
             f"mean of the last {LAST_EPOCHS} epochs vs {BASELINE} (points) |", "|---|---|---|---|---|"]
    for variant, s in report["summary"].items():
        lines.append(f"| {variant} | {mean_and_spread(s['accuracy_mean'], s['accuracy_std'], s['n'])} | "
                     f"{mean_and_spread(s['macro_f1_mean'], s['macro_f1_std'], s['n'])} | "
                     f"{versus(s.get(PAIRED_KEY))} | {versus(s.get(LATE_PAIRED_KEY))} |")
    against_ssl = {variant: s for variant, s in report["summary"].items() if SSL_PAIRED_KEY in s}
    if against_ssl:
        lines += ["", f"LEAF against {SSL_BASELINE}, same split (points):", "",
                  f"| method | accuracy vs {SSL_BASELINE} | mean of the last {LAST_EPOCHS} epochs vs {SSL_BASELINE} |",
                  "|---|---|---|"]
        for variant, s in against_ssl.items():
            lines.append(f"| {variant} | {versus(s[SSL_PAIRED_KEY])} | {versus(s.get(SSL_LATE_PAIRED_KEY))} |")
    ablated = {variant: s for variant, s in report["summary"].items() if LEVEL_KEY in s}
    if ablated:
        lines += ["", "What each level adds: leaf minus the variant without it, same split (points):", "",
                  f"| variant | leaf minus it | mean of the last {LAST_EPOCHS} epochs, leaf minus it |",
                  "|---|---|---|"]
        for variant, s in ablated.items():
            lines.append(f"| {variant} | {versus(s[LEVEL_KEY])} | {versus(s.get(LEVEL_LATE_KEY))} |")
    with_recall = {variant: s for variant, s in report["summary"].items() if "recall_mean" in s}
    if with_recall:
        classes = list(next(iter(with_recall.values()))["recall_mean"])
        lines += ["", "Recall per class % at the best epoch (mean over the runs that recorded it):", "",
                  "| method | runs | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
        for variant, s in with_recall.items():
            lines.append(f"| {variant} | {s['recall_n']} | "
                         + " | ".join(f"{s['recall_mean'][cls]:.1f}" for cls in classes) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict[str, dict[str, Any]], path: Path, fraction: float) -> None:
    """Mean accuracy per method (left) and, seed by seed, each method's accuracy minus the baseline's on the same
    split (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, (acc_ax, delta_ax) = plt.subplots(1, 2, figsize=(12, 3.8))
    acc_ax.bar(names, [summary[n]["accuracy_mean"] for n in names], yerr=[summary[n]["accuracy_std"] for n in names],
               capsize=4)
    low = min(summary[n]["accuracy_mean"] for n in names)
    acc_ax.set_ylim(max(0, low - 8), min(100, max(summary[n]["accuracy_mean"] for n in names) + 4))
    acc_ax.set_ylabel("validation accuracy %")
    acc_ax.set_title(f"FER+ with {100 * fraction:.0f}% labels (mean ± std over seeds)")
    paired = [n for n in names if PAIRED_KEY in summary[n]]
    for x, name in enumerate(paired):
        deltas = summary[name][PAIRED_KEY]["per_seed"]
        delta_ax.scatter([x] * len(deltas), deltas, color="tab:blue", alpha=0.7)
        delta_ax.hlines(np.mean(deltas), x - 0.3, x + 0.3, color="tab:red")
    delta_ax.axhline(0.0, color="black", linewidth=0.8)
    delta_ax.set_xticks(range(len(paired)), paired)
    delta_ax.set_ylabel(f"accuracy points vs {BASELINE}")
    delta_ax.set_title("same split, per seed (dots) and mean (line)")
    delta_ax.grid(axis="y", alpha=0.3)
    for ax in (acc_ax, delta_ax):
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    save_figure(fig, path)


def plot_learning(runs: list[dict[str, Any]], path: Path, iterations_per_epoch: int) -> None:
    """Validation accuracy and the share of unlabeled faces passing the confidence threshold, per epoch, mean over
    seeds: shows when each method's unlabeled loss starts to count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, mask_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for variant in dict.fromkeys(r["variant"] for r in runs):
        histories = [r["history"] for r in runs if r["variant"] == variant and r.get("history")]
        if not histories:
            continue
        length = min(len(h) for h in histories)
        epochs = np.arange(1, length + 1)
        acc = np.mean([[e["val_accuracy"] * 100 for e in h[:length]] for h in histories], axis=0)
        line, = acc_ax.plot(epochs, acc, marker=".", label=variant)
        masks = [[e["mask"] for e in h[:length]] for h in histories]
        if all(m is not None for row in masks for m in row):
            mask_ax.plot(epochs, np.mean(masks, axis=0) * 100, marker=".", color=line.get_color(), label=variant)
    unit = f"epoch ({iterations_per_epoch} steps)" if iterations_per_epoch else "epoch"
    acc_ax.set(xlabel=unit, ylabel="validation accuracy %", title="EMA teacher on validation")
    mask_ax.set(xlabel=unit, ylabel="% of unlabeled faces used", title="pseudo-labels above threshold")
    acc_ax.legend(fontsize=7)
    for ax in (acc_ax, mask_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m research.ablation",
        description="Semi-supervised protocol: methods and LEAF ablations x seeds, table + plots; finished runs "
                    "resume.")
    parser.add_argument("--config", type=Path, help="YAML of base training options (data, budget, fraction)")
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"any of: {', '.join(VARIANTS)} (default: all but {', '.join(OPT_IN_VARIANTS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--output", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, CPU threads split between them")
    parser.add_argument("--merge", nargs="+", type=Path, default=[], metavar="RESULTS_JSON",
                        help="earlier results.json of the same protocol whose runs join the table "
                             "(a run trained here replaces the same variant and seed)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the report of the --merge runs to --output")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    """Train (or, with ``--report-only``, only report) the protocol of ``--config`` with LEAF as the base method."""
    values = read_config_file(args.config) if args.config else {}
    base = TrainConfig.from_dict(dict(values, method="leaf"))
    if args.report_only:
        report = rewrite_report(base, args.merge, args.output)
    else:
        report = run_ablation(base, args.variants or DEFAULT_VARIANTS, args.seeds, args.output,
                              progress=not args.no_progress, jobs=args.jobs, merge=args.merge)
    print(Path(args.output / "results.md").read_text())
    return 0 if report["runs"] else 1


def main(argv: list[str] | None = None) -> int:
    """The harness's command line: a failure the user can act on is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("ablation: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"ablation: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
