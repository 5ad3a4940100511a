"""``annotate`` end to end on real clips: consistent outputs, resumable, bad inputs reported one by one."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from realtime_media import (
    FACE_NOFACE_EMPTY_FRAMES,
    FACE_NOFACE_FACE_FRAMES,
    csv_rows,
    frame_count,
    media_file,
)

from leaf_fer.realtime import commands
from leaf_fer.realtime.annotate import (
    FORMAT,
    _FaceKeeper,
    annotate_inputs,
    output_names,
)
from leaf_fer.realtime.pipeline import Pipeline, PipelineConfig
from leaf_fer.realtime.types import (
    Detection,
    FacePrediction,
    Frame,
    FrameResult,
    StageTimings,
)
from leaf_fer.realtime.writers import WriterError, csv_columns


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    with Pipeline(PipelineConfig()) as shared:
        yield shared


def test_face_then_no_face_outputs_are_consistent(tmp_path: Path, pipeline: Pipeline) -> None:
    clip = media_file("face_noface.mov")
    (outcome,) = annotate_inputs([clip], tmp_path, pipeline=pipeline, progress=False)
    assert outcome.status == "done", outcome.message
    folder = tmp_path / "face_noface"
    assert sorted(p.name for p in folder.iterdir()) == [
        "face_noface.annotated.mp4",
        "face_noface.csv",
        "face_noface.json",
        "face_noface.timeline.png",
    ], "no temporary files left behind"

    assert frame_count(folder / "face_noface.annotated.mp4") == 169, "one output frame per input frame"
    capture = cv2.VideoCapture(str(folder / "face_noface.annotated.mp4"))
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (960, 540)
    capture.release()

    rows = csv_rows(folder / "face_noface.csv")
    assert list(rows[0].keys()) == csv_columns(pipeline.classes)
    frames = [int(r["frame"]) for r in rows]
    assert set(FACE_NOFACE_FACE_FRAMES) <= set(frames), "a row for every frame with the face"
    assert not set(FACE_NOFACE_EMPTY_FRAMES) & set(frames), "no rows once the face is gone"
    assert len(frames) == len(set(frames)), "one face per frame, one row each"
    assert {r["track_id"] for r in rows} == {"1"}
    fps = 169 / 6.402  # container: 169 frames, 26.4 fps
    for r in rows:
        assert float(r["time_s"]) == pytest.approx(int(r["frame"]) / fps, abs=0.01)
        x1, y1, x2, y2 = (float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= 960 and 0 <= y1 < y2 <= 540
        assert x1 <= float(r["nose_x"]) <= x2 and y1 <= float(r["nose_y"]) <= y2
        probs = [float(r[f"prob_{c}"]) for c in pipeline.classes]
        assert sum(probs) == pytest.approx(1.0, abs=2e-3)
        smoothed = {c: float(r[f"smooth_{c}"]) for c in pipeline.classes}
        assert smoothed[r["label"]] >= max(smoothed.values()) - 1e-4, "label = top smoothed class (CSV rounds to 1e-4)"
        assert float(r["confidence"]) == pytest.approx(smoothed[r["label"]], abs=1e-4)

    summary = json.loads((folder / "face_noface.json").read_text())
    assert summary["format"] == FORMAT and summary["complete"] is True
    assert summary["media"]["frames"] == 169 and summary["media"]["truncated"] is False
    assert summary["frames_with_faces"] == len(rows) == summary["faces"]
    assert len(summary["tracks"]) == 1 and summary["tracks"][0]["frames"] == len(rows)
    assert sum(summary["label_counts"].values()) == len(rows)
    assert summary["timing"]["processing_fps"] > 0
    png = cv2.imread(str(folder / "face_noface.timeline.png"))
    assert png is not None and png.shape[0] > 100 and png.shape[1] > 500


def test_rerun_skips_finished_and_redoes_changed(tmp_path: Path, pipeline: Pipeline) -> None:
    clip = tmp_path / "in" / "clip.mp4"
    clip.parent.mkdir()
    shutil.copy(media_file("single_face.mp4"), clip)
    out = tmp_path / "out"
    (first,) = annotate_inputs([clip.parent], out, pipeline=pipeline, progress=False)
    assert first.status == "done"
    summary_path = out / "clip" / "clip.json"
    written = summary_path.stat().st_mtime_ns
    (again,) = annotate_inputs([clip.parent], out, pipeline=pipeline, progress=False)
    assert again.status == "skipped" and summary_path.stat().st_mtime_ns == written
    (forced,) = annotate_inputs([clip], out, pipeline=pipeline, progress=False, overwrite=True)
    assert forced.status == "done"
    (out / "clip" / "clip.csv").unlink()
    (redone,) = annotate_inputs([clip], out, pipeline=pipeline, progress=False)
    assert redone.status == "done", "a missing output means the input is not finished"
    assert (out / "clip" / "clip.csv").is_file()


def test_saved_faces_become_unlabeled_training_data(tmp_path: Path, pipeline: Pipeline) -> None:
    from leaf_fer.train.data import load_unlabeled_faces

    clip = media_file("face_noface.mov")
    (outcome,) = annotate_inputs([clip], tmp_path, pipeline=pipeline, progress=False, save_faces_every=10)
    assert outcome.status == "done", outcome.message
    folder = tmp_path / "face_noface"
    rows = csv_rows(folder / "face_noface.csv")
    expected = sorted(int(r["frame"]) for r in rows if int(r["frame"]) % 10 == 0)
    with np.load(folder / "face_noface.faces.npz") as saved:
        assert saved["images"].shape == (len(expected), 48, 48) and saved["images"].dtype == np.uint8
        assert sorted(saved["frame"].tolist()) == expected
        assert set(saved["track_id"].tolist()) == {1}
        assert saved["images"].std() > 10, "real face crops, not blank buffers"
    assert outcome.summary is not None and outcome.summary["saved_faces"] == len(expected)
    faces = load_unlabeled_faces(f"{tmp_path}/**/*.faces.npz")
    assert faces.shape == (len(expected), 48, 48)
    (again,) = annotate_inputs([clip], tmp_path, pipeline=pipeline, progress=False, save_faces_every=10)
    assert again.status == "skipped"
    saved = (folder / "face_noface.faces.npz").read_bytes()
    (plain,) = annotate_inputs([clip], tmp_path, pipeline=pipeline, progress=False)
    assert plain.status == "skipped", "a result with faces serves a run that does not ask for them"
    assert (folder / "face_noface.faces.npz").read_bytes() == saved
    (other,) = annotate_inputs([clip], tmp_path, pipeline=pipeline, progress=False, save_faces_every=20)
    assert other.status == "done", "another face-saving step redoes the input"
    with np.load(folder / "face_noface.faces.npz") as resaved:
        assert sorted(resaved["frame"].tolist()) == [f for f in expected if f % 20 == 0]


def test_bad_inputs_are_reported_and_others_still_done(tmp_path: Path, pipeline: Pipeline) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "zero.mp4").write_bytes(b"")
    (inputs / "text.mp4").write_text("definitely not a video\n" * 10)
    writer = cv2.VideoWriter(str(inputs / "noframes.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    writer.release()
    shutil.copy(media_file("single_face.mp4"), inputs / "good.mp4")
    no_face = media_file("no_face.mp4")
    out = tmp_path / "out"
    (out / "blocked").parent.mkdir(parents=True)
    (out / "blocked").write_text("a file where the output folder should go")
    shutil.copy(media_file("single_face.jpg"), inputs / "blocked.jpg")
    blocked_name = f"blocked-{hashlib.sha256(str((inputs / 'blocked.jpg').resolve()).encode()).hexdigest()[:8]}"
    outcomes = {o.input.name: o for o in annotate_inputs([inputs, no_face], out, pipeline=pipeline, progress=False)}

    assert outcomes["good.mp4"].status == "done"
    assert (out / "good" / "good.json").is_file()
    assert outcomes["no_face.mp4"].status == "done" and outcomes["no_face.mp4"].warnings == ["no faces found"]
    assert csv_rows(out / "no_face" / "no_face.csv") == []
    blocked = outcomes["blocked.jpg"]
    assert blocked.status == "done" and blocked.outputs is not None and blocked.outputs.folder == out / blocked_name
    assert f"{out / 'blocked'} holds other files" in blocked.line()
    assert (out / "blocked").read_text() == "a file where the output folder should go"
    expected = {"zero.mp4": "empty file", "text.mp4": "cannot open as a video", "noframes.avi": "no frames"}
    for name, message in expected.items():
        outcome = outcomes[name]
        assert outcome.status == "failed" and message in outcome.message, (name, outcome.message)
        assert "\n" not in outcome.line()
    for name in ("zero", "text", "noframes"):
        folder = out / name
        assert not folder.exists() or not any(folder.iterdir()), "a failed input leaves no output"


def test_unwritable_output_folder_is_one_clear_error(tmp_path: Path, pipeline: Pipeline) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(WriterError, match="not writable") as refused:
        annotate_inputs([media_file("single_face.mp4"), media_file("single_face.jpg")], blocker / "out", pipeline=pipeline)
    assert "\n" not in str(refused.value)


def test_cli_exit_status_and_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    args = parser.parse_args(["annotate", str(media_file("single_face.jpg")), str(bad), "-o", str(tmp_path / "o"), "--no-progress"])
    assert args.func(args) == 1
    captured = capsys.readouterr()
    assert "done: single_face.jpg" in captured.out
    assert f"failed: {bad}: cannot open as a video" in captured.err
    assert "1 done, 0 skipped, 1 failed" in captured.out
    assert (tmp_path / "o" / "single_face" / "single_face.annotated.png").is_file()


def _digest(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]


def test_output_names_are_unique_per_input_and_stable(tmp_path: Path) -> None:
    paths = [tmp_path / "a" / "x.mp4", tmp_path / "b" / "x.mov", tmp_path / "c" / "y.mp4", tmp_path / "a" / "x.mp4"]
    names = [name for name, _ in output_names(paths, tmp_path / "out")]
    assert names == ["x", f"x-{_digest(paths[1])}", "y", "x"]
    assert output_names(paths[1:], tmp_path / "out")[0] == ("x", ""), "free names are taken plainly"


def test_same_named_inputs_from_other_folders_never_replace_each_other(tmp_path: Path, pipeline: Pipeline) -> None:
    day_a, day_b, out = tmp_path / "dayA" / "clip.mp4", tmp_path / "dayB" / "clip.mp4", tmp_path / "out"
    for clip, source in ((day_a, "single_face.mp4"), (day_b, "no_face.mp4")):
        clip.parent.mkdir()
        shutil.copy(media_file(source), clip)
    (first,) = annotate_inputs([day_a], out, pipeline=pipeline, progress=False)
    assert first.status == "done" and first.outputs is not None and first.outputs.folder == out / "clip"
    kept = {p.name: p.read_bytes() for p in (out / "clip").iterdir()}

    (second,) = annotate_inputs([day_b], out, pipeline=pipeline, progress=False)
    assert second.status == "done" and second.outputs is not None
    assert second.outputs.folder == out / f"clip-{_digest(day_b)}"
    assert f"note: {out / 'clip'} holds {day_a.resolve()}" in second.line()
    assert {p.name: p.read_bytes() for p in (out / "clip").iterdir()} == kept, "dayA's result untouched"
    assert json.loads(second.outputs.summary.read_text())["input"] == str(day_b.resolve())

    again = annotate_inputs([day_b, day_a], out, pipeline=pipeline, progress=False)
    assert [(o.status, o.outputs.folder.name if o.outputs else "") for o in again] == [
        ("skipped", f"clip-{_digest(day_b)}"),
        ("skipped", "clip"),
    ], "names are stable across runs, whatever the order"

    beside = day_a.with_suffix(".mov")
    shutil.copy(media_file("single_face.mp4"), beside)
    grown = {o.input.name: o for o in annotate_inputs([day_a.parent], out, pipeline=pipeline, progress=False)}
    assert grown["clip.mp4"].status == "skipped" and grown["clip.mp4"].outputs.folder == out / "clip"
    assert grown["clip.mov"].status == "done" and grown["clip.mov"].outputs.folder == out / f"clip-{_digest(beside)}"


def test_an_input_named_dot_dot_stays_inside_the_output_folder(tmp_path: Path, pipeline: Pipeline) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(media_file("single_face.mp4"), inputs / "...mp4")
    (outcome,) = annotate_inputs([inputs / "...mp4"], out, pipeline=pipeline, progress=False)
    assert outcome.status == "done", outcome.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"], "nothing written beside the output folder"
    assert sorted(p.name for p in inputs.iterdir()) == ["...mp4"]
    assert outcome.outputs is not None and outcome.outputs.folder == out / "input"
    assert (out / "input" / "input.annotated.mp4").is_file()


def test_urls_are_refused_intact_with_credentials_redacted(tmp_path: Path, pipeline: Pipeline) -> None:
    url = "rtsp://viewer:s3cr@t@127.0.0.1:9/live/cam.mp4"
    (outcome,) = annotate_inputs([url], tmp_path / "out", pipeline=pipeline, progress=False)
    assert outcome.status == "failed"
    assert outcome.line().startswith("failed: rtsp://***@127.0.0.1:9/live/cam.mp4: a stream URL")
    assert "s3cr" not in outcome.line() and "viewer" not in outcome.line() and "\n" not in outcome.line()


def test_saved_faces_stream_to_disk_with_flat_memory(tmp_path: Path) -> None:
    detection = Detection((0, 0, 10, 10), 0.9, np.zeros((6, 2), np.float32))
    probs = np.full(8, 0.125, np.float32)
    faces = [FacePrediction(track, detection, probs, probs) for track in (1, 2, 3)]
    crops = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    keeper = _FaceKeeper(1, tmp_path / "x.faces.npz", 48)
    tracemalloc.start()
    try:
        for index in range(1000):
            crops[:, 0, 0] = index % 256
            keeper.add(FrameResult(Frame(index, index / 30, crops), faces, ("a",) * 8, StageTimings(), crops=crops))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak} bytes held for 3000 crops ({3000 * 48 * 48} bytes of pixels)"
    keeper.save()
    assert [p.name for p in tmp_path.iterdir()] == ["x.faces.npz"], "the record file is gone once packed"
    with np.load(tmp_path / "x.faces.npz") as saved:
        assert saved["images"].shape == (3000, 48, 48) and saved["images"].dtype == np.uint8
        assert saved["frame"].tolist() == [i for i in range(1000) for _ in range(3)]
        assert saved["track_id"].tolist() == [1, 2, 3] * 1000
        assert saved["images"][-1, 0, 0] == 999 % 256 and (saved["images"][-1, 1:] == crops[2, 1:]).all()


def test_hidden_repeated_and_long_named_inputs(tmp_path: Path, pipeline: Pipeline) -> None:
    """A folder's hidden files (macOS's ``._clip.mp4``) are left out, an input named twice is done once, and a name
    too long to carry the output suffixes is cut rather than failing the batch."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(media_file("single_face.jpg"), inputs / "face.jpg")
    (inputs / "._face.jpg").write_bytes(b"AppleDouble")
    long_name = inputs / ("表情" * 38 + "x.jpg")
    shutil.copy(media_file("single_face.jpg"), long_name)
    outcomes = annotate_inputs([inputs, inputs / "face.jpg", long_name], out, pipeline=pipeline, progress=False)
    assert [(o.input.name, o.status) for o in outcomes] == [("face.jpg", "done"), (long_name.name, "done")]
    folder = outcomes[1].outputs.folder
    assert len(folder.name.encode()) <= 120 and (folder / f"{folder.name}.annotated.png").is_file()


