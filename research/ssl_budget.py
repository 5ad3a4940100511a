"""How the semi-supervised methods' lead over supervised-only grows with the training budget, next to the oracle's.

Reads the `research.ablation` reports of one protocol at several budgets (default: every budget in reports/) and, per
budget, tabulates and plots each method's accuracy minus supervised-only's on the same split, seed by seed, with a 95%
Student-t interval of the mean over the seeds. The oracle (`supervised on all labels`) bounds what the unlabeled faces
could add at that budget. A second table pits methods head to head (LEAF + ranking below threshold against LEAF and
FixMatch, LEAF against FixMatch, LEAF against each of its level ablations: what that level adds; supervised-only, on
10% and on all labels, and FixMatch against the same network without the instance-level experts, and LEAF without them
against supervised-only and FixMatch without them; the combined variant against its parts and that FixMatch) and asks
whether each head-to-head difference changed from the previous budget (Welch interval). A third table and
training_gaps.png follow the paired differences along training (validation accuracy per epoch, mean and spread over
the seeds per stretch of steps): when a lead appears, and whether the seeds agree on it. Writes
reports/ssl_budget/{budget.md,budget.json,budget.png,training_gaps.png}.

    python -m research.ssl_budget
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from leaf_fer.common import atomic_write_bytes
from leaf_fer.train.metrics import save_figure
from research.ablation import BASELINE, PUBLISHED_RECIPE, VARIANTS, paired_difference, switches_off_a_level

DEFAULT_REPORTS = sorted(Path("reports").glob("ablation*/results.json"))
COMBINED = "leaf w/o instance + ranking below threshold"
ORACLE = "supervised on all labels"
METHODS = [ORACLE, "leaf", "leaf + ranking below threshold", COMBINED, "leaf + alignment", "fixmatch"]
HEAD_TO_HEAD = [("leaf + ranking below threshold", "leaf"), ("leaf + ranking below threshold", "fixmatch"),
                ("leaf", "fixmatch"), *((PUBLISHED_RECIPE, v) for v in VARIANTS if switches_off_a_level(v)),
                ("leaf + ranking below threshold", "leaf w/o category"), (COMBINED, "leaf + ranking below threshold"),
                (COMBINED, "leaf w/o instance"), (BASELINE, "supervised w/o instance"),
                ("leaf w/o instance", "supervised w/o instance"), (ORACLE, "supervised on all labels w/o instance"),
                ("fixmatch", "fixmatch w/o instance"), ("fixmatch w/o instance", "supervised w/o instance"),
                ("leaf w/o instance", "fixmatch w/o instance"), (COMBINED, "fixmatch w/o instance")]
TRAINING_GAPS = [("leaf + ranking below threshold", "leaf"), ("leaf", BASELINE),
                 ("leaf + ranking below threshold", BASELINE), ("fixmatch", BASELINE)]
GAP_WINDOW_STEPS = 1500


def t_critical(df: float, level: float = 0.95) -> float:
    """Two-sided Student-t critical value for ``df`` (not necessarily whole) degrees of freedom, by integrating the
    density numerically (no scipy in the dependencies)."""
    step = 1e-3
    x = np.arange(0.0, 400.0, step)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df))
    mass = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) * step / 2)])
    return float(np.interp(level / 2, mass, x))


def mean_interval(values: list[float], level: float = 0.95) -> float | None:
    """Half-width of the Student-t interval of the mean of ``values`` (None below two values)."""
    if len(values) < 2:
        return None
    return t_critical(len(values) - 1, level) * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def welch_interval(first: list[float], second: list[float], level: float = 0.95) -> float | None:
    """Half-width of Welch's interval for mean(second) - mean(first) (None when either has fewer than two values)."""
    if len(first) < 2 or len(second) < 2:
        return None
    a, b = np.var(first, ddof=1) / len(first), np.var(second, ddof=1) / len(second)
    if a + b == 0:
        return 0.0
    df = (a + b) ** 2 / (a * a / (len(first) - 1) + b * b / (len(second) - 1))
    return t_critical(df, level) * math.sqrt(a + b)


