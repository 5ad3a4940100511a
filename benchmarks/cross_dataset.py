"""Models side by side on faces from elsewhere, end to end (detector cascade → aligner → model) on full-size photos.

For each weights file, in one run: TCCE held-out performers (posed studio photos; ``benchmarks/splits.py`` folds),
the held-out contempt web photos (contempt recall), FER+ PublicTest majority (8 classes, model-size faces), and what
the model calls faces of a source no model trained on (``--other-faces``, UTKFace, no expression labels: few if any are
contemptuous, so its contempt share shows the contempt set's one-source confound).
``--gray`` also scores grayscale copies of the TCCE photos (as CK+- or JAFFE-like sets come): the detector and the
aligner then see gray pixels, while the model sees gray crops either way.
``--cross-validation PATTERN --folds 0 1 2`` adds cross-validation by performer: the weights PATTERN names for fold K
(``{fold}`` in it) are scored on TCCE fold K's test performers, beside the first ``--models`` entry on the same fold.
Every model runs in FP32 on ONNX Runtime (``benchmarks/precision_fidelity.py`` compares INT8).
Writes OUTPUT/{results.json,results.md,recall.png}.

    python benchmarks/splits.py --output runs/splits
    python benchmarks/cross_dataset.py --models fer2013=train/weights/fer2013_base.safetensors \\
        default=train/weights/leaf_fer_default.safetensors --tcce runs/splits/tcce_fold0_test.csv \\
        --contempt runs/splits/contempt_test.csv
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from leaf_fer.common import atomic_write_bytes, atomic_write_json
from leaf_fer.realtime.evaluate import evaluate_end_to_end, evaluate_npz, predict_in_batches
from leaf_fer.realtime.pipeline import PipelineConfig, create_predictor
from leaf_fer.train.data import labeled_files, load_unlabeled_faces
from leaf_fer.train.metrics import save_figure
from leaf_fer.train.model_spec import FERPLUS_CLASSES

FOCUS = ("anger", "disgust", "fear")


def gray_copies(data: Path, folder: Path) -> Path:
    """``folder`` as class sub-folders of grayscale PNG copies of the labeled photos ``data`` names (a labels CSV or
    class sub-folders, read as ``evaluate`` reads them)."""
    files, labels = labeled_files(data)
    for i, (file, label) in enumerate(zip(files, labels)):
        image = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
        if image is None:
            print(f"{file}: not a readable image; skipped")
            continue
        copy = folder / FERPLUS_CLASSES[label] / f"{i:05d}.png"
        copy.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(copy), image)
    return folder


def tcce_scores(paths: list[Path], config: PipelineConfig) -> dict[str, object]:
    reports = [evaluate_end_to_end(path, config, progress=False) for path in paths]
    return {"folds": [r.to_dict() for r in reports],
            "accuracy": float(np.mean([r.scores.accuracy for r in reports])),
            "macro_recall": float(np.mean([r.macro_recall for r in reports])),
            "no_face_rate": float(np.mean([r.no_face_rate for r in reports])),
            "per_class_recall": {name: float(np.mean([r.scores.per_class_recall[name] for r in reports]))
                                 for name in reports[0].scores.per_class_recall}}


def measure(weights: Path, tcce: list[Path], tcce_gray: list[Path], contempt: Path | None, publictest: Path | None,
            other_faces: np.ndarray | None) -> dict[str, object]:
    config = PipelineConfig(weights=weights, precision="fp32", draw=False, threads=1)
    row: dict[str, object] = {"weights": str(weights), "tcce": tcce_scores(tcce, config)}
    if tcce_gray:
        row["tcce_gray"] = tcce_scores(tcce_gray, config)
    if contempt is not None:
        report = evaluate_end_to_end(contempt, config, progress=False)
        predicted = report.scores.confusion[report.scores.classes.index("contempt")]
        row["contempt"] = {"recall": report.scores.per_class_recall["contempt"], "no_face_rate": report.no_face_rate,
                           "predicted": dict(zip(report.scores.classes, (predicted / predicted.sum()).tolist()))}
    with create_predictor(config) as predictor:
        if publictest is not None:
            scores, _ = evaluate_npz(predictor, publictest)
            row["publictest"] = {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1,
                                 "per_class_recall": scores.per_class_recall}
        if other_faces is not None:
            predicted = predict_in_batches(predictor, other_faces).argmax(axis=1)
            shares = np.bincount(predicted, minlength=len(predictor.classes)) / len(predicted)
            row["other_faces"] = {"faces": len(predicted), "predicted": dict(zip(predictor.classes, shares.tolist()))}
    return row


def cross_validate(pattern: str, folds: list[int], baseline: Path, splits: Path) -> dict[str, object]:
    """Each fold's model on its own held-out performers, and the baseline on the same faces."""
    rows = []
    for fold in folds:
        test = splits / f"tcce_fold{fold}_test.csv"
        reports = {name: evaluate_end_to_end(test, PipelineConfig(weights=weights, precision="fp32", draw=False, threads=1), progress=False)
                   for name, weights in (("baseline", baseline), ("fold model", Path(pattern.format(fold=fold))))}
        rows.append({"fold": fold, **{name: {"accuracy": r.scores.accuracy, "macro_recall": r.macro_recall,
                                            "per_class_recall": r.scores.per_class_recall}
                                     for name, r in reports.items()}})
    return {"pattern": pattern, "baseline": str(baseline), "folds": rows}