def test_one_worker_publishes_each_input_before_starting_the_next(tmp_path: Path, pipeline: Pipeline,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """So that a run stopped halfway keeps what it finished."""
    from leaf_fer.realtime import annotate

    out, seen = tmp_path / "out", []
    staged = annotate.annotate_staged

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else [])
        return staged(*args, **kwargs)

    monkeypatch.setattr(annotate, "annotate_staged", spy)
    annotate_inputs([media_file("single_face.jpg"), media_file("multi_face.jpg")], out, pipeline=pipeline,
                    progress=False, workers=1)
    assert seen == [[], ["single_face"]]


def test_a_replace_cut_short_keeps_the_previous_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where folders cannot be exchanged in one step, the previous result waits beside the staging folders, where
    the next run puts it back."""
    import os
    import sys

    from leaf_fer.realtime import annotate

    out = tmp_path / "out"
    previous = out / "clip"
    previous.mkdir(parents=True)
    (previous / "clip.json").write_text("previous")
    attempt = out / annotate.WORK_DIR / "clip.0123abcd.new" / "whole-0123abcd"
    attempt.mkdir(parents=True)
    (attempt / "clip.json").write_text("new")
    rename, calls = os.rename, []

    def cut_short(a: object, b: object) -> None:
        if calls:
            raise KeyboardInterrupt
        calls.append(b)
        rename(a, b)

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(os, "rename", cut_short)
    with pytest.raises(KeyboardInterrupt):
        annotate._publish(attempt, previous)
    monkeypatch.undo()
    assert not previous.exists() and Path(calls[0]).parent == out / annotate.WORK_DIR
    annotate._recover(out / annotate.WORK_DIR)
    assert (previous / "clip.json").read_text() == "previous"

