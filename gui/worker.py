"""Background worker: owns the source, the realtime pipeline and the recording writers, off the UI thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PyQt6.QtCore import QThread, pyqtSignal
from PyQt6.QtGui import QImage

from leaf_fer.realtime.annotators import FpsMeter
from leaf_fer.realtime.pipeline import Pipeline
from leaf_fer.realtime.settings import PipelineConfig, option_of
from leaf_fer.realtime.sources import FolderSource, ImageSource, LiveSource, Source, SourceError, open_source
from leaf_fer.realtime.types import Frame, FrameResult
from leaf_fer.realtime.writers import CsvWriter, VideoWriter

SourceSpec = int | str
RATE_SPAN_S = 0.5
"""Seconds of frames over which a live source's rate is measured before a recording of it starts."""


@dataclass(frozen=True)
class FaceInfo:
    """Plain-data copy of one tracked face for the UI thread."""

    track_id: int
    box: tuple[float, float, float, float]
    score: float
    probabilities: tuple[float, ...]
    label: str


@dataclass(frozen=True)
class FramePacket:
    """What the UI receives per shown frame: an owned QImage of the annotated frame plus readouts.

    ``still`` marks an independent image (an image file, a folder's images): its result stays valid after the run.
    ``fps``: frames processed per second (0 until measured).
    """

    index: int
    timestamp_s: float
    image: QImage
    faces: tuple[FaceInfo, ...]
    classes: tuple[str, ...]
    latency_ms: float
    backend: str
    dropped: int
    fps: float = 0.0
    still: bool = False
    stage_ms: dict[str, float] = field(default_factory=dict)


class PipelineLike(Protocol):
    """What the worker needs of a pipeline (the realtime ``Pipeline``, or a substitute in tests)."""

    @property
    def backend_name(self) -> str: ...

    @property
    def classes(self) -> tuple[str, ...]: ...

    def process(self, frame: Frame) -> FrameResult: ...

    def close(self) -> None: ...


class RecorderLike(Protocol):
    """What the worker needs of a recorder: frame-by-frame writes and a final ``close``."""

    @property
    def video_path(self) -> Path: ...

    @property
    def csv_path(self) -> Path: ...

    def write(self, result: FrameResult, image: np.ndarray) -> None: ...

    def close(self) -> None: ...


PipelineFactory = Callable[[PipelineConfig], PipelineLike]
SourceFactory = Callable[[SourceSpec], Source]
RecorderFactory = Callable[[Path, Path, float, tuple[str, ...]], RecorderLike]


def backend_label(name: str) -> str:
    """Human name of a backend id such as ``onnxruntime`` or ``tensorrt-fp16`` (the settings form's names)."""
    key = name.lower()
    for prefix, label in option_of("backend").choice_labels.items():
        if key.startswith(prefix):
            return label + name[len(prefix):]
    return name


class FramePacer:
    """Holds a file's frames to their own timeline, so that a video plays at its recorded speed, not faster."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._origin: tuple[float, float] | None = None

    def restart(self) -> None:
        """Start a new timeline at the next frame (after a pause)."""
        self._origin = None

    def wait(self, timestamp_s: float) -> None:
        """Sleep until the frame at ``timestamp_s`` is due. A frame over a second early or late (a jump in the file,
        a stall such as a settings change) starts a new timeline, so that the video neither waits nor races to catch
        up."""
        now = time.perf_counter()
        if self._origin is None:
            self._origin = (now, timestamp_s)
            return
        started, first_s = self._origin
        delay = (timestamp_s - first_s) - (now - started)
        if abs(delay) > 1.0:
            self._origin = (now, timestamp_s)
            return
        while delay > 0 and not self._stop.is_set():
            time.sleep(min(delay, 0.05))
            delay = (timestamp_s - first_s) - (time.perf_counter() - started)


def bgr_to_qimage(image: np.ndarray) -> QImage:
    """Deep-copied QImage of a BGR (or grey) uint8 array, safe to hand to another thread."""
    array = np.ascontiguousarray(image)
    h, w = array.shape[:2]
    fmt = QImage.Format.Format_Grayscale8 if array.ndim == 2 else QImage.Format.Format_BGR888
    return QImage(array.tobytes(), w, h, array.strides[0], fmt).copy()


def face_infos(result: FrameResult) -> tuple[FaceInfo, ...]:
    """Plain-data copies of the result's faces, labelled from the smoothed probabilities."""
    infos = []
    for face in result.faces:
        probs = np.asarray(face.smoothed, dtype=np.float64)
        label_index = int(np.argmax(probs)) if probs.size else -1
        label = result.classes[label_index] if 0 <= label_index < len(result.classes) else ""
        x1, y1, x2, y2 = (float(v) for v in face.detection.box)
        infos.append(
            FaceInfo(
                track_id=int(face.track_id),
                box=(x1, y1, x2, y2),
                score=float(face.detection.score),
                probabilities=tuple(float(p) for p in probs),
                label=label,
            )
        )
    return tuple(infos)


