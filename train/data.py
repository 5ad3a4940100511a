"""Face datasets from the public formats: our npz files, the fer2013.csv + fer2013new.csv pair, class folders, a
labels CSV (file, label, optional vote shares), RAF-DB's list file + images, and AffectNet-style CSVs (file,
expression id, face box).

Every loader returns a :class:`FaceData`: uint8 grayscale images [N, 48, 48] with FER+ vote counts, FER2013 labels
or soft label distributions. Full-size images go through the live pipeline's detector and aligner
(``realtime/face_crops.py``, cached), so the model trains on the crops it sees at inference; images no larger than
:data:`FACE_CROP_MAX_SIDE` are taken as face crops already. :func:`targets_for` turns the annotation into soft
training targets and hard labels for one class set.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from leaf_fer.common import IMAGE_EXTENSIONS, ConfigError, LeafFerError, decode_image_file

from .config import POSED_LABEL_WEIGHT
from .model_spec import FER2013_CLASSES, FERPLUS_CLASSES

log = logging.getLogger(__name__)

IMAGE_SIZE = 48
FACE_CROP_MAX_SIDE = 64
"""Images whose both sides are at most this are model-size face crops (FER2013 style): resized, not detected."""
RAFDB_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
"""RAF-DB basic-emotion ids 1..7."""
AFFECTNET_CLASSES = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
"""AffectNet expression ids 0..7 (8 none, 9 uncertain, 10 no face are skipped)."""
VOTE_SHARE_COLUMNS = {"vote_peace": "neutral", "vote_happy": "happiness", "vote_surprise": "surprise",
                      "vote_sad": "sadness", "vote_angry": "anger", "vote_disgust": "disgust", "vote_fear": "fear",
                      "vote_contempt": "contempt"}
"""Observer vote-share columns a labels CSV may carry (TCCE's layout), by FER+ class."""
FERPLUS_VOTE_COLUMNS = (*FERPLUS_CLASSES, "unknown", "NF")
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
    "afraid": "fear",
    "scared": "fear",
    "contempt": "contempt",
    "contemptuous": "contempt",
    **{code: name for name, codes in (("neutral", "ne"), ("happiness", "ha"), ("surprise", "su"), ("sadness", "sa"),
                                      ("anger", "an"), ("disgust", "di"), ("fear", "fe af"))
       for code in codes.split()},
}
"""Class names and synonyms (lower case) → FER+ class; the two-letter codes are those of posed-face sets' file names
(NE, HA, SU, SA, AN, DI, FE or AF)."""
EXPECTED_CLASSES = (f"expected a FER+ class ({', '.join(FERPLUS_CLASSES)}) or a synonym (happy, sad, angry, "
                    "surprised, disgusted, afraid, scared, fearful, ...)")
"""What an unknown class name is told."""
LABELS_CSV_COLUMNS = {"file": ("file", "image", "path", "filename", "file_name", "image_path", "img", "pth"),
                      "label": ("label", "emotion", "expression", "class")}
"""A labels CSV's two columns and the other names they are found under (any case)."""


class DataError(LeafFerError, ValueError):
    """A dataset that cannot be read: missing file, wrong columns, unknown class, bad image."""


@dataclass
class FaceData:
    """Images plus whatever annotation the source had: FER+ votes [N,10], FER2013 labels [N] and/or soft label
    distributions [N,8] in FER+ class order."""

    images: np.ndarray
    ferplus_votes: np.ndarray | None = None
    fer2013_labels: np.ndarray | None = None
    soft_labels: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "FaceData":
        return FaceData(
            images=self.images[index],
            ferplus_votes=None if self.ferplus_votes is None else self.ferplus_votes[index],
            fer2013_labels=None if self.fer2013_labels is None else self.fer2013_labels[index],
            soft_labels=None if self.soft_labels is None else self.soft_labels[index],
            source=self.source,
        )

    def content_hash(self) -> str:
        return arrays_hash(self.images, self.ferplus_votes, self.fer2013_labels, self.soft_labels)


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
    images = _as_uint8(images, where)
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        images = np.stack([_to_gray48(img, where) for img in images])
    if images.ndim != 3:
        raise DataError(f"{where}: images must be [N, H, W] grayscale, got shape {images.shape}")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        images = np.stack([_to_gray48(img, where) for img in images])
    return np.ascontiguousarray(images.astype(np.uint8, copy=False))


