"""``annotate`` over worker processes, in segments and on a real two-node Ray cluster: the same outputs as one
worker, failures isolated, dead workers retried, nothing published half-written."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from realtime_media import MEDIA, csv_rows, frame_count, media_file

from leaf_fer.realtime import commands, parallel, segments
from leaf_fer.realtime.annotate import WORK_DIR, annotate_inputs, sample_video
from leaf_fer.realtime.bench import make_group_clip
from leaf_fer.realtime.pipeline import Pipeline, PipelineConfig

CLIPS = ("single_face.mp4", "face_noface.mov", "noface_face.mov", "no_face.mp4")


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    with Pipeline(PipelineConfig(draw=False)) as shared:
        yield shared


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test clips, the sample video, a still and a five-face clip in one folder."""
    folder = tmp_path_factory.mktemp("inputs")
    for name in CLIPS:
        shutil.copy(media_file(name), folder / name)
    shutil.copy(media_file("single_face.jpg"), folder / "still.jpg")
    shutil.copy(sample_video(), folder / "sample.mp4")
    make_group_clip(MEDIA / "multi_face.jpg", folder / "group.mp4", 160)
    return folder


@pytest.fixture(scope="module")
def reference(inputs: Path, tmp_path_factory: pytest.TempPathFactory, pipeline: Pipeline) -> Path:
    """Every input annotated whole by one worker, with face crops: what the other runs must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    outcomes = annotate_inputs([inputs], out, pipeline=pipeline, progress=False, save_faces_every=10)
    assert all(o.status == "done" for o in outcomes), [o.line() for o in outcomes]
    return out


def _assert_same_faces(got: Path, want: Path) -> None:
    with np.load(got) as a, np.load(want) as b:
        for key in ("images", "frame", "track_id"):
            np.testing.assert_array_equal(a[key], b[key])


def _assert_clean(out: Path) -> None:
    assert [p.name for p in (out / WORK_DIR).iterdir()] == ["lock"], "no staging folder left behind"


def _assert_same_within_seams(name: str, reference: Path, out: Path) -> dict:
    """The stitched CSV has the single pass's rows, track ids and numbers; smoothed values may differ by the
    CSV's last decimal (the smoother's warm-up at the seams)."""
    expected, got = csv_rows(reference / name / f"{name}.csv"), csv_rows(out / name / f"{name}.csv")
    assert len(got) == len(expected)
    smooth = [column for column in expected[0] if column.startswith("smooth_") or column == "confidence"] if expected else []
    for a, b in zip(expected, got):
        assert {k: v for k, v in a.items() if k not in smooth} == {k: v for k, v in b.items() if k not in smooth}
        assert all(abs(float(a[k]) - float(b[k])) <= 1.5e-4 for k in smooth), (a["frame"], a["track_id"])
    summary = json.loads((out / name / f"{name}.json").read_text())
    assert summary["media"]["frames"] == json.loads((reference / name / f"{name}.json").read_text())["media"]["frames"]
    return summary


def test_segments_stitch_into_the_single_pass_outputs(inputs: Path, reference: Path, tmp_path: Path,
                                                       pipeline: Pipeline) -> None:
    """The sample video in four segments (one worker, so the stitching is all there is to compare)."""
    (outcome,) = annotate_inputs([inputs / "sample.mp4"], tmp_path, pipeline=pipeline, progress=False,
                                 segment_frames=120, save_faces_every=10)
    assert outcome.status == "done" and "4 segments" in outcome.message, outcome.line()
    summary = _assert_same_within_seams("sample", reference, tmp_path)
    plan = summary["segments"]
    assert [s["frames"] for s in plan] and sum(s["frames"] for s in plan) == 472
    assert all(s["read_from"] == s["first_frame"] - 33 for s in plan[1:]), "33 warm-up frames per seam"
    assert {s["read_from"] for s in plan[1:]} <= {72, 144, 216, 288, 360, 432}, "seeks land on keyframes"
    assert not any(s["redrawn"] for s in plan), "one face keeps its id 1: every part drawn while analysed stands"
    folder = tmp_path / "sample"
    assert sorted(p.name for p in folder.iterdir()) == [
        "sample.annotated.mp4", "sample.csv", "sample.faces.npz", "sample.json", "sample.timeline.png"]
    assert frame_count(folder / "sample.annotated.mp4") == 472
    _assert_same_faces(folder / "sample.faces.npz", reference / "sample" / "sample.faces.npz")
    expected = json.loads((reference / "sample" / "sample.json").read_text())
    assert [t["frames"] for t in summary["tracks"]] == [t["frames"] for t in expected["tracks"]]
    _assert_clean(tmp_path)


def test_segments_of_variable_frame_rate_clips_and_five_faces(inputs: Path, reference: Path, tmp_path: Path,
                                                              pipeline: Pipeline) -> None:
    """The .mov clips have a variable frame rate (OpenCV's seeks miss there); the group clip five tracks whose ids
    must survive the seams."""
    files = [inputs / name for name in ("face_noface.mov", "noface_face.mov", "group.mp4")]
    outcomes = annotate_inputs(files, tmp_path, pipeline=pipeline, progress=False, segment_frames=60)
    assert [o.status for o in outcomes] == ["done"] * 3 and all("segments" in o.message for o in outcomes), [
        o.line() for o in outcomes]
    for name in ("face_noface", "noface_face", "group"):
        _assert_same_within_seams(name, reference, tmp_path)
    assert len({r["track_id"] for r in csv_rows(tmp_path / "group" / "group.csv")}) >= 4, "several faces, several tracks"
    group = json.loads((tmp_path / "group" / "group.json").read_text())["segments"]
    assert any(s["redrawn"] for s in group), "a segment whose ids were renumbered is drawn again"
    assert frame_count(tmp_path / "group" / "group.annotated.mp4") == 160
    _assert_clean(tmp_path)


def test_a_seam_that_cannot_be_verified_falls_back_to_one_piece(inputs: Path, reference: Path, tmp_path: Path,
                                                                pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segments, "check", lambda *args: "frames 40-72 decode differently after a seek")
    (outcome,) = annotate_inputs([inputs / "face_noface.mov"], tmp_path, pipeline=pipeline, progress=False,
                                 segment_frames=60)
    assert outcome.status == "done" and "segments" not in outcome.message
    assert outcome.warnings == ["not split into segments: frames 40-72 decode differently after a seek"]
    name = "face_noface"
    assert (tmp_path / name / f"{name}.csv").read_bytes() == (reference / name / f"{name}.csv").read_bytes()


def test_no_video_writes_csv_and_json_only(inputs: Path, reference: Path, tmp_path: Path, pipeline: Pipeline) -> None:
    (outcome,) = annotate_inputs([inputs / "single_face.mp4"], tmp_path, pipeline=pipeline, progress=False, video=False)
    assert outcome.status == "done"
    folder = tmp_path / "single_face"
    assert sorted(p.name for p in folder.iterdir()) == ["single_face.csv", "single_face.json"]
    reference_csv = (reference / "single_face" / "single_face.csv").read_bytes()
    assert (folder / "single_face.csv").read_bytes() == reference_csv
    (again,) = annotate_inputs([inputs / "single_face.mp4"], tmp_path, pipeline=pipeline, progress=False)
    assert again.status == "done", "a result without video does not serve a run that wants it"
    (skipped,) = annotate_inputs([inputs / "single_face.mp4"], tmp_path, pipeline=pipeline, progress=False, video=False)
    assert skipped.status == "skipped", "a result with video serves a run without"


def _stage_writers(out: Path) -> dict[int, str]:
    """Processes (other than this one) with a file open in ``out``'s staging area → their command line."""
    found = {}
    work = str(out.resolve() / WORK_DIR)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd).startswith(work + "/") for fd in (entry / "fd").iterdir()):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


