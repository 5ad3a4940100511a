"""Output writers that never leave a partial file under a final name.

Each writer writes to a hidden temporary file beside its target and renames it into place only in :meth:`close`,
after checking it (a video must read back with every frame written: OpenCV's writer drops frames silently, e.g. on a
full disk); :meth:`abort` (or leaving a ``with`` block through an exception) deletes the temporary file. Every write
failure is a one-line :class:`WriterError` naming the output. Both video and CSV writers take one frame at a time, so
the GUI's recorder can use them as well as ``annotate``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import queue
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import cv2
import numpy as np

from leaf_fer.common import ConfigError, LeafFerError
from leaf_fer.common import atomic_write_bytes as write_bytes_atomically

from .detector import KEYPOINT_NAMES
from .sources import opencv_quiet
from .types import FrameResult

VIDEO_FOURCC = "mp4v"
"""MPEG-4 Part 2 in .mp4: what this OpenCV build can encode (no H.264 encoder) and common players decode."""


class WriterError(LeafFerError, OSError):
    """An output that cannot be created or written; the message is one line."""


def cannot_write(path: Path, exc: OSError) -> WriterError:
    """The one-line error for a failed write to ``path``."""
    return WriterError(f"{path}: cannot write ({exc.strerror or exc})")


def _temp_path(path: Path) -> Path:
    """Hidden sibling with the same suffix (OpenCV picks the container from it)."""
    return path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")


def _writable_temp(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path)
        tmp.touch()
    except OSError as exc:
        raise WriterError(f"{path.parent}: output folder not writable ({exc.strerror or exc})") from exc
    return tmp


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriterError(f"{path.parent}: output folder not writable ({exc.strerror or exc})") from exc
    try:
        write_bytes_atomically(path, payload)
    except OSError as exc:
        raise cannot_write(path, exc) from exc


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


_Writer = TypeVar("_Writer", bound="_AtomicFile")
_Item = TypeVar("_Item")


class BackgroundWriter(Generic[_Item]):
    """Calls ``write(item)`` for every :meth:`put` item on a background thread, in order, with at most ``depth``
    items waiting (a bounded queue), so encoding and writing overlap with the caller's work. The first exception
    ``write`` raises is raised again by the next :meth:`put` or by :meth:`close`; later items are dropped, as are
    the waiting ones when a ``with`` block ends in an exception."""

    _END = object()

    def __init__(self, write: Callable[[_Item], None], depth: int, name: str = "leaf-fer-writer") -> None:
        self._write = write
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if self._error is None and not self._aborted:
                try:
                    self._write(item)  # type: ignore[arg-type]
                except BaseException as exc:  # raised again in the caller's thread
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: _Item) -> None:
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every item is written; raise the first error."""
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()
        self._raise()

    def __enter__(self) -> "BackgroundWriter[_Item]":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif self._thread.is_alive():
            self._aborted = True
            self._queue.put(self._END)
            self._thread.join()


