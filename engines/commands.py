"""`leaf-fer compile` and `leaf-fer bench-engines`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from leaf_fer.common import ConfigError, LeafFerError

from .artifacts import PRECISIONS, TARGETS, read_sidecar


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes, got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    from .names import BENCH_BACKENDS, DEFAULT_BATCHES, REQUIRED_ORT_SPEEDUP

    compile_parser = subparsers.add_parser(
        "compile", help="compile the model to ONNX (FP32/FP16) or a TensorRT engine, with a JSON sidecar"
    )
    compile_parser.add_argument("--weights", type=Path, help="weights .safetensors (default: the shipped model)")
    compile_parser.add_argument("--target", choices=TARGETS, default="onnx", help="artifact to build (default: onnx)")
    compile_parser.add_argument("--max-batch", type=_positive, default=16, help="TensorRT profile: 1..N faces (default 16)")
    compile_parser.add_argument("--opt-batch", type=_positive, help="TensorRT profile optimum (default: min(4, max batch))")
    compile_parser.add_argument(
        "-o", "--output", type=Path, help="folder for the artifacts (default: the user cache, where `auto` finds them)"
    )
    compile_parser.add_argument("--cache-dir", type=Path, help="cache root (default: $LEAF_FER_CACHE_DIR or ~/.cache/leaf-fer)")
    compile_parser.add_argument("--force", action="store_true", help="rebuild even when a valid artifact exists")
    compile_parser.add_argument(
        "--calibration",
        type=Path,
        help="onnx-int8: npz of face crops ('images' uint8 [N, H, W], e.g. annotate --save-faces output) to calibrate "
        "on (default: the sample video's faces); implies --force",
    )
    compile_parser.set_defaults(func=run_compile)

    bench_parser = subparsers.add_parser("bench-engines", help="per-face latency of each backend at batch 1/4/16")
    bench_parser.add_argument("--weights", type=Path, help="weights .safetensors (default: the shipped model)")
    bench_parser.add_argument(
        "--backends", default=",".join(BENCH_BACKENDS), help=f"comma-separated subset of {','.join(BENCH_BACKENDS)}"
    )
    bench_parser.add_argument("--batches", type=_int_list, default=list(DEFAULT_BATCHES), help="batch sizes (default 1,4,16)")
    bench_parser.add_argument("--iterations", type=_positive, default=200, help="timed calls per backend and batch")
    bench_parser.add_argument("--warmup", type=int, default=20, help="untimed calls first")
    bench_parser.add_argument("--threads", type=_positive, help="CPU threads for torch and onnxruntime (default: cores/2, ≤4)")
    bench_parser.add_argument("-o", "--output", type=Path, default=Path("reports/engines"), help="folder for JSON, markdown, PNG")
    bench_parser.add_argument("--cache-dir", type=Path, help="compiled-artifact cache root")
    bench_parser.add_argument(
        "--min-ort-speedup", type=float, default=REQUIRED_ORT_SPEEDUP, help="fail unless ORT beats torch at batch 1 by this"
    )
    bench_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench_parser.set_defaults(func=run_bench)


def run_compile(args: argparse.Namespace) -> int:
    _log_to_stderr()
    if args.target == "tensorrt":
        from .tensorrt_backend import detect_environment, ensure_engine

        environment = detect_environment()
        path = ensure_engine(
            args.weights,
            env=environment,
            max_batch=args.max_batch,
            opt_batch=args.opt_batch,
            cache_dir=args.cache_dir,
            output_dir=args.output,
            force=args.force,
        )
    else:
        from .onnx_store import ensure_onnx

        precision = PRECISIONS[args.target]
        if args.calibration is not None and args.target != "onnx-int8":
            raise ConfigError("--calibration is for --target onnx-int8")
        if args.force or args.calibration is not None:
            output = args.output
            if output is None:
                from leaf_fer.train.weights import default_weights_path, model_hash

                from .artifacts import model_cache_dir

                output = model_cache_dir(args.cache_dir, model_hash(args.weights or default_weights_path()))
            from .export import compile_onnx

            path = compile_onnx(args.weights, output, precision=precision, calibration=args.calibration)
        else:
            path = ensure_onnx(args.weights, precision=precision, cache_dir=args.cache_dir, output_dir=args.output)
    sidecar = read_sidecar(path)
    print(path)
    summary = f"{sidecar.target} ({sidecar.precision}) of model {sidecar.model_hash}, {len(sidecar.classes)} classes"
    if "calibration" in sidecar.created_with:
        summary += f", calibrated on {sidecar.created_with['calibration']}"
    if sidecar.tensorrt is not None:
        profile = sidecar.tensorrt.profile
        summary += f", {sidecar.tensorrt.environment.describe()}, batch {profile['min'][0]}..{profile['max'][0]}"
    print(f"{summary}; sidecar {path.name}.json")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from .benchmark import markdown_table, run_benchmark, write_report

    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    report = run_benchmark(
        args.weights,
        backends=backends,
        batches=args.batches,
        iterations=args.iterations,
        warmup=args.warmup,
        threads=args.threads,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        required_speedup=args.min_ort_speedup,
    )
    paths = write_report(report, args.output)
    print(markdown_table(report), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    speedup = report["ort_vs_torch_batch1"]
    if speedup.get("meets_requirement") is False:
        raise LeafFerError(
            f"ONNX Runtime is only {speedup['ratio']:.2f}x faster than torch at batch 1 (required {speedup['required']}x)"
        )
    return 0


def _log_to_stderr() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
