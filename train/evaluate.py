"""Score a weights file on an npz: FER+ majority protocol (``ferplus_votes``) or FER2013 labels (``labels``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import load_npz, targets_for
from .metrics import Scores, score
from .trainer import predict_probabilities
from .weights import load_weights


def evaluate_weights(weights: str | Path | None, data_path: str | Path) -> tuple[Scores, str]:
    """Scores on the classes the model and the data share; returns the scores and the protocol used."""
    net, metadata = load_weights(weights)
    data = load_npz(data_path)
    model_classes = tuple(metadata.model.classes)
    if data.ferplus_votes is not None:
        protocol = "FER+ majority"
        targets = targets_for(data, model_classes)
    else:
        protocol = "FER2013 labels"
        targets = targets_for(data, model_classes)
    data_classes = _data_classes(data, model_classes)
    shared = [i for i, name in enumerate(model_classes) if name in data_classes]
    if not shared:
        raise ValueError(f"{data_path}: no class in common with the model ({model_classes})")
    rows = np.flatnonzero(targets.hard >= 0)
    if len(rows) == 0:
        raise ValueError(f"{data_path}: no sample has a label the model knows")
    probs = predict_probabilities(net, torch.from_numpy(data.images[rows]))
    predictions = np.array(shared)[probs[:, shared].argmax(axis=1)]
    remap = {old: new for new, old in enumerate(shared)}
    labels = np.array([remap[y] for y in targets.hard[rows]])
    scores = score(labels, np.array([remap[p] for p in predictions]), tuple(model_classes[i] for i in shared))
    return scores, protocol


def _data_classes(data, model_classes: tuple[str, ...]) -> set[str]:
    from .model import FER2013_CLASSES, FERPLUS_CLASSES

    if data.ferplus_votes is not None:
        return set(FERPLUS_CLASSES)
    present = set(np.unique(data.fer2013_labels).tolist())
    names = (*FER2013_CLASSES, "contempt")
    return {names[i] for i in present} | set(FER2013_CLASSES)
