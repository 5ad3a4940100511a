"""Train/test splits of the extra labeled sets, as labels CSVs (file paths absolute) that train and evaluate read.

- TCCE (posed): performer folds for cross-validation by performer, never by image: FOLDER/tcce_fold{K}_train.csv and
  FOLDER/tcce_fold{K}_test.csv, K = 0..N-1, performers dealt to folds in a seeded random order.
- The contempt web set: a seeded FOLDER/contempt_train.csv and FOLDER/contempt_test.csv (20% held out), so contempt
  recall is measured on faces the model did not train on.
- Faces of another source (UTKFace, no expression labels): FOLDER/other_faces_train.npz holds those outside the
  sample that ``cross_dataset.py`` and ``recipes_cv.py`` measure (``--other-faces`` with ``--other-limit``), for
  ``leaf-fer train --anchor-data``.

The shipped model trains on every TCCE performer and the contempt train split; its posed-photo accuracy is measured
on the folds (``benchmarks/recipes_cv.py``), its contempt recall on the contempt test split
(``benchmarks/cross_dataset.py``).

    python benchmarks/splits.py --output runs/splits
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from leaf_fer.common import atomic_write_bytes, atomic_write_npz
from leaf_fer.train.data import load_unlabeled_faces, seeded_sample


def performer_folds(labels: Path, folds: int, seed: int) -> list[tuple[list[dict[str, str]], list[dict[str, str]]]]:
    with open(labels, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["file"] = str((labels.parent / row["file"]).resolve())
    performers = sorted({row["performer"] for row in rows})
    order = np.random.default_rng(seed).permutation(len(performers))
    fold_of = {performers[p]: i % folds for i, p in enumerate(order)}
    return [([r for r in rows if fold_of[r["performer"]] != k], [r for r in rows if fold_of[r["performer"]] == k])
            for k in range(folds)]


def held_out(labels: Path, fraction: float, seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    with open(labels, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["file"] = str((labels.parent / row["file"]).resolve())
    test = set(np.random.default_rng(seed).permutation(len(rows))[: int(round(fraction * len(rows)))].tolist())
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", type=Path, default=Path("../shared/data/extra"))
    parser.add_argument("--other-faces", type=Path, default=Path("../shared/data/unlabeled/utkface_crop_part1"))
    parser.add_argument("--other-limit", type=int, default=3000, help="faces the benchmarks measure (held out here)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("runs/splits"))
    args = parser.parse_args()
    for k, (train_rows, test_rows) in enumerate(performer_folds(args.extra / "taiwan_tcce_front" / "labels.csv",
                                                                args.folds, args.seed)):
        write_rows(args.output / f"tcce_fold{k}_train.csv", train_rows)
        write_rows(args.output / f"tcce_fold{k}_test.csv", test_rows)
        print(f"TCCE fold {k}: {len(train_rows)} train, {len(test_rows)} test images, performers "
              f"{sorted({r['performer'] for r in test_rows})}")
    train_rows, test_rows = held_out(args.extra / "affectnet_contempt" / "labels.csv", 0.2, args.seed)
    write_rows(args.output / "contempt_train.csv", train_rows)
    write_rows(args.output / "contempt_test.csv", test_rows)
    print(f"contempt: {len(train_rows)} train, {len(test_rows)} test images")
    if not args.other_faces.exists():
        print(f"other faces: {args.other_faces} not found, no other_faces_train.npz written")
        return
    faces = load_unlabeled_faces(args.other_faces)
    train_faces = np.delete(faces, seeded_sample(len(faces), args.other_limit), axis=0)
    atomic_write_npz(args.output / "other_faces_train.npz", images=train_faces)
    print(f"other faces: {len(train_faces)} train, {len(faces) - len(train_faces)} measured")


if __name__ == "__main__":
    main()
