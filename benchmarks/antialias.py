"""Does filtering a large face before the warp pay? The aligner's crops with and without it, side by side.

Every TCCE posed photo (full size, 29 performers) goes through the live detector cascade once; its face is then warped
to the model's crop twice: bare (bilinear, as the aligner did before it filtered) and as ``realtime/align.py`` does
now (a face larger than the crop is low-pass filtered first). Each model scores both crop sets (FP32, ONNX Runtime):
the FER2013-only models never saw a TCCE photo, so theirs is a held-out measure of the gap between FER2013's filtered
faces and the pipeline's crops; a model trained on TCCE crops shows how it fits the photos it saw. Also the median
time to align one face each way. Writes OUTPUT/{results.json,results.md}.

    python benchmarks/antialias.py --models fer2013_base=train/weights/fer2013_base.safetensors \\
        fer2013_base_m=train/weights/fer2013_base_m.safetensors
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from leaf_fer.common import atomic_write_bytes, atomic_write_json
from leaf_fer.engines import create_predictor
from leaf_fer.realtime.align import align_faces, alignment_matrix
from leaf_fer.realtime.evaluate import report_from_answers
from leaf_fer.realtime.face_crops import CropSettings, FaceCropper
from leaf_fer.realtime.types import Detection
from leaf_fer.train.data import labeled_files

FOCUS = ("anger", "disgust", "fear")
SIZE = CropSettings().size


def bare_warp(gray: np.ndarray, face: Detection) -> np.ndarray:
    return cv2.warpAffine(gray, alignment_matrix(face, SIZE), (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def median_ms(align, gray: np.ndarray, face: Detection, repeats: int = 50) -> float:
    elapsed = []
    for _ in range(repeats):
        start = time.perf_counter()
        align(gray, face)
        elapsed.append(time.perf_counter() - start)
    return 1e3 * float(np.median(elapsed))


def crops(files: list[Path]) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, float], float]:
    """Both crop sets, which photos had a face, the median ms per face of each way and the median frame pixels per
    crop pixel."""
    cropper = FaceCropper()
    sets: dict[str, list[np.ndarray]] = {"bare": [], "filtered": []}
    found, factors, timings = [], [], {"bare": [], "filtered": []}
    ways = {"bare": bare_warp, "filtered": lambda gray, face: align_faces(gray, [face], SIZE)[0].copy()}
    try:
        for file in tqdm(files, desc="detect + align"):
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)
            face = cropper.detect(image) if image is not None else None
            found.append(face is not None)
            if face is not None:
                factors.append(1 / np.sqrt(abs(np.linalg.det(alignment_matrix(face, SIZE)[:, :2]))))
            gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if face is not None else None
            for name, align in ways.items():
                sets[name].append(align(gray, face) if face is not None else np.zeros((SIZE, SIZE), np.uint8))
                if face is not None and len(timings[name]) < 200:
                    timings[name].append(median_ms(align, gray, face))
    finally:
        cropper.close()
    return ({k: np.stack(v) for k, v in sets.items()}, np.array(found),
            {k: float(np.median(v)) for k, v in timings.items()}, float(np.median(factors)))


def scores(probabilities: np.ndarray, labels: list[int], found: np.ndarray, classes: tuple[str, ...]) -> dict:
    """``evaluate``'s end-to-end scores of one answer per photo (a photo without a face is a miss)."""
    answers = [p if face else None for p, face in zip(probabilities, found)]
    return report_from_answers("", labels, answers, classes).to_dict()


def markdown(result: dict, args: argparse.Namespace) -> str:
    lines = ["# Filtering large faces before the warp", "",
             f"`python benchmarks/antialias.py` on {result['photos']} TCCE photos ({args.tcce}); one detection per "
             "photo, two crops of it; FP32, one run. Accuracy / macro recall, %, 7 classes:", "",
             "| model | bare warp | filtered (the aligner) | change | " + " | ".join(f"{c} bare → filtered" for c in FOCUS)
             + " |", "|---|---|---|---|" + "---|" * len(FOCUS)]
    for name, row in result["models"].items():
        bare, filtered = row["bare"], row["filtered"]
        lines.append(
            f"| {name} | {100 * bare['accuracy']:.1f} / {100 * bare['macro_recall']:.1f} | "
            f"{100 * filtered['accuracy']:.1f} / {100 * filtered['macro_recall']:.1f} | "
            f"{100 * (filtered['accuracy'] - bare['accuracy']):+.1f} / "
            f"{100 * (filtered['macro_recall'] - bare['macro_recall']):+.1f} | "
            + " | ".join(f"{100 * bare['per_class_recall'][c]:.1f} → {100 * filtered['per_class_recall'][c]:.1f}"
                         for c in FOCUS) + " |")
    ms = result["ms_per_face"]
    lines += ["", f"Median ms to align one face (photos about {result['frame_px_per_crop_px']:.1f} frame pixels per crop "
              f"pixel): bare {ms['bare']:.3f}, filtered {ms['filtered']:.3f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME=WEIGHTS")
    parser.add_argument("--tcce", type=Path, default=Path("../shared/data/extra/taiwan_tcce_front/labels.csv"))
    parser.add_argument("--output", type=Path, default=Path("reports/antialias"))
    args = parser.parse_args()
    files, labels = labeled_files(args.tcce)
    sets, found, timings, factor = crops(files)
    result: dict = {"photos": len(files), "no_face": int((~found).sum()), "ms_per_face": timings,
                    "frame_px_per_crop_px": factor, "models": {}}
    for spec in args.models:
        name, weights = spec.split("=", 1)
        with create_predictor(weights, "onnxruntime", precision="fp32", threads=1) as predictor:
            result["models"][name] = {"weights": weights, **{
                way: scores(predictor.predict(faces), labels, found, predictor.classes)
                for way, faces in sets.items()}}
    report = markdown(result, args)
    atomic_write_json(args.output / "results.json", result)
    atomic_write_bytes(args.output / "results.md", report.encode())
    print(report)


if __name__ == "__main__":
    main()