class PipelineWorker(QThread):
    """Runs source → pipeline → (recorder) in its own thread and emits one packet per frame the UI can take.

    Control methods are thread-safe and never block: they set flags the loop reads between frames. A frame that
    finishes while the UI has not yet consumed the previous packet is not emitted (it is still recorded). A config
    that cannot be applied is answered by ``config_rejected(message, requested, running)``; ``source_opened``
    carries the opened :class:`Source` (read its properties only). ``recording_finished(video, csv, follows)`` and
    ``recording_failed(message, follows)`` say whether another recording has been asked for since.
    """

    frame_ready = pyqtSignal(object)
    error = pyqtSignal(str)
    pipeline_ready = pyqtSignal(str, object)
    config_rejected = pyqtSignal(str, object, object)
    source_opened = pyqtSignal(object)
    recording_started = pyqtSignal(str, str)
    recording_finished = pyqtSignal(str, str, bool)
    recording_failed = pyqtSignal(str, bool)
    source_ended = pyqtSignal(str)

    def __init__(
        self,
        source: SourceSpec,
        config: PipelineConfig,
        *,
        pipeline_factory: PipelineFactory | None = None,
        source_factory: SourceFactory | None = None,
        recorder_factory: RecorderFactory | None = None,
        pace: bool = True,
    ) -> None:
        super().__init__()
        self.source = source
        self.config = config
        self._pipeline_factory = pipeline_factory or default_pipeline_factory
        self._source_factory = source_factory or default_source_factory
        self._recorder_factory = recorder_factory or default_recorder_factory
        self._pace = pace
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._ui_busy = threading.Event()
        self._pending_config: PipelineConfig | None = None
        self._pending_record: tuple[Path, Path] | None = None
        self._stop_record = False
        self._opened: Source | None = None
        self._pipeline: PipelineLike | None = None
        self._meter = FpsMeter()
        self.frames_processed = 0
        self.frames_dropped = 0

    def request_stop(self) -> None:
        self._stop.set()
        self._paused.clear()

    def set_paused(self, paused: bool) -> None:
        if paused:
            self._paused.set()
        else:
            self._paused.clear()

    def is_paused(self) -> bool:
        return self._paused.is_set()

    def update_config(self, config: PipelineConfig) -> None:
        """Rebuild the pipeline with ``config`` before the next frame; the source stays open."""
        with self._lock:
            self._pending_config = config

    def start_recording(self, video_path: Path, csv_path: Path) -> None:
        with self._lock:
            self._pending_record = (Path(video_path), Path(csv_path))
            self._stop_record = False

    def stop_recording(self) -> None:
        with self._lock:
            self._pending_record = None
            self._stop_record = True

    def frame_consumed(self) -> None:
        """Called by the UI once it has shown a packet; lets the next frame through."""
        self._ui_busy.clear()

    def run(self) -> None:
        source: Source | None = None
        recorder: RecorderLike | None = None
        try:
            self._pipeline = self._build(self.config)
            if self._pipeline is None:
                return
            source = self._open_source()
            if source is None:
                return
            recorder = self._loop(source)
        finally:
            self._finish_recording(recorder)
            _close_quietly(source)
            _close_quietly(self._pipeline)
            self._pipeline = None

    def _build(self, config: PipelineConfig) -> PipelineLike | None:
        """The pipeline for ``config``; a backend that cannot start gives way to ``auto``, which says so."""
        try:
            pipeline = self._pipeline_factory(config)
        except Exception as exc:  # noqa: BLE001 - any backend/model failure becomes a message, not a crash
            if config.backend == "auto":
                self.error.emit(f"Could not start the pipeline: {exc}")
                return None
            fallback = replace(config, backend="auto")
            pipeline = self._build(fallback)
            if pipeline is not None:
                self.config = fallback
                self.config_rejected.emit(
                    f"{backend_label(config.backend)} could not start ({exc}); running "
                    f"{backend_label(pipeline.backend_name)} instead, and the backend is set to auto.",
                    config,
                    fallback,
                )
            return pipeline
        self.pipeline_ready.emit(pipeline.backend_name, tuple(pipeline.classes))
        return pipeline

    def _open_source(self) -> Source | None:
        try:
            source = self._source_factory(self.source)
        except Exception as exc:  # noqa: BLE001
            self.error.emit(_source_message(self.source, exc))
            return None
        self._opened = source
        self.source_opened.emit(source)
        return source

    def _loop(self, source: Source) -> RecorderLike | None:
        recorder: RecorderLike | None = None
        frames: Iterator[Frame] = iter(source)
        pacer = FramePacer(self._stop) if self._pace and not source.is_live else None
        while not self._stop.is_set():
            if self._paused.is_set():
                time.sleep(0.03)
                if pacer is not None:
                    pacer.restart()
                self._meter.reset()
                self._apply_config()
                continue
            try:
                frame = next(frames)
            except StopIteration:
                self.source_ended.emit(self._end_message())
                break
            except Exception as exc:  # noqa: BLE001 - a camera unplugged mid-stream, a corrupt file
                self.error.emit(_source_message(self.source, exc))
                break
            if self._stop.is_set():
                break
            if self._apply_config() and pacer is not None:
                pacer.restart()
            pipeline = self._pipeline
            assert pipeline is not None
            try:
                result = pipeline.process(frame)
            except Exception as exc:  # noqa: BLE001
                self.error.emit(f"Processing failed on frame {frame.index}: {exc}")
                break
            image = result.annotated if result.annotated is not None else frame.image
            fps = self._meter.tick()
            recorder = self._update_recording(recorder, result, fps)
            if recorder is not None:
                try:
                    recorder.write(result, image)
                except Exception as exc:  # noqa: BLE001 - disk full, codec failure
                    self.error.emit(f"Recording stopped: {exc}")
                    self._finish_recording(recorder, self._recording_follows())
                    recorder = None
            self.frames_processed += 1
            if pacer is not None:
                pacer.wait(frame.timestamp_s)
            if self._ui_busy.is_set():
                self.frames_dropped += 1
                continue
            self._ui_busy.set()
            self.frame_ready.emit(self._packet(result, image, pipeline.backend_name))
        return recorder

    def _apply_config(self) -> bool:
        """Rebuild the pipeline if a new config is pending; whether it was rebuilt."""
        with self._lock:
            config, self._pending_config = self._pending_config, None
        pipeline = self._pipeline
        if config is None or pipeline is None:
            return False
        try:
            rebuilt = self._pipeline_factory(config)
        except Exception as exc:  # noqa: BLE001
            self.config_rejected.emit(
                f"Settings not applied ({exc}); still running {backend_label(pipeline.backend_name)} with the "
                "previous settings, which the controls show again.",
                config,
                self.config,
            )
            return False
        _close_quietly(pipeline)
        self._pipeline = rebuilt
        self.config = config
        self.pipeline_ready.emit(rebuilt.backend_name, tuple(rebuilt.classes))
        return True

    def _update_recording(self, recorder: RecorderLike | None, result: FrameResult, fps: float) -> RecorderLike | None:
        """Finish the recording the user stopped or replaced; start the one asked for once its frame rate is known."""
        with self._lock:
            target = self._pending_record
            stop, self._stop_record = self._stop_record, False
            ready = target is not None and self._rate_known()
            if ready:
                self._pending_record = None
        if (stop or target is not None) and recorder is not None:
            self._finish_recording(recorder, follows=target is not None)
            recorder = None
        if not ready or target is None:
            return recorder
        try:
            recorder = self._recorder_factory(target[0], target[1], self._recording_fps(fps), tuple(result.classes))
        except Exception as exc:  # noqa: BLE001
            self.recording_failed.emit(f"Could not start recording: {exc}", self._recording_follows())
            return None
        self.recording_started.emit(str(recorder.video_path), str(recorder.csv_path))
        return recorder

    def _recording_follows(self) -> bool:
        """Whether a recording has been asked for and not started yet."""
        with self._lock:
            return self._pending_record is not None

    def _rate_known(self) -> bool:
        """Whether a recording may start: a file has its own frame rate; a live source's is measured over
        :data:`RATE_SPAN_S` of frames first (right after Start or a pause, a live recording starts that much later)."""
        source = self._opened
        if source is not None and not source.is_live and source.fps > 0:
            return True
        return self._meter.span_s >= RATE_SPAN_S

    def _recording_fps(self, measured: float) -> float:
        """The source's own frame rate for files; the measured processing rate for live sources."""
        source = self._opened
        if source is not None and not source.is_live and source.fps > 0:
            return float(source.fps)
        return float(min(60.0, max(1.0, round(measured, 1))))

    def _finish_recording(self, recorder: RecorderLike | None, follows: bool = False) -> None:
        if recorder is None:
            return
        try:
            recorder.close()
        except Exception as exc:  # noqa: BLE001
            self.recording_failed.emit(f"Could not finish the recording: {exc}", follows)
            return
        self.recording_finished.emit(str(recorder.video_path), str(recorder.csv_path), follows)

    def _packet(self, result: FrameResult, image: np.ndarray, backend: str) -> FramePacket:
        timings = result.timings
        stages = {
            "decode": timings.decode_ms,
            "detect": timings.detect_ms,
            "track+align": timings.track_align_ms,
            "infer": timings.infer_ms,
            "smooth": timings.smooth_ms,
            "draw": timings.draw_ms,
        }
        return FramePacket(
            index=result.frame.index,
            timestamp_s=result.frame.timestamp_s,
            image=bgr_to_qimage(image),
            faces=face_infos(result),
            classes=tuple(result.classes),
            latency_ms=float(result.latency_ms or timings.total_ms),
            backend=backend,
            dropped=self.frames_dropped,
            fps=self._meter.fps,
            still=result.frame.still,
            stage_ms=stages,
        )

    def _end_message(self) -> str:
        source = self._opened
        name = (source.name if source is not None else "") or str(self.source)
        if isinstance(source, ImageSource):
            return f"Analysed image {Path(name).name}."
        if isinstance(source, FolderSource):
            return f"Analysed every image in {Path(name).name}/."
        if isinstance(source, LiveSource) and not source.finite:
            return f"The live source {name} stopped delivering frames."
        return f"End of video {Path(name).name}."


