"""Does INT8 (or FP16) change what the model says on faces from elsewhere? ONNX Runtime precisions side by side.

One set of face crops per source, made once by the live pipeline's detector cascade and aligner (the crops a still
gets in ``annotate``; cached), then every precision predicts the same crops: the TCCE posed photos (colour, and
grayscale copies as gray posed sets come), the held-out contempt web photos, faces of a source no model trained on
(UTKFace, no expression labels) and FER+ PublicTest (model-size faces). Per precision: accuracy and macro recall where
there are labels, top-1 agreement with FP32 everywhere, and the median ms per face (batch 1, 1 thread) timed in the
same run. Writes OUTPUT/{results.json,results.md}.

    python benchmarks/precision_fidelity.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from leaf_fer.common import atomic_write_bytes, atomic_write_json
from leaf_fer.engines import create_predictor
from leaf_fer.engines.names import SUPPORTED
from leaf_fer.realtime.evaluate import predict_in_batches, report_from_answers
from leaf_fer.train.data import face_images, labeled_files, load_npz, load_unlabeled_faces, targets_for
from leaf_fer.train.model_spec import FERPLUS_CLASSES

FOCUS = ("anger", "disgust", "fear")


def gray_copies(files: list[Path], folder: Path) -> list[Path]:
    """Grayscale PNG copies of ``files`` in ``folder``, in order."""
    copies = []
    for i, file in enumerate(files):
        copy = folder / f"{i:05d}.png"
        cv2.imwrite(str(copy), cv2.imread(str(file), cv2.IMREAD_GRAYSCALE))
        copies.append(copy)
    return copies


def labeled_source(files: list[Path], labels: list[int]) -> dict[str, np.ndarray]:
    crops, found = face_images(files, progress=False)
    return {"faces": crops, "found": found, "labels": np.asarray(labels)}


def scores(probabilities: np.ndarray, source: dict[str, np.ndarray], classes: tuple[str, ...]) -> dict[str, object]:
    """``evaluate``'s end-to-end scores of one answer per image (an image without a face is a miss)."""
    answers = [p if found else None for p, found in zip(probabilities, source["found"])]
    return report_from_answers("", source["labels"].tolist(), answers, classes).to_dict()


def latency_ms(predictor, face: np.ndarray, repeats: int = 300) -> float:
    elapsed = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(face[None])
        elapsed.append(time.perf_counter() - start)
    return 1e3 * float(np.median(elapsed[20:]))


def markdown(result: dict, args: argparse.Namespace) -> str:
    precisions = list(result["precisions"])
    lines = ["# Inference precision on faces from elsewhere", "",
             f"`python benchmarks/precision_fidelity.py` with `{args.weights}`; ONNX Runtime, 1 thread, one run. "
             "Every precision predicts the same face crops (live detector cascade + aligner). Agreement: the share "
             "of faces whose top-1 class is FP32's.", "",
             "| source | faces | " + " | ".join(f"{p} accuracy / macro recall" for p in precisions) + " | "
             + " | ".join(f"{p} agrees with fp32" for p in precisions[1:]) + " |",
             "|---|---|" + "---|" * (2 * len(precisions) - 1)]
    for name, source in result["sources"].items():
        cells = []
        for p in precisions:
            s = source["scores"].get(p)
            cells.append(f"{100 * s['accuracy']:.1f}% / {100 * s['macro_recall']:.1f}%" if s else "—")
        cells += [f"{100 * source['agreement'][p]:.1f}%" for p in precisions[1:]]
        lines.append(f"| {name} | {source['faces']} | " + " | ".join(cells) + " |")
    labeled = {n: s for n, s in result["sources"].items() if s["scores"]}
    lines += ["", "Recall of anger / disgust / fear (%):", "", "| source | " + " | ".join(precisions) + " |",
              "|---|" + "---|" * len(precisions)]
    for name, source in labeled.items():
        if all(c in source["scores"][precisions[0]]["per_class_recall"] for c in FOCUS):
            lines.append(f"| {name} | " + " | ".join(
                " / ".join(f"{100 * source['scores'][p]['per_class_recall'][c]:.1f}" for c in FOCUS)
                for p in precisions) + " |")
    lines += ["", "Median ms per face (batch 1, 1 thread), timed in this run: " + ", ".join(
        f"{p} {result['precisions'][p]['ms_per_face']:.2f}" for p in precisions) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=Path("train/weights/leaf_fer_default.safetensors"))
    parser.add_argument("--tcce", type=Path, default=Path("../shared/data/extra/taiwan_tcce_front/labels.csv"))
    parser.add_argument("--contempt", type=Path, default=Path("runs/splits/contempt_test.csv"))
    parser.add_argument("--publictest", type=Path, default=Path("../shared/data/fer2013_publictest.npz"))
    parser.add_argument("--other-faces", type=Path, default=Path("../shared/data/unlabeled/utkface_crop_part1"))
    parser.add_argument("--other-limit", type=int, default=3000, help="seeded sample of that many of them")
    parser.add_argument("--output", type=Path, default=Path("reports/precision"))
    args = parser.parse_args()
    tcce_files, tcce_labels = labeled_files(args.tcce)
    sources = {"TCCE posed photos (colour)": labeled_source(tcce_files, tcce_labels)}
    with tempfile.TemporaryDirectory() as work:
        sources["TCCE posed photos (grayscale copies)"] = labeled_source(gray_copies(tcce_files, Path(work)), tcce_labels)
    if args.contempt.is_file():
        sources["contempt web photos (held out)"] = labeled_source(*labeled_files(args.contempt))
    public = load_npz(args.publictest)
    public_labels = targets_for(public, FERPLUS_CLASSES).hard
    keep = public_labels >= 0
    sources["FER+ PublicTest"] = {"faces": public.images[keep], "found": np.ones(int(keep.sum()), bool),
                                  "labels": public_labels[keep]}
    other = load_unlabeled_faces(args.other_faces, args.other_limit)
    sources["UTKFace (no labels)"] = {"faces": other, "found": np.ones(len(other), bool), "labels": None}

    result: dict[str, dict] = {"weights": str(args.weights), "precisions": {}, "sources": {}}
    answers: dict[str, dict[str, np.ndarray]] = {}
    for precision in SUPPORTED["onnxruntime"]:
        with create_predictor(args.weights, "onnxruntime", precision=precision, threads=1) as predictor:
            classes = predictor.classes
            answers[precision] = {name: predict_in_batches(predictor, s["faces"]) for name, s in sources.items()}
            result["precisions"][precision] = {"ms_per_face": latency_ms(predictor, sources["FER+ PublicTest"]["faces"][0]),
                                               "artifact": str(predictor.model_path)}
    for name, source in sources.items():
        found = source["found"]
        top1 = {p: a[name].argmax(axis=1) for p, a in answers.items()}
        result["sources"][name] = {
            "faces": int(found.sum()),
            "scores": {p: scores(a[name], source, classes) for p, a in answers.items()} if source["labels"] is not None else {},
            "agreement": {p: float((top1[p][found] == top1["fp32"][found]).mean()) for p in top1},
            "predicted": {p: dict(zip(classes, (np.bincount(t[found], minlength=len(classes)) / found.sum()).tolist()))
                          for p, t in top1.items()}}
    report = markdown(result, args)
    atomic_write_json(args.output / "results.json", result)
    atomic_write_bytes(args.output / "results.md", report.encode())
    print(report)


if __name__ == "__main__":
    main()
