"""Training speed in fp32 and bf16 autocast on this CPU: what `--precision auto` chooses and why.

Times full training steps (augmentation, forward, loss, backward, optimizer) on random faces, with the options of the
semi-supervised protocol's and the default model's training configs, interleaving the precisions step by step so that
both see the same machine load, and reports the median step time and faces per second of each, and their ratio. Writes
reports/train_precision/{precision.md,precision.json}.

    python benchmarks/train_precision.py
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from leaf_fer.common import atomic_write_bytes, atomic_write_json
from leaf_fer.train.algorithms import Batch
from leaf_fer.train.config import TrainConfig, read_config_file
from leaf_fer.train.model import LeafNet
from leaf_fer.train.trainer import make_algorithm, native_bf16, resolve_precision

PRECISIONS = ("fp32", "bf16")


def step_seconds(config: TrainConfig, steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per training step for each precision, the precisions alternating step by step."""
    generator = torch.Generator().manual_seed(0)
    model_config = config.model_config()
    size = model_config.input_size
    labeled_targets = torch.softmax(torch.randn(config.batch_size, model_config.num_classes, generator=generator), 1)
    runs = {}
    for precision in PRECISIONS:
        torch.manual_seed(config.seed)
        net = LeafNet(model_config).to(memory_format=torch.channels_last)
        algorithm = make_algorithm(config, net, labeled_targets, autocast=precision == "bf16")
        runs[precision] = (net, algorithm, torch.optim.AdamW(net.parameters(), lr=config.lr))
    timings: dict[str, list[float]] = {precision: [] for precision in PRECISIONS}
    for step in range(warmup + steps):
        labeled = Batch(torch.rand(config.batch_size, 1, size, size, generator=generator), labeled_targets)
        unlabeled = Batch(torch.rand(config.unlabeled_batch_size, 1, size, size, generator=generator))
        for precision, (net, algorithm, optimizer) in runs.items():
            net.train()
            start = time.perf_counter()
            loss = algorithm.train_step(labeled, unlabeled if algorithm.uses_unlabeled else None).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= warmup:
                timings[precision].append(time.perf_counter() - start)
    return timings


SETTINGS = [  # training config, torch threads, methods: the protocol's runs train one thread each, two at once
    (Path("research/configs/ssl_10pct_9000.yaml"), 1, ["leaf", "supervised"]),
    (Path("train/configs/default.yaml"), 2, ["supervised"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("reports/train_precision"))
    args = parser.parse_args()
    rows = []
    for config_path, threads, methods in SETTINGS:
        torch.set_num_threads(threads)
        protocol = TrainConfig.from_dict(read_config_file(config_path))
        for method in methods:
            config = replace(protocol, method=method)
            timings = step_seconds(config, args.steps, args.warmup)
            faces = config.batch_size + (config.unlabeled_batch_size if method != "supervised" else 0)
            medians = {precision: float(np.median(values)) for precision, values in timings.items()}
            rows.append({"setting": str(config_path), "backbone": config.backbone, "threads": threads,
                         "method": method, "faces_per_step": faces, "step_seconds_median": medians,
                         "faces_per_second": {p: faces / s for p, s in medians.items()},
                         "bf16_over_fp32_time": medians["bf16"] / medians["fp32"]})
            print(f"{config_path}, {method}: fp32 {medians['fp32']:.3f} s/step, bf16 {medians['bf16']:.3f} s/step",
                  flush=True)
    cpu = torch.backends.cpu.get_cpu_capability()
    report = {"cpu_capability": cpu, "native_bf16": native_bf16(),
              "auto_chooses": resolve_precision("auto", torch.device("cpu")), "machine": platform.machine(),
              "torch": torch.__version__, "steps": args.steps, "rows": rows}
    lines = [f"Training step time by precision: median of {args.steps} steps after {args.warmup} of warm-up, the two "
             "precisions interleaved step by step; faces per step count labeled + unlabeled faces.", "",
             f"CPU: {platform.machine()}, torch capability {cpu}, native bf16: {report['native_bf16']}; "
             f"`--precision auto` chooses {report['auto_chooses']}.", "",
             "| setting | method | threads | faces/step | fp32 s/step | bf16 s/step | fp32 faces/s | bf16 faces/s "
             "| bf16 time / fp32 time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        median, rate = row["step_seconds_median"], row["faces_per_second"]
        lines.append(f"| {row['setting']}, {row['backbone']} | {row['method']} | {row['threads']} | "
                     f"{row['faces_per_step']} | {median['fp32']:.3f} | {median['bf16']:.3f} | {rate['fp32']:.0f} | "
                     f"{rate['bf16']:.0f} | {row['bf16_over_fp32_time']:.2f} |")
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output / "precision.json", report)
    atomic_write_bytes(args.output / "precision.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
