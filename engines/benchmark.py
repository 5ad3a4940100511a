"""Per-face latency of every available backend at several batch sizes: median and p95, as JSON, markdown and PNG.

Backends are timed in interleaved rounds (one call of each per round) so that load from other processes affects them
alike; the ONNX Runtime / torch ratio at batch 1 is reported against the required speed-up.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

import leaf_fer
from leaf_fer.common import ConfigError, atomic_write_bytes, figure_png, new_figure
from leaf_fer.train.weights import default_weights_path, model_hash

from .artifacts import EngineError
from .names import BENCH_BACKENDS, DEFAULT_BATCHES, REQUIRED_ORT_SPEEDUP, bench_backend
from .onnxruntime_backend import default_threads
from .predictor import Predictor


@dataclass
class LatencyStats:
    backend: str
    batch: int
    iterations: int
    median_ms_per_face: float
    p95_ms_per_face: float
    median_ms_per_batch: float
    p95_ms_per_batch: float

    @property
    def faces_per_second(self) -> float:
        return 1000.0 / self.median_ms_per_face


def summarize(backend: str, batch: int, seconds: Sequence[float]) -> LatencyStats:
    """Median and p95 of per-call wall times, per batch and per face, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    median, p95 = float(np.median(ms)), float(np.percentile(ms, 95))
    return LatencyStats(backend, batch, len(ms), median / batch, p95 / batch, median, p95)


def _open(name: str, weights: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None, threads: int, max_batch: int) -> Predictor:
    from .factory import create_predictor

    backend, precision = bench_backend(name)
    return create_predictor(weights, backend, cache_dir, precision=precision, threads=threads, max_batch=max_batch)


def _torch_if_installed() -> Any:
    """The torch module, or None where the package is installed without ``[train]``."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def run_benchmark(
    weights: str | os.PathLike[str] | None = None,
    *,
    backends: Sequence[str] = BENCH_BACKENDS,
    batches: Sequence[int] = DEFAULT_BATCHES,
    iterations: int = 200,
    warmup: int = 20,
    threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    required_speedup: float = REQUIRED_ORT_SPEEDUP,
) -> dict[str, Any]:
    """Time ``predict`` for each backend and batch size; backends that cannot run here are listed with the reason."""
    unknown = [name for name in backends if name not in BENCH_BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend(s) {unknown}; choose from {', '.join(BENCH_BACKENDS)}")
    if iterations < 1 or warmup < 0 or not batches or min(batches) < 1:
        raise ConfigError("iterations must be ≥ 1, warmup ≥ 0 and every batch size ≥ 1")
    threads = threads if threads is not None else default_threads()
    torch = _torch_if_installed()
    previous_threads = torch.get_num_threads() if torch else None
    predictors: dict[str, Predictor] = {}
    skipped: dict[str, str] = {}
    results: list[LatencyStats] = []
    try:
        for name in backends:
            try:
                predictors[name] = _open(name, weights, cache_dir, threads, max(batches))
            except EngineError as exc:
                skipped[name] = str(exc)
        if torch:
            torch.set_num_threads(threads)
        rng = np.random.default_rng(0)
        size = next(iter(predictors.values())).input_size if predictors else 48
        total = len(batches) * (iterations + warmup) * len(predictors)
        with tqdm(total=total, desc="bench-engines", unit="call", disable=not progress) as bar:
            for batch in batches:
                faces = rng.integers(0, 256, size=(batch, size, size), dtype=np.uint8)
                times: dict[str, list[float]] = {name: [] for name in predictors}
                for round_index in range(warmup + iterations):
                    for name, predictor in predictors.items():
                        start = time.perf_counter()
                        predictor.predict(faces)
                        elapsed = time.perf_counter() - start
                        if round_index >= warmup:
                            times[name].append(elapsed)
                        bar.update(1)
                results.extend(summarize(name, batch, times[name]) for name in predictors)
    finally:
        if torch:
            torch.set_num_threads(previous_threads)
        for predictor in predictors.values():
            predictor.close()
    return _report(results, skipped, predictors, threads, weights, iterations, warmup, required_speedup)


def _report(
    results: list[LatencyStats],
    skipped: dict[str, str],
    predictors: dict[str, Predictor],
    threads: int,
    weights: str | os.PathLike[str] | None,
    iterations: int,
    warmup: int,
    required_speedup: float,
) -> dict[str, Any]:
    by_key = {(r.backend, r.batch): r for r in results}
    speedup: dict[str, Any] = {"required": required_speedup}
    if ("torch", 1) in by_key and ("onnxruntime", 1) in by_key:
        ratio = by_key[("torch", 1)].median_ms_per_face / by_key[("onnxruntime", 1)].median_ms_per_face
        speedup.update(ratio=round(ratio, 3), meets_requirement=ratio >= required_speedup)
    weights_path = Path(weights) if weights is not None else default_weights_path()
    torch = _torch_if_installed()
    return {
        "model_hash": model_hash(weights_path),
        "environment": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "leaf_fer": leaf_fer.__version__,
            "torch": torch.__version__ if torch else None,
            "onnxruntime": ort.__version__,
            "cuda_device": torch.cuda.get_device_name() if torch and torch.cuda.is_available() else None,
        },
        "protocol": {
            "iterations": iterations,
            "warmup": warmup,
            "timing": "wall time of Predictor.predict(uint8 faces) per call, backends interleaved per round",
        },
        "backends": {name: p.describe() for name, p in predictors.items()},
        "skipped": skipped,
        "results": [{**asdict(r), "faces_per_second": round(r.faces_per_second, 1)} for r in results],
        "ort_vs_torch_batch1": speedup,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The results as a markdown table plus the batch-1 ratio line and any skipped backends."""
    lines = [
        "| backend | batch | median ms/face | p95 ms/face | median ms/batch | faces/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['backend']} | {r['batch']} | {r['median_ms_per_face']:.3f} | {r['p95_ms_per_face']:.3f} | "
            f"{r['median_ms_per_batch']:.3f} | {r['faces_per_second']:.0f} |"
        )
    speedup = report["ort_vs_torch_batch1"]
    if "ratio" in speedup:
        verdict = "meets" if speedup["meets_requirement"] else "FAILS"
        lines.append("")
        lines.append(
            f"ONNX Runtime vs torch eager at batch 1: {speedup['ratio']:.2f}x faster ({verdict} the required {speedup['required']}x)."
        )
    env = report["environment"]
    lines.append("")
    lines.append(f"{env['cpu_count']} CPU cores, {env['threads']} inference thread(s); torch {env['torch']}, onnxruntime {env['onnxruntime']}.")
    for name, reason in report["skipped"].items():
        lines.append(f"- {name} skipped: {reason}")
    return "\n".join(lines) + "\n"