def cross_validation_markdown(cv: dict) -> list[str]:
    names = ("baseline", "fold model")
    lines = ["", f"Cross-validation by performer (`{cv['pattern']}`; baseline `{cv['baseline']}`), end to end, %:", "",
             "| fold | " + " | ".join(f"{n} accuracy | {n} macro recall | " + " | ".join(f"{n} {c}" for c in FOCUS)
                                       for n in names) + " |",
             "|---|" + "---|" * (2 * (2 + len(FOCUS)))]
    rows = cv["folds"] + [{"fold": "mean", **{n: {"accuracy": float(np.mean([r[n]["accuracy"] for r in cv["folds"]])),
                                                 "macro_recall": float(np.mean([r[n]["macro_recall"] for r in cv["folds"]])),
                                                 "per_class_recall": {c: float(np.mean([r[n]["per_class_recall"][c]
                                                                                        for r in cv["folds"]]))
                                                                      for c in FOCUS}} for n in names}}]
    for row in rows:
        cells = []
        for n in names:
            cells += [f"{100 * row[n]['accuracy']:.1f}", f"{100 * row[n]['macro_recall']:.1f}",
                      *[f"{100 * row[n]['per_class_recall'][c]:.1f}" for c in FOCUS]]
        lines.append(f"| {row['fold']} | " + " | ".join(cells) + " |")
    return lines


