"""The Python API for notebooks and scripts: a video, an image or your own frames → typed results.

``analyze_video(path, **options)`` and ``analyze_image(image, **options)`` return an :class:`Analysis`: per frame, per
face the time, track id, box, probabilities and label, with ``to_csv()`` (the CSV of ``leaf-fer annotate``),
``to_json()``/``to_dict()`` (format :data:`FORMAT`) and ``to_pandas()``. :class:`Analyzer` keeps the model loaded for
many inputs or for frames from your own loop. ``options`` are :class:`PipelineConfig` fields; the schemas are in
docs/outputs.md.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from leaf_fer.common import IMAGE_EXTENSIONS, ConfigError
from leaf_fer.realtime.annotate import TrackSummary, summarize_track
from leaf_fer.realtime.pipeline import Pipeline, PipelineConfig
from leaf_fer.realtime.sources import VideoFileSource, is_url, read_image, redact_url, to_bgr
from leaf_fer.realtime.types import Frame, FrameResult
from leaf_fer.realtime.writers import atomic_write_bytes, csv_columns

FORMAT = "leaf-fer-analysis/1"
"""The version of :meth:`Analysis.to_dict`'s layout; its CSV is annotate's (``leaf-fer-annotation/1``)."""


@dataclass(frozen=True, slots=True)
class FaceResult:
    """One face in one frame, in the input's pixels: ``probabilities`` are the model's, ``smoothed`` the track's
    over time (equal for an image); ``label`` and ``confidence`` are the top smoothed class and its probability."""

    frame: int
    time_s: float
    track_id: int
    box: tuple[float, float, float, float]
    score: float
    keypoints: tuple[tuple[float, float], ...]
    probabilities: dict[str, float]
    smoothed: dict[str, float]
    label: str
    confidence: float

    def row(self) -> list[Any]:
        """The values in the CSV's column order."""
        return [self.frame, self.time_s, self.track_id, *self.box, self.score, *(v for p in self.keypoints for v in p),
                *self.probabilities.values(), *self.smoothed.values(), self.label, self.confidence]

    def csv_row(self) -> list[Any]:
        """:meth:`row` formatted as annotate's CSV writes it."""
        row: list[Any] = [self.frame, f"{self.time_s:.3f}", self.track_id, *(f"{v:.1f}" for v in self.box)]
        row += [f"{self.score:.3f}", *(f"{v:.1f}" for p in self.keypoints for v in p)]
        row += [f"{v:.4f}" for v in (*self.probabilities.values(), *self.smoothed.values())]
        return row + [self.label, f"{self.confidence:.4f}"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "box": list(self.box),
            "score": self.score,
            "keypoints": [list(p) for p in self.keypoints],
            "probabilities": dict(self.probabilities),
            "smoothed": dict(self.smoothed),
            "label": self.label,
            "confidence": self.confidence,
        }


