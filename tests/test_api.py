"""The Python API (leaf_fer.analyze_video, analyze_image, Analyzer) on real media: typed results, CSV, JSON, pandas."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from realtime_media import MULTI_FACE_JPG_FACE_CENTRES, SAMPLE_HAPPY_FRAMES, media_file

import leaf_fer
from leaf_fer import api
from leaf_fer.realtime.annotate import sample_video
from leaf_fer.realtime.sources import VideoFileSource
from leaf_fer.realtime.writers import CsvWriter, csv_columns


@pytest.fixture(scope="module")
def analyzer() -> Iterator[leaf_fer.Analyzer]:
    with leaf_fer.Analyzer() as shared:
        yield shared


@pytest.fixture(scope="module")
def sample() -> leaf_fer.Analysis:
    """Every 8th frame of the shipped clip (59 of 472), through the one-call API."""
    return leaf_fer.analyze_video(sample_video(), every=8)


def check_faces(analysis: leaf_fer.Analysis) -> None:
    for face in analysis.faces:
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= analysis.width and 0 <= y1 < y2 <= analysis.height, face.box
        assert list(face.probabilities) == list(face.smoothed) == list(analysis.classes)
        assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert sum(face.smoothed.values()) == pytest.approx(1.0, abs=1e-4)
        assert face.label == max(face.smoothed, key=face.smoothed.get)
        assert face.confidence == face.smoothed[face.label]
        assert len(face.keypoints) == 6 and 0.0 < face.score <= 1.0


def test_import_is_light() -> None:
    heavy = ("torch", "mediapipe", "cv2", "onnxruntime", "leaf_fer.api")
    code = f"import sys, leaf_fer; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    names = ["Analysis", "Analyzer", "FaceResult", "FrameAnalysis", "analyze_image", "analyze_video"]
    assert all(getattr(leaf_fer, name) is getattr(api, name) for name in names) and set(names) <= set(dir(leaf_fer))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        leaf_fer.nope  # noqa: B018


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) max_facez; .*fields: weights, backend, .*max_faces"):
        leaf_fer.analyze_image(np.zeros((8, 8, 3), np.uint8), max_facez=2)
    with pytest.raises(ValueError, match="smoothing alpha"):
        leaf_fer.Analyzer(smoothing_alpha=1.5)


def test_video_every_nth_frame(sample: leaf_fer.Analysis) -> None:
    assert (sample.source, sample.width, sample.height) == (str(sample_video()), 640, 360)
    assert sample.fps == pytest.approx(23.976, abs=1e-3)
    assert [f.frame for f in sample.frames] == list(range(0, 472, 8))
    assert all(f.time_s == pytest.approx(f.frame / sample.fps) and f.annotated is None for f in sample.frames)
    assert all(len(f.faces) == 1 for f in sample.frames), "the one face is found in every analysed frame"
    assert {face.track_id for face in sample.faces} == {1}
    assert sample.config["draw"] is False and sample.backend in ("onnxruntime", "torch", "tensorrt")
    check_faces(sample)
    happy = [face.label for face in sample.faces if face.frame in SAMPLE_HAPPY_FRAMES]
    assert happy.count("happiness") >= 0.9 * len(happy), happy


def test_csv_round_trips(sample: leaf_fer.Analysis, tmp_path: Path) -> None:
    text = sample.to_csv()
    assert sample.to_csv(tmp_path / "out" / "sample.csv") is None
    assert (tmp_path / "out" / "sample.csv").read_bytes().decode() == text
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["sample.csv"], "no temporary file left"
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(rows[0]) == csv_columns(sample.classes)
    assert len(rows) == len(sample.faces)
    for row, face in zip(rows, sample.faces):
        assert int(row["frame"]) == face.frame and int(row["track_id"]) == face.track_id
        assert float(row["time_s"]) == pytest.approx(face.time_s, abs=5e-4)
        assert [float(row[k]) for k in ("x1", "y1", "x2", "y2")] == pytest.approx(face.box, abs=0.05)
        assert row["label"] == face.label
        for c in sample.classes:
            assert float(row[f"prob_{c}"]) == pytest.approx(face.probabilities[c], abs=5e-5)
            assert float(row[f"smooth_{c}"]) == pytest.approx(face.smoothed[c], abs=5e-5)


def test_csv_is_annotates_csv(analyzer: leaf_fer.Analyzer, tmp_path: Path) -> None:
    """max_frames analyses the first N frames; the CSV is byte for byte what annotate's writer makes of them."""
    analysis = analyzer.analyze_video(sample_video(), max_frames=12)
    assert [f.frame for f in analysis.frames] == list(range(12))
    check_faces(analysis)
    analyzer.pipeline.reset()
    with VideoFileSource(sample_video()) as source, CsvWriter(tmp_path / "ref.csv", analyzer.classes) as writer:
        for result in itertools.islice(analyzer.pipeline.run(source), 12):
            writer.write(result)
    assert analysis.to_csv() == (tmp_path / "ref.csv").read_bytes().decode()


