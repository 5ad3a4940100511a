"""Helpers every layer shares (train, engines, realtime, gui): the error base class, the image file types, atomic
writes, hashing, image decoding, percentiles and PNG figures. Imports nothing heavy at module level."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
"""File suffixes read as images (OpenCV decodes them all), everywhere: sources, annotate, training data, the GUI."""


def cache_root() -> Path:
    """Where leaf-fer caches compiled engines (``engines/``) and face crops (``faces/``): ``$LEAF_FER_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/leaf-fer``, else ``~/.cache/leaf-fer``."""
    if os.environ.get("LEAF_FER_CACHE_DIR"):
        return Path(os.environ["LEAF_FER_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "leaf-fer"


def decode_image_file(path: str | os.PathLike[str], grayscale: bool = False) -> Any:
    """An image file as a BGR (or grayscale) uint8 array, EXIF orientation applied; None when the file is missing
    or no image. Unlike ``cv2.imread`` it reads any path, non-ASCII ones on Windows included."""
    import cv2
    import numpy as np

    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except OSError:
        return None
    if not data.size:
        return None
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR)


class LeafFerError(Exception):
    """A failure the user can act on (bad input, missing file, unavailable backend): the CLI prints it as one line
    and exits with status 2. Anything else is a programming error and keeps its traceback."""


class ConfigError(LeafFerError, ValueError):
    """An option, setting or argument out of range or of the wrong kind."""


def one_line(exc: BaseException) -> str:
    """An exception's message folded onto one line."""
    return " ".join(str(exc).split())


def lock_exclusively(handle: IO[Any]) -> bool:
    """Take an exclusive lock on an open file without waiting (``flock`` on POSIX, ``msvcrt.locking`` on its first
    byte on Windows): False when another process holds it. The lock ends when the file is closed."""
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same folder and an atomic rename: a reader
    sees the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def atomic_write_npz(path: str | os.PathLike[str], **arrays: Any) -> None:
    """``arrays`` as a compressed npz (no pickle), written atomically."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def machine_description() -> str:
    """The machine a benchmark ran on, in one line: architecture, CPUs, OS and, where the OS keeps one, the load."""
    import platform

    line = f"{platform.machine()} {os.cpu_count()} CPUs, {platform.system()}"
    if hasattr(os, "getloadavg"):
        line += ", load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return line


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """Mean, p50, p95 and p99 of ``values`` rounded to 3 decimals (all 0 for no values)."""
    import numpy as np

    if len(values) == 0:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}
    array = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {"mean": round(float(array.mean()), 3), "p50": round(float(p50), 3), "p95": round(float(p95), 3),
            "p99": round(float(p99), 3)}


def new_figure(width: float, height: float, dpi: int = 100) -> "Figure":
    """A matplotlib figure on the Agg canvas (no GUI backend, safe in threads and workers)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: "Figure", dpi: int | None = None) -> bytes:
    """The figure as PNG bytes (write them with :func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **({} if dpi is None else {"dpi": dpi}))
    return buffer.getvalue()
