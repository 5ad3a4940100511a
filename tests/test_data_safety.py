"""Nothing lost, nothing confusing: killed, failing and concurrent annotate runs, full disks, read-only caches.

Real processes are killed with SIGKILL; full and read-only disks are small tmpfs mounts (the tests that need one skip,
saying why, where mounting is not allowed).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from realtime_media import media_file

from leaf_fer.cli import main as cli_main
from leaf_fer.engines import create_predictor
from leaf_fer.realtime.annotate import WORK_DIR, annotate_inputs, sample_video
from leaf_fer.realtime.pipeline import Pipeline, PipelineConfig
from leaf_fer.realtime.writers import VideoWriter, WriterError
from leaf_fer.train.weights import default_weights_path

Mount = Callable[..., Path]


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    with Pipeline(PipelineConfig()) as shared:
        yield shared


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """``tmpfs(name, size, *options)`` → a fresh tmpfs mounted at ``tmp_path / name``, unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, size: str, *options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)), "tmpfs", str(target)]
        result = subprocess.run(command, capture_output=True, text=True) if shutil.which("mount") else None
        if result is None or result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() if result else 'no mount command'})")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in (out / WORK_DIR).iterdir() if p.name != "lock")


def _annotate_process(clip: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "leaf_fer", "annotate", str(clip), "-o", str(out), "--no-progress", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until_writing(process: subprocess.Popen[str], out: Path, timeout_s: float = 180.0) -> None:
    """Return once ``process`` has started writing a video (a non-empty temporary file under ``out``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.stat().st_size > 0 for p in out.rglob("*.partial*") if p.is_file()):
            return
        if process.poll() is not None:
            pytest.fail(f"annotate ended before writing: {process.communicate()[1][-2000:]}")
        time.sleep(0.02)
    process.kill()
    pytest.fail("annotate did not start writing in time")


def test_killed_redo_keeps_the_previous_result(tmp_path: Path, pipeline: Pipeline) -> None:
    out = tmp_path / "out"
    (first,) = annotate_inputs([sample_video()], out, pipeline=pipeline, progress=False)
    assert first.status == "done"
    before = _snapshot(out / "sample")

    redo = _annotate_process(sample_video(), out, "--overwrite")
    _wait_until_writing(redo, out)
    os.kill(redo.pid, signal.SIGKILL)
    redo.communicate(timeout=60)
    assert redo.returncode == -signal.SIGKILL
    assert _snapshot(out / "sample") == before, "the complete result survives a killed redo, file for file"

    (again,) = annotate_inputs([sample_video()], out, pipeline=pipeline, progress=False)
    assert again.status == "skipped", "the surviving result is still recognised as complete"
    assert _leftovers(out) == [], "the killed run's staging folder is cleared"


def test_full_disk_fails_clearly_and_keeps_the_previous_result(tmpfs: Mount, tmp_path: Path, pipeline: Pipeline) -> None:
    disk = tmpfs("disk", "16m")
    clip = tmp_path / "clip.mp4"
    shutil.copy(media_file("single_face.mp4"), clip)
    out = disk / "out"
    (first,) = annotate_inputs([clip], out, pipeline=pipeline, progress=False)
    assert first.status == "done", first.message
    before = _snapshot(out / "clip")
    stats = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(max(0, stats.f_bavail * stats.f_frsize - 64 * 1024)))

    (redo,) = annotate_inputs([clip], out, pipeline=pipeline, progress=False, overwrite=True)
    assert redo.status == "failed"
    line = redo.line()
    assert "\n" not in line and f"{out / 'clip'}/clip." in line, f"the message names the output: {line}"
    assert str(clip) not in line and WORK_DIR not in line and ("No space left" in line or "disk full" in line)
    assert _snapshot(out / "clip") == before, "nothing under a final name changed"
    assert _leftovers(out) == []

    (disk / "filler").unlink()
    (again,) = annotate_inputs([clip], out, pipeline=pipeline, progress=False)
    assert again.status == "skipped"


def test_video_writer_on_a_full_disk_leaves_nothing(tmpfs: Mount) -> None:
    disk = tmpfs("disk", "256k")
    noise = np.random.default_rng(0).integers(0, 256, (60, 240, 320, 3), dtype=np.uint8)
    writer = VideoWriter(disk / "out.mp4", fps=25)
    for frame in noise:
        writer.write(frame)
    with pytest.raises(WriterError, match=r"out\.mp4: video incomplete") as failed:
        writer.close()
    assert "\n" not in str(failed.value)
    assert list(disk.iterdir()) == [], "no partial video under the final name, no temporary file"


def test_a_second_run_on_the_same_output_is_refused_and_the_first_completes(
    tmp_path: Path, pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    first = _annotate_process(sample_video(), out, "--workers", "1")  # one worker writes from the first frame on
    _wait_until_writing(first, out)
    assert cli_main(["annotate", str(sample_video()), "-o", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"leaf-fer annotate: error: {out}: in use by another leaf-fer annotate (pid {first.pid}); "
        "wait for it to end or choose another -o"
    )
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert "1 done, 0 skipped, 0 failed" in stdout
    (again,) = annotate_inputs([sample_video()], out, pipeline=pipeline, progress=False)
    assert again.status == "skipped"


def test_read_only_cache_compiles_elsewhere_with_one_warning(
    tmpfs: Mount, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    cache = tmpfs("cache", "1m", "ro")
    weights = tmp_path / default_weights_path().name  # without the shipped ONNX beside it: it must be compiled
    shutil.copy(default_weights_path(), weights)
    shutil.copy(default_weights_path().with_suffix(".json"), weights.with_suffix(".json"))
    with caplog.at_level(logging.WARNING):
        predictor = create_predictor(weights, backend="onnxruntime", cache_dir=cache, threads=1)
    try:
        assert predictor.backend_name == "onnxruntime"
        assert not predictor.model_path.is_relative_to(cache)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "not writable" in warnings[0] and str(predictor.model_path.parent) in warnings[0]
        assert predictor.predict(np.full((2, 48, 48), 128, np.uint8)).shape == (2, 8)
    finally:
        assert predictor.model_path.parent.name.startswith("leaf-fer-engines-")
        shutil.rmtree(predictor.model_path.parent)


def test_without_an_atomic_swap_an_interrupted_replacement_is_undone(
    tmp_path: Path, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leaf_fer.realtime import annotate

    clip, out = tmp_path / "clip.mp4", tmp_path / "out"
    shutil.copy(media_file("single_face.mp4"), clip)
    monkeypatch.setattr(annotate.ctypes, "CDLL", lambda *args, **kwargs: object())
    assert annotate_inputs([clip], out, pipeline=pipeline, progress=False)[0].status == "done"
    (redo,) = annotate_inputs([clip], out, pipeline=pipeline, progress=False, overwrite=True)
    assert redo.status == "done" and _leftovers(out) == [], "replaced through a third name"
    before = _snapshot(out / "clip")

    (out / "clip").rename(out / WORK_DIR / "clip.0123abcd.old")  # a run killed between the renames
    (again,) = annotate_inputs([clip], out, pipeline=pipeline, progress=False)
    assert again.status == "skipped" and _snapshot(out / "clip") == before and _leftovers(out) == []


def test_an_exclusive_lock_is_refused_to_a_second_holder_until_released(tmp_path: Path) -> None:
    from leaf_fer.common import lock_exclusively

    path = tmp_path / "lock"
    with open(path, "a+") as first:
        assert lock_exclusively(first)
        with open(path, "a+") as second:
            assert not lock_exclusively(second), "another open file (another process) cannot take it"
    with open(path, "a+") as third:
        assert lock_exclusively(third), "closing the holder released it"
