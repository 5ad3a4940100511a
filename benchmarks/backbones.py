"""Backbone candidates for the default model: validation accuracy after the same short budget, and per-face latency.

Trains each candidate with `leaf-fer train` options (same data, seed, epochs) and times batch-1 inference with ONNX
Runtime (1 thread) and torch eager, in one run. Writes reports/backbones/{results.json,results.md}.

    python benchmarks/backbones.py --data ../shared/data/fer2013_train.npz --val-data ../shared/data/fer2013_publictest.npz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from leaf_fer.common import atomic_write_bytes, atomic_write_json
from leaf_fer.engines.export import export_onnx_model
from leaf_fer.train.config import TrainConfig
from leaf_fer.train.model import InferenceModel, count_parameters
from leaf_fer.train.trainer import train
from leaf_fer.train.weights import load_weights


def batch1_latency_ms(weights: Path, repeats: int = 300) -> dict[str, float]:
    net, _ = load_weights(weights)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(export_onnx_model(net).SerializeToString(), options, providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 1, 48, 48)).astype(np.float32)
    model = InferenceModel(net)
    torch.set_num_threads(1)
    timings: dict[str, list[float]] = {"onnxruntime": [], "torch": []}
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, {session.get_inputs()[0].name: pixels})
            timings["onnxruntime"].append(time.perf_counter() - start)
            start = time.perf_counter()
            model(torch.from_numpy(pixels))
            timings["torch"].append(time.perf_counter() - start)
    return {f"{k}_ms_p50": 1e3 * float(np.median(v[20:])) for k, v in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--val-data", required=True)
    parser.add_argument("--candidates", nargs="+", default=["resnet-xs", "resnet-s", "resnet-m"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("reports/backbones"))
    parser.add_argument("--runs", type=Path, default=Path("runs/backbones"))
    args = parser.parse_args()
    rows = []
    for backbone in args.candidates:
        config = TrainConfig(data=args.data, val_data=args.val_data, backbone=backbone, epochs=args.epochs,
                             warmup_epochs=0.5, output=str(args.runs / backbone), threads=2)
        result = train(config, progress=False)
        weights = Path(result["weights"])
        net, _ = load_weights(weights)
        rows.append({"backbone": backbone, "parameters": count_parameters(net), "epochs": args.epochs,
                     "val_accuracy": result["best_accuracy"], "train_seconds": result["elapsed_s"],
                     **batch1_latency_ms(weights)})
        print(rows[-1], flush=True)
    atomic_write_json(args.output / "results.json", rows)
    lines = [f"Same budget for every candidate: {args.epochs} epochs, all FER+ labels, seed 0, batch 128 (bf16 autocast on "
             "2 CPU cores). Latency: one face (batch 1), median of 280 runs, 1 thread.", "",
             "| backbone | parameters | val accuracy % | train s | ONNX Runtime ms | torch eager ms |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['parameters'] / 1e6:.2f}M | {100 * r['val_accuracy']:.2f} | "
                     f"{r['train_seconds']:.0f} | {r['onnxruntime_ms_p50']:.2f} | {r['torch_ms_p50']:.2f} |")
    atomic_write_bytes(args.output / "results.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
