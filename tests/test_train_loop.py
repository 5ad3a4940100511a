"""End-to-end training runs on a tiny slice of FER2013: every method trains, a killed run resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from leaf_fer.common import ConfigError
from leaf_fer.train.config import TrainConfig
from leaf_fer.train.trainer import resolve_precision, train
from leaf_fer.train.weights import load_weights


def tiny_config(train_npz, publictest_npz, output, **overrides):
    values = dict(data=str(train_npz), val_data=str(publictest_npz), epochs=1, iterations_per_epoch=3, batch_size=16,
                  unlabeled_batch_size=16, max_train_samples=400, output=str(output), threads=1)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("method,extra", [
    ("fixmatch", {}),
    ("leaf", {}),
    ("leaf", {"semantic_level": False, "instance_level": False, "category_level": False}),
])
def test_semi_supervised_methods_train_and_save(train_npz, publictest_npz, tmp_path, method, extra):
    config = tiny_config(train_npz, publictest_npz, tmp_path, method=method, label_fraction=0.1, **extra)
    result = train(config, progress=False)
    assert 0.0 <= result["best_accuracy"] <= 1.0
    net, metadata = load_weights(tmp_path / "model.safetensors")
    assert metadata.training["config"]["method"] == method
    assert metadata.training["precision"] == resolve_precision("auto", torch.device("cpu"))
    assert metadata.training["labeled"] < metadata.training["unlabeled"]
    assert net.config.semantic_level == extra.get("semantic_level", True)
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "confusion.png").stat().st_size > 0


def test_semi_supervised_needs_unlabeled(train_npz, publictest_npz, tmp_path):
    with pytest.raises(ValueError, match="needs unlabeled"):
        tiny_config(train_npz, publictest_npz, tmp_path, method="leaf", label_fraction=1.0).validate()


def test_all_labels_plus_unlabeled_crops(train_npz, publictest_npz, tmp_path):
    faces = np.load(publictest_npz)["images"][:40]
    np.savez(tmp_path / "crops.npz", images=faces)
    config = tiny_config(train_npz, publictest_npz, tmp_path / "run", method="leaf", label_fraction=1.0,
                         unlabeled_data=str(tmp_path / "crops.npz"), max_train_samples=100)
    train(config, progress=False)
    _, metadata = load_weights(tmp_path / "run" / "model.safetensors")
    assert metadata.training["labeled"] > 80
    assert metadata.training["unlabeled"] == 40 + 100 - metadata.training["labeled"]


def test_killed_run_resumes(train_npz, publictest_npz, tmp_path):
    output = tmp_path / "run"
    args = [sys.executable, "-m", "leaf_fer", "train", "--data", str(train_npz), "--val-data", str(publictest_npz),
            "--epochs", "4", "--iterations-per-epoch", "4", "--batch-size", "16", "--max-train-samples", "300",
            "--threads", "1", "--output", str(output), "--no-progress"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state_file = output / "checkpoint.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if state_file.is_file() and json.loads(state_file.read_text())["epoch"] >= 1:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stdout.read()
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state_file.read_text())["epoch"]
    assert 1 <= killed_at < 4

    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming {output} at epoch {killed_at}/4" in resumed.stdout
    history = json.loads(state_file.read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    logged = [json.loads(line)["epoch"] for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert logged[-4:] == [1, 2, 3, 4][-len(logged[-4:]):] and logged[-1] == 4
    load_weights(output / "model.safetensors")

    changed = subprocess.run(args[:-1] + ["--lr", "0.01", "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert changed.returncode == 2 and "different configuration" in changed.stderr


def test_evaluate_cli_on_both_label_formats(publictest_npz, tmp_path):
    data = np.load(publictest_npz)
    seven = tmp_path / "seven.npz"
    np.savez(seven, images=data["images"][:300], labels=data["labels"][:300])
    out = tmp_path / "scores.json"
    result = subprocess.run([sys.executable, "-m", "leaf_fer", "evaluate", "--data", str(seven), "--json", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())
    assert scores["protocol"] == "FER2013 labels" and "contempt" not in scores["classes"] and len(scores["classes"]) == 7
    assert scores["count"] == 300
    missing = subprocess.run([sys.executable, "-m", "leaf_fer", "evaluate", "--data", str(tmp_path / "none.npz")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "not found" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_extra_sets_are_drawn_by_weight_and_fine_tuning_starts_from_weights(train_npz, publictest_npz, tmp_path):
    from leaf_fer.train.trainer import prepare_splits, training_prior

    folder = tmp_path / "extra" / "disgust"
    folder.mkdir(parents=True)
    for i, face in enumerate(np.load(publictest_npz)["images"][:20]):
        import cv2

        cv2.imwrite(str(folder / f"{i}.png"), face)
    config = tiny_config(train_npz, publictest_npz, tmp_path / "run", extra_data=[f"{tmp_path / 'extra'}@5"],
                         max_train_samples=100, logit_adjustment=1.0, domain_augment=True,
                         domain_augment_main=False)
    splits = prepare_splits(config)
    main_rows = len(splits.labeled_images) - 20
    assert main_rows > 90 and splits.labeled_weights.tolist() == [1.0] * main_rows + [5.0] * 20
    assert splits.labeled_main.tolist() == [True] * main_rows + [False] * 20
    prior = training_prior(splits.labeled_targets, splits.labeled_weights)
    assert prior[5] > 0.45, "the 20 disgust faces drawn 5x each are half of what the loss sees"
    train(config, progress=False)
    tuned = tiny_config(train_npz, publictest_npz, tmp_path / "tuned", init_weights=str(tmp_path / "run" / "model.safetensors"),
                        lr=1e-9, warmup_epochs=0.0, distill_initial=0.5)
    train(tuned, progress=False)
    anchored = tiny_config(train_npz, publictest_npz, tmp_path / "anchored", max_train_samples=100,
                           init_weights=str(tmp_path / "run" / "model.safetensors"), anchor_data=[f"{folder}@0.5"])
    splits = prepare_splits(anchored)
    assert splits.labeled_anchored.tolist() == [False] * main_rows + [True] * 20
    assert splits.labeled_weights[-20:].tolist() == [0.5] * 20 and (splits.labeled_hard[-20:] == -1).all()
    targets, weights = splits.annotated()
    assert len(targets) == len(weights) == main_rows, "anchor faces are left out of the class prior"
    train(anchored, progress=False)
    before, _ = load_weights(tmp_path / "run" / "model.safetensors")
    after, _ = load_weights(tmp_path / "tuned" / "model.safetensors")
    weight = "classifier.weight"
    assert torch.allclose(before.state_dict()[weight], after.state_dict()[weight], atol=1e-4)
    other = tiny_config(train_npz, publictest_npz, tmp_path / "xs", backbone="resnet-xs",
                        init_weights=str(tmp_path / "run" / "model.safetensors"))
    with pytest.raises(ValueError, match="differs from this run's"):
        train(other, progress=False)
    with pytest.raises(ValueError, match="PATH@WEIGHT"):
        tiny_config(train_npz, publictest_npz, tmp_path, extra_data=["x@many"]).validate()


def test_logit_adjustment_shifts_the_training_loss_only():
    from leaf_fer.train.algorithms import Supervised
    from leaf_fer.train.model import LeafNet, ModelConfig

    net = LeafNet(ModelConfig(backbone="resnet-xs"))
    prior = torch.tensor([0.5, 0.3, 0.1, 0.04, 0.03, 0.01, 0.01, 0.01])
    plain = Supervised(net, 8, autocast=False)
    adjusted = Supervised(net, 8, autocast=False, logit_adjustment=prior.log())
    logits = torch.zeros(4, 8)
    targets = torch.eye(8)[[0, 0, 5, 6]]
    assert adjusted.labeled_loss(logits, targets) > plain.labeled_loss(logits, targets)
    rare = torch.eye(8)[[5]]
    common = torch.eye(8)[[0]]
    assert adjusted.labeled_loss(logits[:1], rare) - plain.labeled_loss(logits[:1], rare) > \
        adjusted.labeled_loss(logits[:1], common) - plain.labeled_loss(logits[:1], common)


def test_keep_last_writes_the_final_model_also_for_a_finished_run(train_npz, publictest_npz, tmp_path):
    from safetensors.torch import load_file

    config = tiny_config(train_npz, publictest_npz, tmp_path / "run", epochs=3, lr=0.05)
    best = train(config, progress=False)
    assert load_weights(tmp_path / "run" / "model.safetensors")[1].training["epoch"] == best["best_epoch"]
    config.keep = "last"
    last = train(config, progress=False)
    assert last["kept_epoch"] == 3 and last["history"] == best["history"], "a finished run is not trained again"
    saved, metadata = load_weights(tmp_path / "run" / "model.safetensors")
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    teacher = {k[len("teacher."):]: v for k, v in load_file(str(tmp_path / "run" / state["tensors"])).items()
               if k.startswith("teacher.")}
    assert metadata.training["epoch"] == 3
    assert all(torch.equal(tensor, teacher[name]) for name, tensor in saved.state_dict().items())
    assert metadata.metrics["validation"]["accuracy"] == pytest.approx(last["kept_accuracy"])
    config.keep = "best"
    with pytest.raises(ConfigError, match="keep last.*were not kept"):
        train(config, progress=False)
    assert load_weights(tmp_path / "run" / "model.safetensors")[1].training["epoch"] == 3, "the last model stays"
    fresh = train(tiny_config(train_npz, publictest_npz, tmp_path / "fresh", epochs=2, keep="last"), progress=False)
    assert fresh["kept_epoch"] == 2 and fresh["kept_accuracy"] == fresh["history"][-1]["val_accuracy"]
    assert load_weights(tmp_path / "fresh" / "model.safetensors")[1].training["epoch"] == 2


def test_mixup_blends_faces_and_targets_keeping_each_face_dominant():
    from leaf_fer.train.algorithms import Batch, Supervised
    from leaf_fer.train.model import LeafNet, ModelConfig

    net = LeafNet(ModelConfig(backbone="resnet-xs"))
    identity = lambda x: x  # noqa: E731
    images = torch.rand(64, 1, 48, 48)
    batch = Batch(images, torch.eye(8)[torch.arange(64) % 8])
    plain_images, plain_targets = Supervised(net, 8, labeled_view=identity).labeled_inputs(batch)
    assert torch.equal(plain_images, images) and torch.equal(plain_targets, batch.targets)
    torch.manual_seed(0)
    mixed_images, mixed_targets = Supervised(net, 8, labeled_view=identity, mixup=0.4).labeled_inputs(batch)
    torch.testing.assert_close(mixed_targets.sum(dim=1), torch.ones(64))
    own = mixed_targets[torch.arange(64), torch.arange(64) % 8]
    assert (own >= 0.5).all() and (own < 0.99).any(), "each face keeps the larger share; some are blended"
    assert mixed_images.min() >= 0 and mixed_images.max() <= 1 and not torch.equal(mixed_images, images)


def test_main_faces_take_their_own_view_and_move_their_targets_toward_the_initial_model():
    from leaf_fer.train.algorithms import Batch, Supervised
    from leaf_fer.train.augment import weak_augment
    from leaf_fer.train.model import LeafNet, ModelConfig

    torch.manual_seed(0)
    net, initial = LeafNet(ModelConfig(backbone="resnet-xs")), LeafNet(ModelConfig(backbone="resnet-xs"))
    blank = lambda x: torch.zeros_like(x)  # noqa: E731
    main = torch.arange(8) < 3
    batch = Batch(torch.full((8, 1, 48, 48), 0.5), torch.eye(8), main)
    images, targets = Supervised(net, 8, autocast=False, labeled_view=blank, main_view=weak_augment).labeled_inputs(batch)
    torch.testing.assert_close(images[:3], torch.full((3, 1, 48, 48), 0.5), msg="a flat face stays flat under the weak view")
    assert (images[3:] == 0).all() and torch.equal(targets, batch.targets)
    distilling = Supervised(net, 8, autocast=False, labeled_view=blank, distill_from=initial, distill_weight=0.25)
    images, targets = distilling.labeled_inputs(batch)
    remembered = torch.softmax(initial.eval()(distilling.normalise(images)), dim=-1)
    torch.testing.assert_close(targets[:3], 0.75 * torch.eye(8)[:3] + 0.25 * remembered[:3])
    assert torch.equal(targets[3:], batch.targets[3:]), "the extra data's faces keep their labels"
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    anchored = Batch(batch.images, batch.targets, main, torch.arange(8) >= 6)
    images, targets = distilling.labeled_inputs(anchored)
    remembered = torch.softmax(initial.eval()(distilling.normalise(images)), dim=-1)
    torch.testing.assert_close(targets[6:], remembered[6:], msg="anchor faces take the initial model's predictions")
    assert torch.equal(targets[3:6], batch.targets[3:6])


def test_weight_ensemble_saves_the_validated_mix_of_teacher_and_initial_weights(train_npz, publictest_npz, tmp_path):
    from safetensors.torch import load_file

    from leaf_fer.train.weights import mix_weights

    train(tiny_config(train_npz, publictest_npz, tmp_path / "start"), progress=False)
    start = tmp_path / "start" / "model.safetensors"
    config = tiny_config(train_npz, publictest_npz, tmp_path / "mixed", init_weights=str(start), weight_ensemble=0.25,
                         lr=0.05)
    train(config, progress=False)
    initial, _ = load_weights(start)
    saved, metadata = load_weights(tmp_path / "mixed" / "model.safetensors")
    state = json.loads((tmp_path / "mixed" / "checkpoint.json").read_text())
    tensors = load_file(str(tmp_path / "mixed" / state["tensors"]))
    teacher, _ = load_weights(start)
    teacher.load_state_dict({k[len("teacher."):]: v for k, v in tensors.items() if k.startswith("teacher.")})
    expected = mix_weights(teacher, initial, 0.25).state_dict()
    weight = "classifier.weight"
    assert not torch.allclose(teacher.state_dict()[weight], initial.state_dict()[weight], atol=1e-4)
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(tensor, expected[name])
    config.weight_ensemble = 0.5
    with pytest.raises(ConfigError, match="weight_ensemble 0.25.*weight_ensemble 0.5.* were not kept"):
        train(config, progress=False)
    assert metadata.training["config"]["weight_ensemble"] == 0.25
    config.keep, config.weight_ensemble = "last", 1.0
    train(config, progress=False)
    unmixed, _ = load_weights(tmp_path / "mixed" / "model.safetensors")
    assert unmixed.state_dict()[weight].equal(teacher.state_dict()[weight]), "a finished run rewrites its model only"
    assert mix_weights(teacher, initial, 1.0).state_dict()[weight].equal(teacher.state_dict()[weight])
    with pytest.raises(ValueError, match="init-weights"):
        tiny_config(train_npz, publictest_npz, tmp_path, weight_ensemble=0.5).validate()
    with pytest.raises(ValueError, match="weight ensemble"):
        tiny_config(train_npz, publictest_npz, tmp_path, init_weights=str(start), weight_ensemble=0.0).validate()


def test_soup_averages_runs_of_one_initial_model_before_the_mix(train_npz, publictest_npz, tmp_path):
    from safetensors.torch import load_file

    from leaf_fer.train.weights import average_weights, mix_weights

    train(tiny_config(train_npz, publictest_npz, tmp_path / "start"), progress=False)
    start = str(tmp_path / "start" / "model.safetensors")
    for seed in (1, 2):
        train(tiny_config(train_npz, publictest_npz, tmp_path / f"seed{seed}", init_weights=start, seed=seed, lr=0.05),
              progress=False)
    other = str(tmp_path / "seed2" / "model.safetensors")
    config = tiny_config(train_npz, publictest_npz, tmp_path / "seed1", init_weights=start, seed=1, lr=0.05,
                         keep="last", weight_ensemble=0.8, soup_with=[other])
    train(config, progress=False)
    one, two, initial = (load_weights(tmp_path / name / "model.safetensors")[0] for name in ("seed1", "seed2", "start"))
    teacher, _ = load_weights(start)
    state = json.loads((tmp_path / "seed1" / "checkpoint.json").read_text())
    tensors = load_file(str(tmp_path / "seed1" / state["tensors"]))
    teacher.load_state_dict({k[len("teacher."):]: v for k, v in tensors.items() if k.startswith("teacher.")})
    expected = mix_weights(average_weights([teacher, two]), initial, 0.8).state_dict()
    assert not torch.allclose(teacher.state_dict()["classifier.weight"], two.state_dict()["classifier.weight"])
    for name, tensor in one.state_dict().items():
        torch.testing.assert_close(tensor, expected[name])
    mixed = tiny_config(train_npz, publictest_npz, tmp_path / "seed2", init_weights=start, seed=2, lr=0.05,
                        keep="last", soup_with=[str(tmp_path / "seed1" / "model.safetensors")])
    with pytest.raises(ConfigError, match="a mixed model"):
        train(mixed, progress=False)
    mixed.soup_with = [other]
    with pytest.raises(ConfigError, match="this run's own model"):
        train(mixed, progress=False)
    foreign = tiny_config(train_npz, publictest_npz, tmp_path / "foreign", init_weights=other, soup_with=[start])
    with pytest.raises(ConfigError, match="not fine-tuned from"):
        train(foreign, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here): augmentations on a CUDA batch")
def test_augmentations_stay_on_the_batch_device():
    from leaf_fer.train.augment import domain_augment, strong_augment, weak_augment

    x = torch.rand(8, 1, 48, 48, device="cuda")
    for augment in (weak_augment, strong_augment, domain_augment):
        assert augment(x).device == x.device