def markdown(rows: dict[str, dict], args: argparse.Namespace) -> str:
    lines = ["# Cross-dataset, end to end", "",
             f"`python benchmarks/cross_dataset.py` on {', '.join(str(p) for p in args.tcce)}"
             f"{', ' + str(args.contempt) if args.contempt else ''}; one run, same pipeline for every model "
             "(MediaPipe short range, YuNet fallback, aligner); no face counts as a miss.", "",
             "| model | TCCE accuracy | TCCE macro recall | " + " | ".join(f"TCCE {c}" for c in FOCUS) +
             " | TCCE no face | contempt recall | other faces called contempt | FER+ PublicTest |",
             "|---|" + "---|" * (6 + len(FOCUS))]
    for name, row in rows.items():
        tcce = row["tcce"]
        cells = [f"{100 * tcce['accuracy']:.1f}%", f"{100 * tcce['macro_recall']:.1f}%",
                 *[f"{100 * tcce['per_class_recall'].get(c, 0.0):.1f}%" for c in FOCUS],
                 f"{100 * tcce['no_face_rate']:.1f}%",
                 f"{100 * row['contempt']['recall']:.1f}%" if "contempt" in row else "-",
                 f"{100 * row['other_faces']['predicted']['contempt']:.1f}%" if "other_faces" in row else "-",
                 f"{100 * row['publictest']['accuracy']:.2f}%" if "publictest" in row else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per-class recall on TCCE (%):", "",
              "| model | " + " | ".join(next(iter(rows.values()))["tcce"]["per_class_recall"]) + " |",
              "|---|" + "---|" * len(next(iter(rows.values()))["tcce"]["per_class_recall"])]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in row["tcce"]["per_class_recall"].values()) + " |")
    others = {name: row["other_faces"] for name, row in rows.items() if "other_faces" in row}
    if others:
        first = next(iter(others.values()))
        lines += ["", f"What each model calls the {first['faces']} faces of {args.other_faces} (%):", "",
                  "| model | " + " | ".join(first["predicted"]) + " |", "|---|" + "---|" * len(first["predicted"])]
        for name, other in others.items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in other["predicted"].values()) + " |")
    grays = {name: (row["tcce"], row["tcce_gray"]) for name, row in rows.items() if "tcce_gray" in row}
    if grays:
        lines += ["", "The same TCCE photos as grayscale copies (`--gray`), colour → gray, %:", "",
                  "| model | accuracy | macro recall | no face | " + " | ".join(FOCUS) + " |", "|---|" + "---|" * (3 + len(FOCUS))]
        for name, (colour, gray) in grays.items():
            pairs = [(colour["accuracy"], gray["accuracy"]), (colour["macro_recall"], gray["macro_recall"]),
                     (colour["no_face_rate"], gray["no_face_rate"]),
                     *[(colour["per_class_recall"].get(c, 0.0), gray["per_class_recall"].get(c, 0.0)) for c in FOCUS]]
            lines.append(f"| {name} | " + " | ".join(f"{100 * a:.1f} → {100 * b:.1f}" for a, b in pairs) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(next(iter(rows.values()))["tcce"]["per_class_recall"])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(rows)
    for i, (name, row) in enumerate(rows.items()):
        ax.bar(np.arange(len(classes)) + i * width, [100 * row["tcce"]["per_class_recall"][c] for c in classes], width,
               label=name)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes)
    ax.set_ylabel("recall (%)")
    ax.set_title("TCCE held-out performers, end to end: per-class recall")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME=WEIGHTS")
    parser.add_argument("--tcce", nargs="+", type=Path, default=[Path("runs/splits/tcce_fold0_test.csv")])
    parser.add_argument("--contempt", type=Path, default=Path("runs/splits/contempt_test.csv"))
    parser.add_argument("--publictest", type=Path, default=Path("../shared/data/fer2013_publictest.npz"))
    parser.add_argument("--other-faces", type=Path, default=Path("../shared/data/unlabeled/utkface_crop_part1"),
                        help="faces of another source without expression labels (image folder); '' to skip")
    parser.add_argument("--other-limit", type=int, default=3000, help="seeded sample of that many of them")
    parser.add_argument("--cross-validation", metavar="PATTERN", help="weights per fold, e.g. runs/cv{fold}/model.safetensors")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--splits", type=Path, default=Path("runs/splits"))
    parser.add_argument("--gray", action="store_true", help="also score grayscale copies of the TCCE photos")
    parser.add_argument("--output", type=Path, default=Path("reports/cross_dataset"))
    args = parser.parse_args()
    models = dict(spec.split("=", 1) for spec in args.models)
    other = load_unlabeled_faces(args.other_faces, args.other_limit) if str(args.other_faces) not in ("", ".") else None
    with tempfile.TemporaryDirectory() as work:
        tcce_gray = [gray_copies(path, Path(work) / str(i)) for i, path in enumerate(args.tcce)] if args.gray else []
        rows = {name: measure(Path(weights), args.tcce, tcce_gray, args.contempt, args.publictest, other)
                for name, weights in models.items()}
    cv = (cross_validate(args.cross_validation, args.folds, Path(next(iter(models.values()))), args.splits)
          if args.cross_validation else None)
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output / "results.json", {"models": rows, "cross_validation": cv})
    table = markdown(rows, args) + ("\n".join(cross_validation_markdown(cv)) + "\n" if cv else "")
    atomic_write_bytes(args.output / "results.md", table.encode())
    plot(rows, args.output / "recall.png")
    print(table)


if __name__ == "__main__":
    main()