class _Killer(threading.Thread):
    """Kills, once, the first worker seen writing into ``out``'s staging area (unless ``kill`` is False); records
    every writer's parent."""

    def __init__(self, out: Path, kill: bool = True) -> None:
        super().__init__(daemon=True)
        self.out, self.killed, self.parents = out, 0 if kill else -1, set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            for pid in _stage_writers(self.out):
                with open(f"/proc/{pid}/status") as status:
                    parent = next(int(line.split()[1]) for line in status if line.startswith("PPid:"))
                with open(f"/proc/{parent}/cmdline", "rb") as cmdline:
                    self.parents.add(cmdline.read().replace(b"\0", b" ").decode(errors="replace"))
                if not self.killed:
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid


def test_two_workers_same_csv_bytes_isolated_failures_and_a_killed_worker(inputs: Path, reference: Path,
                                                                           tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video\n")
    files = [inputs / name for name in (*CLIPS, "sample.mp4")] + [inputs / "still.jpg", bad]
    killer = _Killer(tmp_path / "out")
    killer.start()
    seen = []
    try:
        outcomes = annotate_inputs(files, tmp_path / "out", progress=False, workers=2, segment_frames=0,
                                   save_faces_every=10, on_outcome=seen.append)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed, "a worker was killed while it wrote"
    assert [o.input for o in outcomes] == files and sorted(map(id, seen)) == sorted(map(id, outcomes))
    assert [o.status for o in outcomes] == ["done"] * 6 + ["failed"], [o.line() for o in outcomes]
    assert outcomes[-1].line() == f"failed: {bad}: cannot open as a video (unreadable, truncated or not a video file)"
    for name in ("single_face", "face_noface", "noface_face", "no_face", "sample", "still"):
        got, want = tmp_path / "out" / name / name, reference / name / name
        assert got.with_suffix(".csv").read_bytes() == want.with_suffix(".csv").read_bytes(), f"{name}: CSV differs"
        _assert_same_faces(got.with_suffix(".faces.npz"), want.with_suffix(".faces.npz"))
    assert frame_count(tmp_path / "out" / "sample" / "sample.annotated.mp4") == 472
    _assert_clean(tmp_path / "out")


def test_cli_workers_and_no_video(inputs: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["annotate", str(inputs / "sample.mp4"), "-o", str(tmp_path), "--workers", "2",
                              "--no-video", "--no-progress"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "done: sample.mp4" in out and "2 segments" in out and "1 done, 0 skipped, 0 failed" in out
    assert sorted(p.name for p in (tmp_path / "sample").iterdir()) == ["sample.csv", "sample.json"]
    _assert_same_within_seams("sample", reference, tmp_path)


def test_workers_also_start_by_spawning(inputs: Path, reference: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is no fork server (Windows), workers are spawned and watch the run through their parent's handle."""
    monkeypatch.setattr(parallel, "START_METHOD", "spawn")
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["annotate", str(inputs / "sample.mp4"), "-o", str(tmp_path), "--workers", "2",
                              "--no-video", "--no-progress"])
    assert args.func(args) == 0
    _assert_same_within_seams("sample", reference, tmp_path)


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_ray_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray without token authentication, whatever ~/.ray holds (a local ``ray.init`` writes a token there, which
    later ``ray start`` commands pick up unevenly): the clusters of these tests are on loopback only."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def ray_cluster(no_ray_auth: None) -> Iterator[str]:
    """A real two-node Ray cluster on loopback addresses (head 127.0.0.2, worker 127.0.0.3, one CPU each)."""
    ray = Path(sys.executable).with_name("ray")
    if not ray.is_file():
        ray = Path(shutil.which("ray") or "ray")
    port = _free_port("127.0.0.2")
    env = dict(os.environ)
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        for node in (["--head", "--node-ip-address=127.0.0.2", f"--port={port}", "--include-dashboard=false"],
                     [f"--address=127.0.0.2:{port}", "--node-ip-address=127.0.0.3"]):
            started = subprocess.run([str(ray), "start", *node, *common], env=env, capture_output=True, text=True,
                                     timeout=180)
            assert started.returncode == 0, started.stderr[-2000:]
        yield f"127.0.0.2:{port}"
    finally:
        subprocess.run([str(ray), "stop", "--force"], env=env, capture_output=True, timeout=180)


def test_ray_cluster_runs_the_same_units_and_retries_a_dead_task(inputs: Path, reference: Path, tmp_path: Path,
                                                                 ray_cluster: str) -> None:
    files = [inputs / name for name in ("single_face.mp4", "face_noface.mov", "sample.mp4")]
    killer = _Killer(tmp_path)
    killer.start()
    try:
        outcomes = annotate_inputs(files, tmp_path, progress=False, ray_address=ray_cluster, segment_frames=200)
    finally:
        killer.stop.set()
        killer.join()
    assert [o.status for o in outcomes] == ["done"] * 3, [o.line() for o in outcomes]
    assert killer.killed, "a task's worker was killed while it wrote, and the task was retried"
    nodes = {ip for parent in killer.parents for ip in ("127.0.0.2", "127.0.0.3") if f"node_ip_address={ip}" in parent}
    assert nodes == {"127.0.0.2", "127.0.0.3"}, f"work ran on both nodes: {killer.parents}"
    assert "3 segments" in outcomes[2].message
    for name in ("single_face", "face_noface"):
        assert (tmp_path / name / f"{name}.csv").read_bytes() == (reference / name / f"{name}.csv").read_bytes()
    _assert_same_within_seams("sample", reference, tmp_path)
    assert frame_count(tmp_path / "sample" / "sample.annotated.mp4") == 472
    _assert_clean(tmp_path)


def test_local_ray_instance_is_on_loopback(inputs: Path, reference: Path, tmp_path: Path, no_ray_auth: None) -> None:
    watcher = _Killer(tmp_path, kill=False)
    watcher.start()
    try:
        (outcome,) = annotate_inputs([inputs / "face_noface.mov"], tmp_path, progress=False, ray_address="local",
                                     workers=2)
    finally:
        watcher.stop.set()
        watcher.join()
    assert outcome.status == "done", outcome.line()
    name = "face_noface"
    assert (tmp_path / name / f"{name}.csv").read_bytes() == (reference / name / f"{name}.csv").read_bytes()
    raylets = {p for p in watcher.parents if "/raylet/raylet " in p}
    assert raylets and all("--node_ip_address=127.0.0.2 " in p for p in raylets), "the local instance is on loopback"


def test_an_input_that_kills_its_worker_fails_alone(inputs: Path, tmp_path: Path) -> None:
    """Units in flight when a worker dies are run again alone: the one that kills its worker alone fails, the inputs
    that died beside it are done (they used to use up their attempts with it, and a whole batch could fail)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('LEAF_FER_TEST_CRASH'):\n"
        "    import leaf_fer.realtime.annotate as annotate\n"
        "    staged = annotate.annotate_staged\n"
        "    def annotate_staged(path, *args, **kwargs):\n"
        "        if 'crash' in str(path):\n"
        "            os._exit(9)\n"
        "        return staged(path, *args, **kwargs)\n"
        "    annotate.annotate_staged = annotate_staged\n")
    shutil.copy(inputs / "still.jpg", tmp_path / "crash.jpg")
    files = [tmp_path / "crash.jpg", inputs / "single_face.mp4", inputs / "still.jpg", inputs / "no_face.mp4"]
    env = {**os.environ, "PYTHONPATH": str(hook), "LEAF_FER_TEST_CRASH": "1"}
    run = subprocess.run([sys.executable, "-m", "leaf_fer", "annotate", *map(str, files), "-o", str(tmp_path / "out"),
                          "--workers", "2", "--segment-frames", "0", "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    assert run.returncode == 1, lines
    assert any(line.startswith("failed:") and "crash.jpg" in line and "worker died" in line for line in lines), lines
    for name in ("single_face.mp4", "still.jpg", "no_face.mp4"):
        assert any(line.startswith(f"done: {name}") for line in lines), (name, lines)
    _assert_clean(tmp_path / "out")