@dataclass(frozen=True, slots=True)
class FrameAnalysis:
    """The faces of one analysed frame (``frame``: its index in the input); ``annotated`` is the overlay when the
    analyzer draws (``draw=True``), never kept by :meth:`Analyzer.analyze_video`."""

    frame: int
    time_s: float
    faces: tuple[FaceResult, ...]
    annotated: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Analysis:
    """The analysed frames of one input, frames without faces included; ``fps`` is 0.0 for an image."""

    source: str
    classes: tuple[str, ...]
    fps: float
    width: int
    height: int
    backend: str
    precision: str
    config: dict[str, Any] = field(repr=False)
    frames: tuple[FrameAnalysis, ...] = field(repr=False)

    @property
    def faces(self) -> list[FaceResult]:
        """Every face of every frame, in frame order."""
        return [face for frame in self.frames for face in frame.faces]

    @property
    def tracks(self) -> list[TrackSummary]:
        """One summary per track (a face followed over frames), by track id: first and last frame, dominant label,
        label counts and mean probabilities, as in annotate's JSON summary."""
        by_track: dict[int, list[FaceResult]] = {}
        for face in self.faces:
            by_track.setdefault(face.track_id, []).append(face)
        return [summarize_track(track_id, [f.frame for f in faces], [f.time_s for f in faces],
                                [list(f.smoothed.values()) for f in faces],
                                [list(f.probabilities.values()) for f in faces], self.classes)
                for track_id, faces in sorted(by_track.items())]

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str | None:
        """annotate's CSV (one row per face): the text, or None after writing it atomically to ``path``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(csv_columns(self.classes))
        writer.writerows(face.csv_row() for face in self.faces)
        return _write(buffer.getvalue(), path)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready data, ``format`` :data:`FORMAT` (docs/outputs.md)."""
        return {
            "format": FORMAT,
            "source": self.source,
            "classes": list(self.classes),
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "backend": self.backend,
            "precision": self.precision,
            "config": self.config,
            "frames": [{"frame": f.frame, "time_s": f.time_s, "faces": [face.to_dict() for face in f.faces]}
                       for f in self.frames],
            "tracks": [asdict(track) for track in self.tracks],
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str | None:
        """:meth:`to_dict` as JSON text, or None after writing it atomically to ``path``."""
        return _write(json.dumps(self.to_dict(), indent=2) + "\n", path)

    def to_pandas(self) -> Any:
        """A pandas DataFrame with the CSV's columns and unrounded values (needs pandas, not a dependency)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Analysis.to_pandas needs pandas (pip install pandas)") from None
        return pandas.DataFrame([face.row() for face in self.faces], columns=csv_columns(self.classes))


def _write(text: str, path: str | os.PathLike[str] | None) -> str | None:
    if path is None:
        return text
    atomic_write_bytes(Path(path), text.encode())
    return None


def pipeline_config(**options: Any) -> PipelineConfig:
    """A :class:`PipelineConfig` from keyword options, ``draw`` off unless asked; one ValueError for unknown names."""
    names = [f.name for f in fields(PipelineConfig)]
    unknown = [name for name in options if name not in names]
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; the options are PipelineConfig fields: "
                         f"{', '.join(names)}")
    plain = {name: value.item() if isinstance(value, np.generic) else value for name, value in options.items()}
    return PipelineConfig(**{"draw": False, **plain})


def _is_count(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _image_pixels(image: Any) -> tuple[str, np.ndarray]:
    """A name and BGR uint8 pixels for :meth:`Analyzer.analyze_image`'s input."""
    if hasattr(image, "convert") and hasattr(image, "mode"):
        return "<PIL image>", np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ConfigError(f"expected a uint8 image (0-255), got {image.dtype}")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)) or not image.size:
            raise ConfigError(f"expected an image [H, W], [H, W, 3] or [H, W, 4], got shape {image.shape}")
        return "<array>", to_bgr(image)
    text = os.fspath(image)
    if is_url(text):
        raise ConfigError(f"{redact_url(text)}: analyze_image reads image files; download the image first")
    return text, read_image(Path(text))


def _frame_analysis(result: FrameResult, keep_image: bool = True) -> FrameAnalysis:
    frame, classes = result.frame, result.classes
    faces = []
    for face in result.faces:
        det, label = face.detection, face.label_index()
        faces.append(FaceResult(
            frame=frame.index,
            time_s=frame.timestamp_s,
            track_id=face.track_id,
            box=tuple(float(v) for v in det.box),
            score=float(det.score),
            keypoints=tuple((float(x), float(y)) for x, y in np.asarray(det.keypoints).reshape(-1, 2)),
            probabilities=dict(zip(classes, map(float, face.probabilities))),
            smoothed=dict(zip(classes, map(float, face.smoothed))),
            label=classes[label],
            confidence=float(face.smoothed[label]),
        ))
    return FrameAnalysis(frame.index, frame.timestamp_s, tuple(faces), result.annotated if keep_image else None)


