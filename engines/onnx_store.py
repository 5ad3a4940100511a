"""Where the ONNX model of a weights file comes from: shipped beside the weights, else the compile cache, else
compiled into the cache (compiling needs torch: ``pip install 'leaf-fer[train]'``).

The shipped model has its FP32, FP16 and INT8 ONNX beside its safetensors, named by the weights' hash and config like
the cache's artifacts, so ONNX Runtime runs it without torch; a copy that no longer matches the weights is ignored.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from leaf_fer.common import ConfigError
from leaf_fer.train.weights import WeightsMetadata, default_weights_path, model_hash, read_metadata

from .artifacts import (
    ONNX_TARGETS,
    EngineError,
    artifact_filename,
    check_compatible,
    load_artifact,
    model_cache_dir,
    read_sidecar,
)

log = logging.getLogger(__name__)


def shipped_onnx(weights: str | os.PathLike[str] | None, precision: str = "fp32") -> Path | None:
    """The ONNX of ``precision`` lying beside the weights and matching them (hash and config), else None."""
    weights_path = Path(weights) if weights is not None else default_weights_path()
    return _shipped(weights_path, model_hash(weights_path), read_metadata(weights_path), ONNX_TARGETS[precision])


def _shipped(weights_path: Path, weights_hash: str, metadata: WeightsMetadata, target: str) -> Path | None:
    path = weights_path.parent / artifact_filename(weights_hash, target, model=metadata.model.to_dict())
    return path if _problem(path, target, weights_hash) is None else None


def ensure_onnx(
    weights: str | os.PathLike[str] | None,
    *,
    precision: str = "fp32",
    cache_dir: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The ONNX of ``precision`` (fp32, fp16 or int8) for these weights and their metadata: the shipped copy beside
    the weights when one matches, else the cache's, compiled on first use or when the copy there is stale or corrupt
    (an INT8 model calibrated on the sample video's faces, as the shipped one is). An INT8 model in the cache that
    was calibrated on other faces (``leaf-fer compile --target onnx-int8 --calibration``) comes before the shipped
    one.

    With ``output_dir`` the artifact lives there (no shipped copy is used); otherwise in the per-model folder of the
    cache (``cache_dir`` or the default); when that folder cannot be written, it is compiled into a new temporary
    folder instead (one warning).
    """
    if precision not in ONNX_TARGETS:
        raise ConfigError(f"ONNX precision must be one of {', '.join(ONNX_TARGETS)}; got {precision!r}")
    weights_path = Path(weights) if weights is not None else default_weights_path()
    weights_hash = model_hash(weights_path)
    metadata = read_metadata(weights_path)
    target = ONNX_TARGETS[precision]
    directory = Path(output_dir) if output_dir is not None else model_cache_dir(cache_dir, weights_hash)
    wanted = directory / artifact_filename(weights_hash, target, model=metadata.model.to_dict())
    reason = _problem(wanted, target, weights_hash)
    shipped = None if output_dir is not None else _shipped(weights_path, weights_hash, metadata, target)
    if reason is None and (shipped is None or _calibration(wanted) != _calibration(shipped)):
        return wanted
    if shipped is not None:
        return shipped
    if wanted.is_file():
        log.warning("recompiling: %s", reason)
    unwritable = None if output_dir is not None else _unwritable(directory)
    if unwritable is not None:
        fallback = Path(tempfile.mkdtemp(prefix="leaf-fer-engines-"))
        log.warning("%s: cache folder not writable (%s); compiling into %s instead", directory, unwritable, fallback)
        return ensure_onnx(weights_path, precision=precision, output_dir=fallback)
    log.info("compiling %s ONNX for model %s (%s)", precision.upper(), weights_hash, reason)
    return _compile(weights_path, metadata, weights_hash, precision, directory)


def _compile(weights_path: Path, metadata: WeightsMetadata, weights_hash: str, precision: str, directory: Path) -> Path:
    try:
        from . import export
    except ImportError as exc:
        raise EngineError(
            f"{weights_path}: no ONNX model beside these weights, and compiling one needs torch and onnx "
            f"(pip install 'leaf-fer[train]'; {exc})"
        ) from exc
    if precision == "fp32":
        return export.compile_onnx(weights_path, directory)
    fp32_path = ensure_onnx(weights_path, output_dir=directory)
    if precision == "fp16":
        import onnx

        return export.write_fp16(onnx.load(str(fp32_path)), metadata, weights_hash, directory)
    return export.write_int8(fp32_path, metadata, weights_hash, directory, export.calibration_set(None, metadata))


def _unwritable(directory: Path) -> str | None:
    """Why no file can be created in ``directory`` (None when one can)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _calibration(path: Path) -> str | None:
    """Which faces an INT8 artifact was calibrated on: ``sample video faces`` or the user's file name (None for the
    other precisions)."""
    described = read_sidecar(path).created_with.get("calibration")
    return None if described is None else described.split(",")[0]


def _problem(path: Path, target: str, weights_hash: str) -> str | None:
    """Why the artifact at ``path`` cannot be used, or None when it can."""
    if not path.is_file():
        return "not compiled yet"
    try:
        sidecar = load_artifact(path, target=target)
        check_compatible(sidecar, path, model_hash=weights_hash)
    except EngineError as exc:
        return str(exc)
    return None
