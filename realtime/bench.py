"""``leaf-fer bench``: latency of every pipeline stage and end to end, per scenario and inference backend.

Scenarios: one face (the shipped sample video, 640x360) and several faces (a 640x360 clip panning over a real group
photo, five faces, made once into a temporary mp4 so decoding is measured too). Each frame goes through the real
pipeline (decode → detect → track+align → infer → smooth → draw); the first frames warm up and are not counted.
Results: p50/p95/p99 per stage, end-to-end, FPS, and the real-time budget of the source's frame rate, written as
JSON, a markdown table and a PNG chart. The ``annotate`` speed on the sample video is measured too.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from leaf_fer.common import LeafFerError, figure_png, machine_description, new_figure, percentiles
from leaf_fer.engines.names import BENCH_BACKENDS, bench_backend
from leaf_fer.engines.predictor import Predictor

from .annotate import OutputPaths, annotate_file, sample_video
from .pipeline import Pipeline, PipelineConfig, create_predictor
from .sources import VideoFileSource
from .types import StageTimings
from .writers import VideoWriter, atomic_write_bytes, atomic_write_json

STAGES = ("decode", "detect", "track_align", "infer", "smooth", "draw")
TARGET_ONE_FACE_P50_MS = 10.0
TARGET_ANNOTATE_REALTIME = 3.0
DEFAULT_REPORT_DIR = Path("reports/realtime")


def shared_media_dir() -> Path | None:
    """``$LEAF_FER_SHARED/media`` or ``../shared/media`` beside the repository, when present."""
    root = os.environ.get("LEAF_FER_SHARED")
    candidates = [Path(root) / "media"] if root else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "media")
    return next((c for c in candidates if c.is_dir()), None)


@dataclass
class Scenario:
    name: str
    video: Path
    detector_range: str


def make_group_clip(photo: Path, path: Path, frames: int, fps: float = 25.0, size: tuple[int, int] = (640, 360)) -> Path:
    """A clip that pans slowly over a group photo (resized to the clip's width) → ``path``."""
    image = cv2.imread(str(photo))
    if image is None:
        raise FileNotFoundError(f"{photo}: group photo not readable")
    width, height = size
    scaled = cv2.resize(image, (width, round(image.shape[0] * width / image.shape[1])), interpolation=cv2.INTER_AREA)
    if scaled.shape[0] < height:
        scaled = cv2.copyMakeBorder(scaled, 0, height - scaled.shape[0], 0, 0, cv2.BORDER_REPLICATE)
    travel = scaled.shape[0] - height
    with VideoWriter(path, fps, size) as writer:
        for i in range(frames):
            offset = round(travel * 0.5 * (1 - np.cos(2 * np.pi * i / max(frames, 1))))
            writer.write(scaled[offset : offset + height])
    return path


def scenarios(workdir: Path, frames: int, one_face_range: str) -> list[Scenario]:
    found = [Scenario("1 face", sample_video(), one_face_range)]
    media = shared_media_dir()
    photo = media / "multi_face.jpg" if media else None
    if photo is not None and photo.is_file():
        clip = make_group_clip(photo, workdir / "group.mp4", frames)
        found.append(Scenario("several faces", clip, "full"))
    return found


def available_predictors(backends: tuple[str, ...], weights: str | None) -> Iterator[tuple[str, Predictor | str]]:
    """(name, predictor) for each :data:`BENCH_BACKENDS` name that loads, (name, reason) for each that does not."""
    for name in backends:
        backend, precision = bench_backend(name)
        try:
            yield name, create_predictor(PipelineConfig(weights=weights, backend=backend, precision=precision))
        except Exception as exc:  # an unavailable backend is a result of the benchmark, not a failure
            yield name, f"{type(exc).__name__}: {exc}".splitlines()[0]


def measure(
    scenario: Scenario, predictor: Predictor, frames: int, warmup: int, progress: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run the pipeline over the scenario's first ``warmup + frames`` frames; stage and end-to-end statistics."""
    config = PipelineConfig(detector_range=scenario.detector_range, min_detection_confidence=0.5)
    timings: list[StageTimings] = []
    faces: list[int] = []
    with Pipeline(config, predictor=predictor) as pipeline:
        source = VideoFileSource(scenario.video)
        fps = source.fps
        size = (source.width, source.height)
        wall_start = 0.0
        for i, result in enumerate(pipeline.run(source)):
            if i == warmup:
                wall_start = time.perf_counter()
            if i >= warmup:
                timings.append(result.timings)
                faces.append(len(result.faces))
                if progress:
                    progress()
            if len(timings) >= frames:
                break
        wall = time.perf_counter() - wall_start
        source.close()
    if not timings:
        raise LeafFerError(f"{scenario.video}: fewer than {warmup + 1} frames")
    totals = [t.total_ms for t in timings]
    budget_ms = 1000.0 / fps
    e2e = percentiles(totals)
    return {
        "scenario": scenario.name,
        "backend": predictor.backend_name,
        "precision": predictor.precision,
        "detector_range": scenario.detector_range,
        "frame_size": f"{size[0]}x{size[1]}",
        "frames": len(timings),
        "faces_per_frame": round(float(np.mean(faces)), 2),
        "stages_ms": {s: percentiles([getattr(t, f"{s}_ms") for t in timings]) for s in STAGES},
        "end_to_end_ms": e2e,
        "fps": round(1000.0 / e2e["mean"], 1),
        "wall_fps": round(len(timings) / wall, 1) if wall > 0 else None,
        "source_fps": round(fps, 3),
        "realtime_budget_ms": round(budget_ms, 2),
        "realtime_headroom": round(budget_ms / e2e["p99"], 2),
        "within_realtime_p99": e2e["p99"] <= budget_ms,
    }


def measure_annotate(predictor: Predictor, workdir: Path, progress: bool) -> dict[str, Any]:
    """Full ``annotate`` of the sample video (all outputs written) → wall time and speed vs real time."""
    with Pipeline(PipelineConfig(draw=False), predictor=predictor) as pipeline:
        started = time.perf_counter()
        summary, _ = annotate_file(
            sample_video(), OutputPaths.for_input(workdir / "annotate", "sample", False), pipeline, progress=progress
        )
        wall = time.perf_counter() - started
    duration = summary["media"]["duration_s"]
    return {
        "input": "sample.mp4",
        "backend": predictor.backend_name,
        "precision": predictor.precision,
        "frames": summary["media"]["frames"],
        "video_duration_s": duration,
        "wall_s": round(wall, 3),
        "realtime_factor": round(duration / wall, 2),
        "target_realtime_factor": TARGET_ANNOTATE_REALTIME,
        "meets_target": duration / wall >= TARGET_ANNOTATE_REALTIME,
    }


def markdown_table(report: dict[str, Any]) -> str:
    lines = [
        "# Realtime pipeline benchmark",
        "",
        f"{report['machine']}; {report['frames']} frames per run after {report['warmup']} warm-up frames. Times in ms.",
        "",
        "| scenario | backend | detector | faces/frame | "
        + " | ".join(f"{s} p50" for s in STAGES)
        + " | e2e p50 | e2e p95 | e2e p99 | FPS | budget (source fps) | headroom p99 |",
        "|" + "---|" * (10 + len(STAGES)),
    ]
    for r in report["results"]:
        stages = " | ".join(f"{r['stages_ms'][s]['p50']:.2f}" for s in STAGES)
        e2e = r["end_to_end_ms"]
        lines.append(
            f"| {r['scenario']} | {r['backend']} {r['precision']} | {r['detector_range']} | {r['faces_per_frame']} | {stages} | "
            f"{e2e['p50']:.2f} | {e2e['p95']:.2f} | {e2e['p99']:.2f} | {r['fps']} | "
            f"{r['realtime_budget_ms']} ({r['source_fps']:g} fps) | {r['realtime_headroom']}x |"
        )
    if report["unavailable"]:
        lines.append("")
    for backend, reason in report["unavailable"].items():
        lines.append(f"- backend `{backend}` not measured: {reason}")
    lines += ["", "## Targets", ""]
    for target in report["targets"]:
        mark = "met" if target["met"] else "NOT met"
        lines.append(f"- {target['name']}: {target['value']} (target {target['target']}) — **{mark}**")
    annotate = report.get("annotate")
    if annotate:
        lines += [
            "",
            f"`annotate` of the sample video ({annotate['frames']} frames, {annotate['video_duration_s']} s, backend "
            f"{annotate['backend']} {annotate['precision']}, the default): {annotate['wall_s']} s wall, {annotate['realtime_factor']}x real time.",
        ]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any]) -> bytes:
    """Stacked p50 stage times per scenario/backend, e2e p95/p99 markers and each source's real-time budget."""
    results = report["results"]
    figure = new_figure(max(8.0, 1.6 * len(results) + 5), 4.5)
    ax = figure.subplots()
    x = np.arange(len(results))
    bottom = np.zeros(len(results))
    colors = ("#8da0cb", "#66c2a5", "#fc8d62", "#e78ac3", "#a6d854", "#ffd92f")
    for stage, color in zip(STAGES, colors):
        values = np.array([r["stages_ms"][stage]["p50"] for r in results])
        ax.bar(x, values, bottom=bottom, color=color, label=f"{stage} (p50)", width=0.6)
        bottom += values
    ax.scatter(x, [r["end_to_end_ms"]["p95"] for r in results], marker="_", s=600, color="black", label="e2e p95", zorder=3)
    ax.scatter(x, [r["end_to_end_ms"]["p99"] for r in results], marker="_", s=600, color="red", label="e2e p99", zorder=3)
    for xi, r in zip(x, results):
        ax.hlines(r["realtime_budget_ms"], xi - 0.4, xi + 0.4, colors="gray", linestyles="dashed")
        ax.annotate(f"{r['realtime_budget_ms']:.0f} ms budget", (xi, r["realtime_budget_ms"]), ha="center", va="bottom", fontsize=7)
    ax.axhline(TARGET_ONE_FACE_P50_MS, color="green", linestyle=":", label=f"{TARGET_ONE_FACE_P50_MS:g} ms target (1 face p50)")
    ax.set_xticks(x, [f"{r['scenario']}\n{r['backend']} {r['precision']}" for r in results])
    ax.set_ylabel("ms per frame")
    ax.set_title("leaf-fer realtime pipeline latency per frame")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return figure_png(figure)


