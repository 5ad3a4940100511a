"""The semi-supervised study in research/: the ablation harness (training, merging, parallel workers, its command
line), its report tables, and the budget and pseudo-label report scripts."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from leaf_fer.train.config import TrainConfig
from leaf_fer.train.trainer import resolve_precision, train
from leaf_fer.train.weights import load_weights
from research import ssl_budget
from research.ablation import (
    DEFAULT_VARIANTS,
    LAST_EPOCHS,
    LATE_PAIRED_KEY,
    LEVEL_KEY,
    LEVEL_LATE_KEY,
    PAIRED_KEY,
    SSL_LATE_PAIRED_KEY,
    SSL_PAIRED_KEY,
    budget_of,
    late_accuracy,
    markdown_table,
    precision_note,
    run_ablation,
    summarise,
    variant_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def protocol_config(train_npz, publictest_npz, output, **overrides):
    """A tiny training run on a 400-face slice of FER2013, one thread; the overrides set the method and budget."""
    values = dict(data=str(train_npz), val_data=str(publictest_npz), epochs=1, iterations_per_epoch=3, batch_size=16,
                  unlabeled_batch_size=16, max_train_samples=400, output=str(output), threads=1)
    values.update(overrides)
    return TrainConfig(**values)


def test_ablation_harness_reports_every_run(train_npz, publictest_npz, tmp_path):
    base = protocol_config(train_npz, publictest_npz, tmp_path, method="leaf", label_fraction=0.1, epochs=1,
                           iterations_per_epoch=2)
    report = run_ablation(base, ["supervised", "leaf w/o category"], [0, 1], tmp_path / "ablation", progress=False)
    assert [(r["variant"], r["seed"]) for r in report["runs"]] == [
        ("supervised", 0), ("leaf w/o category", 0), ("supervised", 1), ("leaf w/o category", 1)]
    assert set(report["summary"]) == {"supervised", "leaf w/o category"}
    assert all(s["n"] == 2 for s in report["summary"].values())
    assert {r["precision"] for r in report["runs"]} == {resolve_precision("auto", torch.device("cpu"))}
    _, metadata = load_weights(tmp_path / "ablation" / "leaf_wo_category_seed1" / "model.safetensors")
    assert metadata.training["config"]["category_level"] is False and metadata.training["config"]["seed"] == 1
    table = (tmp_path / "ablation" / "results.md").read_text()
    assert "| leaf w/o category |" in table and "| supervised |" in table
    accuracy = {(r["variant"], r["seed"]): 100 * r["accuracy"] for r in report["runs"]}
    deltas = [accuracy["leaf w/o category", seed] - accuracy["supervised", seed] for seed in (0, 1)]
    paired = report["summary"]["leaf w/o category"]["vs_supervised"]
    assert paired["per_seed"] == pytest.approx(deltas) and paired["ahead"] == sum(d > 0 for d in deltas)
    assert "vs_supervised" not in report["summary"]["supervised"]
    recall = metadata.metrics["validation"]["per_class_recall"]
    assert report["runs"][3]["per_class_recall"] == recall and list(recall) == list(metadata.model.classes)
    runs_recall = [r["per_class_recall"]["happiness"] for r in report["runs"] if r["variant"] == "leaf w/o category"]
    assert report["summary"]["leaf w/o category"]["recall_mean"]["happiness"] == pytest.approx(100 * np.mean(runs_recall))
    assert "| leaf w/o category | 2 | " in table.split("Recall per class")[1]
    assert f"{deltas[0]:+.2f}, {deltas[1]:+.2f})" in table
    assert json.loads((tmp_path / "ablation" / "results.json").read_text())["runs"][3]["history"][0]["epoch"] == 1
    for png in ("results.png", "learning.png"):
        assert (tmp_path / "ablation" / png).stat().st_size > 1000
    with pytest.raises(ValueError, match="unknown variant"):
        run_ablation(base, ["leaf w/o everything"], [0], tmp_path / "ablation", progress=False)


def test_ablation_merges_earlier_reports_of_the_same_protocol(train_npz, publictest_npz, tmp_path, capsys):
    base = protocol_config(train_npz, publictest_npz, tmp_path, method="leaf", label_fraction=0.1, epochs=1,
                           iterations_per_epoch=2)
    first = run_ablation(base, ["supervised"], [0], tmp_path / "first", progress=False)
    earlier = tmp_path / "first" / "results.json"
    report = run_ablation(base, ["fixmatch", "supervised"], [0], tmp_path / "second", progress=False, merge=[earlier])
    assert [(r["variant"], r["seed"]) for r in report["runs"]] == [("supervised", 0), ("fixmatch", 0)]
    supervised = report["runs"][0]["accuracy"]
    assert supervised == first["runs"][0]["accuracy"]
    printed = capsys.readouterr().out
    assert "supervised, seed 0: " in printed and "(reproduced;" in printed and "DIFFERS" not in printed
    merged_only = run_ablation(base, ["fixmatch"], [0], tmp_path / "third", progress=False, merge=[earlier])
    assert [(r["variant"], r["seed"]) for r in merged_only["runs"]] == [("supervised", 0), ("fixmatch", 0)]
    paired = merged_only["summary"]["fixmatch"]["vs_supervised"]
    assert paired["per_seed"] == pytest.approx([100 * (merged_only["runs"][1]["accuracy"] - supervised)])
    with pytest.raises(ValueError, match="another protocol"):
        run_ablation(replace(base, lr=1e-3), ["fixmatch"], [0], tmp_path / "fourth", progress=False, merge=[earlier])
    with pytest.raises(ValueError, match="not found"):
        run_ablation(base, ["fixmatch"], [0], tmp_path / "fourth", progress=False, merge=[tmp_path / "none.json"])
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps({**json.loads(earlier.read_text()), "runs": [{"variant": "leaf", "seed": 0}]}))
    with pytest.raises(ValueError, match="runs without accuracy, macro_f1"):
        run_ablation(base, ["fixmatch"], [0], tmp_path / "fourth", progress=False, merge=[truncated])
    assert not (tmp_path / "fourth").exists()


def test_ablation_runs_in_parallel_workers(train_npz, publictest_npz, tmp_path):
    base = protocol_config(train_npz, publictest_npz, tmp_path, method="leaf", label_fraction=0.1, epochs=1,
                           iterations_per_epoch=2, threads=0)
    report = run_ablation(base, ["supervised", "fixmatch"], [0, 1], tmp_path / "parallel", progress=False, jobs=2)
    assert [(r["variant"], r["seed"]) for r in report["runs"]] == [
        ("supervised", 0), ("fixmatch", 0), ("supervised", 1), ("fixmatch", 1)]
    _, metadata = load_weights(tmp_path / "parallel" / "fixmatch_seed1" / "model.safetensors")
    assert metadata.training["config"]["threads"] == max(1, os.cpu_count() // 2)


def test_unlabeled_faces_keep_their_true_labels_for_diagnostics_only(train_npz, publictest_npz, tmp_path):
    from leaf_fer.train.config import CLASS_SETS
    from leaf_fer.train.data import load_npz, targets_for
    from leaf_fer.train.trainer import prepare_splits

    faces = np.load(publictest_npz)["images"][:30]
    np.savez(tmp_path / "crops.npz", images=faces)
    config = protocol_config(train_npz, publictest_npz, tmp_path / "run", method="leaf", label_fraction=0.25,
                             unlabeled_data=str(tmp_path / "crops.npz"))
    splits = prepare_splits(config)
    assert len(splits.unlabeled_hard) == len(splits.unlabeled_images)
    assert (splits.unlabeled_hard[-30:] == -1).all()
    everything = load_npz(train_npz)
    subset = everything.subset(np.random.default_rng(config.seed).permutation(len(everything))[:400])
    hard = targets_for(subset, CLASS_SETS["ferplus"]).hard
    counts = np.bincount(hard[hard >= 0], minlength=8)
    together = np.concatenate([splits.labeled_hard.numpy(), splits.unlabeled_hard[:-30]])
    assert (np.bincount(together[together >= 0], minlength=8) == counts).all()

    train(config, progress=False)
    script = [sys.executable, "-m", "research.pseudo_labels"]
    done = subprocess.run(script + [str(tmp_path / "run"), "--output", str(tmp_path / "report")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [report] = json.loads((tmp_path / "report" / "pseudo_labels.json").read_text())
    assert report["unlabeled_faces"] == int((splits.unlabeled_hard >= 0).sum())
    assert sum(c["faces"] for c in report["per_class"].values()) == report["unlabeled_faces"]
    assert 0.0 <= report["pass_rate"] <= 1.0 and 0.0 <= report["accuracy"] <= 1.0
    assert 1.0 <= report["positive_set_size_below"] <= 3.0
    assert report["true_class_in_positive_set_below"] >= report["accuracy_below_thresholds"]
    assert (tmp_path / "report" / "pseudo_labels.png").stat().st_size > 0
    missing = subprocess.run(script + [str(tmp_path / "nothing")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert missing.returncode != 0 and "no model.safetensors" in missing.stderr


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the workers through /proc (Linux)")
def test_killing_the_ablation_harness_ends_its_workers(train_npz, publictest_npz, tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(f"data: {train_npz}\nval_data: {publictest_npz}\nlabel_fraction: 0.1\nepochs: 50\n"
                      "iterations_per_epoch: 50\nbatch_size: 16\nunlabeled_batch_size: 16\nmax_train_samples: 300\n")
    args = [sys.executable, "-m", "research.ablation", "--config", str(config), "--variants", "supervised", "leaf",
            "--seeds", "0", "--jobs", "2", "--output", str(tmp_path / "ablation"), "--no-progress"]
    harness = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def training_workers() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if parent == harness.pid and b"spawn_main" in command:
                found.append(int(pid))
        return found

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    logs = [tmp_path / "ablation" / name / "train_log.jsonl" for name in ("supervised_seed0", "leaf_seed0")]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and harness.poll() is None and not all(log.is_file() for log in logs):
        time.sleep(0.5)
    assert harness.poll() is None, "the harness ended before it could be killed: " + harness.stdout.read()
    assert all(log.is_file() for log in logs), "the workers never started training"
    started = training_workers()
    assert len(started) == 2
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    deadline = time.monotonic() + 30
    alive = started
    while time.monotonic() < deadline and alive:
        alive = [pid for pid in started if running(pid)]
        time.sleep(0.5)
    assert not alive, f"workers {alive} kept training after the harness was killed"


def test_paired_difference_over_the_last_epochs_ignores_the_best_epoch():
    def run(variant, seed, curve, best):
        return {"variant": variant, "seed": seed, "accuracy": best, "macro_f1": 0.5,
                "history": [{"epoch": e + 1, "val_accuracy": a, "mask": None} for e, a in enumerate(curve)]}

    flat = [0.80] * (LAST_EPOCHS + 5)
    spiky = [0.70] * 5 + [0.82] * (LAST_EPOCHS - 1) + [0.90]
    runs = [run("supervised", 0, spiky, 0.90), run("leaf", 0, flat, 0.80), run("leaf", 1, flat, 0.80),
            run("supervised", 2, [0.8] * (LAST_EPOCHS - 1), 0.8)]
    assert late_accuracy(runs[0]) == pytest.approx((0.82 * (LAST_EPOCHS - 1) + 0.90) / LAST_EPOCHS)
    assert late_accuracy(runs[3]) is None
    summary = summarise(runs)
    assert summary["leaf"]["vs_supervised"]["per_seed"] == pytest.approx([-10.0])
    late = summary["leaf"][LATE_PAIRED_KEY]
    assert late["seeds"] == [0] and late["per_seed"] == pytest.approx([100 * (0.80 - late_accuracy(runs[0]))])
    table = markdown_table({"label_fraction": 0.1, "seeds": [0, 1, 2], "summary": summary, "runs": runs,
                            "budget": {"backbone": "resnet-xs", "epochs": 15, "iterations_per_epoch": 10,
                                       "batch_size": 32, "unlabeled_batch_size": 32}})
    assert f"| {late['per_seed'][0]:+.2f} (seed 0 only) |" in table and "| -10.00 (seed 0 only) |" in table
    assert "| leaf | 80.00 ± 0.00 | 50.00 ± 0.00 | -10.00 (seed 0 only) |" in table
    one_seed = markdown_table({"label_fraction": 0.1, "seeds": [0], "summary": summarise(runs[:1]), "runs": runs[:1],
                               "budget": {"backbone": "resnet-xs", "epochs": 15, "iterations_per_epoch": 10,
                                          "batch_size": 32, "unlabeled_batch_size": 32}})
    assert "| supervised | 90.00 | 50.00 | — | — |" in one_seed, "one seed has no spread to show"


def flat_run(variant, seed, best, late):
    """An ablation run: accuracy ``best`` at the best epoch, ``late`` on every one of the last epochs."""
    return {"variant": variant, "seed": seed, "accuracy": best, "macro_f1": 0.5,
            "history": [{"epoch": e + 1, "val_accuracy": late, "mask": None} for e in range(LAST_EPOCHS)]}


def ablation_table(summary):
    return markdown_table({"label_fraction": 0.1, "seeds": [0, 1, 2], "summary": summary, "runs": [],
                           "budget": {"backbone": "resnet-xs", "epochs": 10, "iterations_per_epoch": 10,
                                      "batch_size": 32, "unlabeled_batch_size": 32}})


def test_leaf_variants_are_also_paired_with_fixmatch_seed_by_seed():
    runs = [flat_run("supervised", 0, 0.80, 0.79), flat_run("fixmatch", 0, 0.82, 0.81),
            flat_run("fixmatch", 1, 0.83, 0.80), flat_run("leaf + ranking below threshold", 0, 0.83, 0.815),
            flat_run("leaf + ranking below threshold", 1, 0.82, 0.82), flat_run("leaf", 2, 0.84, 0.83),
            flat_run("supervised on all labels", 0, 0.87, 0.86)]
    summary = summarise(runs)
    ranked = summary["leaf + ranking below threshold"]
    assert ranked[SSL_PAIRED_KEY]["per_seed"] == pytest.approx([1.0, -1.0])
    assert ranked[SSL_PAIRED_KEY]["ahead"] == 1
    assert ranked[SSL_LATE_PAIRED_KEY]["per_seed"] == pytest.approx([0.5, 2.0])
    assert SSL_PAIRED_KEY not in summary["leaf"], "leaf has no fixmatch run on its seed"
    assert all(SSL_PAIRED_KEY not in summary[v] for v in ("supervised", "fixmatch", "supervised on all labels"))
    table = ablation_table(summary)
    assert "| leaf + ranking below threshold | +0.00 ± 1.00 (ahead on 1 of 2 seeds: +1.00, -1.00) | " in table
    assert "+1.25 ± 0.75 (ahead on 2 of 2 seeds: +0.50, +2.00) |" in table


def test_each_level_is_measured_as_leaf_minus_the_variant_without_it():
    runs = [flat_run("leaf", 0, 0.84, 0.83), flat_run("leaf", 1, 0.82, 0.81),
            flat_run("leaf w/o category", 0, 0.83, 0.80), flat_run("leaf w/o category", 1, 0.83, 0.82),
            flat_run("leaf w/o semantic", 2, 0.80, 0.80), flat_run("leaf + ranking below threshold", 0, 0.85, 0.85)]
    summary = summarise(runs)
    assert summary["leaf w/o category"][LEVEL_KEY]["per_seed"] == pytest.approx([1.0, -1.0])
    assert summary["leaf w/o category"][LEVEL_LATE_KEY]["per_seed"] == pytest.approx([3.0, -1.0])
    assert LEVEL_KEY not in summary["leaf w/o semantic"], "no leaf run on its seed"
    assert all(LEVEL_KEY not in summary[v] for v in ("leaf", "leaf + ranking below threshold"))
    combined = summarise(runs + [flat_run("leaf w/o instance + ranking below threshold", 0, 0.86, 0.86)])
    assert LEVEL_KEY not in combined["leaf w/o instance + ranking below threshold"], "changes more than one level"
    table = ablation_table(summary)
    assert ("| leaf w/o category | +0.00 ± 1.00 (ahead on 1 of 2 seeds: +1.00, -1.00) | "
            "+1.00 ± 2.00 (ahead on 1 of 2 seeds: +3.00, -1.00) |") in table
    assert "| leaf w/o semantic |" not in table.split("What each level adds")[1]


@pytest.mark.parametrize("variant, counterpart, method, fraction, run_name", [
    ("supervised w/o instance", "supervised", "supervised", 0.1, "supervised_wo_instance_seed3"),
    ("supervised on all labels w/o instance", "supervised on all labels", "supervised", 1.0,
     "supervised_on_all_labels_wo_instance_seed3"),
    ("fixmatch w/o instance", "fixmatch", "fixmatch", 0.1, "fixmatch_wo_instance_seed3"),
])
def test_baselines_without_the_instance_level_are_opt_in_change_only_the_network_and_pair_with_supervised(
        tmp_path, variant, counterpart, method, fraction, run_name):
    base = TrainConfig(label_fraction=0.1, instance_level=True)
    without_block = variant_config(base, variant, 3, tmp_path)
    with_block = variant_config(base, counterpart, 3, tmp_path)
    assert (without_block.method, without_block.label_fraction, without_block.instance_level,
            without_block.seed) == (method, fraction, False, 3)
    assert Path(without_block.output).name == run_name
    assert with_block.instance_level
    assert replace(without_block, instance_level=True, output=with_block.output) == with_block
    assert variant not in DEFAULT_VARIANTS
    summary = summarise([flat_run("supervised", 3, 0.80, 0.79), flat_run("fixmatch", 3, 0.82, 0.81),
                         flat_run("leaf", 3, 0.84, 0.83), flat_run(variant, 3, 0.81, 0.81)])
    without = summary[variant]
    assert without[PAIRED_KEY]["per_seed"] == pytest.approx([1.0])
    assert LEVEL_KEY not in without and SSL_PAIRED_KEY not in without, "a baseline, not a LEAF ablation"


def test_report_only_rewrites_a_results_json_without_training(tmp_path):

    protocol = {"data": "absent.npz", "label_fraction": 0.1, "epochs": 12, "iterations_per_epoch": 5}
    config = tmp_path / "protocol.yaml"
    config.write_text(yaml.safe_dump(protocol))
    base = TrainConfig.from_dict(protocol)
    history = [{"epoch": e + 1, "val_accuracy": 0.8, "mask": 0.5} for e in range(LAST_EPOCHS)]
    runs = [{"variant": variant, "seed": 0, "accuracy": accuracy, "macro_f1": 0.5, "history": history}
            for variant, accuracy in (("supervised", 0.80), ("fixmatch", 0.81), ("leaf", 0.83))]
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"label_fraction": 0.1, "budget": budget_of(base), "runs": runs, "summary": {}}))
    command = [sys.executable, "-m", "research.ablation", "--config", str(config), "--report-only",
               "--output", str(tmp_path / "report")]
    result = subprocess.run(command + ["--merge", str(earlier)], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    assert report["summary"]["leaf"]["vs_fixmatch"]["per_seed"] == pytest.approx([2.0])
    assert "LEAF against fixmatch" in (tmp_path / "report" / "results.md").read_text()
    assert (tmp_path / "report" / "results.png").is_file() and (tmp_path / "report" / "learning.png").is_file()
    assert not list(tmp_path.glob("report/*_seed*")), "a run was trained"
    nothing = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2 and "--merge" in nothing.stderr and len(nothing.stderr.strip().splitlines()) == 1


def test_ssl_budget_report_gives_intervals_and_the_change_between_budgets(tmp_path):
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert ssl_budget.t_critical(df) == pytest.approx(value, abs=2e-3)
    assert ssl_budget.mean_interval([1.0]) is None

    def report(epochs, leads):
        runs = []
        for seed, lead in enumerate(leads):
            for variant, accuracy in (("supervised", 0.80), ("fixmatch", 0.80), ("leaf", 0.80 + lead / 100)):
                history = [{"epoch": e + 1, "val_accuracy": accuracy - (0.01 if e == 0 else 0.0)} for e in range(4)]
                runs.append({"variant": variant, "seed": seed, "accuracy": accuracy, "history": history})
        path = tmp_path / f"results_{epochs}.json"
        path.write_text(json.dumps({"label_fraction": 0.1, "runs": runs,
                                    "budget": {"epochs": epochs, "iterations_per_epoch": 10}}))
        return path

    later, earlier = report(20, [2.0, 4.0, 6.0]), report(10, [1.0, 2.0, 3.0])
    result = subprocess.run([sys.executable, "-m", "research.ssl_budget", str(later), str(earlier),
                             "--output", str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "out" / "budget.md").read_text()
    assert "| 100 | 3 | 80.00 | leaf | 82.00 | +2.00 (+1.00, +2.00, +3.00) | ± 2.48 |" in table
    rows = json.loads((tmp_path / "out" / "budget.json").read_text())["head_to_head"]
    assert [(r["steps"], r["method"], r["rival"]) for r in rows] == [(100, "leaf", "fixmatch"), (200, "leaf", "fixmatch")]
    welch_df = (1 / 3 + 4 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)
    assert rows[1]["change"] == pytest.approx(2.0)
    assert rows[1]["change_interval_95"] == pytest.approx(ssl_budget.t_critical(welch_df) * (5 / 3) ** 0.5, rel=1e-6)
    assert rows[0]["change"] is None and "+2.00 ± " in table and "(from 100)" in table
    gaps = ssl_budget.training_gap_rows(ssl_budget.load_reports([earlier]), window_steps=20)
    assert [(r["method"], r["rival"]) for r in gaps] == [("leaf", "supervised"), ("fixmatch", "supervised")]
    assert [w["until_step"] for w in gaps[0]["windows"]] == [20, 40]
    assert [w["mean"] for w in gaps[0]["windows"]] == pytest.approx([2.0, 2.0])
    assert [w["seed_spread"] for w in gaps[0]["windows"]] == pytest.approx([1.0, 1.0])
    assert gaps[1]["mean_curve"] == pytest.approx([0.0] * 4)
    assert (tmp_path / "out" / "training_gaps.png").stat().st_size > 0


def test_report_names_the_runs_trained_in_another_precision():
    runs = [flat_run("leaf", 0, 0.84, 0.83), {**flat_run("leaf", 1, 0.82, 0.81), "precision": "fp32"},
            {**flat_run("fixmatch", 0, 0.82, 0.81), "precision": "bf16"}]
    assert precision_note(runs)[0] == ("Trained in fp32 (a CPU without native bf16): leaf seed 1; every other run in "
                                       "bf16 autocast.")
    assert precision_note(runs[:1]) == [] and precision_note(runs[1:2]) == []
