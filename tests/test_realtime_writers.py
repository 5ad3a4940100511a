"""Writers: frame by frame, final name only when complete, nothing left behind on failure."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from leaf_fer.realtime.types import Detection, FacePrediction, Frame, FrameResult, StageTimings
from leaf_fer.realtime.writers import CsvWriter, VideoWriter, WriterError, csv_columns

CLASSES = ("neutral", "happiness")


def _frame(i: int) -> np.ndarray:
    image = np.zeros((120, 160, 3), np.uint8)
    cv2.putText(image, str(i), (20, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    return image


def test_video_writer_finalises_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with VideoWriter(target, fps=25) as writer:
        for i in range(20):
            writer.write(_frame(i))
            assert not target.exists(), "no final file while writing"
        writer.write(np.zeros((60, 80, 3), np.uint8))  # another size is resized, not an error
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    capture = cv2.VideoCapture(str(target))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 21 and capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 160


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(target, fps=25) as writer:
            writer.write(_frame(0))
            raise RuntimeError("crash mid-video")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WriterError, match="no frames"):
        VideoWriter(target, fps=25).close()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriterError, match="not writable"):
        VideoWriter(blocker / "out.mp4", fps=25)
    with pytest.raises(WriterError, match="not writable"):
        CsvWriter(blocker / "out.csv", CLASSES)


def test_csv_rows(tmp_path: Path) -> None:
    target = tmp_path / "faces.csv"
    keypoints = np.arange(12, dtype=np.float32).reshape(6, 2)
    face = FacePrediction(
        3, Detection((1, 2, 30, 40), 0.9, keypoints), np.array([0.2, 0.8], np.float32), np.array([0.6, 0.4], np.float32)
    )
    with CsvWriter(target, CLASSES) as writer:
        writer.write(FrameResult(Frame(7, 0.28, _frame(7)), [face, face], CLASSES, StageTimings()))
        writer.write(FrameResult(Frame(8, 0.32, _frame(8)), [], CLASSES, StageTimings()))
        assert not target.exists()
    rows = list(csv.reader(target.open()))
    assert rows[0] == csv_columns(CLASSES)
    assert len(rows) == 3 and all(len(r) == len(rows[0]) for r in rows)
    row = dict(zip(rows[0], rows[1]))
    assert (row["frame"], row["time_s"], row["track_id"], row["x2"], row["left_ear_y"]) == ("7", "0.280", "3", "30.0", "11.0")
    assert (row["prob_happiness"], row["smooth_neutral"], row["label"], row["confidence"]) == (
        "0.8000",
        "0.6000",
        "neutral",
        "0.6000",
    )
