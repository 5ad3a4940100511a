"""``leaf-fer evaluate``: a model scored on labeled faces, on any backend (ONNX Runtime needs no torch).

- Full-size labeled images (class folders, a labels CSV, an AffectNet CSV or RAF-DB's list file): the whole live
  pipeline (detector cascade → aligner → model), one still frame per image, scored against the image's label. An
  image where no face is found counts as a miss; the report gives the no-face rate beside accuracy, macro recall (the
  mean of the per-class recalls), per-class recall, a confusion matrix with a ``no face`` column, and the same
  numbers over the images where a face was found.
- An npz of model-size faces (:func:`evaluate_npz`): the model alone, FER+ majority (``ferplus_votes``) or FER2013
  labels (``labels``), over the classes the model and the data share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from leaf_fer.common import ConfigError, atomic_write_json, decode_image_file
from leaf_fer.engines import Predictor
from leaf_fer.train.data import FaceData, labeled_files, load_npz, targets_for
from leaf_fer.train.metrics import Scores, plot_confusion, score
from leaf_fer.train.model_spec import FER2013_CLASSES, FERPLUS_CLASSES

from .pipeline import Pipeline, PipelineConfig
from .types import Frame

NO_FACE = "no face"
NPZ_BATCH = 256


def predict_in_batches(predictor: Predictor, faces: np.ndarray) -> np.ndarray:
    """``predictor``'s probabilities [N, C] for model-size faces [N, H, W], NPZ_BATCH faces per call."""
    return np.concatenate([predictor.predict(faces[i:i + NPZ_BATCH]) for i in range(0, len(faces), NPZ_BATCH)])


def evaluate_npz(predictor: Predictor, data_path: str | Path) -> tuple[Scores, str]:
    """Scores of ``predictor`` on an npz of model-size faces, over the classes the model and the data share; returns
    the scores and the protocol used (FER+ majority or FER2013 labels)."""
    data = load_npz(data_path)
    protocol = "FER+ majority" if data.ferplus_votes is not None else "FER2013 labels"
    targets = targets_for(data, predictor.classes)
    data_classes = _data_classes(data)
    shared = [i for i, name in enumerate(predictor.classes) if name in data_classes]
    if not shared:
        raise ConfigError(f"{data_path}: no class in common with the model ({predictor.classes})")
    rows = np.flatnonzero(targets.hard >= 0)
    if len(rows) == 0:
        raise ConfigError(f"{data_path}: no sample has a label the model knows")
    probs = predict_in_batches(predictor, data.images[rows])
    predictions = np.array(shared)[probs[:, shared].argmax(axis=1)]
    remap = {old: new for new, old in enumerate(shared)}
    labels = np.array([remap[y] for y in targets.hard[rows]])
    scores = score(labels, np.array([remap[p] for p in predictions]), tuple(predictor.classes[i] for i in shared))
    return scores, protocol


def _data_classes(data: FaceData) -> set[str]:
    """The classes the data's labels can name: FER+'s eight, or FER2013's seven plus contempt where it occurs."""
    if data.ferplus_votes is not None:
        return set(FERPLUS_CLASSES)
    present = set(np.unique(data.fer2013_labels).tolist())
    names = (*FER2013_CLASSES, "contempt")
    return {names[i] for i in present} | set(FER2013_CLASSES)


@dataclass
class EndToEndReport:
    """Scores of one labeled image set run through the pipeline."""

    data: str
    images: int
    no_face_rate: float
    scores: Scores
    detected_scores: Scores
    per_image_ms: float

    @property
    def macro_recall(self) -> float:
        return float(np.mean(list(self.scores.per_class_recall.values())))

    def to_dict(self) -> dict[str, object]:
        return {"data": self.data, "images": self.images, "no_face_rate": self.no_face_rate,
                "accuracy": self.scores.accuracy, "macro_recall": self.macro_recall,
                "per_class_recall": self.scores.per_class_recall, "per_image_ms": self.per_image_ms,
                "end_to_end": self.scores.to_dict(), "detected_faces_only": self.detected_scores.to_dict()}

    def summary(self) -> str:
        recall = "  ".join(f"{name} {100 * value:.1f}" for name, value in self.scores.per_class_recall.items())
        return (f"{self.data}: {self.images} images, no face {100 * self.no_face_rate:.1f}%, "
                f"accuracy {100 * self.scores.accuracy:.2f}%, macro recall {100 * self.macro_recall:.2f}% "
                f"(faces found only: {100 * self.detected_scores.accuracy:.2f}%)\n  recall: {recall}")


