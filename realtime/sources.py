"""Frame sources: webcam index, video file, image file, folder of images or stream URL → a generator of :class:`Frame`.

Files are read frame by frame as fast as the consumer asks. Live sources (webcams, streams) read on a background
thread into a one-slot buffer that always holds the newest frame, so a slow consumer skips stale frames instead of
queueing them; a source that stops delivering frames is reconnected a bounded number of times and otherwise raises
:class:`SourceError` after a timeout, never hangs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import cv2
import numpy as np

from leaf_fer.common import IMAGE_EXTENSIONS, LeafFerError, decode_image_file

from .types import Frame

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when FFmpeg first opens a file; failures raise SourceError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEFAULT_FPS = 30.0
TRUNCATION_TOLERANCE = 0.95
"""A video that decodes fewer than this fraction of the frames its container declares is reported as truncated
(containers' frame counts are estimates that can be off by a few frames)."""

TIMESTAMP_TOLERANCE_MS = 1e-3
SourceSpec = int | str | os.PathLike[str]
log = logging.getLogger(__name__)
T = TypeVar("T")


class SourceError(LeafFerError, RuntimeError):
    """A source that cannot be opened, has no frames, or stopped delivering them; the message is one line."""


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` a live source uses (tests substitute fakes)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Gray ([H, W] or [H, W, 1]), BGRA or BGR uint8 → 3-channel BGR (no copy when already BGR)."""
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class Source(ABC):
    """A finite or live sequence of frames; iterate it once, then close it (or use it as a context manager)."""

    name: str = ""
    fps: float = 0.0
    frame_count: int | None = None
    is_live: bool = False

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    @abstractmethod
    def frames(self) -> Iterator[Frame]:
        """Yield frames in order."""

    def close(self) -> None:
        """Release the device or file."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def opencv_quiet() -> Iterator[None]:
    """OpenCV's own logging silenced: its failures are reported as one-line SourceError/WriterError instead."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _quiet_capture(*args: object) -> cv2.VideoCapture:
    with opencv_quiet():
        return cv2.VideoCapture(*args)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: empty file (0 bytes)")


class VideoFileSource(Source):
    """A video file decoded with OpenCV/FFmpeg; ``truncated`` tells, after iteration, whether it ended early.

    ``start`` > 0 begins at that frame (numbered as in a read from the start), whose presentation timestamp
    ``start_ms`` (from :func:`scan_video`) proves that the seek reached it: see :meth:`_seek`. ``stop`` ends before
    that frame. ``last_ms`` is the timestamp of the last frame read.
    """

    def __init__(
        self, path: str | os.PathLike[str], start: int = 0, start_ms: float | None = None, stop: int | None = None
    ) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        _check_file(self.path)
        self._cap = _quiet_capture(str(self.path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"{self.path}: cannot open as a video (unreadable, truncated or not a video file)")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and 0.0 < fps <= 1000.0 else DEFAULT_FPS
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.start = start
        self.stop = stop
        self.frames_read = 0
        self._started = False
        began = time.perf_counter()
        ok, image = self._cap.read()
        self._first: tuple[np.ndarray, float] | None = (image, (time.perf_counter() - began) * 1e3) if ok else None
        if self._first is None:
            self._cap.release()
            raise SourceError(f"{self.path}: video has no frames (zero-frame or undecodable file)")
        self.last_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        if start > 0:
            if start_ms is None:
                raise ValueError("a start frame needs its timestamp (start_ms) to check the seek")
            began = time.perf_counter()
            try:
                image = self._seek(start, start_ms)
            except BaseException:
                self._cap.release()
                raise
            self._first = (image, (time.perf_counter() - began) * 1e3)
            self.last_ms = start_ms

    def _seek(self, index: int, msec: float) -> np.ndarray:
        """The frame ``index``, reached by OpenCV's keyframe seek (``CAP_PROP_POS_FRAMES``) and checked by its
        timestamp (``CAP_PROP_POS_MSEC``). OpenCV maps positions to timestamps with the average frame rate, which
        misses on variable-frame-rate files; then it seeks further back (1, 2, 4, ... seconds, down to the start) and
        decodes forward until the timestamp is the one asked for."""
        step = max(1, round(self.fps))
        target = index
        while True:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, target)
            while self._cap.grab():
                reached = self._cap.get(cv2.CAP_PROP_POS_MSEC)
                if abs(reached - msec) <= TIMESTAMP_TOLERANCE_MS:
                    ok, image = self._cap.retrieve()
                    if ok:
                        return image
                    break
                if reached > msec:
                    break
            if target == 0:
                raise SourceError(f"{self.path}: cannot seek to frame {index} ({msec:.3f} ms): no frame has that timestamp")
            target = max(0, target - step)
            step *= 2

    @property
    def duration_s(self) -> float:
        return (self.frame_count or 0) / self.fps

    @property
    def truncated(self) -> bool:
        """True when decoding stopped well before the declared frame count (only meaningful after iteration)."""
        return is_truncated(self.start + self.frames_read, self.frame_count)

    def frames(self) -> Iterator[Frame]:
        if self._started:
            raise SourceError(f"{self.path}: source already consumed; open it again")
        self._started = True
        try:
            while self.stop is None or self.start + self.frames_read < self.stop:
                if self._first is not None:
                    image, decode_ms = self._first
                    self._first = None
                else:
                    began = time.perf_counter()
                    ok, image = self._cap.read()
                    decode_ms = (time.perf_counter() - began) * 1e3
                    if not ok or image is None:
                        return
                    self.last_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
                index = self.start + self.frames_read
                self.frames_read += 1
                yield Frame(
                    index=index,
                    timestamp_s=index / self.fps,
                    image=to_bgr(image),
                    source=self.name,
                    decode_ms=decode_ms,
                    captured_at=time.perf_counter(),
                )
        finally:
            self.close()

    def close(self) -> None:
        self._cap.release()


def is_truncated(frames: int, declared: int | None) -> bool:
    """True when ``frames`` decoded frames fall well short of the ``declared`` count."""
    return declared is not None and frames < int(TRUNCATION_TOLERANCE * declared) - 1


@dataclass(frozen=True)
class VideoIndex:
    """Every frame's presentation timestamp (ms, frame order) and the frames that are keyframes."""

    timestamps_ms: tuple[float, ...]
    keyframes: tuple[int, ...]


def scan_video(path: str | os.PathLike[str], declared: int | None) -> VideoIndex | None:
    """Read the packets of a video without decoding them (FFmpeg's raw mode): their timestamps and keyframe flags.

    None when they cannot number the frames as a decode from the start would: fewer or more packets than the
    ``declared`` frames, or two with one timestamp.
    """
    capture = _quiet_capture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    try:
        packets = []
        while capture.isOpened() and capture.grab():
            packets.append((capture.get(cv2.CAP_PROP_POS_MSEC), bool(capture.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME))))
    finally:
        capture.release()
    stamps = sorted(packets)
    if not stamps or len(stamps) != declared or any(b[0] - a[0] <= TIMESTAMP_TOLERANCE_MS for a, b in zip(stamps, stamps[1:])):
        return None
    return VideoIndex(tuple(t for t, _ in stamps), tuple(i for i, (_, key) in enumerate(stamps) if key))


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """Iterate ``items`` on a background thread at most ``depth`` items ahead (a bounded queue, so memory stays
    flat), yielding them here in order; an exception it raises is raised here. Closing this generator stops it."""
    buffer: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="leaf-fer-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to BGR (works with non-ASCII paths); SourceError when it is not a readable image."""
    _check_file(path)
    image = decode_image_file(path)
    if image is None:
        raise SourceError(f"{path}: not a readable image")
    return image


class ImageSource(Source):
    """One still image: one frame, marked ``still`` so the pipeline does not track or smooth across images."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.frame_count = 1
        start = time.perf_counter()
        self._image = read_image(self.path)
        self._decode_ms = (time.perf_counter() - start) * 1e3

    def frames(self) -> Iterator[Frame]:
        yield Frame(0, 0.0, self._image, self.name, self._decode_ms, time.perf_counter(), still=True)


class FolderSource(Source):
    """The images of a folder in name order, one still frame each; unreadable images are skipped and listed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            raise SourceError(f"{self.path}: folder contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.frame_count = len(self.files)
        self.skipped: list[str] = []

    def frames(self) -> Iterator[Frame]:
        index = 0
        for file in self.files:
            start = time.perf_counter()
            try:
                image = read_image(file)
            except SourceError as exc:
                self.skipped.append(str(exc))
                log.warning("skipped %s", exc)
                continue
            yield Frame(index, float(index), image, str(file), (time.perf_counter() - start) * 1e3, time.perf_counter(), True)
            index += 1


class LiveSource(Source):
    """Frames from a live capture, read on a background thread into a one-slot "latest frame" buffer.

    The consumer always gets the newest frame; frames that arrived while it was busy are dropped (``dropped`` counts
    them, and ``Frame.index`` keeps counting captured frames so gaps are visible). When the capture fails, it is
    reopened up to ``max_reconnects`` times; when no frame arrives for ``stall_timeout_s`` (a device that hangs in
    ``read``) or reconnecting fails, iteration raises :class:`SourceError`. ``finite`` sources (a file played as
    live) end normally at their last frame; ``pace_fps`` makes such a file play at its own frame rate.
    """

    is_live = True

    def __init__(
        self,
        opener: Callable[[], Capture | None],
        name: str,
        *,
        fps: float = 0.0,
        stall_timeout_s: float = 5.0,
        max_reconnects: int = 3,
        reconnect_delay_s: float = 0.5,
        finite: bool = False,
        pace_fps: float | None = None,
    ) -> None:
        self.name = name
        self.fps = fps
        self.stall_timeout_s = stall_timeout_s
        self.max_reconnects = max_reconnects
        self.reconnect_delay_s = reconnect_delay_s
        self.finite = finite
        self.pace_fps = pace_fps
        self.dropped = 0
        self.reconnects = 0
        self._opener = opener
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Frame | None = None
        self._captured = 0
        self._error: SourceError | None = None
        self._ended = False
        self._t0 = time.perf_counter()
        capture = opener()
        if capture is None:
            raise SourceError(f"{name}: cannot open")
        self._thread = threading.Thread(target=self._reader, args=(capture,), name=f"leaf-fer-source:{name}", daemon=True)
        self._thread.start()

    def _reader(self, capture: Capture | None) -> None:
        period = 1.0 / self.pace_fps if self.pace_fps else 0.0
        next_due = time.perf_counter()
        try:
            while not self._stop.is_set():
                ok, image = capture.read() if capture is not None else (False, None)
                if self._stop.is_set():
                    return
                if ok and image is not None:
                    now = time.perf_counter()
                    frame = Frame(self._captured, now - self._t0, to_bgr(image), self.name, 0.0, now)
                    with self._cond:
                        if self._latest is not None:
                            self.dropped += 1
                        self._latest = frame
                        self._captured += 1
                        self._cond.notify_all()
                    if period:
                        next_due = max(next_due + period, time.perf_counter())
                        self._stop.wait(max(0.0, next_due - time.perf_counter()))
                    continue
                if self.finite:
                    self._finish(None)
                    return
                if capture is not None:
                    capture.release()
                capture = self._reconnect()
                if capture is None:
                    self._finish(
                        SourceError(f"{self.name}: stopped delivering frames; {self.max_reconnects} reconnect attempts failed")
                    )
                    return
        except Exception as exc:  # a backend error must reach the consumer, not die silently on this thread
            self._finish(SourceError(f"{self.name}: capture failed ({exc})"))
        finally:
            if capture is not None:
                capture.release()

    def _reconnect(self) -> Capture | None:
        for attempt in range(1, self.max_reconnects + 1):
            if self._stop.wait(self.reconnect_delay_s * attempt):
                return None
            log.warning("%s: no frame; reconnect attempt %d/%d", self.name, attempt, self.max_reconnects)
            try:
                capture = self._opener()
            except SourceError:
                capture = None
            if capture is not None:
                self.reconnects += 1
                return capture
        return None

    def _finish(self, error: SourceError | None) -> None:
        with self._cond:
            self._error = error
            self._ended = True
            self._cond.notify_all()

    def frames(self) -> Iterator[Frame]:
        try:
            while True:
                with self._cond:
                    deadline = time.perf_counter() + self.stall_timeout_s
                    while self._latest is None and not self._ended:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            raise SourceError(f"{self.name}: no frame for {self.stall_timeout_s:g} s (device stalled)")
                        self._cond.wait(remaining)
                    frame, self._latest = self._latest, None
                    if frame is None:
                        if self._error is not None:
                            raise self._error
                        return
                yield frame
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)


def webcam_opener(index: int) -> Callable[[], Capture | None]:
    def open_webcam() -> Capture | None:
        cap = _quiet_capture(index)
        if not cap.isOpened():
            cap.release()
            return None
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    return open_webcam


def stream_opener(url: str, timeout_s: float) -> Callable[[], Capture | None]:
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(timeout_s * 1000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(timeout_s * 1000)]

    def open_stream() -> Capture | None:
        cap = _quiet_capture(url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    return open_stream


def redact_url(url: str) -> str:
    """The URL with its credentials (``user:password@``, up to the authority's last ``@``) replaced by ``***``."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/?#]*@", r"\1***@", url, flags=re.IGNORECASE)


def is_url(spec: object) -> bool:
    """True for a stream URL (rtsp://, http://, ...)."""
    return isinstance(spec, str) and spec.lower().startswith(STREAM_SCHEMES)


def open_source(
    spec: SourceSpec,
    *,
    live: bool | None = None,
    stall_timeout_s: float = 5.0,
    max_reconnects: int = 3,
) -> Source:
    """Open ``spec``: an int (or digit string) webcam index, a stream URL, an image, a folder of images or a video
    (``~`` is the home folder).

    Webcams and streams are live (a reader thread, newest frame only). ``live=True`` plays a video file as live at
    its own frame rate (useful to try live mode without a camera). Raises :class:`SourceError` with a one-line message
    when the source cannot be opened.
    """
    if isinstance(spec, bool):
        raise SourceError(f"invalid source {spec!r}")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        try:
            return LiveSource(
                webcam_opener(index), f"webcam {index}", stall_timeout_s=stall_timeout_s, max_reconnects=max_reconnects
            )
        except SourceError:
            raise SourceError(f"webcam {index}: not found or cannot be opened (is it connected and not in use?)") from None
    text = os.fspath(spec)
    if is_url(text):
        name = redact_url(text)
        try:
            return LiveSource(
                stream_opener(text, stall_timeout_s), name, stall_timeout_s=stall_timeout_s, max_reconnects=max_reconnects
            )
        except SourceError:
            raise SourceError(f"{name}: cannot open stream (unreachable, wrong URL or unsupported format)") from None
    path = Path(text).expanduser()
    if path.is_dir():
        return FolderSource(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource(path)
    video = VideoFileSource(path)
    if not live:
        return video
    fps = video.fps
    video.close()

    def open_file() -> Capture | None:
        cap = _quiet_capture(str(path), cv2.CAP_FFMPEG)
        return cap if cap.isOpened() else None

    return LiveSource(open_file, str(path), fps=fps, stall_timeout_s=stall_timeout_s, finite=True, pace_fps=fps)
