"""Should the pipeline run OpenCV single-threaded? Per-stage latency with OpenCV's default thread team and with one
thread, side by side, on an idle machine and with other processes keeping cores busy.

The sample clip's frames are decoded once; the default pipeline (INT8 on ONNX Runtime, MediaPipe short range with the
YuNet fallback, drawing on) then processes them in rounds that alternate OpenCV's thread count, the default
(``cv2.getNumThreads()`` at start, one per core) and 1, under each background load (``--busy``: that many processes
spinning on a core each). OpenCV's calls in the pipeline (colour conversion, the detector's input, the aligner's
filter and warp, drawing) are small per frame, so a thread team gains little and, on a busy core, waits for its
turn. Medians and p95 of each stage over every round's frames. Writes OUTPUT/{results.json,results.md}.

    python benchmarks/opencv_threads.py --busy 0 1 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from leaf_fer.common import atomic_write_bytes, atomic_write_json, machine_description
from leaf_fer.realtime.annotate import sample_video
from leaf_fer.realtime.pipeline import Pipeline, PipelineConfig
from leaf_fer.realtime.sources import open_source

STAGES = ("detect_ms", "track_align_ms", "infer_ms", "smooth_ms", "draw_ms")


def spinners(count: int) -> list[subprocess.Popen]:
    """``count`` processes that keep a core busy each until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def rounds(pipeline: Pipeline, frames: list, thread_counts: list[int], repeats: int) -> dict[int, np.ndarray]:
    """Per thread count, the stage timings [frames x rounds, stages] (the first 10 frames of a round left out)."""
    timings: dict[int, list[list[float]]] = {n: [] for n in thread_counts}
    for _ in range(repeats):
        for threads in thread_counts:
            cv2.setNumThreads(threads)
            pipeline.reset()
            for i, frame in enumerate(frames):
                result = pipeline.process(frame)
                if i >= 10:
                    timings[threads].append([getattr(result.timings, s) for s in STAGES])
    return {n: np.array(rows) for n, rows in timings.items()}


def summary(rows: np.ndarray) -> dict:
    total = rows.sum(axis=1)
    return {"stages_p50": {s: round(float(np.median(rows[:, i])), 3) for i, s in enumerate(STAGES)},
            "total_p50": round(float(np.median(total)), 3), "total_p95": round(float(np.percentile(total, 95)), 3)}


def markdown(result: dict) -> str:
    lines = ["# OpenCV's thread team in the per-frame pipeline", "",
             f"`python benchmarks/opencv_threads.py`; {result['machine']}; {result['frames']} frames of the sample "
             f"clip (decoded beforehand) per round, {result['repeats']} rounds per setting, alternating. Times in ms; "
             "total = detect + track/align + infer + smooth + draw (no decoding).", "",
             "| busy cores | OpenCV threads | detect p50 | track + align p50 | infer p50 | draw p50 | total p50 | "
             "total p95 |", "|---|---|---|---|---|---|---|---|"]
    for row in result["runs"]:
        stages = row["stages_p50"]
        lines.append(f"| {row['busy']} | {row['threads']} | {stages['detect_ms']} | {stages['track_align_ms']} | "
                     f"{stages['infer_ms']} | {stages['draw_ms']} | {row['total_p50']} | {row['total_p95']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", nargs="+", type=int, default=[0, 1, os.cpu_count() or 1],
                        help="background loads: processes spinning on a core each")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("reports/opencv_threads"))
    args = parser.parse_args()
    with open_source(str(sample_video())) as source:
        frames = [frame for _, frame in zip(range(args.frames), source.frames())]
    default_threads = cv2.getNumThreads()
    thread_counts = sorted({default_threads, 1}, reverse=True)
    runs = []
    with Pipeline(PipelineConfig()) as pipeline:
        for busy in tqdm(args.busy, desc="loads"):
            load = spinners(busy)
            try:
                time.sleep(1.0)
                measured = rounds(pipeline, frames, thread_counts, args.repeats)
            finally:
                for process in load:
                    process.kill()
                    process.wait()
            runs += [{"busy": busy, "threads": n, **summary(rows)} for n, rows in measured.items()]
    cv2.setNumThreads(default_threads)
    result = {"machine": machine_description(), "frames": len(frames), "repeats": args.repeats, "runs": runs}
    report = markdown(result)
    atomic_write_json(args.output / "results.json", result)
    atomic_write_bytes(args.output / "results.md", report.encode())
    print(report)


if __name__ == "__main__":
    main()
