"""How the semi-supervised methods' lead over supervised-only grows with the training budget, next to the oracle's.

Reads the `leaf-fer ablate` reports of one protocol at several budgets (default: the four in reports/) and, per
budget, tabulates and plots each method's accuracy minus supervised-only's on the same split, seed by seed. The
oracle (`supervised on all labels`) bounds what the unlabeled faces could add at that budget. Writes
reports/ssl_budget/{budget.md,budget.json,budget.png}.

    python benchmarks/ssl_budget.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from leaf_fer.train.ablation import BASELINE, paired_difference
from leaf_fer.train.metrics import save_figure
from leaf_fer.train.weights import atomic_write_bytes

DEFAULT_REPORTS = [Path("reports/ablation/results.json"), Path("reports/ablation_long/results.json"),
                   Path("reports/ablation_4500/results.json"), Path("reports/ablation_9000/results.json")]
METHODS = ["supervised on all labels", "leaf", "leaf + ranking below threshold", "leaf + alignment", "fixmatch"]


def budget_rows(paths: list[Path]) -> list[dict]:
    """One row per (budget, method): steps, both mean accuracies on the seeds both have, and the method's paired
    difference with the baseline (``paired_difference``, per seed)."""
    rows = []
    for path in paths:
        report = json.loads(path.read_text())
        budget = report["budget"]
        accuracy = {(run["variant"], run["seed"]): 100 * run["accuracy"] for run in report["runs"]}
        for method in METHODS:
            paired = paired_difference(report["runs"], method)
            if paired:
                seeds = paired["seeds"]
                rows.append({"report": str(path), "label_fraction": report["label_fraction"],
                             "steps": budget["epochs"] * budget["iterations_per_epoch"], "method": method,
                             "seeds": seeds, "baseline_accuracy": float(np.mean([accuracy[BASELINE, s] for s in seeds])),
                             "accuracy": float(np.mean([accuracy[method, s] for s in seeds])),
                             "per_seed": paired["per_seed"], "vs_baseline": paired["mean"]})
    return rows


def share_of_oracle(row: dict, oracle: dict | None) -> str:
    """The method's mean lead over the oracle's, on the seeds both have (when the oracle's lead is worth dividing by)."""
    if oracle is None or row is oracle:
        return "—"
    mine, oracles = dict(zip(row["seeds"], row["per_seed"])), dict(zip(oracle["seeds"], oracle["per_seed"]))
    common = sorted(mine.keys() & oracles.keys())
    lead = np.mean([oracles[seed] for seed in common]) if common else 0.0
    if lead < 0.5:
        return "—"
    return f"{100 * np.mean([mine[seed] for seed in common]) / lead:.0f}% (seeds {common})"


def markdown(rows: list[dict]) -> str:
    lines = [f"Accuracy points vs {BASELINE} trained on the same 10% split: mean over the seeds both have, per seed in "
             "brackets. The oracle, `supervised on all labels`, bounds what the unlabeled faces could add at each "
             "budget.", "",
             f"| steps | seeds | {BASELINE} % | method | method % | vs {BASELINE} (points) | share of the oracle's lead |",
             "|---|---|---|---|---|---|---|"]
    oracles = {r["steps"]: r for r in rows if r["method"] == METHODS[0]}
    for r in sorted(rows, key=lambda r: (r["steps"], METHODS.index(r["method"]))):
        seeds = ", ".join(f"{d:+.2f}" for d in r["per_seed"])
        lines.append(f"| {r['steps']:,} | {len(r['seeds'])} | {r['baseline_accuracy']:.2f} | {r['method']} | "
                     f"{r['accuracy']:.2f} | {r['vs_baseline']:+.2f} ({seeds}) | "
                     f"{share_of_oracle(r, oracles.get(r['steps']))} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for offset, method in zip(np.linspace(-60, 60, len(METHODS)), METHODS):
        chosen = sorted((r for r in rows if r["method"] == method), key=lambda r: r["steps"])
        if not chosen:
            continue
        steps = [r["steps"] + offset for r in chosen]
        line, = ax.plot(steps, [r["vs_baseline"] for r in chosen], marker="o", label=method)
        for x, r in zip(steps, chosen):
            ax.scatter([x] * len(r["per_seed"]), r["per_seed"], color=line.get_color(), alpha=0.35, s=14)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set(xlabel="training steps (32 labeled + 32 unlabeled faces each)", ylabel=f"accuracy points vs {BASELINE}",
           title="10% labels: lead over supervised-only on the same split (dots: seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="*", type=Path, default=DEFAULT_REPORTS, help="ablation results.json files")
    parser.add_argument("--output", type=Path, default=Path("reports/ssl_budget"))
    args = parser.parse_args()
    missing = [str(p) for p in args.reports if not p.is_file()]
    if missing:
        raise SystemExit(f"ablation report(s) not found: {', '.join(missing)}")
    rows = budget_rows(args.reports)
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.output / "budget.json", json.dumps(rows, indent=2).encode())
    table = markdown(rows)
    atomic_write_bytes(args.output / "budget.md", table.encode())
    plot(rows, args.output / "budget.png")
    print(table)


if __name__ == "__main__":
    main()