def run_bench(
    output_dir: str | os.PathLike[str] = DEFAULT_REPORT_DIR,
    *,
    backends: tuple[str, ...] = BENCH_BACKENDS,
    frames: int = 200,
    warmup: int = 10,
    one_face_range: str = "short",
    weights: str | None = None,
    with_annotate: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every scenario on every available backend; write bench.json, bench.md and bench.png."""
    output_dir = Path(output_dir)
    results: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    annotate: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="leaf-fer-bench-") as tmp:
        workdir = Path(tmp)
        cases = scenarios(workdir, frames + warmup, one_face_range)
        loaded = list(available_predictors(backends, weights))
        predictors = [(b, p) for b, p in loaded if isinstance(p, Predictor)]
        unavailable = {b: p for b, p in loaded if isinstance(p, str)}
        if not predictors:
            raise LeafFerError("no inference backend could be loaded: " + "; ".join(f"{b}: {r}" for b, r in unavailable.items()))
        total = len(cases) * len(predictors) * frames
        try:
            with tqdm(total=total, desc="bench", unit="frame", disable=not progress, dynamic_ncols=True) as bar:
                for _, predictor in predictors:
                    for case in cases:
                        results.append(measure(case, predictor, frames, warmup, lambda: bar.update(1)))
            if with_annotate:
                with create_predictor(PipelineConfig(weights=weights)) as default:
                    annotate = measure_annotate(default, workdir, progress)
        finally:
            for _, predictor in predictors:
                predictor.close()
    one_face = [r for r in results if r["scenario"] == "1 face"]
    best = min(one_face, key=lambda r: r["end_to_end_ms"]["p50"]) if one_face else None
    targets = []
    if best is not None:
        targets.append(
            {
                "name": f"1 face end-to-end p50 ({best['backend']} {best['precision']}, {best['frame_size']})",
                "value": f"{best['end_to_end_ms']['p50']} ms",
                "target": f"<= {TARGET_ONE_FACE_P50_MS:g} ms",
                "met": best["end_to_end_ms"]["p50"] <= TARGET_ONE_FACE_P50_MS,
            }
        )
    if annotate is not None:
        targets.append(
            {
                "name": "annotate sample video speed",
                "value": f"{annotate['realtime_factor']}x real time",
                "target": f">= {TARGET_ANNOTATE_REALTIME:g}x",
                "met": annotate["meets_target"],
            }
        )
    report: dict[str, Any] = {
        "machine": machine_description(),
        "frames": frames,
        "warmup": warmup,
        "results": results,
        "unavailable": unavailable,
        "annotate": annotate,
        "targets": targets,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(output_dir / "bench.json", report)
    atomic_write_bytes(output_dir / "bench.md", markdown_table(report).encode())
    atomic_write_bytes(output_dir / "bench.png", chart(report))
    return report
