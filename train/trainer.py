"""The shared training loop: data split, EMA teacher, per-epoch validation, best checkpoint, resume after a kill;
DistributedDataParallel when launched by ``torchrun``."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from leaf_fer.common import ConfigError, LeafFerError, atomic_write_bytes, file_sha256

from .algorithms import ALGORITHMS, Algorithm, Batch
from .augment import domain_augment, weak_augment
from .config import CLASS_SETS, OUTPUT_OPTIONS, PLACEMENT_OPTIONS, TrainConfig, split_extra
from .data import arrays_hash, load_dataset, load_unlabeled_faces, stratified_fraction, targets_for
from .metrics import Scores, plot_confusion, plot_curves, score
from .model import LeafNet, count_parameters
from .weights import (
    WeightsMetadata,
    average_weights,
    fine_tuned_from,
    load_weights,
    mix_weights,
    model_hash,
    read_metadata,
    save_weights,
)

THRESHOLD_SAMPLE = 4096  # labeled faces the teacher scores after each epoch to set the class-adaptive thresholds


@dataclass
class Splits:
    """The run's data; ``labeled_main`` marks the labeled faces that come from ``--data`` (the rest from
    ``--extra-data`` and ``--anchor-data``), ``labeled_anchored`` those from ``--anchor-data`` (their targets, uniform
    here, are the initial model's predictions in training); ``unlabeled_hard`` holds the unlabeled faces' true labels
    where the data has them (-1 elsewhere), for diagnostics (research/pseudo_labels.py) only: no method reads it."""

    labeled_images: torch.Tensor
    labeled_targets: torch.Tensor
    labeled_hard: torch.Tensor
    labeled_weights: np.ndarray
    labeled_main: torch.Tensor
    labeled_anchored: torch.Tensor
    unlabeled_images: torch.Tensor
    val_images: torch.Tensor
    val_hard: np.ndarray
    data_hash: str
    unlabeled_hard: np.ndarray

    def annotated(self) -> tuple[torch.Tensor, np.ndarray]:
        """The targets and draw weights of the labeled faces whose targets come from annotation (not anchors)."""
        rows = ~self.labeled_anchored
        return self.labeled_targets[rows], self.labeled_weights[rows.numpy()]


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere torch emulates it, and a training
    step takes about 10x as long as in fp32 (``benchmarks/train_precision.py``)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on a CPU with native bf16, fp32 elsewhere, CUDA included (as before the option)."""
    if name == "auto":
        return "bf16" if device.type == "cpu" and native_bf16() else "fp32"
    return name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LeafFerError("device 'cuda' asked for but no CUDA GPU is available")
    return torch.device(name)


def prepare_splits(config: TrainConfig) -> Splits:
    """Load data; hold apart a validation split when none is given; keep a stratified labeled fraction."""
    classes = CLASS_SETS[config.classes]
    train = load_dataset(config.data, config.ferplus_csv, usage="Training")
    if config.max_train_samples:
        train = train.subset(np.random.default_rng(config.seed).permutation(len(train))[: config.max_train_samples])
    targets = targets_for(train, classes)
    usable = np.flatnonzero(targets.usable)
    if config.val_data:
        val = load_dataset(config.val_data, config.ferplus_csv, usage="PublicTest")
        train_index = usable
    else:
        held = stratified_fraction(targets.hard[usable].clip(min=-1), config.val_fraction, config.seed + 1)
        val = train.subset(usable[held])
        train_index = np.setdiff1d(usable, usable[held])
    val_targets = targets_for(val, classes)
    val_rows = np.flatnonzero(val_targets.hard >= 0)
    labeled_index = train_index
    if config.label_fraction < 1.0:
        labeled_index = train_index[stratified_fraction(targets.hard[train_index], config.label_fraction, config.seed)]
    unlabeled_index = np.setdiff1d(np.arange(len(train)), labeled_index)
    if config.val_data is None:
        unlabeled_index = np.setdiff1d(unlabeled_index, np.setdiff1d(usable, train_index))
    as_tensor = lambda images: torch.from_numpy(np.ascontiguousarray(images))  # noqa: E731
    labeled_images, labeled_soft = train.images[labeled_index], targets.soft[labeled_index]
    labeled_hard, labeled_weights = targets.hard[labeled_index], np.ones(len(labeled_index))
    extra_hashes: list[str] = []
    for spec in config.extra_data:
        path, weight = split_extra(spec)
        extra = load_dataset(path, label_weight=config.posed_label_weight)
        extra_targets = targets_for(extra, classes)
        rows = np.flatnonzero(extra_targets.usable)
        print(f"extra data {path}: {len(rows)} faces, weight {weight:g}")
        labeled_images = np.concatenate([labeled_images, extra.images[rows]])
        labeled_soft = np.concatenate([labeled_soft, extra_targets.soft[rows]])
        labeled_hard = np.concatenate([labeled_hard, extra_targets.hard[rows]])
        labeled_weights = np.concatenate([labeled_weights, np.full(len(rows), weight)])
        extra_hashes.append(extra.content_hash())
    anchored_from = len(labeled_images)
    for spec in config.anchor_data:
        path, weight = split_extra(spec)
        faces = load_unlabeled_faces(path)
        print(f"anchor data {path}: {len(faces)} faces, weight {weight:g}")
        labeled_images = np.concatenate([labeled_images, faces])
        labeled_soft = np.concatenate([labeled_soft, np.full((len(faces), len(classes)), 1 / len(classes), np.float32)])
        labeled_hard = np.concatenate([labeled_hard, np.full(len(faces), -1, dtype=labeled_hard.dtype)])
        labeled_weights = np.concatenate([labeled_weights, np.full(len(faces), weight)])
        extra_hashes.append(arrays_hash(faces))
    unlabeled_images = train.images[unlabeled_index]
    unlabeled_hard = targets.hard[unlabeled_index]
    data_hash = ":".join([train.content_hash(), val.content_hash(), *extra_hashes])
    if config.unlabeled_data:
        extra = load_unlabeled_faces(config.unlabeled_data)
        unlabeled_images = np.concatenate([unlabeled_images, extra])
        unlabeled_hard = np.concatenate([unlabeled_hard, np.full(len(extra), -1, dtype=unlabeled_hard.dtype)])
        data_hash += ":" + arrays_hash(extra)
    return Splits(
        labeled_images=as_tensor(labeled_images),
        labeled_targets=torch.from_numpy(labeled_soft),
        labeled_hard=torch.from_numpy(labeled_hard),
        labeled_weights=labeled_weights,
        labeled_main=torch.arange(len(labeled_images)) < len(labeled_index),
        labeled_anchored=torch.arange(len(labeled_images)) >= anchored_from,
        unlabeled_images=as_tensor(unlabeled_images),
        val_images=as_tensor(val.images[val_rows]),
        val_hard=val_targets.hard[val_rows],
        data_hash=data_hash,
        unlabeled_hard=unlabeled_hard,
    )


class EmaTeacher:
    """Exponential moving average of the student's parameters and buffers; the teacher is what gets evaluated."""

    def __init__(self, student: LeafNet, decay: float) -> None:
        self.model = LeafNet(student.config).to(next(student.parameters()).device, memory_format=torch.channels_last)
        self.model.load_state_dict(student.state_dict())
        self.model.eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, student: LeafNet, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_value, value in zip(self.model.state_dict().values(), student.state_dict().values()):
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                ema_value.copy_(value)


class _AllOutputs(torch.nn.Module):
    """A LeafNet whose ``forward`` is ``forward_all``."""

    def __init__(self, net: LeafNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net.forward_all(x)


class DistributedNet(DistributedDataParallel):
    """A LeafNet in DistributedDataParallel with the interface the algorithms use: ``forward_all`` runs through DDP's
    forward (which readies the gradients' all-reduce in the backward pass), ``config`` is the LeafNet's."""

    def __init__(self, net: LeafNet, device: torch.device) -> None:
        super().__init__(_AllOutputs(net), device_ids=[device.index] if device.type == "cuda" else None)
        self.config = net.config

    def forward_all(self, x: torch.Tensor):
        return self(x)


def rank_share(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This process's contiguous share of a global batch (all of it in one process)."""
    size = len(rows) // world_size
    return rows[rank * size:(rank + 1) * size]


def mean_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each value's mean over the processes of a torchrun launch (the values themselves in one process)."""
    if not torch.distributed.is_initialized():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return (total / torch.distributed.get_world_size()).tolist()


@torch.no_grad()
def predict_probabilities(net: LeafNet, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """uint8 [N,H,W] → float32 probabilities, in eval mode, FP32."""
    net.eval()
    device = next(net.parameters()).device
    config = net.config
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float().unsqueeze(1) / 255.0
        out.append(torch.softmax(net((x - config.pixel_mean) / config.pixel_std).float(), -1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, config.num_classes), dtype=np.float32)


def refresh_thresholds(algorithm: Algorithm, teacher: LeafNet, splits: Splits) -> None:
    """Set the class-adaptive thresholds from the teacher's confidence on (up to THRESHOLD_SAMPLE) labeled faces."""
    probs = predict_probabilities(teacher, splits.labeled_images[:THRESHOLD_SAMPLE])
    hard = splits.labeled_hard[:THRESHOLD_SAMPLE].numpy()
    keep = hard >= 0
    algorithm.update_thresholds(torch.from_numpy(probs.max(1)[keep]),
                                torch.from_numpy(probs.argmax(1)[keep] == hard[keep]), torch.from_numpy(hard[keep]))


def evaluate_split(net: LeafNet, images: torch.Tensor, labels: np.ndarray) -> Scores:
    probs = predict_probabilities(net, images)
    return score(labels, probs.argmax(axis=1), net.config.classes)


class Checkpoint:
    """``checkpoint.json`` (the state) naming its tensor file ``checkpoint.<SHA-256 prefix>.safetensors`` (student,
    teacher, optimiser tensors, RNG) and that file's SHA-256.

    A save writes the new tensor file beside the previous one, then replaces the JSON (the commit), then deletes the
    previous tensor file: a kill at any instant leaves the previous or the new checkpoint whole.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state_path = folder / "checkpoint.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def save(self, student: LeafNet, teacher: EmaTeacher, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        tensors = {f"student.{k}": v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
        tensors.update({f"teacher.{k}": v.detach().cpu().contiguous() for k, v in teacher.model.state_dict().items()})
        optim_state = optimizer.state_dict()
        for index, values in optim_state["state"].items():
            for key, value in values.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        tmp = self.folder / ".checkpoint.safetensors.tmp"
        save_file(tensors, str(tmp))
        sha256 = file_sha256(tmp)
        name = f"checkpoint.{sha256[:16]}.safetensors"
        os.replace(tmp, self.folder / name)
        state = dict(state, param_groups=optim_state["param_groups"], tensors=name, tensors_sha256=sha256)
        atomic_write_bytes(self.state_path, json.dumps(state, indent=1).encode())
        for stale in self.folder.glob("checkpoint*.safetensors"):
            if stale.name != name:
                stale.unlink()

    def load(self, student: LeafNet, teacher: EmaTeacher, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        state = json.loads(self.state_path.read_text())
        tensors_path = self.folder / state.get("tensors", "checkpoint.safetensors")
        if file_sha256(tensors_path) != state["tensors_sha256"]:
            raise LeafFerError(f"{tensors_path}: checkpoint tensors do not match checkpoint.json")
        tensors = load_file(str(tensors_path))
        student.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("student.")})
        teacher.model.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("teacher.")})
        optim_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim_state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": optim_state, "param_groups": state["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        return state


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """``train_log.jsonl``, one line per epoch, rewritten whole from the checkpoint's history: never a duplicate."""
    atomic_write_bytes(path, "".join(json.dumps(record) + "\n" for record in history).encode())


def learning_rate(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to 1% of the peak."""
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(config: TrainConfig, restart: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a training run; writes ``model.safetensors`` (best on validation) and reports into the output.

    Launched by ``torchrun`` (``WORLD_SIZE`` set), every process trains on its share of each global batch of
    ``batch_size`` in DistributedDataParallel (gloo on CPU; NCCL on CUDA, one GPU per ``LOCAL_RANK``), with the data
    order of one process; rank 0 alone validates, writes the run folder and prints, and its result is the run's.
    """
    config.validate()
    device = resolve_device(config.device)
    if "WORLD_SIZE" not in os.environ:
        return _train(config, device, restart, progress)
    world_size = int(os.environ["WORLD_SIZE"])
    batches = ["batch_size"] + (["unlabeled_batch_size"] if ALGORITHMS[config.method].uses_unlabeled else [])
    for name in batches:
        if getattr(config, name) % world_size:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(config, name)} does not split evenly over "
                             f"{world_size} processes (each takes an equal share of every global batch)")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        lead = torch.distributed.get_rank() == 0
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sys.stdout if lead else sink):
            return _train(config, device, restart, progress and lead)
    finally:
        # DDP's reducer sits in reference cycles; freed now, before its process group, not by gloo's threads at
        # interpreter exit (without this, SIGABRT "terminate called without an active exception" at exit in 10 of 50
        # two-process toy runs under load, none of 60 with it).
        gc.collect()
        torch.distributed.destroy_process_group()


@dataclass
class _TrainingRun:
    """One process's run while it trains: data, networks, method, optimiser and schedule, and ``state``, what the
    checkpoint keeps (epoch, step, best accuracy, history, elapsed seconds, the method's running state)."""

    config: TrainConfig
    device: torch.device
    distributed: bool
    rank: int
    world_size: int
    output: Path
    splits: Splits
    student: LeafNet
    teacher: EmaTeacher
    algorithm: Algorithm
    optimizer: torch.optim.Optimizer
    precision: str
    sampling: np.ndarray | None
    """Draw probability of each labeled face when the sets are weighted; None: one shuffled pass per epoch."""
    steps_per_epoch: int
    checkpoint: Checkpoint
    state: dict[str, Any]
    initial: LeafNet | None
    """The initial weights to mix into the validated and saved model (``weight_ensemble`` below 1), else None."""
    soup: list[LeafNet]
    """Other runs' fine-tuned models averaged with this run's teacher before the mix (``soup_with``)."""

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def log_path(self) -> Path:
        return self.output / "train_log.jsonl"


def _train(config: TrainConfig, device: torch.device, restart: bool, progress: bool) -> dict[str, Any]:
    run = _set_up(config, device, restart)
    validated = None
    for epoch in range(run.state["epoch"], config.epochs):
        started = time.perf_counter()
        train_loss, logs = _train_epoch(run, epoch, progress)
        if run.rank == 0:
            validated = _evaluate_and_checkpoint(run, epoch, train_loss, logs, started)
        if run.distributed:
            _share_running_state(run)
    if run.rank == 0 and config.keep == "last":
        _save_last(run, validated)
    kept_epoch = run.state.get("kept_epoch", run.state.get("best_epoch"))
    return {"best_accuracy": run.state["best_accuracy"], "best_epoch": run.state.get("best_epoch"),
            "kept": config.keep, "kept_epoch": kept_epoch,
            "kept_accuracy": run.state.get("kept_accuracy", run.state["best_accuracy"]),
            "elapsed_s": run.state["elapsed_s"], "weights": str(run.output / "model.safetensors"),
            "history": run.state["history"]}


def _set_up(config: TrainConfig, device: torch.device, restart: bool) -> _TrainingRun:
    """Seed; load the data; build the networks, the method and the optimiser; resume from the output folder's
    checkpoint unless ``restart``; say what is about to train."""
    distributed = torch.distributed.is_initialized()
    rank, world_size = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    splits = prepare_splits(config)
    initial = load_weights(config.init_weights)[0] if config.init_weights else None
    student = _initial_student(config, initial).to(device, memory_format=torch.channels_last)
    teacher = EmaTeacher(student, config.ema_decay)
    precision = resolve_precision(config.precision, device)
    net = DistributedNet(student, device) if distributed else student
    annotated_targets, annotated_weights = splits.annotated()
    algorithm = make_algorithm(config, net, annotated_targets, autocast=precision == "bf16",
                               labeled_weights=annotated_weights,
                               initial=initial.to(device) if config.distill_initial or config.anchor_data else None)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weighted = not np.allclose(splits.labeled_weights, 1.0)
    epoch_draws = int(round(splits.labeled_weights.sum())) if weighted else len(splits.labeled_images)
    run = _TrainingRun(
        config, device, distributed, rank, world_size, output, splits, student, teacher, algorithm, optimizer, precision,
        sampling=splits.labeled_weights / splits.labeled_weights.sum() if weighted else None,
        steps_per_epoch=config.iterations_per_epoch or max(1, epoch_draws // config.batch_size),
        checkpoint=Checkpoint(output),
        state={"epoch": 0, "step": 0, "best_accuracy": -1.0, "history": [], "elapsed_s": 0.0},
        initial=initial.to(device) if config.weight_ensemble < 1 else None,
        soup=[net.to(device) for net in _soup_members(config)],
    )
    if run.checkpoint.exists() and not restart:
        _resume(run)
    if rank == 0 and run.state["history"]:
        write_log(run.log_path, run.state["history"])
    processes = f" x {world_size} processes" if distributed else ""
    print(f"{config.method}: {len(splits.labeled_images)} labeled, {len(splits.unlabeled_images)} unlabeled, "
          f"{len(splits.val_images)} validation; {count_parameters(student) / 1e6:.2f}M parameters on {device}"
          f"{processes}, {precision}")
    if algorithm.uses_unlabeled:
        print(f"confidence thresholds scaled by {algorithm.confidence_ceiling:.3f} (labeled targets' mean top probability)"
              if algorithm.confidence_ceiling < 1.0 else "confidence thresholds as published (one-hot targets)")
    return run


def _initial_student(config: TrainConfig, initial: LeafNet | None) -> LeafNet:
    """A new network of ``config``, with a copy of ``initial``'s weights (``init_weights``, the same network's only)."""
    model_config = config.model_config()
    student = LeafNet(model_config)
    if initial is not None:
        network = lambda c: (c.backbone, tuple(c.classes), c.semantic_level, c.instance_level)  # noqa: E731
        if network(initial.config) != network(model_config):
            raise ConfigError(f"{config.init_weights}: its network ({initial.config.backbone}, "
                             f"{initial.config.num_classes} classes) differs from this run's")
        student.load_state_dict(initial.state_dict())
    return student


def _resume(run: _TrainingRun) -> None:
    """Continue from the checkpoint in the output folder; refuse one saved by another configuration."""
    saved = json.loads(run.checkpoint.state_path.read_text())
    if _run_identity(saved.get("config", {})) != _run_identity(asdict(run.config)):
        raise LeafFerError(f"{run.output}: holds a checkpoint of a different configuration; use --restart or "
                           "another --output")
    _check_kept_model(run)
    run.state = run.checkpoint.load(run.student, run.teacher, run.optimizer)
    run.algorithm.load_running_state(run.state)
    print(f"resuming {run.output} at epoch {run.state['epoch']}/{run.config.epochs}")


def _check_kept_model(run: _TrainingRun) -> None:
    """``keep: best`` goes on from the model file's best epoch, so that file must hold the same choice of weights: the
    best epoch's teacher is kept nowhere else once another choice (``keep: last``, another weight ensemble) replaced it."""
    path = run.output / "model.safetensors"
    if run.config.keep != "best" or not path.exists():
        return
    written = _with_defaults(read_metadata(path).training.get("config", {}))
    held, chosen = ({name: values[name] for name in OUTPUT_OPTIONS} for values in (written, asdict(run.config)))
    if held != chosen:
        describe = lambda values: ", ".join(f"{name} {value}" for name, value in values.items())  # noqa: E731
        raise ConfigError(f"{path}: holds the model of {describe(held)}; the best epoch's weights for "
                          f"{describe(chosen)} were not kept: use --keep last, the options that wrote it, or --restart")


def _train_epoch(run: _TrainingRun, epoch: int, progress: bool) -> tuple[float, dict[str, float]]:
    """The steps of one epoch (this process's share of each global batch) → the mean training loss and the method's
    mean logs, both averaged over the processes."""
    config = run.config
    rng = np.random.default_rng([config.seed, epoch])
    if run.rank:
        torch.manual_seed(int(np.random.SeedSequence([config.seed, epoch, run.rank]).generate_state(1)[0]))
    run.student.train()
    order = (rng.choice(len(run.sampling), run.steps_per_epoch * config.batch_size, p=run.sampling)
             if run.sampling is not None else rng.permutation(len(run.splits.labeled_images)))
    losses, logs_sum = [], {}
    bar = tqdm(range(run.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    for i in bar:
        labeled, unlabeled = _next_batches(run, rng, order, i)
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(config, run.state["step"], run.total_steps, run.steps_per_epoch)
        result = run.algorithm.train_step(labeled, unlabeled)
        run.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        run.optimizer.step()
        run.teacher.update(run.student, run.state["step"])
        run.state["step"] += 1
        losses.append(float(result.loss.detach()))
        for key, value in result.logs.items():
            logs_sum[key] = logs_sum.get(key, 0.0) + value
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    means = mean_over_ranks([float(np.mean(losses)), *(v / run.steps_per_epoch for v in logs_sum.values())], run.device)
    return means[0], dict(zip(logs_sum, means[1:]))


def _next_batches(run: _TrainingRun, rng: np.random.Generator, order: np.ndarray,
                  step: int) -> tuple[Batch, Batch | None]:
    """This process's labeled batch of the epoch's ``step`` (from ``order``) and its unlabeled batch when the method
    uses one, on the run's device."""
    config, splits = run.config, run.splits
    pick = order[(step * config.batch_size) % len(order):][: config.batch_size]
    if len(pick) < config.batch_size:
        pick = rng.choice(len(order), config.batch_size, replace=False)
    pick = rank_share(pick, run.rank, run.world_size)
    labeled = Batch(splits.labeled_images[pick].to(run.device).float().unsqueeze(1) / 255.0,
                    splits.labeled_targets[pick].to(run.device), splits.labeled_main[pick].to(run.device),
                    splits.labeled_anchored[pick].to(run.device))
    if not run.algorithm.uses_unlabeled:
        return labeled, None
    upick = rank_share(rng.integers(0, len(splits.unlabeled_images), config.unlabeled_batch_size), run.rank,
                       run.world_size)
    return labeled, Batch(splits.unlabeled_images[upick].to(run.device).float().unsqueeze(1) / 255.0)


def _evaluate_and_checkpoint(run: _TrainingRun, epoch: int, train_loss: float, logs: dict[str, float],
                             started: float) -> tuple[LeafNet, Scores]:
    """Rank 0 after an epoch: refresh the thresholds, validate the teacher, keep the best model, save the checkpoint,
    the log and the curves; returns the validated model and its scores."""
    config, state, output = run.config, run.state, run.output
    if run.algorithm.uses_unlabeled:
        refresh_thresholds(run.algorithm, run.teacher.model, run.splits)
    model = _deployed(run)
    scores = evaluate_split(model, run.splits.val_images, run.splits.val_hard)
    elapsed = time.perf_counter() - started
    state["elapsed_s"] += elapsed
    record = {"epoch": epoch + 1, "train_loss": train_loss, "val_accuracy": scores.accuracy,
              "val_macro_f1": scores.macro_f1, "lr": run.optimizer.param_groups[0]["lr"], "seconds": elapsed, **logs}
    state["history"].append(record)
    print(f"epoch {epoch + 1}/{config.epochs}  loss {record['train_loss']:.4f}  "
          f"val acc {100 * scores.accuracy:.2f}%  macro-F1 {100 * scores.macro_f1:.2f}%  ({elapsed:.0f}s)", flush=True)
    if scores.accuracy > state["best_accuracy"]:
        state["best_accuracy"] = scores.accuracy
        state["best_epoch"] = epoch + 1
        if config.keep == "best":
            _save_model(run, model, scores, epoch + 1)
    state["epoch"] = epoch + 1
    state.update(run.algorithm.running_state())
    state["config"] = asdict(config)
    run.checkpoint.save(run.student, run.teacher, run.optimizer, state)
    write_log(run.log_path, state["history"])
    plot_curves(state["history"], output / "curves.png")
    return model, scores


def _deployed(run: _TrainingRun) -> LeafNet:
    """What ``model.safetensors`` would hold now: the EMA teacher, averaged with the soup's other models and mixed
    with the initial weights when asked."""
    model = average_weights([run.teacher.model, *run.soup]) if run.soup else run.teacher.model
    return model if run.initial is None else mix_weights(model, run.initial, run.config.weight_ensemble)


def _soup_members(config: TrainConfig) -> list[LeafNet]:
    """The models of ``soup_with``, each checked to belong in this run's soup: the same network, unmixed, fine-tuned
    from the same initial weights, and not this run's own model file."""
    members: list[LeafNet] = []
    initial_hash = model_hash(config.init_weights) if config.soup_with else None
    for path in config.soup_with:
        if Path(path).resolve() == (Path(config.output) / "model.safetensors").resolve():
            raise ConfigError(f"{path}: this run's own model; give the models of other runs")
        net, metadata = load_weights(path)
        trained = _with_defaults(metadata.training.get("config", {}))
        if net.config != config.model_config():
            raise ConfigError(f"{path}: another network than this run's ({net.config.backbone}, "
                              f"{net.config.num_classes} classes)")
        if trained["weight_ensemble"] != 1 or trained["soup_with"]:
            raise ConfigError(f"{path}: a mixed model (--weight-ensemble {trained['weight_ensemble']:g}, "
                              f"{len(trained['soup_with'])} soup models); give a run's unmixed one (--weight-ensemble 1)")
        if fine_tuned_from(metadata) != initial_hash:
            raise ConfigError(f"{path}: not fine-tuned from --init-weights {config.init_weights} "
                              f"(it names {trained['init_weights']})")
        members.append(net)
    return members


def _save_last(run: _TrainingRun, validated: tuple[LeafNet, Scores] | None) -> None:
    """``keep: last``: the final model saved when the run ends, with the scores of its last epoch's validation
    (``validated``), or validated now for a run that had finished before this call."""
    if validated is None:
        model = _deployed(run)
        validated = model, evaluate_split(model, run.splits.val_images, run.splits.val_hard)
    model, scores = validated
    run.state["kept_epoch"], run.state["kept_accuracy"] = run.state["epoch"], scores.accuracy
    _save_model(run, model, scores, run.state["epoch"])


def _share_running_state(run: _TrainingRun) -> None:
    """Give every process rank 0's running state of the method (its thresholds after validation)."""
    running = [run.algorithm.running_state()]
    torch.distributed.broadcast_object_list(running, src=0)
    if run.rank:
        run.algorithm.load_running_state(running[0])


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A saved run's options, those added since it was saved taking their defaults."""
    return asdict(TrainConfig()) | config


def _run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The options that define a run; where and how fast it runs, and what its model file holds, may change across a
    resume."""
    return {k: v for k, v in _with_defaults(config).items() if k not in (*PLACEMENT_OPTIONS, *OUTPUT_OPTIONS)}


def confidence_ceiling(config: TrainConfig, labeled_targets: torch.Tensor) -> float:
    """The labeled targets' mean largest probability (annotator agreement) when thresholds follow it, else 1."""
    if not config.agreement_thresholds or len(labeled_targets) == 0:
        return 1.0
    return float(labeled_targets.max(dim=1).values.mean())


def make_algorithm(config: TrainConfig, net: LeafNet, labeled_targets: torch.Tensor, autocast: bool,
                   labeled_weights: np.ndarray | None = None, initial: LeafNet | None = None) -> Algorithm:
    """The method of ``config``; thresholds (and LEAF's optional distribution alignment) read the labeled targets;
    ``initial`` is the network the main data's targets are distilled from (``distill_initial``) and the anchor faces'
    targets come from (``anchor_data``)."""
    cls = ALGORITHMS[config.method]
    num_classes = net.config.num_classes
    ceiling = confidence_ceiling(config, labeled_targets)
    shared = {"autocast": autocast, "confidence_ceiling": ceiling,
              "labeled_view": domain_augment if config.domain_augment else weak_augment,
              "mixup": config.mixup,
              "main_view": weak_augment if config.domain_augment and not config.domain_augment_main else None,
              "distill_from": initial, "distill_weight": config.distill_initial,
              "logit_adjustment": (config.logit_adjustment * training_prior(labeled_targets, labeled_weights).log()
                                   if config.logit_adjustment else None)}
    if config.method == "leaf":
        labeled_prior = labeled_targets.float().mean(dim=0) if config.distribution_alignment else None
        return cls(net, num_classes, category_level=config.category_level, weight_x=config.labeled_weight,
                   weight_s=config.contrastive_weight, temperature=config.contrastive_temperature,
                   labeled_prior=labeled_prior, rank_below_threshold=config.rank_below_threshold, **shared)
    return cls(net, num_classes, **shared)


def training_prior(labeled_targets: torch.Tensor, labeled_weights: np.ndarray | None) -> torch.Tensor:
    """The class distribution the loss sees: the soft targets weighted by how often each face is drawn."""
    weights = torch.ones(len(labeled_targets)) if labeled_weights is None else torch.from_numpy(labeled_weights).float()
    prior = (labeled_targets.float() * weights[:, None]).sum(dim=0) / weights.sum()
    return prior.clamp_min(1e-4)


def _save_model(run: _TrainingRun, net: LeafNet, scores: Scores, epoch: int) -> None:
    """``model.safetensors`` with its metadata and the validation confusion matrix of epoch ``epoch``."""
    config, state = run.config, run.state
    metadata = WeightsMetadata(
        model=net.config,
        training={
            "config": asdict(config),
            "epoch": epoch,
            "steps": state["step"],
            "train_seconds": round(state["elapsed_s"], 1),
            "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "precision": run.precision,
            "labeled": len(run.splits.labeled_images),
            "unlabeled": len(run.splits.unlabeled_images),
        },
        metrics={"validation": scores.to_dict()},
        data_hash=run.splits.data_hash,
    )
    save_weights(net, run.output / "model.safetensors", metadata)
    mixed = "" if run.initial is None else f" {config.weight_ensemble:g} + initial weights {1 - config.weight_ensemble:g}"
    plot_confusion(scores, run.output / "confusion.png",
                   f"{config.method} (EMA teacher{mixed}), validation, epoch {epoch}")