def _as_uint8(images: np.ndarray, where: str) -> np.ndarray:
    """Pixels as uint8 0..255: float images in [0, 1] are scaled by 255 and floats or integers in [0, 255] rounded,
    each with one line saying so; any other range is refused rather than cast into garbage."""
    if images.dtype == np.uint8 or images.size == 0:
        return images
    if images.dtype.kind not in "fiub":
        raise DataError(f"{where}: images of dtype {images.dtype} are not pixels")
    low, high = float(images.min()), float(images.max())
    if images.dtype.kind == "f" and not np.isfinite([low, high]).all():
        raise DataError(f"{where}: images hold NaN or infinite values")
    if low < 0 or high > 255:
        raise DataError(f"{where}: {images.dtype} images range over [{low:g}, {high:g}]; expected 0..255 (or 0..1 floats)")
    if images.dtype.kind == "f" and high <= 1.0:
        log.warning("%s: %s images in [0, 1]: scaled by 255 to uint8", where, images.dtype)
        return np.rint(images * 255.0).astype(np.uint8)
    log.warning("%s: %s images in [0, 255]: rounded to uint8", where, images.dtype)
    return np.rint(images).astype(np.uint8)


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

    Rows of the two files correspond one to one; ``usage`` selects Training / PublicTest / PrivateTest (None: all). A
    CSV without a Usage column (Kaggle's ``train.csv``) is used whole.
    """
    fer2013_csv = Path(fer2013_csv)
    _require_file(fer2013_csv)
    rows = _read_csv(fer2013_csv, required=("emotion", "pixels"))
    if rows and "Usage" not in rows[0]:
        usage = None
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


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    return DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV")


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV (a byte-order mark allowed), names and cells stripped; a short row's missing cells
    are empty."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, restval="")
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; found {columns}")
            reader.fieldnames = columns
            return [{k: v.strip() for k, v in row.items() if k is not None} for row in reader]
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from exc


def class_index(name: str, where: str) -> int:
    """FER+ index of a class name or common synonym (happy, sad, angry...)."""
    index = known_class(name)
    if index is None:
        raise DataError(f"{where}: unknown class {name!r}; {EXPECTED_CLASSES}")
    return index


def known_class(name: str) -> int | None:
    """FER+ index of a class name or synonym, None for any other name."""
    canonical = CLASS_SYNONYMS.get(name.strip().lower())
    return None if canonical is None else FERPLUS_CLASSES.index(canonical)


def image_folder_files(root: str | Path) -> tuple[list[Path], list[int]]:
    """``root/<class>/**/*.png|jpg`` → files and FER+ class indices (a class folder's sub-folders, such as one per
    subject, included); hidden folders and files are skipped, and so is a folder whose name is no class (one line
    each)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    files: list[Path] = []
    labels: list[int] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        index = known_class(folder.name)
        if index is None:
            print(f"{folder}: {folder.name!r} is not an expression class; skipped")
            continue
        for file in sorted(folder.rglob("*")):
            hidden = any(part.startswith(".") for part in file.relative_to(folder).parts)
            if file.suffix.lower() in IMAGE_EXTENSIONS and not hidden and file.is_file():
                files.append(file)
                labels.append(index)
    if not files:
        raise DataError(f"{root}: no images found in class sub-folders; {EXPECTED_CLASSES} as sub-folder names")
    return files, labels


def face_images(files: list[Path], boxes: list | None = None, progress: bool = True,
                where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Model-size face crops of image files and which files gave one. Small images (both sides ≤
    :data:`FACE_CROP_MAX_SIDE`) are face crops already; the others go through the face pipeline (detector + aligner,
    cached). Missing files, unreadable images and images without a face give no crop (``found`` False), with one
    line saying how many of each; with ``where`` (the data set's name), no face at all is a :class:`DataError`."""
    from leaf_fer.realtime.face_crops import crop_files

    crops = np.zeros((len(files), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    found = np.zeros(len(files), bool)
    large: list[int] = []
    missing: list[Path] = []
    for i, file in enumerate(files):
        image = decode_image_file(file, grayscale=True)
        if image is None:
            if not file.is_file():
                missing.append(file)
            continue
        if max(image.shape) <= FACE_CROP_MAX_SIDE and boxes is None:
            crops[i], found[i] = _to_gray48(image, str(file)), True
        else:
            large.append(i)
    if large:
        result = crop_files([files[i] for i in large], boxes=None if boxes is None else [boxes[i] for i in large],
                            progress=progress)
        crops[large], found[large] = result.crops, result.found
    skipped = len(files) - int(found.sum())
    not_found = f"{len(missing)} not found (first: {missing[0]}), " if missing else ""
    if skipped:
        print(f"{where or 'images'}: {skipped} of {len(files)} skipped: {not_found}"
              f"{skipped - len(missing)} unreadable or without a face")
    if where is not None and not found.any():
        raise DataError(f"{where}: no face in any of its {len(files)} images ({not_found}"
                        f"{skipped - len(missing)} unreadable or without a face)")
    return crops, found


def _one_hot_votes(labels: np.ndarray) -> np.ndarray:
    votes = np.zeros((len(labels), len(FERPLUS_VOTE_COLUMNS)), dtype=np.int64)
    votes[np.arange(len(labels)), labels] = 1
    return votes


def load_image_folder(root: str | Path) -> FaceData:
    """``root/<class>/*.png|jpg``; class folder names are FER+/FER2013 class names or common synonyms (happy, sad...)."""
    files, labels = image_folder_files(root)
    crops, found = face_images(files, where=str(root))
    return FaceData(images=crops[found], ferplus_votes=_one_hot_votes(np.array(labels)[found]), source=str(root))


def _resolve(base: Path, name: str) -> Path:
    """A listed image's path: relative ones under ``base``; Windows separators work on every system."""
    path = Path(name.strip().replace("\\", "/") if os.sep == "/" else name.strip())
    return path if path.is_absolute() else base / path


def _labels_columns(columns: list[str]) -> dict[str, str | None]:
    """Which of ``columns`` holds a labels CSV's file and which its label (None: none does)."""
    by_name = {c.lower(): c for c in columns}
    return {key: next((by_name[a] for a in aliases if a in by_name), None) for key, aliases in LABELS_CSV_COLUMNS.items()}


def _labels_table(path: Path) -> tuple[list[dict[str, str]], list[Path], np.ndarray]:
    """A labels CSV's rows, image files and FER+ class indices; its columns may go by any name of
    :data:`LABELS_CSV_COLUMNS`."""
    _require_file(path)
    columns = csv_columns(path)
    found = _labels_columns(columns)
    missing = [f"{key} (or {', '.join(LABELS_CSV_COLUMNS[key][1:])})" for key, column in found.items() if column is None]
    if missing:
        raise DataError(f"{path}: missing column(s) {'; '.join(missing)}; found {columns}")
    rows = _read_csv(path, required=())
    if not rows:
        raise DataError(f"{path}: no rows")
    files = [_resolve(path.parent, row[found["file"]]) for row in rows]
    labels = np.array([class_index(row[found["label"]], f"{path}: row {i + 2}") for i, row in enumerate(rows)])
    return rows, files, labels


def load_labels_csv(path: str | Path, label_weight: float = POSED_LABEL_WEIGHT) -> FaceData:
    """A labels CSV: ``file`` (relative to the CSV's folder, or absolute) and ``label`` (a class name) per row; the
    columns may also be called ``image``/``path``/``filename`` and ``emotion``/``expression``/``class``.

    Vote-share columns (:data:`VOTE_SHARE_COLUMNS`, TCCE's layout) turn the target into a distribution: weight
    ``label_weight`` on the label, the rest on the observers' normalised votes."""
    if not 0.0 <= label_weight <= 1.0:
        raise DataError(f"the label's weight against the vote shares must be in [0, 1], got {label_weight}")
    path = Path(path)
    rows, files, labels = _labels_table(path)
    soft = np.zeros((len(rows), len(FERPLUS_CLASSES)), np.float32)
    soft[np.arange(len(rows)), labels] = 1.0
    vote_columns = [c for c in VOTE_SHARE_COLUMNS if rows and c in rows[0]]
    if vote_columns:
        try:
            votes = np.array([[float(row[c] or 0) for c in vote_columns] for row in rows], np.float32)
        except ValueError as exc:
            raise DataError(f"{path}: non-numeric vote share ({exc})") from exc
        shares = np.zeros_like(soft)
        for j, column in enumerate(vote_columns):
            shares[:, FERPLUS_CLASSES.index(VOTE_SHARE_COLUMNS[column])] = votes[:, j]
        total = shares.sum(axis=1, keepdims=True)
        shares = np.where(total > 0, shares / np.maximum(total, 1e-6), soft)
        soft = label_weight * soft + (1 - label_weight) * shares
    crops, found = face_images(files, where=str(path))
    return FaceData(images=crops[found], soft_labels=soft[found], source=str(path))


def labeled_files(path: str | Path) -> tuple[list[Path], list[int]]:
    """Full-size labeled images for end-to-end evaluation: a class-folder tree, a labels CSV (``file``, ``label``),
    an AffectNet CSV or RAF-DB's list file (its ``test_*`` entries) → files and FER+ class indices."""
    path = Path(path)
    if path.is_dir():
        return image_folder_files(path)
    suffix = path.suffix.lower()
    if suffix == ".csv" and "subDirectory_filePath" in csv_columns(path):
        files, labels, _ = affectnet_files(path)
        return files, labels
    if suffix == ".csv":
        _, files, labels = _labels_table(path)
        return files, labels.tolist()
    if suffix == ".txt":
        return rafdb_files(path, "PublicTest")
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    raise DataError(f"{path}: expected a folder with one sub-folder per class, a labels CSV (file, label), an "
                    "AffectNet CSV or RAF-DB's list file")


RAFDB_SPLITS = {"Training": "train_", "PublicTest": "test_", "PrivateTest": "test_"}
"""The file-name prefix of RAF-DB's entries each ``usage`` keeps."""


def rafdb_files(list_file: str | Path, usage: str | None = "Training") -> tuple[list[Path], list[int]]:
    """RAF-DB basic: ``list_patition_label.txt`` lines ``train_00001.jpg 5`` (ids 1..7) → image files and FER+ class
    indices. ``usage`` Training keeps the ``train_*`` entries, PublicTest and PrivateTest the ``test_*`` ones, None
    all. Images are looked for in ``Image/aligned`` (``*_aligned.jpg``), ``Image/original`` or beside the list file,
    from its folder and from the one above (the official ``basic/EmoLabel/`` beside ``basic/Image/``)."""
    list_file = Path(list_file)
    _require_file(list_file)
    bases = (list_file.parent, list_file.parent.parent)
    entries: list[tuple[int, Path, int]] = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(RAFDB_CLASSES):
            raise DataError(f"{list_file}: line {number}: expected 'NAME.jpg LABEL' with LABEL in 1..7, got {line!r}")
        entries.append((number, Path(parts[0]), int(parts[1])))
    prefix = RAFDB_SPLITS.get(usage or "")
    if prefix and any(name.name.startswith(tuple(RAFDB_SPLITS.values())) for _, name, _ in entries):
        entries = [entry for entry in entries if entry[1].name.startswith(prefix)]
    files, labels = [], []
    for number, name, label in entries:
        aligned = f"{name.stem}_aligned{name.suffix}"
        candidates = [c for base in bases for c in (base / "Image" / "aligned" / aligned, base / "Image" / "original" / name,
                                                     base / "aligned" / aligned, base / name)]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            raise DataError(f"{list_file}: line {number}: image {name} not found under {bases[0]} or {bases[1]}")
        files.append(file)
        labels.append(FERPLUS_CLASSES.index(RAFDB_CLASSES[label - 1]))
    if not files:
        raise DataError(f"{list_file}: no {prefix or ''}entries")
    return files, labels


def load_rafdb(list_file: str | Path, usage: str | None = "Training") -> FaceData:
    """RAF-DB's faces of ``usage`` (see :func:`rafdb_files`)."""
    files, labels = rafdb_files(list_file, usage)
    crops, found = face_images(files, where=str(list_file))
    return FaceData(images=crops[found], ferplus_votes=_one_hot_votes(np.array(labels)[found]), source=str(list_file))


def _affectnet_image_root(path: Path, names: list[str]) -> Path:
    """Where an AffectNet CSV's images are: the first of its folder, ``../Manually_Annotated_Images`` (the official
    layout, beside ``Manually_Annotated_file_lists/``), the folder above and ``Manually_Annotated_Images`` beside
    it that holds one of its first images."""
    roots = [path.parent, path.parent.parent / "Manually_Annotated_Images", path.parent.parent,
             path.parent / "Manually_Annotated_Images"]
    return next((root for root in roots if any(_resolve(root, name).is_file() for name in names[:20])), path.parent)


def affectnet_files(path: str | Path, image_root: str | Path | None = None
                    ) -> tuple[list[Path], list[int], list[tuple[float, float, float, float]]]:
    """AffectNet-style CSV: ``subDirectory_filePath``, ``face_x``, ``face_y``, ``face_width``, ``face_height``,
    ``expression`` (0..7; 8 none, 9 uncertain, 10 no face skipped) → image files, FER+ class indices and face boxes;
    images under ``image_root`` (default: found beside the CSV, see :func:`_affectnet_image_root`)."""
    path = Path(path)
    _require_file(path)
    rows = _read_csv(path, required=("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression"))
    names, labels, boxes = [], [], []
    for i, row in enumerate(rows):
        try:
            expression = int(row["expression"])
            x, y, w, h = (float(row[k]) for k in ("face_x", "face_y", "face_width", "face_height"))
        except ValueError as exc:
            raise DataError(f"{path}: row {i + 2}: unreadable expression or face box ({exc})") from exc
        if not 0 <= expression < len(AFFECTNET_CLASSES):
            continue
        names.append(row["subDirectory_filePath"])
        labels.append(FERPLUS_CLASSES.index(AFFECTNET_CLASSES[expression]))
        boxes.append((x, y, x + w, y + h))
    if not names:
        raise DataError(f"{path}: no row with an expression id in 0..7")
    root = Path(image_root) if image_root is not None else _affectnet_image_root(path, names)
    return [_resolve(root, name) for name in names], labels, boxes


def load_affectnet_csv(path: str | Path, image_root: str | Path | None = None) -> FaceData:
    """An AffectNet-style CSV's faces (see :func:`affectnet_files`). The face box picks the face when the detector
    finds several, and is the face when it finds none."""
    files, labels, boxes = affectnet_files(path, image_root)
    crops, found = face_images(files, boxes, where=str(path))
    return FaceData(images=crops[found], ferplus_votes=_one_hot_votes(np.array(labels)[found]), source=str(path))


def csv_columns(path: Path) -> list[str]:
    _require_file(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [c.strip() for c in next(csv.reader(handle), [])]
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from exc


def load_dataset(path: str | Path, ferplus_csv: str | Path | None = None, usage: str | None = "Training",
                 label_weight: float = POSED_LABEL_WEIGHT) -> FaceData:
    """Dispatch on the path: ``.npz``; a CSV by its columns (fer2013.csv with ``ferplus_csv`` optional, an AffectNet
    CSV, a labels CSV, whose vote shares weigh against its label as ``label_weight`` says); RAF-DB's ``.txt`` list
    file; or a class-folder tree."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path)
    if suffix == ".csv":
        columns = csv_columns(path)
        if "pixels" in columns:
            return load_fer2013_csv(path, ferplus_csv, usage)
        if "subDirectory_filePath" in columns:
            return load_affectnet_csv(path)
        if None not in _labels_columns(columns).values():
            return load_labels_csv(path, label_weight)
        raise DataError(f"{path}: unknown CSV layout (columns {columns}); expected fer2013.csv (emotion, pixels, Usage), "
                        "a labels CSV (file, label) or an AffectNet CSV (subDirectory_filePath, face_x, ..., expression)")
    if suffix == ".txt":
        return load_rafdb(path, usage)
    if path.is_dir():
        return load_image_folder(path)
    raise DataError(f"{path}: expected an .npz file, a CSV, a RAF-DB list file or an image folder")


def load_unlabeled_faces(spec: str | Path, limit: int = 0) -> np.ndarray:
    """Extra unlabeled faces, uint8 [N,48,48], from a path or a glob pattern (``**`` recursive) matching npz files
    with ``images`` (labels, if any, ignored), face images, or folders of face images (searched recursively). The
    face crops ``leaf-fer annotate --save-faces`` keeps from your videos: ``annotations/**/*.faces.npz``. ``limit``:
    a seeded sample of at most that many, in their order (0: all)."""
    text = str(spec)
    paths = sorted(Path(p) for p in glob.glob(text, recursive=True)) if glob.has_magic(text) else [Path(text)]
    if not paths:
        raise DataError(f"{text}: no files match")
    faces = np.concatenate([_unlabeled_from(path) for path in paths])
    if len(faces) == 0:
        raise DataError(f"{text}: no face images found")
    return faces[seeded_sample(len(faces), limit)]


def arrays_hash(*arrays: np.ndarray | None) -> str:
    """Short SHA-256 of the arrays' bytes in order (None skipped): what a run's data hash is made of."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def seeded_sample(count: int, limit: int) -> np.ndarray:
    """Sorted indices of a seeded sample of at most ``limit`` of ``count`` rows (0: all of them)."""
    if 0 < limit < count:
        return np.sort(np.random.default_rng(0).permutation(count)[:limit])
    return np.arange(count)


def _unlabeled_from(path: Path) -> np.ndarray:
    if path.suffix == ".npz":
        images = _read_npz(path, {"images": None})["images"]
        return _as_face_images(images, str(path)) if len(images) else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    elif path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        files = [path]
    else:
        raise DataError(f"{path}: expected an .npz file, a face image or a folder of face images")
    if not files:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    crops, found = face_images(files)
    return crops[found]


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
    if data.soft_labels is not None:
        soft = np.stack([data.soft_labels[:, FERPLUS_CLASSES.index(c)] for c in classes], axis=1).astype(np.float32)
        total = soft.sum(axis=1)
        usable = total > 0.5
        soft = soft / np.maximum(total, 1e-6)[:, None]
        hard = np.where(usable, soft.argmax(axis=1), -1)
        return Targets(classes, soft, hard.astype(np.int64), usable)
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
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))
