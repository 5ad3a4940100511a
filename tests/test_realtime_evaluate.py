"""`leaf-fer evaluate` on full-size images: the whole pipeline, no-face rate, recall, confusion PNG and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from leaf_fer.cli import main
from leaf_fer.realtime.annotate import sample_video
from leaf_fer.realtime.sources import open_source


def frames(indices: set[int]) -> list[np.ndarray]:
    with open_source(str(sample_video())) as source:
        return [f.image for f in source.frames() if f.index in indices]


def test_end_to_end_evaluation_of_a_class_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "faces"
    for name in ("happiness", "sadness"):
        (data / name).mkdir(parents=True)
    sad, happy = frames({40, 400})
    cv2.imwrite(str(data / "happiness" / "smile.jpg"), happy)
    cv2.imwrite(str(data / "sadness" / "crying.jpg"), sad)
    cv2.imwrite(str(data / "sadness" / "empty.jpg"), np.full((360, 640, 3), 200, np.uint8))
    assert main(["evaluate", "--data", str(data), "--output", str(tmp_path / "report"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert report["images"] == 3 and report["no_face_rate"] == pytest.approx(1 / 3)
    assert report["per_class_recall"]["happiness"] == 1.0, "the sample's broad smile is happiness"
    assert report["end_to_end"]["classes"][-1] == "no face"
    assert report["detected_faces_only"]["count"] == 2
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "no face 33.3%" in out
    inference = report["inference"]
    assert f"{inference['backend']} {inference['precision'].upper()}" in out, "the report says what ran"


def test_evaluate_refuses_an_unknown_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.json").write_text("{}")
    assert main(["evaluate", "--data", str(tmp_path / "notes.json")]) == 2
    assert "expected a folder with one sub-folder per class, a labels CSV" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["evaluate", "--data", str(tmp_path / "notes.txt")]) == 2
    assert "line 1: expected 'NAME.jpg LABEL'" in capsys.readouterr().err, "a .txt is read as RAF-DB's list file"