def test_json(sample: leaf_fer.Analysis, tmp_path: Path) -> None:
    data = json.loads(sample.to_json())
    assert data == json.loads(json.dumps(sample.to_dict()))
    assert data["format"] == api.FORMAT == "leaf-fer-analysis/1"
    assert data["classes"] == list(sample.classes) and data["config"]["max_faces"] == 8
    assert [f["frame"] for f in data["frames"]] == [f.frame for f in sample.frames]
    face, first = data["frames"][0]["faces"][0], sample.faces[0]
    assert face == {"track_id": 1, "box": list(first.box), "score": first.score,
                    "keypoints": [list(p) for p in first.keypoints], "probabilities": first.probabilities,
                    "smoothed": first.smoothed, "label": first.label, "confidence": first.confidence}
    assert data["tracks"] == [dataclasses.asdict(track) for track in sample.tracks]
    assert sample.to_json(tmp_path / "a.json") is None
    assert json.loads((tmp_path / "a.json").read_text()) == data
    numpy_options = leaf_fer.analyze_video(sample_video(), max_frames=2, smoothing_alpha=np.float32(0.5),
                                           max_faces=np.int64(3))
    assert json.loads(numpy_options.to_json())["config"]["max_faces"] == 3, "NumPy option values are stored as numbers"


def test_tracks_summarise_each_face_followed_over_frames(sample: leaf_fer.Analysis) -> None:
    tracks = sample.tracks
    assert [t.track_id for t in tracks] == sorted({f.track_id for f in sample.faces})
    assert sum(t.frames for t in tracks) == len(sample.faces)
    for track in tracks:
        faces = [f for f in sample.faces if f.track_id == track.track_id]
        labels = [f.label for f in faces]
        assert (track.first_frame, track.last_frame) == (faces[0].frame, faces[-1].frame)
        assert track.label_counts == {c: labels.count(c) for c in sample.classes}
        assert track.dominant_label == max(sample.classes, key=labels.count)
        mean = np.mean([list(f.probabilities.values()) for f in faces], axis=0)
        assert list(track.mean_probabilities.values()) == pytest.approx(mean, abs=5e-5)


