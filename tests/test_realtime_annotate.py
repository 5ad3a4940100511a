"""``annotate`` end to end on real clips: consistent outputs, resumable, bad inputs reported one by one."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from realtime_media import FACE_NOFACE_EMPTY_FRAMES, FACE_NOFACE_FACE_FRAMES, media_file

from leaf_fer.realtime import commands
from leaf_fer.realtime.annotate import FORMAT, annotate_inputs, output_stems
from leaf_fer.realtime.pipeline import Pipeline, PipelineConfig
from leaf_fer.realtime.writers import csv_columns


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    with Pipeline(PipelineConfig()) as shared:
        yield shared


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


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

    assert _frame_count(folder / "face_noface.annotated.mp4") == 169, "one output frame per input frame"
    capture = cv2.VideoCapture(str(folder / "face_noface.annotated.mp4"))
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (960, 540)
    capture.release()

    rows = _rows(folder / "face_noface.csv")
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
    rows = _rows(folder / "face_noface.csv")
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
    (other,) = annotate_inputs([clip], tmp_path, pipeline=pipeline, progress=False)
    assert other.status == "done", "different face-saving settings redo the input"
    assert not (folder / "face_noface.faces.npz").exists()


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
    outcomes = {o.input.name: o for o in annotate_inputs([inputs, no_face], out, pipeline=pipeline, progress=False)}

    assert outcomes["good.mp4"].status == "done"
    assert (out / "good" / "good.json").is_file()
    assert outcomes["no_face.mp4"].status == "done" and outcomes["no_face.mp4"].warnings == ["no faces found"]
    assert _rows(out / "no_face" / "no_face.csv") == []
    expected = {
        "zero.mp4": "empty file",
        "text.mp4": "cannot open as a video",
        "noframes.avi": "no frames",
        "blocked.jpg": "not writable",
    }
    for name, message in expected.items():
        outcome = outcomes[name]
        assert outcome.status == "failed" and message in outcome.message, (name, outcome.message)
        assert "\n" not in outcome.line()
    for name in ("zero", "text", "noframes"):
        folder = out / name
        assert not folder.exists() or not any(folder.iterdir()), "a failed input leaves no output"


def test_unwritable_output_folder_fails_each_file_clearly(tmp_path: Path, pipeline: Pipeline) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    outcomes = annotate_inputs(
        [media_file("single_face.mp4"), media_file("single_face.jpg")], blocker / "out", pipeline=pipeline, progress=False
    )
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert all("not writable" in o.message for o in outcomes)


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


def test_output_names_do_not_collide() -> None:
    paths = [Path("a/x.mp4"), Path("b/x.mov"), Path("c/y.mp4"), Path("d/x.mp4")]
    assert output_stems(paths) == ["x_mp4", "x_mov", "y", "x_mp4_2"]