def evaluate_end_to_end(data: str | Path, config: PipelineConfig | None = None, pipeline: Pipeline | None = None,
                        progress: bool = True) -> EndToEndReport:
    """Run every image of ``data`` (see :func:`labeled_files`) through the pipeline; the largest face is the
    image's answer, chosen among the classes that the data and the model share."""
    files, labels = labeled_files(data)
    own = pipeline is None
    pipeline = pipeline or Pipeline(config or PipelineConfig(draw=False))
    try:
        _, classes = scored_classes(pipeline.classes, labels)
        kept, probabilities, elapsed = [], [], []
        for file, label in tqdm(list(zip(files, labels)), desc=f"evaluate {Path(data).name}", disable=not progress):
            if FERPLUS_CLASSES[label] not in classes:
                continue
            image = decode_image_file(file)
            if image is None:
                print(f"{file}: not a readable image; skipped")
                continue
            start = time.perf_counter()
            result = pipeline.process(Frame(0, 0.0, image, str(file), still=True))
            elapsed.append(time.perf_counter() - start)
            kept.append(label)
            face = max(result.faces, default=None, key=lambda f: (f.detection.box[2] - f.detection.box[0]) *
                       (f.detection.box[3] - f.detection.box[1]))
            probabilities.append(None if face is None else face.probabilities)
        model_classes = pipeline.classes
    finally:
        if own:
            pipeline.close()
    return report_from_answers(str(data), kept, probabilities, model_classes,
                               per_image_ms=1e3 * float(np.median(elapsed)) if elapsed else float("nan"))


def scored_classes(model_classes: tuple[str, ...], labels: list[int]) -> tuple[list[int], tuple[str, ...]]:
    """The model's class indices an answer is chosen among (the seven basic ones and any other the labels hold),
    and the scored class names: those, then ``no face``."""
    present = {FERPLUS_CLASSES[i] for i in labels}
    shared = [i for i, name in enumerate(model_classes) if name in present or name in FERPLUS_CLASSES[:7]]
    return shared, tuple(model_classes[i] for i in shared) + (NO_FACE,)


def report_from_answers(data: str, labels: list[int], probabilities: list[np.ndarray | None],
                        model_classes: tuple[str, ...], per_image_ms: float = float("nan")) -> EndToEndReport:
    """Scores of one answer per image (the model's probabilities, None where no face was found) against its label
    (a FER+ class index); images whose class the model cannot answer are left out."""
    shared, classes = scored_classes(model_classes, labels)
    truth, predicted = [], []
    for label, probs in zip(labels, probabilities):
        if FERPLUS_CLASSES[label] not in classes:
            continue
        truth.append(classes.index(FERPLUS_CLASSES[label]))
        predicted.append(len(classes) - 1 if probs is None else int(np.argmax(np.asarray(probs)[shared])))
    if not truth:
        raise ConfigError(f"{data}: no readable image with a class the model knows ({', '.join(model_classes)})")
    truth_array, predicted_array = np.array(truth), np.array(predicted)
    found = predicted_array != len(classes) - 1
    return EndToEndReport(
        data=data, images=len(truth), no_face_rate=float(1 - found.mean()),
        scores=score(truth_array, predicted_array, classes),
        detected_scores=score(truth_array[found], predicted_array[found], classes),
        per_image_ms=per_image_ms)


def write_report(output: Path, document: dict[str, Any], scores: Scores, title: str) -> None:
    """``output``/evaluation.json (``document``) and ``output``/confusion.png (``scores``)."""
    atomic_write_json(output / "evaluation.json", document)
    plot_confusion(scores, output / "confusion.png", title)
