"""A kill at any point of an epoch's saves leaves a whole checkpoint to resume from and a log without duplicates.

Each kill is simulated in-process: ``os.replace`` (every file of the run folder lands through it) raises before its
n-th call, so the run stops with that call's file and all later ones unwritten, as a SIGKILL would leave them.
"""

import json
import os
from pathlib import Path

import pytest

from leaf_fer.train.config import TrainConfig
from leaf_fer.train.trainer import train
from leaf_fer.train.weights import load_weights


class Killed(BaseException):
    """The simulated kill (a BaseException, so that no ``except Exception`` handler can stop it)."""


def tiny(train_npz, val, output):
    return TrainConfig(data=str(train_npz), val_data=str(val), epochs=2, iterations_per_epoch=2, batch_size=16,
                       max_train_samples=200, output=str(output), threads=1, precision="fp32")


def kill_before_replace(monkeypatch, call=None):
    """From now on, ``os.replace`` raises Killed at its ``call``-th use (0-based; never if None) and works until then;
    returns the names of the files it replaced."""
    real, calls = os.replace, []

    def replace(src, dst):
        if len(calls) == call:
            raise Killed(f"killed before replacing {dst}")
        calls.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def epochs_in(output: Path) -> tuple[list[int], list[int]]:
    history = json.loads((output / "checkpoint.json").read_text())["history"]
    logged = [json.loads(line)["epoch"] for line in (output / "train_log.jsonl").read_text().splitlines()]
    return [h["epoch"] for h in history], logged


def test_a_kill_before_any_file_lands_leaves_a_resumable_run_and_a_log_without_duplicates(
        train_npz, small_val, tmp_path, monkeypatch):
    replaced = kill_before_replace(monkeypatch)
    reference = train(tiny(train_npz, small_val, tmp_path / "reference"), progress=False)
    monkeypatch.undo()
    assert "checkpoint.json" in replaced
    losses = [h["train_loss"] for h in reference["history"]]
    for call in range(len(replaced)):
        output = tmp_path / f"killed_{call}"
        kill_before_replace(monkeypatch, call)
        with pytest.raises(Killed):
            train(tiny(train_npz, small_val, output), progress=False)
        monkeypatch.undo()
        resumed = train(tiny(train_npz, small_val, output), progress=False)
        where = f"killed before {replaced[call]} (replace #{call})"
        assert epochs_in(output) == ([1, 2], [1, 2]), where
        assert [h["train_loss"] for h in resumed["history"]] == losses, where
        assert [p.name for p in output.glob("checkpoint*.safetensors")] == [
            json.loads((output / "checkpoint.json").read_text())["tensors"]], where
        load_weights(output / "model.safetensors")


def test_a_checkpoint_of_the_earlier_layout_resumes(train_npz, small_val, tmp_path, monkeypatch):
    """Runs checkpointed before the tensor file was named by its hash (checkpoint.safetensors) still resume."""
    replaced = kill_before_replace(monkeypatch)
    train(tiny(train_npz, small_val, tmp_path / "reference"), progress=False)
    monkeypatch.undo()
    output = tmp_path / "run"
    kill_before_replace(monkeypatch, replaced.index("train_log.jsonl") + 1)
    with pytest.raises(Killed):
        train(tiny(train_npz, small_val, output), progress=False)
    monkeypatch.undo()
    state = json.loads((output / "checkpoint.json").read_text())
    (output / state.pop("tensors")).rename(output / "checkpoint.safetensors")
    (output / "checkpoint.json").write_text(json.dumps(state))
    (output / "train_log.jsonl").write_text((output / "train_log.jsonl").read_text() * 2)
    train(tiny(train_npz, small_val, output), progress=False)
    assert epochs_in(output) == ([1, 2], [1, 2])
    assert not (output / "checkpoint.safetensors").exists()