class _AtomicFile:
    """Shared temp-then-rename lifecycle."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp_path = _writable_temp(self.path)
        self.closed = False

    def _release(self) -> None:
        """Flush and close the underlying handle."""

    def _check(self) -> None:
        """Raise :class:`WriterError` when the finished temporary file does not hold what was written."""

    def close(self) -> Path:
        """Finish and check the file, then move it to its final name; returns that name."""
        if self.closed:
            return self.path
        self.closed = True
        try:
            self._release()
            self._check()
            os.chmod(self.tmp_path, 0o644)
            os.replace(self.tmp_path, self.path)
        except BaseException as exc:
            self.tmp_path.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, WriterError):
                raise cannot_write(self.path, exc) from exc
            raise
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the final name is not touched."""
        if self.closed:
            return
        self.closed = True
        try:
            with contextlib.suppress(OSError):
                self._release()
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self: _Writer) -> _Writer:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class VideoWriter(_AtomicFile):
    """Annotated frames → video file (mp4v). The frame size is fixed by the first frame unless given; later frames of
    another size (a folder of mixed images) are resized to it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        size: tuple[int, int] | None = None,
        fourcc: str = VIDEO_FOURCC,
    ) -> None:
        if not fps > 0:
            raise ConfigError(f"video fps must be > 0, got {fps}")
        super().__init__(path)
        self.fps = float(fps)
        self.fourcc = fourcc
        self.size = size
        self.frames_written = 0
        self._writer: cv2.VideoWriter | None = None
        if size is not None:
            self._open(size)

    def _open(self, size: tuple[int, int]) -> None:
        self.size = size
        self._writer = cv2.VideoWriter(str(self.tmp_path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, size)
        if not self._writer.isOpened():
            self.abort()
            raise WriterError(f"{self.path}: cannot open a {self.fourcc} video writer for {size[0]}x{size[1]}")

    def write(self, image: np.ndarray) -> None:
        if self.closed:
            raise WriterError(f"{self.path}: writer already closed")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        height, width = image.shape[:2]
        if self._writer is None:
            self._open((width, height))
        if (width, height) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        assert self._writer is not None
        with opencv_quiet():
            self._writer.write(image)
        self.frames_written += 1

    def _release(self) -> None:
        if self._writer is not None:
            with opencv_quiet():
                self._writer.release()
            self._writer = None

    def _check(self) -> None:
        frames = readable_frames(self.tmp_path)
        if frames != self.frames_written:
            raise WriterError(
                f"{self.path}: video incomplete, {frames} of {self.frames_written} frames readable (disk full?)"
            )

    def close(self) -> Path:
        if not self.closed and self.frames_written == 0:
            self.abort()
            raise WriterError(f"{self.path}: no frames were written")
        return super().close()


def readable_frames(path: Path) -> int:
    """The frame count a video file's container declares, as FFmpeg reads it back (0 when it cannot be opened)."""
    with opencv_quiet():
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
        capture.release()
    return frames


def csv_columns(classes: tuple[str, ...]) -> list[str]:
    """frame, time, track id, box, score, keypoints (x, y), raw and smoothed probability per class, label."""
    columns = ["frame", "time_s", "track_id", "x1", "y1", "x2", "y2", "score"]
    for name in KEYPOINT_NAMES:
        columns += [f"{name}_x", f"{name}_y"]
    columns += [f"prob_{c}" for c in classes]
    columns += [f"smooth_{c}" for c in classes]
    columns += ["label", "confidence"]
    return columns


class CsvWriter(_AtomicFile):
    """One row per face per frame (frames without faces have no row). ``prob_*`` are the model's probabilities,
    ``smooth_*`` the temporally smoothed ones; ``label``/``confidence`` come from the smoothed probabilities."""

    def __init__(self, path: str | os.PathLike[str], classes: tuple[str, ...]) -> None:
        super().__init__(path)
        self.classes = tuple(classes)
        self.rows_written = 0
        self._handle = open(self.tmp_path, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._handle)
        self._csv.writerow(csv_columns(self.classes))

    def write(self, result: FrameResult) -> None:
        if self.closed:
            raise WriterError(f"{self.path}: writer already closed")
        try:
            self._write_rows(result)
        except OSError as exc:
            raise cannot_write(self.path, exc) from exc

    def _write_rows(self, result: FrameResult) -> None:
        frame = result.frame
        for face in result.faces:
            det = face.detection
            label = face.label_index()
            row: list[object] = [frame.index, f"{frame.timestamp_s:.3f}", face.track_id]
            row += [f"{v:.1f}" for v in det.box]
            row.append(f"{det.score:.3f}")
            row += [f"{v:.1f}" for v in np.asarray(det.keypoints).reshape(-1)]
            row += [f"{p:.4f}" for p in face.probabilities]
            row += [f"{p:.4f}" for p in face.smoothed]
            row += [self.classes[label], f"{face.smoothed[label]:.4f}"]
            self._csv.writerow(row)
            self.rows_written += 1

    def _release(self) -> None:
        if not self._handle.closed:
            self._handle.close()