def steps_of(report: dict) -> int:
    return report["budget"]["epochs"] * report["budget"]["iterations_per_epoch"]


def load_reports(paths: list[Path]) -> list[tuple[Path, dict]]:
    """The ablation reports with their paths, shortest budget first."""
    return sorted(((path, json.loads(path.read_text())) for path in paths), key=lambda item: steps_of(item[1]))


def budget_rows(reports: list[tuple[Path, dict]]) -> list[dict]:
    """One row per (budget, method): steps, both mean accuracies on the seeds both have, and the method's paired
    difference with the baseline (``paired_difference``, per seed)."""
    rows = []
    for path, report in reports:
        accuracy = {(run["variant"], run["seed"]): 100 * run["accuracy"] for run in report["runs"]}
        for method in METHODS:
            paired = paired_difference(report["runs"], method)
            if paired:
                seeds = paired["seeds"]
                rows.append({"report": str(path), "label_fraction": report["label_fraction"],
                             "steps": steps_of(report), "method": method,
                             "seeds": seeds, "baseline_accuracy": float(np.mean([accuracy[BASELINE, s] for s in seeds])),
                             "accuracy": float(np.mean([accuracy[method, s] for s in seeds])),
                             "per_seed": paired["per_seed"], "vs_baseline": paired["mean"],
                             "interval_95": mean_interval(paired["per_seed"])})
    return rows


def head_to_head_rows(reports: list[tuple[Path, dict]]) -> list[dict]:
    """One row per (budget, method, rival) of ``HEAD_TO_HEAD``: the paired difference seed by seed, its 95% interval,
    and the change of the mean from the previous budget that has the pair, with Welch's 95% interval."""
    rows = []
    previous: dict[tuple[str, str], dict] = {}
    for _, report in reports:
        steps = steps_of(report)
        for method, rival in HEAD_TO_HEAD:
            paired = paired_difference(report["runs"], method, baseline=rival)
            if not paired:
                continue
            row = {"steps": steps, "method": method, "rival": rival, "seeds": paired["seeds"],
                   "per_seed": paired["per_seed"], "difference": paired["mean"], "ahead": paired["ahead"],
                   "interval_95": mean_interval(paired["per_seed"]), "change": None, "change_interval_95": None}
            earlier = previous.get((method, rival))
            if earlier is not None:
                row.update(change_from=earlier["steps"], change=row["difference"] - earlier["difference"],
                           change_interval_95=welch_interval(earlier["per_seed"], row["per_seed"]))
            previous[method, rival] = row
            rows.append(row)
    return rows


def paired_curves(runs: list[dict], method: str, rival: str) -> tuple[list[int], np.ndarray] | None:
    """Validation accuracy points of ``method`` minus ``rival`` per epoch, one row per seed both ran in full."""
    curves = {(run["variant"], run["seed"]): [h["val_accuracy"] for h in run.get("history", [])] for run in runs}
    seeds = sorted(seed for variant, seed in curves if variant == method and (rival, seed) in curves)
    lengths = {len(curves[variant, seed]) for seed in seeds for variant in (method, rival)}
    if len(seeds) < 2 or len(lengths) != 1 or 0 in lengths:
        return None
    return seeds, 100 * (np.array([curves[method, s] for s in seeds]) - np.array([curves[rival, s] for s in seeds]))


