"""``leaf-fer annotate`` and ``leaf-fer bench``; heavy imports happen only when a command runs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from leaf_fer.common import ConfigError
from leaf_fer.engines.names import BENCH_BACKENDS

from .settings import DETECTOR_RANGES, PipelineConfig, option_fields


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`PipelineConfig` field that has one (shared by `annotate`, `gui` and `evaluate`)."""
    for item, option in option_fields():
        if not option.flag:
            continue
        if isinstance(item.default, bool):
            action = "store_false" if item.default else "store_true"
            help_text = f"turn off: {option.help}" if item.default else option.help
            parser.add_argument(option.flag, dest=item.name, action=action, help=help_text)
            continue
        help_text = option.help if item.default is None else f"{option.help} (default: {item.default})"
        parser.add_argument(
            option.flag,
            dest=item.name,
            type=str if item.default is None else type(item.default),
            default=item.default,
            choices=option.choices or None,
            metavar=None if option.choices else option.flag.lstrip("-").replace("-", "_").upper(),
            help=help_text,
        )


def pipeline_config(args: argparse.Namespace, **overrides: object) -> PipelineConfig:
    """The :class:`PipelineConfig` of :func:`add_pipeline_options`' flags with ``overrides``, validated."""
    flags = {item.name: getattr(args, item.name) for item, option in option_fields() if option.flag}
    config = PipelineConfig(**{**flags, **overrides})
    config.validate()
    return config


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_annotate(subparsers)
    _register_evaluate(subparsers)
    _register_bench(subparsers)


def _register_annotate(subparsers: argparse._SubParsersAction) -> None:
    annotate = subparsers.add_parser(
        "annotate",
        help="annotate videos: overlay video, per-face CSV, JSON summary, expression timeline",
        description="Annotate videos or images (folders are expanded). Without INPUT, annotates the shipped sample "
        "video. Finished inputs are skipped on a rerun; a failing input is reported and the others continue. Inputs "
        "run in parallel worker processes, and a long video is split into segments so that it uses every worker.",
    )
    annotate.add_argument("inputs", nargs="*", metavar="INPUT", help="video/image files or folders")
    annotate.add_argument("-o", "--outdir", "--output", dest="outdir", default="annotations", help="output folder (default: ./annotations)")
    annotate.add_argument("--overwrite", action="store_true", help="redo inputs that are already annotated")
    annotate.add_argument("--no-progress", action="store_true", help="no progress bar")
    annotate.add_argument(
        "--save-faces",
        type=int,
        default=0,
        metavar="N",
        help="also keep the aligned face crops of every N-th frame in <name>.faces.npz: unlabeled faces for "
        "`leaf-fer train --unlabeled-data 'OUTDIR/**/*.faces.npz'` (default 0: off)",
    )
    annotate.add_argument(
        "--workers",
        type=int,
        default=_cores(),
        metavar="N",
        help=f"worker processes, one inference thread each (default: the number of cores, here {_cores()}); 1: this "
        "process only",
    )
    annotate.add_argument("--no-video", action="store_true", help="write the CSV and the JSON only (no annotated video)")
    annotate.add_argument(
        "--segment-frames",
        type=int,
        metavar="N",
        help="split videos longer than N frames into segments of about N frames, processed in parallel (0: never; "
        "default: the run's frames spread over the workers, at least 300 per segment)",
    )
    annotate.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the work as Ray tasks on the cluster at ADDRESS (host:port; inputs and OUTDIR on paths every node "
        "sees), or on a local Ray instance when no address is given; needs `pip install 'leaf-fer[ray]'`",
    )
    add_pipeline_options(annotate)
    annotate.set_defaults(func=run_annotate)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate", help="accuracy, macro recall and per-class recall: on model-size faces (npz) or end to end",
        description="An .npz of 48x48 faces scores the model alone. Class sub-folders, a labels CSV (file, label), "
                    "an AffectNet CSV or RAF-DB's list file (its test_* entries) of full-size images run the whole "
                    "pipeline (detector, aligner, model): no-face rate, accuracy, macro recall, per-class recall, "
                    "confusion PNG and JSON.")
    evaluate.add_argument("--data", type=Path, required=True,
                          help="npz (images + ferplus_votes or labels), a class-folder tree, a labels CSV, an "
                               "AffectNet CSV or RAF-DB's list file")
    evaluate.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    evaluate.add_argument("-o", "--output", type=Path, help="folder for evaluation.json and confusion.png (default: none)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_pipeline_options(evaluate)
    evaluate.set_defaults(func=run_evaluate)


def _register_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="per-stage latency p50/p95/p99 and FPS per backend, 1 and several faces; JSON + markdown + PNG",
        description="Benchmark the realtime pipeline on the sample video (1 face) and a group clip (several faces) "
        "with each available backend, and time annotate on the sample video.",
    )
    bench.add_argument("-o", "--outdir", "--output", dest="outdir", help="report folder (default: reports/realtime, with --throughput reports/throughput)")
    bench.add_argument(
        "--throughput",
        action="store_true",
        help="measure annotate's throughput instead: 1 vs 2 workers, a long video in segments, 1280x720 with and "
        "without video, 5 faces int8 vs fp32, and a projection over cores and nodes",
    )
    bench.add_argument("--frames", type=int, default=200, help="measured frames per run (default 200)")
    bench.add_argument("--warmup", type=int, default=10, help="warm-up frames per run, not counted (default 10)")
    bench.add_argument(
        "--backends",
        nargs="+",
        default=list(BENCH_BACKENDS),
        choices=BENCH_BACKENDS,
        help="backends to try; unavailable ones are listed in the report, not fatal",
    )
    bench.add_argument(
        "--detector-range",
        default="short",
        choices=DETECTOR_RANGES,
        help="detector for the one-face run (the group clip always uses full range)",
    )
    bench.add_argument("--weights", help="weights .safetensors (default: the shipped model)")
    bench.add_argument("--no-annotate", action="store_true", help="skip timing annotate on the sample video")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(func=run_bench)