def _source_message(spec: SourceSpec, exc: BaseException) -> str:
    """One line for a source failure; the user's path or URL keeps its case."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, SourceError):
        return text
    if isinstance(spec, int):
        return f"Camera {spec}: {text}"
    return f"Source {spec}: {text}"


def _close_quietly(obj: Any) -> None:
    close = getattr(obj, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - closing is best effort during shutdown
            pass


class Recorder:
    """The annotated stream as a video plus the per-face CSV of ``leaf-fer annotate``, both finalised atomically."""

    def __init__(self, video_path: Path, csv_path: Path, fps: float, classes: tuple[str, ...]) -> None:
        self.video = VideoWriter(video_path, fps)
        try:
            self.csv = CsvWriter(csv_path, classes)
        except BaseException:
            self.video.abort()
            raise

    @property
    def video_path(self) -> Path:
        return self.video.path

    @property
    def csv_path(self) -> Path:
        return self.csv.path

    def write(self, result: FrameResult, image: np.ndarray) -> None:
        self.video.write(image)
        self.csv.write(result)

    def close(self) -> None:
        try:
            self.video.close()
        except BaseException:
            self.csv.abort()
            raise
        self.csv.close()


def default_pipeline_factory(config: PipelineConfig) -> PipelineLike:
    """The realtime pipeline for ``config``; the window shows FPS/latency itself, so the frame HUD is off."""
    return Pipeline(replace(config, draw_hud=False))


def default_source_factory(spec: SourceSpec) -> Source:
    return open_source(spec)


def default_recorder_factory(video: Path, csv: Path, fps: float, classes: tuple[str, ...]) -> RecorderLike:
    return Recorder(video, csv, fps, classes)


__all__ = [
    "FaceInfo",
    "FramePacer",
    "FramePacket",
    "PipelineWorker",
    "Recorder",
    "backend_label",
    "bgr_to_qimage",
]
