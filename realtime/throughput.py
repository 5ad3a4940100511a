"""``leaf-fer bench --throughput``: how many hours of video ``annotate`` gets through, on one core, on several, and
projected onto a cluster.

Every ratio is measured side by side in one run, on the same machine state: 1 and 2 workers over several inputs
(whole inputs in parallel); one long video (the sample, 4 times) in segments over 2 workers against one worker; a
1280x720 one-face clip (the sample upscaled, twice: 39 s) with and without the annotated video; 5 faces per frame with the INT8 and the FP32 model (p50 latency, and the
INT8 model's FER+ PublicTest accuracy against FP32's when the data is there). Worker start-up (spawning the
processes and loading the model) is measured on its own and reported beside the wall times that include it. The
projection multiplies the measured per-core rate by cores, nodes and the measured 2-worker efficiency.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from leaf_fer.common import LeafFerError, figure_png, machine_description, new_figure

from .annotate import annotate_inputs, sample_video
from .bench import Scenario, make_group_clip, measure, shared_media_dir
from .pipeline import PipelineConfig, create_predictor
from .sources import VideoFileSource
from .writers import VideoWriter, atomic_write_bytes, atomic_write_json

DEFAULT_REPORT_DIR = Path("reports/throughput")
TARGETS = {
    "workers_speedup": 1.7,
    "segments_speedup": 1.7,
    "realtime_720p_video": 4.0,
    "realtime_720p_no_video": 8.0,
    "int8_5_faces_p50_ms": 10.0,
}
ACCURACY_GAP_POINTS = 0.5
CLIPS = ("single_face.mp4", "face_noface.mov", "noface_face.mov", "no_face.mp4")
CORES = (1, 2, 4, 8, 16, 32, 64)
NODES = (1, 2, 4, 8)


def _copy_video(source: Path, dest: Path, *, repeats: int = 1, size: tuple[int, int] | None = None) -> Path:
    """``source`` re-encoded ``repeats`` times end to end into ``dest`` (mp4v), resized to ``size`` when given."""
    with VideoFileSource(source) as video:
        frames = [frame.image for frame in video.frames()]
        fps = video.fps
    with VideoWriter(dest, fps, size or (frames[0].shape[1], frames[0].shape[0])) as writer:
        for _ in range(repeats):
            for image in frames:
                writer.write(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) if size else image)
    return dest


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) CPU seconds of the whole machine since boot (Linux), None elsewhere."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (fields[3] + fields[4]) / ticks, sum(fields[:8]) / ticks


def _annotate(files: Sequence[Path], workdir: Path, **options: Any) -> dict[str, Any]:
    """Wall time of one ``annotate`` run (worker start-up included), what it processed, and how many cores the
    machine left idle meanwhile (other work shares it: a run cannot use more than it is given)."""
    out = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    before = _cpu_times()
    started = time.perf_counter()
    outcomes = annotate_inputs(list(files), out, progress=False, **options)
    wall = time.perf_counter() - started
    after = _cpu_times()
    idle = round((after[0] - before[0]) / wall, 2) if before and after else None
    shutil.rmtree(out, ignore_errors=True)
    failed = [o.line() for o in outcomes if o.status != "done"]
    if failed:
        raise LeafFerError("; ".join(failed))
    frames = sum(o.summary["media"]["frames"] for o in outcomes if o.summary)
    video_s = sum(o.summary["media"]["duration_s"] for o in outcomes if o.summary)
    return {
        "workers": options.get("workers", 1), "video": options.get("video", True), "wall_s": round(wall, 2),
        "frames": frames, "video_s": round(video_s, 2), "fps": round(frames / wall, 1),
        "realtime_factor": round(video_s / wall, 2),
        "segments": max((len(o.summary.get("segments", [])) for o in outcomes if o.summary), default=0),
        "idle_cores": idle,
    }


def _steady(run: dict[str, Any], startup_s: float) -> dict[str, Any]:
    """The run's rates without the worker start-up."""
    busy = max(run["wall_s"] - startup_s, 1e-6)
    return {**run, "startup_s": round(startup_s, 2), "steady_fps": round(run["frames"] / busy, 1),
            "steady_realtime_factor": round(run["video_s"] / busy, 2)}