def bar_chart_png(report: dict[str, Any]) -> bytes:
    """Grouped bars: median ms per face for each backend at each batch size, p95 as the error bar."""
    backends = list(dict.fromkeys(r["backend"] for r in report["results"]))
    batches = sorted({r["batch"] for r in report["results"]})
    rows = {(r["backend"], r["batch"]): r for r in report["results"]}
    figure = new_figure(7, 3.6)
    axis = figure.subplots()
    width = 0.8 / max(1, len(backends))
    for index, backend in enumerate(backends):
        xs = [b + 0.0 for b in range(len(batches))]
        medians = [rows[(backend, b)]["median_ms_per_face"] if (backend, b) in rows else 0.0 for b in batches]
        upper = [
            rows[(backend, b)]["p95_ms_per_face"] - rows[(backend, b)]["median_ms_per_face"] if (backend, b) in rows else 0.0
            for b in batches
        ]
        positions = [x + (index - (len(backends) - 1) / 2) * width for x in xs]
        axis.bar(positions, medians, width, yerr=[[0.0] * len(upper), upper], capsize=3, label=backend)
    axis.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    axis.set_ylabel("ms per face (median, bar to p95)")
    axis.set_title("leaf-fer inference latency per face")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure_png(figure)


def write_report(report: dict[str, Any], output_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``engines-benchmark.json``, ``.md`` and ``.png`` in ``output_dir``, each written atomically."""
    directory = Path(output_dir)
    paths = {
        "json": directory / "engines-benchmark.json",
        "markdown": directory / "engines-benchmark.md",
        "png": directory / "engines-benchmark.png",
    }
    atomic_write_bytes(paths["json"], (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(paths["markdown"], ("# Engine latency\n\n" + markdown_table(report)).encode())
    atomic_write_bytes(paths["png"], bar_chart_png(report))
    return paths
