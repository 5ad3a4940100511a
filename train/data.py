"""Face datasets from the public formats: our npz files, the fer2013.csv + fer2013new.csv pair, image folders.

Every loader returns a :class:`FaceData`: uint8 grayscale images [N, 48, 48] with FER+ vote counts and/or FER2013
labels. :func:`targets_for` turns those into soft training targets and hard labels for one class set.
"""

from __future__ import annotations

import csv
import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .model import FER2013_CLASSES, FERPLUS_CLASSES

IMAGE_SIZE = 48
FERPLUS_VOTE_COLUMNS = (*FERPLUS_CLASSES, "unknown", "NF")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm"}
CLASS_SYNONYMS = {
    "neutral": "neutral",
    "happy": "happiness",
    "happiness": "happiness",
    "surprise": "surprise",
    "surprised": "surprise",
    "sad": "sadness",
    "sadness": "sadness",
    "angry": "anger",
    "anger": "anger",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "contempt": "contempt",
}


class DataError(ValueError):
    """A dataset that cannot be read: missing file, wrong columns, unknown class, bad image."""


@dataclass
class FaceData:
    """Images plus whatever annotation the source had (FER+ votes [N,10] and/or FER2013 labels [N])."""

    images: np.ndarray
    ferplus_votes: np.ndarray | None = None
    fer2013_labels: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "FaceData":
        return FaceData(
            images=self.images[index],
            ferplus_votes=None if self.ferplus_votes is None else self.ferplus_votes[index],
            fer2013_labels=None if self.fer2013_labels is None else self.fer2013_labels[index],
            source=self.source,
        )

    def content_hash(self) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
        for extra in (self.ferplus_votes, self.fer2013_labels):
            if extra is not None:
                digest.update(np.ascontiguousarray(extra).tobytes())
        return digest.hexdigest()[:16]


@dataclass
class Targets:
    """Training targets for one class set: soft distributions, hard labels (-1 = none) and which rows are usable."""

    classes: tuple[str, ...]
    soft: np.ndarray
    hard: np.ndarray
    usable: np.ndarray


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")


def _read_npz(path: Path, dtypes: dict[str, type | None]) -> dict[str, np.ndarray]:
    """The named arrays that the npz holds, as the given dtypes (``images`` is required), read without pickle."""
    _require_file(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise DataError(f"{path}: no 'images' array (found {sorted(npz.files)})")
            return {name: np.asarray(npz[name], dtype=dtype) for name, dtype in dtypes.items() if name in npz.files}
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable npz file ({exc})") from exc


def load_npz(path: str | Path) -> FaceData:
    """Our npz format: ``images`` uint8 [N,48,48] plus ``ferplus_votes`` [N,10] and/or ``labels`` (FER2013 order)."""
    path = Path(path)
    arrays = _read_npz(path, {"images": None, "ferplus_votes": np.int64, "labels": np.int64})
    images = arrays["images"]
    votes, labels = arrays.get("ferplus_votes"), arrays.get("labels")
    if votes is None and labels is None:
        raise DataError(f"{path}: needs 'ferplus_votes' or 'labels' beside 'images'")
    images = _as_face_images(images, str(path))
    if votes is not None and votes.shape != (len(images), len(FERPLUS_VOTE_COLUMNS)):
        raise DataError(f"{path}: 'ferplus_votes' must have shape [N, 10], got {votes.shape}")
    if labels is not None:
        if labels.shape != (len(images),):
            raise DataError(f"{path}: 'labels' must have shape [N], got {labels.shape}")
        if labels.min(initial=0) < 0 or labels.max(initial=0) > len(FER2013_CLASSES):
            raise DataError(f"{path}: 'labels' must lie in 0..7 (FER2013 order, 7 = contempt)")
    return FaceData(images=images, ferplus_votes=votes, fer2013_labels=labels, source=str(path))


def _as_face_images(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        images = np.stack([_to_gray48(img, where) for img in images])
    if images.ndim != 3:
        raise DataError(f"{where}: images must be [N, H, W] grayscale, got shape {images.shape}")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        images = np.stack([_to_gray48(img, where) for img in images])
    return np.ascontiguousarray(images.astype(np.uint8, copy=False))


def _to_gray48(image: np.ndarray, where: str) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2 or min(image.shape) < 8:
        raise DataError(f"{where}: image of shape {image.shape} cannot be made a 48x48 face")
    interpolation = cv2.INTER_AREA if min(image.shape) > IMAGE_SIZE else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.uint8), (IMAGE_SIZE, IMAGE_SIZE), interpolation=interpolation)