def training_gap_rows(reports: list[tuple[Path, dict]], window_steps: int = GAP_WINDOW_STEPS) -> list[dict]:
    """Per budget and pair of ``TRAINING_GAPS``: the paired per-epoch difference averaged over each stretch of
    ``window_steps`` steps, then its mean and standard deviation over the seeds, and the per-epoch mean curve."""
    rows = []
    for _, report in reports:
        per_epoch = report["budget"]["iterations_per_epoch"]
        window = max(1, round(window_steps / per_epoch))
        for method, rival in TRAINING_GAPS:
            paired = paired_curves(report["runs"], method, rival)
            if paired is None:
                continue
            seeds, gaps = paired
            stretches = [gaps[:, start:start + window].mean(1) for start in range(0, gaps.shape[1], window)]
            rows.append({"steps": steps_of(report), "method": method, "rival": rival, "seeds": seeds,
                         "epoch_steps": per_epoch, "mean_curve": gaps.mean(0).tolist(),
                         "spread_curve": gaps.std(0, ddof=1).tolist(),
                         "windows": [{"until_step": min((i + 1) * window, gaps.shape[1]) * per_epoch,
                                      "mean": float(stretch.mean()), "seed_spread": float(stretch.std(ddof=1))}
                                     for i, stretch in enumerate(stretches)]})
    return rows


def plus_minus(value: float | None) -> str:
    return "—" if value is None else f"± {value:.2f}"


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