def _compare(one: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
    return {"one_worker": one, "two_workers": two, "speedup": round(two["fps"] / one["fps"], 2),
            "steady_speedup": round(two["steady_fps"] / one["steady_fps"], 2)}


def _latency(group: Path, frames: int, rounds: int = 2) -> dict[str, Any]:
    """p50 end-to-end and inference latency on the five-face clip, FP32 and INT8 alternating round by round."""
    scenario = Scenario("5 faces", group, "full")
    predictors = {p: create_predictor(PipelineConfig(backend="onnxruntime", precision=p)) for p in ("fp32", "int8")}
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in predictors}
    try:
        for _ in range(rounds):
            for precision, predictor in predictors.items():
                runs[precision].append(measure(scenario, predictor, frames, warmup=10))
    finally:
        for predictor in predictors.values():
            predictor.close()
    return {
        precision: {
            "faces_per_frame": results[0]["faces_per_frame"],
            "end_to_end_p50_ms": round(float(np.median([r["end_to_end_ms"]["p50"] for r in results])), 2),
            "infer_p50_ms": round(float(np.median([r["stages_ms"]["infer"]["p50"] for r in results])), 2),
            "detect_p50_ms": round(float(np.median([r["stages_ms"]["detect"]["p50"] for r in results])), 2),
        }
        for precision, results in runs.items()
    }


def _accuracy() -> dict[str, Any] | None:
    """FER+ PublicTest accuracy of the FP32 and the INT8 model (``leaf-fer evaluate``'s protocol)."""
    from .evaluate import evaluate_npz

    media = shared_media_dir()
    data = media.parent / "data" / "fer2013_publictest.npz" if media else None
    if data is None or not data.is_file():
        return None
    scores = {}
    for precision in ("fp32", "int8"):
        with create_predictor(PipelineConfig(backend="onnxruntime", precision=precision)) as predictor:
            scores[precision] = round(100 * evaluate_npz(predictor, data)[0].accuracy, 2)
    return {"data": data.name, "accuracy_percent": scores, "gap_points": round(scores["fp32"] - scores["int8"], 2)}


def projection(rate_360p: float, rate_720p: float, efficiency: float) -> dict[str, Any]:
    """Hours of video per hour of compute, for every cores x nodes (one worker per core), from the real-time factor
    of one worker and the parallel efficiency (the speed-up per added worker, as measured with two; capped at 1)."""
    efficiency = min(efficiency, 1.0)
    table = {
        name: [[round(rate * cores * nodes * (efficiency if cores * nodes > 1 else 1.0), 1) for nodes in NODES]
               for cores in CORES]
        for name, rate in (("640x360", rate_360p), ("1280x720", rate_720p))
    }
    return {"cores": list(CORES), "nodes": list(NODES), "per_core_realtime": {"640x360": rate_360p, "1280x720": rate_720p},
            "efficiency": round(efficiency, 2), "hours_per_hour": table}