class Analyzer:
    """The model and the face detector loaded once; ``options`` are :class:`PipelineConfig` fields (``draw``
    defaults to False). :meth:`analyze_video` and :meth:`analyze_image` start from fresh tracks and leave
    :meth:`analyze`'s stream reset. A context manager: leaving it (or :meth:`close`) frees the model."""

    def __init__(self, **options: Any) -> None:
        self.pipeline = Pipeline(pipeline_config(**options))
        self._index = 0
        self._t0: float | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.pipeline.classes

    def analyze(self, frame_bgr: np.ndarray, timestamp_s: float | None = None) -> FrameAnalysis:
        """One BGR uint8 frame of a continuous stream: tracks and smoothing carry over between calls, frames are
        numbered from 0, ``timestamp_s`` defaults to the time since the first frame."""
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        timestamp = now - self._t0 if timestamp_s is None else float(timestamp_s)
        result = self.pipeline.process(Frame(self._index, timestamp, frame_bgr, "frames", captured_at=now))
        self._index += 1
        return _frame_analysis(result)

    def reset(self) -> None:
        """Start a new, unrelated stream for :meth:`analyze`: track ids restart at 1, frames at 0, time at 0."""
        self.pipeline.reset()
        self._index = 0
        self._t0 = None

    def analyze_video(
        self, path: str | os.PathLike[str], *, every: int = 1, max_frames: int | None = None, progress: bool = False
    ) -> Analysis:
        """Analyse a video file frame by frame (no image is kept), with fresh track ids. ``every``: analyse frames
        0, N, 2N, … only (tracking and smoothing then step over N frames at a time); ``max_frames``: stop after
        analysing this many; ``progress``: a tqdm bar."""
        if not _is_count(every) or every < 1:
            raise ConfigError(f"every must be a whole number >= 1; got {every!r}")
        if max_frames is not None and (not _is_count(max_frames) or max_frames < 1):
            raise ConfigError(f"max_frames must be a whole number >= 1 (None = all); got {max_frames!r}")
        if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
            return self.analyze_image(path)
        source = VideoFileSource(path)
        total = -(-source.frame_count // every) if source.frame_count else None
        if max_frames is not None:
            total = min(total or max_frames, max_frames)
        self.reset()
        frames: list[FrameAnalysis] = []
        with source, tqdm(total=total, desc=Path(path).name, unit="frame", disable=not progress, leave=False) as bar:
            for frame in source:
                if frame.index % every:
                    continue
                frames.append(_frame_analysis(self.pipeline.process(frame), keep_image=False))
                bar.update(1)
                if max_frames is not None and len(frames) >= max_frames:
                    break
        self.reset()
        return self._analysis(source.name, source.fps, source.width, source.height, frames)

    def analyze_image(self, image: str | os.PathLike[str] | np.ndarray | Any) -> Analysis:
        """Analyse one still image (independent of earlier frames, no smoothing): a file, a uint8 array (BGR, BGRA or
        gray, as OpenCV gives them) or a PIL image."""
        name, pixels = _image_pixels(image)
        result = self.pipeline.process(Frame(0, 0.0, pixels, name, still=True))
        self.reset()
        return self._analysis(name, 0.0, pixels.shape[1], pixels.shape[0], [_frame_analysis(result)])

    def _analysis(self, source: str, fps: float, width: int, height: int, frames: list[FrameAnalysis]) -> Analysis:
        return Analysis(source, self.classes, fps, width, height, self.pipeline.backend_name, self.pipeline.precision,
                        self.pipeline.config.to_dict(), tuple(frames))

    def close(self) -> None:
        self.pipeline.close()

    def __enter__(self) -> "Analyzer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def analyze_video(
    path: str | os.PathLike[str], *, every: int = 1, max_frames: int | None = None, progress: bool = False,
    **options: Any,
) -> Analysis:
    """Analyse a video file → :class:`Analysis`; see :meth:`Analyzer.analyze_video` (``options``: PipelineConfig)."""
    with Analyzer(**options) as analyzer:
        return analyzer.analyze_video(path, every=every, max_frames=max_frames, progress=progress)


def analyze_image(image: str | os.PathLike[str] | np.ndarray | Any, **options: Any) -> Analysis:
    """Analyse one image → :class:`Analysis`; see :meth:`Analyzer.analyze_image` (``options``: PipelineConfig)."""
    with Analyzer(**options) as analyzer:
        return analyzer.analyze_image(image)