def markdown(rows: list[dict], head_to_head: list[dict], gaps: list[dict]) -> str:
    lines = [f"Accuracy points vs {BASELINE} trained on the same 10% split: mean over the seeds both have, per seed in "
             "brackets, and the 95% Student-t interval of that mean. The oracle, `supervised on all labels`, bounds what "
             "the unlabeled faces could add at each budget.", "",
             f"| steps | seeds | {BASELINE} % | method | method % | vs {BASELINE} (points) | 95% interval | "
             "share of the oracle's lead |", "|---|---|---|---|---|---|---|---|"]
    oracles = {r["steps"]: r for r in rows if r["method"] == ORACLE}
    for r in sorted(rows, key=lambda r: (r["steps"], METHODS.index(r["method"]))):
        seeds = ", ".join(f"{d:+.2f}" for d in r["per_seed"])
        lines.append(f"| {r['steps']:,} | {len(r['seeds'])} | {r['baseline_accuracy']:.2f} | {r['method']} | "
                     f"{r['accuracy']:.2f} | {r['vs_baseline']:+.2f} ({seeds}) | {plus_minus(r['interval_95'])} | "
                     f"{share_of_oracle(r, oracles.get(r['steps']))} |")
    lines += ["", "Head to head on the same split: method minus rival, per seed in brackets, the 95% interval of the "
              "mean, and the change of the mean from the previous budget with Welch's 95% interval (an interval that "
              "holds 0 means the two budgets' results cannot be told apart).", "",
              "| steps | method | rival | seeds | difference (points) | 95% interval | change from the previous budget |",
              "|---|---|---|---|---|---|---|"]
    for r in head_to_head:
        seeds = ", ".join(f"{d:+.2f}" for d in r["per_seed"])
        change = "—" if r["change"] is None else (f"{r['change']:+.2f} {plus_minus(r['change_interval_95'])} "
                                                  f"(from {r['change_from']:,})")
        lines.append(f"| {r['steps']:,} | {r['method']} | {r['rival']} | {len(r['seeds'])} | {r['difference']:+.2f} "
                     f"({seeds}; ahead on {r['ahead']}) | {plus_minus(r['interval_95'])} | {change} |")
    longest = max(gaps, key=lambda r: len(r["windows"]), default={"windows": []})
    bounds = [0] + [w["until_step"] for w in longest["windows"]]
    stretches = len(bounds) - 1
    lines += ["", f"Along training: method minus rival in validation accuracy per epoch, averaged over each stretch of "
              f"{GAP_WINDOW_STEPS:,} steps, mean ± standard deviation over the seeds (a spread as large as the mean: "
              "the seeds disagree).", "",
              "| steps | method | rival | seeds | " + " | ".join(f"steps {a + 1:,}-{b:,}" for a, b in zip(bounds, bounds[1:]))
              + " |", "|---|---|---|---|" + "---|" * stretches]
    for r in gaps:
        cells = [f"{w['mean']:+.2f} ± {w['seed_spread']:.2f}" for w in r["windows"]]
        cells += [""] * (stretches - len(cells))
        lines.append(f"| {r['steps']:,} | {r['method']} | {r['rival']} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for relative_offset, method in zip(np.linspace(-0.025, 0.025, len(METHODS)), METHODS):
        chosen = sorted((r for r in rows if r["method"] == method), key=lambda r: r["steps"])
        if not chosen:
            continue
        steps = [r["steps"] * (1 + relative_offset) for r in chosen]
        line, = ax.plot(steps, [r["vs_baseline"] for r in chosen], marker="o", label=method)
        ax.errorbar(steps, [r["vs_baseline"] for r in chosen], yerr=[r["interval_95"] or 0.0 for r in chosen],
                    fmt="none", ecolor=line.get_color(), alpha=0.5, capsize=3)
        for x, r in zip(steps, chosen):
            ax.scatter([x] * len(r["per_seed"]), r["per_seed"], color=line.get_color(), alpha=0.35, s=14)
    ax.axhline(0.0, color="black", linewidth=0.8)
    budgets = sorted({r["steps"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(xlabel="training steps, log scale (32 labeled + 32 unlabeled faces each)",
           ylabel=f"accuracy points vs {BASELINE}",
           title="10% labels: lead over supervised-only on the same split\n(dots: seeds; bars: 95% interval of the mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_training_gaps(gaps: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [pair for pair in TRAINING_GAPS if any((r["method"], r["rival"]) == pair for r in gaps)]
    if not pairs:
        return
    columns = min(2, len(pairs))
    fig, axes = plt.subplots((len(pairs) + columns - 1) // columns, columns, figsize=(6 * columns, 3.6 * len(pairs) / columns),
                             sharey=True, squeeze=False)
    budgets = sorted({r["steps"] for r in gaps})
    colours = dict(zip(budgets, plt.cm.viridis(np.linspace(0.0, 0.85, len(budgets)))))
    # The first few hundred steps swing by several points; the y range follows what comes after them.
    settled = [value for r in gaps for epoch, (mean, spread) in enumerate(zip(r["mean_curve"], r["spread_curve"]))
               if (epoch + 1) * r["epoch_steps"] > GAP_WINDOW_STEPS / 2 for value in (mean - spread, mean + spread)]
    for ax, (method, rival) in zip(axes.flat, pairs):
        for r in (r for r in gaps if (r["method"], r["rival"]) == (method, rival)):
            steps = r["epoch_steps"] * np.arange(1, len(r["mean_curve"]) + 1)
            mean, spread = np.array(r["mean_curve"]), np.array(r["spread_curve"])
            ax.plot(steps, mean, color=colours[r["steps"]], label=f"{r['steps']:,} steps ({len(r['seeds'])} seeds)")
            ax.fill_between(steps, mean - spread, mean + spread, color=colours[r["steps"]], alpha=0.15)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_title(f"{method}\nminus {rival}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if settled:
        axes[0][0].set_ylim(min(settled) - 0.5, max(settled) + 0.5)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy points (band: ± std over seeds)")
    for ax in axes.flat[len(pairs):]:
        ax.set_visible(False)
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
    reports = load_reports(args.reports)
    rows, head_to_head, gaps = budget_rows(reports), head_to_head_rows(reports), training_gap_rows(reports)
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.output / "budget.json", json.dumps(
        {"vs_baseline": rows, "head_to_head": head_to_head, "training_gaps": gaps}, indent=2).encode())
    table = markdown(rows, head_to_head, gaps)
    atomic_write_bytes(args.output / "budget.md", table.encode())
    plot(rows, args.output / "budget.png")
    plot_training_gaps(gaps, args.output / "training_gaps.png")
    print(table)


if __name__ == "__main__":
    main()