def load_fer2013_csv(fer2013_csv: str | Path, ferplus_csv: str | Path | None = None, usage: str | None = "Training") -> FaceData:
    """The public Kaggle ``fer2013.csv`` (emotion, pixels, Usage), optionally with Microsoft's ``fer2013new.csv``.

    Rows of the two files correspond one to one; ``usage`` selects Training / PublicTest / PrivateTest (None: all).
    """
    fer2013_csv = Path(fer2013_csv)
    _require_file(fer2013_csv)
    rows = _read_csv(fer2013_csv, required=("emotion", "pixels", "Usage"))
    votes_rows = None
    if ferplus_csv is not None:
        ferplus_csv = Path(ferplus_csv)
        _require_file(ferplus_csv)
        votes_rows = _read_csv(ferplus_csv, required=("Usage", *FERPLUS_VOTE_COLUMNS))
        if len(votes_rows) != len(rows):
            raise DataError(f"{ferplus_csv}: {len(votes_rows)} rows but {fer2013_csv} has {len(rows)}; they must match")
    keep = [i for i, row in enumerate(rows) if usage is None or row["Usage"] == usage]
    if not keep:
        raise DataError(f"{fer2013_csv}: no rows with Usage == {usage!r}")
    images = np.empty((len(keep), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    labels = np.empty(len(keep), dtype=np.int64)
    for out, i in enumerate(keep):
        row = rows[i]
        try:
            pixels = np.array(row["pixels"].split(), dtype=np.int64)
            labels[out] = int(row["emotion"])
        except ValueError as exc:
            raise DataError(f"{fer2013_csv}: row {i + 2}: unreadable emotion/pixels ({exc})") from exc
        if pixels.size != IMAGE_SIZE * IMAGE_SIZE or pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{fer2013_csv}: row {i + 2}: expected 2304 pixel values in 0..255, got {pixels.size}")
        if not 0 <= labels[out] < len(FER2013_CLASSES):
            raise DataError(f"{fer2013_csv}: row {i + 2}: emotion {labels[out]} outside 0..6")
        images[out] = pixels.reshape(IMAGE_SIZE, IMAGE_SIZE)
    votes = None
    if votes_rows is not None:
        try:
            votes = np.array([[int(votes_rows[i][c] or 0) for c in FERPLUS_VOTE_COLUMNS] for i in keep], dtype=np.int64)
        except ValueError as exc:
            raise DataError(f"{ferplus_csv}: non-integer vote count ({exc})") from exc
    return FaceData(images=images, ferplus_votes=votes, fer2013_labels=labels, source=str(fer2013_csv))


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; found {columns}")
        reader.fieldnames = columns
        return list(reader)


def _read_face_image(file: Path) -> np.ndarray:
    image = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DataError(f"{file}: not a readable image")
    return _to_gray48(image, str(file))


def load_image_folder(root: str | Path) -> FaceData:
    """``root/<class>/*.png|jpg``; class folder names are FER+/FER2013 class names or common synonyms (happy, sad...)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = CLASS_SYNONYMS.get(folder.name.lower())
        if name is None:
            raise DataError(f"{folder}: unknown class folder {folder.name!r}; expected one of {sorted(CLASS_SYNONYMS)}")
        index = FERPLUS_CLASSES.index(name)
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            images.append(_read_face_image(file))
            labels.append(index)
    if not images:
        raise DataError(f"{root}: no images found in class sub-folders")
    votes = np.zeros((len(labels), len(FERPLUS_VOTE_COLUMNS)), dtype=np.int64)
    votes[np.arange(len(labels)), labels] = 1
    return FaceData(images=np.stack(images), ferplus_votes=votes, source=str(root))


def load_dataset(path: str | Path, ferplus_csv: str | Path | None = None, usage: str | None = "Training") -> FaceData:
    """Dispatch on the path: ``.npz``, ``.csv`` (fer2013.csv, with ``ferplus_csv`` optional) or an image folder."""
    path = Path(path)
    if path.suffix == ".npz":
        return load_npz(path)
    if path.suffix == ".csv":
        return load_fer2013_csv(path, ferplus_csv, usage)
    if path.is_dir():
        return load_image_folder(path)
    raise DataError(f"{path}: expected an .npz file, a fer2013.csv file or an image folder")


def load_unlabeled_faces(spec: str | Path) -> np.ndarray:
    """Extra unlabeled faces, uint8 [N,48,48], from a path or a glob pattern (``**`` recursive) matching npz files
    with ``images`` (labels, if any, ignored), face images, or folders of face images (searched recursively). The
    face crops ``leaf-fer annotate --save-faces`` keeps from your videos: ``annotations/**/*.faces.npz``."""
    text = str(spec)
    paths = sorted(Path(p) for p in glob.glob(text, recursive=True)) if glob.has_magic(text) else [Path(text)]
    if not paths:
        raise DataError(f"{text}: no files match")
    faces = np.concatenate([_unlabeled_from(path) for path in paths])
    if len(faces) == 0:
        raise DataError(f"{text}: no face images found")
    return faces


def _unlabeled_from(path: Path) -> np.ndarray:
    if path.suffix == ".npz":
        images = _read_npz(path, {"images": None})["images"]
        return _as_face_images(images, str(path)) if len(images) else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        files = [path]
    else:
        raise DataError(f"{path}: expected an .npz file, a face image or a folder of face images")
    crops = [_read_face_image(file) for file in files]
    return np.stack(crops) if crops else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """FER+ majority rule: the class with more than half of all votes; -1 when none, or when it is unknown/NF."""
    votes = np.asarray(votes)
    total = votes.sum(axis=1)
    top = votes.argmax(axis=1)
    majority = votes[np.arange(len(votes)), top] * 2 > total
    return np.where(majority & (top < len(FERPLUS_CLASSES)) & (total > 0), top, -1)


def targets_for(data: FaceData, classes: tuple[str, ...]) -> Targets:
    """Soft targets (FER+ vote distribution) and hard labels (majority) in ``classes`` order.

    With FER+ votes: usable rows are those whose emotion votes outnumber unknown + not-a-face votes.
    With FER2013 labels only: one-hot targets, label 7 (contempt) allowed.
    """
    if data.ferplus_votes is not None:
        votes = np.asarray(data.ferplus_votes, dtype=np.float32)
        emotion = np.stack([votes[:, FERPLUS_CLASSES.index(c)] for c in classes], axis=1)
        majority = ferplus_majority(data.ferplus_votes)
        hard = np.array([classes.index(FERPLUS_CLASSES[m]) if m >= 0 and FERPLUS_CLASSES[m] in classes else -1 for m in majority])
        emotion_total = emotion.sum(axis=1)
        usable = emotion_total * 2 > votes.sum(axis=1)
        soft = emotion / np.maximum(emotion_total, 1)[:, None]
        return Targets(classes, soft.astype(np.float32), hard.astype(np.int64), usable)
    if data.fer2013_labels is None:
        raise DataError(f"{data.source}: no labels")
    names = (*FER2013_CLASSES, "contempt")
    hard = np.array([classes.index(names[y]) if names[y] in classes else -1 for y in data.fer2013_labels])
    soft = np.zeros((len(hard), len(classes)), dtype=np.float32)
    soft[np.arange(len(hard))[hard >= 0], hard[hard >= 0]] = 1.0
    return Targets(classes, soft, hard.astype(np.int64), hard >= 0)


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded, per-class stratified ``fraction`` of the rows (at least one per present class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))