def run_throughput(output_dir: str | os.PathLike[str] = DEFAULT_REPORT_DIR, *, long_repeats: int = 4,
                   latency_frames: int = 150) -> dict[str, Any]:
    """Measure everything, write throughput.json, throughput.md and throughput.png; returns the report."""
    output_dir = Path(output_dir)
    media = shared_media_dir()
    with tempfile.TemporaryDirectory(prefix="leaf-fer-throughput-") as tmp:
        work = Path(tmp)
        clips = [media / name for name in CLIPS if media and (media / name).is_file()]
        several = [sample_video(), *clips] or [sample_video()]
        long_video = _copy_video(sample_video(), work / "long.mp4", repeats=long_repeats)
        clip_720p = _copy_video(sample_video(), work / "sample_720p.mp4", repeats=2, size=(1280, 720))
        group = make_group_clip(media / "multi_face.jpg", work / "group.mp4", latency_frames + 10) if media else None
        with VideoFileSource(sample_video()) as video:
            first = next(iter(video.frames())).image
        stills = [work / f"still{i}.png" for i in (1, 2)]
        for still in stills:
            cv2.imwrite(str(still), first)
        cold = _annotate(stills, work, workers=2)["wall_s"]
        startup = {n: _annotate(stills[:n], work, workers=n)["wall_s"] for n in (1, 2)}
        workers = _compare(_steady(_annotate(several, work, workers=1), startup[1]),
                           _steady(_annotate(several, work, workers=2, segment_frames=0), startup[2]))
        segmented = _compare(_steady(_annotate([long_video], work, workers=1), startup[1]),
                             _steady(_annotate([long_video], work, workers=2), startup[2]))
        hd = {
            (n, video): _steady(_annotate([clip_720p], work, workers=n, video=video), startup[n])
            for n in (1, 2) for video in (True, False)
        }
        latency = _latency(group, latency_frames) if group is not None else None
    accuracy = _accuracy()
    rate_360p = workers["one_worker"]["steady_realtime_factor"]
    rate_720p = hd[(1, True)]["steady_realtime_factor"]
    report: dict[str, Any] = {
        "machine": machine_description(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "startup_s": {"one_worker": startup[1], "two_workers": startup[2], "two_workers_cold": cold},
        "inputs": [p.name for p in several],
        "workers": workers,
        "long_video": {"frames": segmented["one_worker"]["frames"], **segmented},
        "hd_720p": [{"workers": n, "video": video, **run} for (n, video), run in hd.items()],
        "int8_latency_5_faces": latency,
        "int8_accuracy": accuracy,
        "projection": projection(rate_360p, rate_720p, workers["steady_speedup"] / 2),
    }
    report["targets"] = _targets(report)
    atomic_write_json(output_dir / "throughput.json", report)
    atomic_write_bytes(output_dir / "throughput.md", markdown(report).encode())
    atomic_write_bytes(output_dir / "throughput.png", chart(report))
    return report


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    hd = {(r["workers"], r["video"]): r for r in report["hd_720p"]}
    best_video = max(hd[(1, True)]["realtime_factor"], hd[(2, True)]["realtime_factor"])
    best_plain = max(hd[(1, False)]["realtime_factor"], hd[(2, False)]["realtime_factor"])
    rows = [
        ("2 workers vs 1, several inputs (wall, start-up included)", report["workers"]["speedup"], "workers_speedup", ">="),
        ("one long video in segments, 2 workers vs 1 (wall)", report["long_video"]["speedup"], "segments_speedup", ">="),
        ("1280x720, 1 face, real-time factor with video", best_video, "realtime_720p_video", ">="),
        ("1280x720, 1 face, real-time factor with --no-video", best_plain, "realtime_720p_no_video", ">="),
    ]
    latency = report["int8_latency_5_faces"]
    if latency is not None:
        rows.append(("5 faces per frame, int8, end-to-end p50 (ms)", latency["int8"]["end_to_end_p50_ms"],
                     "int8_5_faces_p50_ms", "<="))
    out = [{"name": name, "value": value, "target": f"{op} {TARGETS[key]:g}",
            "met": value >= TARGETS[key] if op == ">=" else value <= TARGETS[key]} for name, value, key, op in rows]
    accuracy = report["int8_accuracy"]
    if accuracy is not None:
        out.append({"name": "int8 accuracy gap to fp32, FER+ PublicTest (points)", "value": accuracy["gap_points"],
                    "target": f"<= {ACCURACY_GAP_POINTS:g}", "met": abs(accuracy["gap_points"]) <= ACCURACY_GAP_POINTS})
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Annotation throughput", "",
        f"{report['machine']}; {report['created']}. Every ratio below was measured side by side in this one run. "
        f"Worker start-up (annotating one still per worker: forking the workers, loading the model): "
        f"{report['startup_s']['one_worker']} s with 1 worker (in this process), {report['startup_s']['two_workers']} s "
        f"with 2 ({report['startup_s']['two_workers_cold']} s the first time in a process, which also starts the "
        "fork server that imports the package once). Steady = wall minus start-up. Idle cores: the machine's idle CPU "
        "during the run, averaged (near 0: the run got all the CPU the other processes left it).", "",
        "| run | workers | frames | segments | wall s | frames/s | real-time | steady frames/s | steady real-time | idle cores |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(label: str, run: dict[str, Any]) -> str:
        return (f"| {label} | {run['workers']} | {run['frames']} | {run['segments'] or '—'} | {run['wall_s']} | "
                f"{run['fps']} | {run['realtime_factor']}x | {run['steady_fps']} | {run['steady_realtime_factor']}x | "
                f"{run['idle_cores'] if run['idle_cores'] is not None else '—'} |")

    for key, label in (("workers", f"several inputs ({len(report['inputs'])})"), ("long_video", "one long video")):
        for side in ("one_worker", "two_workers"):
            lines.append(row(label, report[key][side]))
    for run in report["hd_720p"]:
        lines.append(row("1280x720 " + ("with video" if run["video"] else "--no-video"), run))
    lines += ["", f"2 workers vs 1: {report['workers']['speedup']}x wall ({report['workers']['steady_speedup']}x steady); "
              f"long video in segments: {report['long_video']['speedup']}x wall ({report['long_video']['steady_speedup']}x steady)."]
    latency = report["int8_latency_5_faces"]
    if latency:
        lines += ["", "| 5 faces per frame (640x360, full-range detector) | faces/frame | end-to-end p50 ms | detect p50 ms | infer p50 ms |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p} | {r['faces_per_frame']} | {r['end_to_end_p50_ms']} | {r['detect_p50_ms']} | {r['infer_p50_ms']} |"
                  for p, r in latency.items()]
    accuracy = report["int8_accuracy"]
    if accuracy:
        scores = accuracy["accuracy_percent"]
        lines += ["", f"FER+ PublicTest accuracy ({accuracy['data']}): fp32 {scores['fp32']}%, int8 {scores['int8']}% "
                  f"(gap {accuracy['gap_points']} points)."]
    projected = report["projection"]
    lines += ["", "## Projection: hours of video per hour", "",
              f"One worker's real-time factor (steady; a worker is one inference thread plus its reader and writer "
              f"threads): 640x360 {projected['per_core_realtime']['640x360']}x, 1280x720 with video "
              f"{projected['per_core_realtime']['1280x720']}x; parallel efficiency {projected['efficiency']} (the 2-worker "
              "speed-up over 2, measured here, on shared cores), assumed to hold for more cores and nodes. One worker "
              "per core; a row is cores per node.", ""]
    for name, table in projected["hours_per_hour"].items():
        lines += [f"{name}:", "", "| cores per node | " + " | ".join(f"{n} node{'s' * (n > 1)}" for n in projected["nodes"]) + " |",
                  "|---|" + "---|" * len(projected["nodes"])]
        lines += [f"| {cores} | " + " | ".join(f"{v:g}" for v in values) + " |" for cores, values in zip(projected["cores"], table)]
        lines.append("")
    lines += ["## Targets", ""]
    lines += [f"- {t['name']}: {t['value']} (target {t['target']}) — **{'met' if t['met'] else 'NOT met'}**"
              for t in report["targets"]]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any]) -> bytes:
    """Left: frames/s per run, 1 and 2 workers; right: 720p real-time factors against their targets."""
    figure = new_figure(11, 4.2)
    left, right = figure.subplots(1, 2)
    names = ["several inputs", "long video"]
    for offset, side, color in ((-0.2, "one_worker", "#8da0cb"), (0.2, "two_workers", "#fc8d62")):
        values = [report[key][side]["fps"] for key in ("workers", "long_video")]
        left.bar(np.arange(2) + offset, values, width=0.4, color=color, label=side.replace("_", " "))
    left.set_xticks(range(2), names)
    left.set_ylabel("frames per second (wall)")
    left.set_title("annotate, 1 vs 2 workers")
    left.legend(fontsize="small")
    runs = report["hd_720p"]
    labels = [f"{r['workers']} worker{'s' * (r['workers'] > 1)}\n{'video' if r['video'] else 'no video'}" for r in runs]
    right.bar(range(len(runs)), [r["realtime_factor"] for r in runs], color=["#66c2a5" if r["video"] else "#e78ac3" for r in runs])
    right.axhline(TARGETS["realtime_720p_video"], color="#1b9e77", linestyle=":", label="target with video")
    right.axhline(TARGETS["realtime_720p_no_video"], color="#e7298a", linestyle=":", label="target --no-video")
    right.set_xticks(range(len(runs)), labels, fontsize="small")
    right.set_ylabel("x real time")
    right.set_title("1280x720, one face")
    right.legend(fontsize="small")
    figure.tight_layout()
    return figure_png(figure)
