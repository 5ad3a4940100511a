"""Model-size face crops from full-size images through the live pipeline's own detector and aligner, cached.

Training on what the model sees at inference: each image goes through :class:`~.detector.CascadeDetector` (MediaPipe,
then YuNet; a large image on a copy downscaled as the pipeline does) and :func:`~.align.align_faces`, exactly as a
still does in ``annotate``. The crops of a file list are
cached once in one npz, keyed by every file's SHA-256 and the detector and aligner settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from leaf_fer.common import atomic_write_npz, cache_root, decode_image_file, file_sha256

from . import align, detector
from .detector import CascadeDetector
from .settings import PipelineConfig
from .types import Detection

CACHE_VERSION = 1


@dataclass(frozen=True)
class CropSettings:
    """What a crop depends on besides the image: the detector cascade (as the live pipeline's defaults set it) and the
    aligner's geometry."""

    size: int = 48
    detector_range: str = PipelineConfig.detector_range
    fallback_detector: bool = PipelineConfig.fallback_detector
    min_detection_confidence: float = PipelineConfig.min_detection_confidence
    detect_max_side: int = PipelineConfig.detect_max_side

    def key(self) -> str:
        geometry = (align.EYE_CENTER, align.EYE_DISTANCE, align.EYE_MOUTH_DISTANCE, align.BOX_WIDTH, align.BOX_CENTER_Y,
                    detector.YUNET_EYE_DROP, detector.YUNET_MOUTH_DROP, detector.YUNET_MIN_SIDE, detector.YUNET_MAX_SIDE,
                    align.ANTIALIAS, align.MIN_ANTIALIAS_SIGMA)
        return json.dumps({"version": CACHE_VERSION, **asdict(self), "geometry": geometry}, sort_keys=True)


@dataclass
class FaceCrops:
    """``crops`` uint8 [N, size, size] for N files; ``found`` False where no face was detected (crop is zeros)."""

    crops: np.ndarray
    found: np.ndarray


Box = tuple[float, float, float, float]


def _intersection(a: Box, b: Box) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _overlaps(a: Box, b: Box) -> bool:
    return _intersection(a, b) > 0.0


def best_face(detections: Sequence[Detection], hint: Box | None = None) -> Detection:
    """The largest face, or with a hint box (e.g. AffectNet's face box) the one overlapping it most."""
    if hint is None:
        return max(detections, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
    return max(detections, key=lambda d: _intersection(d.box, hint))


class FaceCropper:
    """One image (BGR or grayscale uint8) → its main face aligned at ``settings.size``, or None without a face."""

    def __init__(self, settings: CropSettings = CropSettings()) -> None:
        self.settings = settings
        self.detector = CascadeDetector(settings.detector_range, settings.min_detection_confidence,
                                        fallback=settings.fallback_detector)

    def detect(self, image: np.ndarray, box: Box | None = None) -> Detection | None:
        """The main face of a BGR image as the pipeline detects it (``box``: a face box to prefer), or None."""
        size = detector.detection_size(image.shape, self.settings.detect_max_side)
        small = image if size is None else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        detections = self.detector.detect(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
        if size is not None:
            detections = [detector.scaled_detection(d, small.shape, image.shape) for d in detections]
        face = best_face(detections, box) if detections else None
        if box is not None and (face is None or not _overlaps(face.box, box)):
            face = Detection(box=box, score=0.0)
        return face

    def crop(self, image: np.ndarray, box: Box | None = None) -> np.ndarray | None:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        face = self.detect(image, box)
        if face is None:
            return None
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return align.align_faces(gray, [face], self.settings.size)[0].copy()

    def close(self) -> None:
        self.detector.close()


def crop_files(files: Sequence[str | Path], settings: CropSettings = CropSettings(),
               boxes: Sequence[Box | None] | None = None,
               cache_dir: str | Path | None = None, progress: bool = True) -> FaceCrops:
    """Crops for every file (``boxes``: optional face boxes, one per file), from the cache when it has them."""
    files = [Path(f) for f in files]
    boxes = list(boxes) if boxes is not None else [None] * len(files)
    digest = hashlib.sha256(settings.key().encode())
    for file, box in zip(files, boxes):
        digest.update(file_sha256(file).encode() + json.dumps(box).encode())
    cache = Path(cache_dir) if cache_dir is not None else cache_root() / "faces"
    cached = cache / f"{digest.hexdigest()[:24]}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as npz:
            return FaceCrops(npz["crops"], npz["found"])
    cropper = FaceCropper(settings)
    crops = np.zeros((len(files), settings.size, settings.size), np.uint8)
    found = np.zeros(len(files), bool)
    try:
        for i, (file, box) in enumerate(tqdm(list(zip(files, boxes)), desc="face crops", disable=not progress)):
            image = decode_image_file(file)
            face = None if image is None else cropper.crop(image, box)
            if face is not None:
                crops[i], found[i] = face, True
    finally:
        cropper.close()
    result = FaceCrops(crops, found)
    try:
        atomic_write_npz(cached, crops=crops, found=found)
    except OSError as exc:
        print(f"face crops not cached ({cached.parent}: {exc.strerror or exc})")
    return result
