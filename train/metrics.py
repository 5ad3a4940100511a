"""Classification metrics and their plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leaf_fer.common import atomic_write_bytes, figure_png


@dataclass
class Scores:
    classes: tuple[str, ...]
    accuracy: float
    macro_f1: float
    per_class_recall: dict[str, float]
    confusion: np.ndarray
    count: int

    def to_dict(self) -> dict[str, object]:
        return {
            "classes": list(self.classes),
            "count": self.count,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class_recall": self.per_class_recall,
            "confusion": self.confusion.tolist(),
        }

    def summary(self) -> str:
        lines = [f"samples {self.count}  accuracy {100 * self.accuracy:.2f}%  macro-F1 {100 * self.macro_f1:.2f}%"]
        lines += [f"  recall {name:<10} {100 * value:6.2f}%" for name, value in self.per_class_recall.items()]
        return "\n".join(lines)


def score(labels: np.ndarray, predictions: np.ndarray, classes: tuple[str, ...]) -> Scores:
    """Accuracy, macro-F1 (over classes present in labels or predictions) and per-class recall."""
    n = len(classes)
    confusion = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)
    true_count = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    hits = np.diag(confusion)
    recall = np.divide(hits, true_count, out=np.zeros(n), where=true_count > 0)
    precision = np.divide(hits, predicted_count, out=np.zeros(n), where=predicted_count > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    present = (true_count > 0) | (predicted_count > 0)
    return Scores(
        classes=classes,
        accuracy=float(hits.sum() / max(1, len(labels))),
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_class_recall={c: float(recall[i]) for i, c in enumerate(classes) if true_count[i] > 0},
        confusion=confusion,
        count=int(len(labels)),
    )


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG atomically (a reader never sees half a file), then close it."""
    import matplotlib.pyplot as plt

    payload = figure_png(fig, dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, payload)


def plot_confusion(scores: Scores, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = scores.confusion / np.maximum(scores.confusion.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(scores.classes))
    ax.set_xticks(ticks, scores.classes, rotation=45, ha="right")
    ax.set_yticks(ticks, scores.classes)
    for i in ticks:
        for j in ticks:
            if scores.confusion[i].sum():
                ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {100 * scores.accuracy:.2f}%, macro-F1 {100 * scores.macro_f1:.2f}%")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    acc_ax.plot(epochs, [100 * h["val_accuracy"] for h in history], label="val accuracy (EMA)")
    acc_ax.plot(epochs, [100 * h["val_macro_f1"] for h in history], label="val macro-F1 (EMA)")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("%")
    acc_ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