def test_multi_face_image_path_and_array(analyzer: leaf_fer.Analyzer) -> None:
    path = media_file("multi_face.jpg")
    analysis = analyzer.analyze_image(path)
    assert (analysis.source, analysis.fps, analysis.width, analysis.height) == (str(path), 0.0, 1000, 667)
    assert len(analysis.frames) == 1 and analysis.frames[0].frame == 0
    faces = analysis.faces
    assert sorted(face.track_id for face in faces) == [1, 2, 3, 4, 5]
    for cx, cy in MULTI_FACE_JPG_FACE_CENTRES:
        assert any(f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3] for f in faces), (cx, cy)
    check_faces(analysis)
    assert all(face.smoothed == face.probabilities for face in faces), "an image is not smoothed"
    from_array = analyzer.analyze_image(cv2.imread(str(path)))
    assert from_array.source == "<array>" and from_array.frames == analysis.frames
    bgra = analyzer.analyze_image(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2BGRA))
    assert bgra.frames == analysis.frames, "a fourth (alpha) channel is dropped"
    gray = analyzer.analyze_image(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    assert len(gray.faces) == 5
    image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (optional)")
    assert analyzer.analyze_image(image.open(path)).frames == analysis.frames, "a PIL image is RGB, made BGR"
    assert analyzer.analyze_video(path).faces == analysis.faces, "an image given as a video is analysed as an image"


def test_own_frame_loop_and_close() -> None:
    capture = cv2.VideoCapture(str(sample_video()))
    images = [capture.read()[1] for _ in range(6)]
    capture.release()
    with leaf_fer.Analyzer(draw=True) as analyzer:
        results = [analyzer.analyze(image, timestamp_s=i / 24) for i, image in enumerate(images[:3])]
        results += [analyzer.analyze(image) for image in images[3:]]
        assert [r.frame for r in results] == list(range(6))
        assert [r.time_s for r in results[:3]] == [0.0, 1 / 24, 2 / 24]
        assert all(len(r.faces) == 1 and r.faces[0].track_id == 1 for r in results), "one track across calls"
        assert all(r.annotated is not None and r.annotated.shape == images[0].shape for r in results)
        assert results[1].faces[0].smoothed != results[1].faces[0].probabilities, "smoothed across frames"
        analyzer.analyze_image(images[0])
        again = analyzer.analyze(images[0])
        assert (again.frame, again.time_s, again.faces[0].track_id) == (0, 0.0, 1), "analyze_image ends the stream"
        analyzer.analyze(images[1])
        analyzer.reset()
        again = analyzer.analyze(images[0])
        assert (again.frame, again.time_s, again.faces[0].track_id) == (0, 0.0, 1)
        assert again.faces[0].smoothed == again.faces[0].probabilities
        with pytest.raises(ValueError, match="BGR uint8"):
            analyzer.analyze(images[0].astype(np.float32))
    with pytest.raises(RuntimeError, match="closed"):
        analyzer.analyze(images[0])


def test_no_face_and_bad_arguments(analyzer: leaf_fer.Analyzer) -> None:
    empty = analyzer.analyze_image(np.zeros((240, 320, 3), np.uint8))
    assert empty.faces == [] and len(empty.frames) == 1
    assert empty.to_csv().splitlines() == [",".join(csv_columns(empty.classes))]
    for every in (0, 2.5, True):
        with pytest.raises(ValueError, match="every must be a whole number >= 1"):
            analyzer.analyze_video(sample_video(), every=every)
    for max_frames in (0, 1.5):
        with pytest.raises(ValueError, match="max_frames must be a whole number >= 1"):
            analyzer.analyze_video(sample_video(), max_frames=max_frames)
    for bad, message in ((np.zeros((64, 64, 3), np.float32), "uint8"), (np.zeros((0, 0, 3), np.uint8), "shape"),
                         ("https://example.com/face.jpg", "download the image first")):
        with pytest.raises(ValueError, match=message):
            analyzer.analyze_image(bad)
    with pytest.raises(RuntimeError, match="no such file"):
        analyzer.analyze_video("missing.mp4")


def test_to_pandas(sample: leaf_fer.Analysis) -> None:
    pandas = pytest.importorskip("pandas", reason="pandas is not installed (optional; to_pandas needs it)")
    frame = sample.to_pandas()
    assert list(frame.columns) == csv_columns(sample.classes) and len(frame) == len(sample.faces)
    assert frame["track_id"].tolist() == [1] * len(sample.faces)
    assert frame["label"].tolist() == [face.label for face in sample.faces]
    assert frame["smooth_happiness"].tolist() == [face.smoothed["happiness"] for face in sample.faces]
    from_csv = pandas.read_csv(io.StringIO(sample.to_csv()))
    assert np.allclose(from_csv["prob_neutral"], frame["prob_neutral"], atol=5e-5)


def test_to_pandas_without_pandas(sample: leaf_fer.Analysis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"to_pandas needs pandas \(pip install pandas\)"):
        sample.to_pandas()
