"""Does test-time flip averaging pay? Accuracy with and without it, and its cost, side by side in one run.

For each weights file: FER+ PublicTest majority accuracy (8 classes) and TCCE held-out accuracy / macro recall on
the pipeline's own face crops (``realtime/face_crops.py``, the crops a still gets in ``annotate``), each predicted
once and as the mean of the face and its mirror image; and ONNX Runtime's per-face latency (FP32, 1 thread) for one face
against the face plus its mirror in one batch. Writes OUTPUT/flip_tta.{json,md}.

    python benchmarks/flip_tta.py --weights train/weights/leaf_fer_default.safetensors
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from leaf_fer.common import atomic_write_bytes, atomic_write_json
from leaf_fer.engines import create_predictor
from leaf_fer.train.data import load_dataset, load_npz, targets_for
from leaf_fer.train.metrics import score


def accuracy(predictor, faces: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], flip: bool) -> dict:
    probs = predictor.predict(faces)
    if flip:
        probs = (probs + predictor.predict(np.ascontiguousarray(faces[:, :, ::-1]))) / 2
    scores = score(labels, probs.argmax(axis=1), classes)
    return {"accuracy": scores.accuracy, "macro_recall": float(np.mean(list(scores.per_class_recall.values())))}


def latency_ms(predictor, face: np.ndarray, batch: int, repeats: int = 300) -> float:
    faces = np.repeat(face[None], batch, axis=0)
    elapsed = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(faces)
        elapsed.append(time.perf_counter() - start)
    return 1e3 * float(np.median(elapsed[20:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", required=True)
    parser.add_argument("--publictest", type=Path, default=Path("../shared/data/fer2013_publictest.npz"))
    parser.add_argument("--tcce", type=Path, default=Path("runs/splits/tcce_fold0_test.csv"))
    parser.add_argument("--output", type=Path, default=Path("reports/flip_tta"))
    args = parser.parse_args()
    public = load_npz(args.publictest)
    tcce = load_dataset(args.tcce)
    rows = {}
    for weights in args.weights:
        predictor = create_predictor(weights, "onnxruntime", precision="fp32", threads=1)
        classes = predictor.classes
        sets = {}
        for name, data in (("publictest", public), ("tcce", tcce)):
            targets = targets_for(data, classes)
            keep = targets.hard >= 0
            sets[name] = {flip: accuracy(predictor, data.images[keep], targets.hard[keep], classes, flip)
                          for flip in (False, True)}
        one, two = latency_ms(predictor, public.images[0], 1), latency_ms(predictor, public.images[0], 2)
        rows[weights] = {"sets": {n: {"plain": v[False], "flip": v[True]} for n, v in sets.items()},
                         "ms_one_face": one, "ms_with_mirror": two}
        predictor.close()
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output / "flip_tta.json", rows)
    lines = ["# Test-time flip averaging", "", "`python benchmarks/flip_tta.py`; ONNX Runtime, 1 thread, one run.", "",
             "| weights | PublicTest plain | PublicTest flip | TCCE plain (acc / macro recall) | TCCE flip | ms one face "
             "| ms face + mirror |", "|---|---|---|---|---|---|---|"]
    for weights, row in rows.items():
        p, t = row["sets"]["publictest"], row["sets"]["tcce"]
        lines.append(f"| {weights} | {100 * p['plain']['accuracy']:.2f}% | {100 * p['flip']['accuracy']:.2f}% | "
                     f"{100 * t['plain']['accuracy']:.1f}% / {100 * t['plain']['macro_recall']:.1f}% | "
                     f"{100 * t['flip']['accuracy']:.1f}% / {100 * t['flip']['macro_recall']:.1f}% | "
                     f"{row['ms_one_face']:.2f} | {row['ms_with_mirror']:.2f} |")
    atomic_write_bytes(args.output / "flip_tta.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