def run_annotate(args: argparse.Namespace) -> int:
    from .annotate import AnnotateOutcome, annotate_inputs, sample_video

    config = pipeline_config(args)
    if args.save_faces < 0:
        raise ConfigError(f"--save-faces must be 0 (off) or a positive frame step, got {args.save_faces}")
    if args.segment_frames is not None and args.segment_frames < 0:
        raise ConfigError(f"--segment-frames must be 0 (never split) or a positive length, got {args.segment_frames}")

    def report(outcome: AnnotateOutcome) -> None:
        print(outcome.line(), file=sys.stderr if outcome.status == "failed" else sys.stdout, flush=True)

    started = time.perf_counter()
    outcomes = annotate_inputs(
        args.inputs or [sample_video()],
        args.outdir,
        config,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        on_outcome=report,
        save_faces_every=args.save_faces,
        video=not args.no_video,
        workers=args.workers,
        segment_frames=args.segment_frames,
        ray_address=args.ray,
    )
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")}
    print(
        f"annotate: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
        f"in {time.perf_counter() - started:.1f} s → {args.outdir}"
    )
    return 1 if counts["failed"] else 0


def run_evaluate(args: argparse.Namespace) -> int:
    from leaf_fer.common import atomic_write_json

    from .evaluate import evaluate_end_to_end, evaluate_npz, write_report
    from .pipeline import Pipeline, create_predictor

    config = pipeline_config(args, draw=False)
    if args.data.suffix == ".npz":
        with create_predictor(config) as predictor:
            scores, protocol = evaluate_npz(predictor, args.data)
        print(f"{args.data} ({protocol}, {len(scores.classes)} classes, {predictor.describe()})")
        print(scores.summary())
        document = {"data": str(args.data), "protocol": protocol, **scores.to_dict()}
        title = f"{args.data.name}, {protocol}"
    else:
        with Pipeline(config) as pipeline:
            predictor = pipeline.predictor
            report = evaluate_end_to_end(args.data, pipeline=pipeline, progress=not args.no_progress)
        print(f"{predictor.describe()}\n{report.summary()}")
        document, scores = report.to_dict(), report.scores
        title = f"{args.data.name}, end to end\nno face {100 * report.no_face_rate:.1f}%"
    document["inference"] = {"backend": predictor.backend_name, "precision": predictor.precision}
    if args.json:
        atomic_write_json(args.json, document)
    if args.output:
        write_report(args.output, document, scores, title)
        print(f"evaluate: wrote {args.output}/evaluation.json, confusion.png")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from .bench import markdown_table
    from .bench import run_bench as bench

    if args.frames < 1 or args.warmup < 0:
        raise ConfigError("--frames must be >= 1 and --warmup >= 0")
    if args.throughput:
        from .throughput import markdown, run_throughput

        outdir = args.outdir or "reports/throughput"
        print(markdown(run_throughput(outdir, latency_frames=args.frames)), end="")
        print(f"bench: wrote {outdir}/throughput.json, throughput.md, throughput.png")
        return 0
    report = bench(
        args.outdir or "reports/realtime",
        backends=tuple(args.backends),
        frames=args.frames,
        warmup=args.warmup,
        one_face_range=args.detector_range,
        weights=args.weights,
        with_annotate=not args.no_annotate,
        progress=not args.no_progress,
    )
    print(markdown_table(report), end="")
    print(f"bench: wrote {args.outdir or 'reports/realtime'}/bench.json, bench.md, bench.png")
    return 0
