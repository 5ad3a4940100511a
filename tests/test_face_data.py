"""Labeled full-size images in the public layouts go through the live detector + aligner: labels CSV with vote
shares, RAF-DB's list file, AffectNet-style CSV with face boxes, class folders; small fixtures made here."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from leaf_fer.realtime.annotate import sample_video
from leaf_fer.realtime.face_crops import CropSettings, FaceCropper, crop_files
from leaf_fer.realtime.sources import open_source
from leaf_fer.train.data import (
    POSED_LABEL_WEIGHT,
    DataError,
    labeled_files,
    load_affectnet_csv,
    load_dataset,
    load_image_folder,
    load_labels_csv,
    load_rafdb,
    targets_for,
)
from leaf_fer.train.model_spec import FER2013_CLASSES, FERPLUS_CLASSES


@pytest.fixture(scope="module")
def face_frame() -> np.ndarray:
    """A real 640x360 video frame with one face (the shipped sample video)."""
    with open_source(str(sample_video())) as source:
        for frame in source.frames():
            return frame.image
    raise AssertionError("sample video has no frames")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("LEAF_FER_CACHE_DIR", str(folder))
    return folder


AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal"]
"""The columns of AffectNet's file lists."""


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_full_size_images_are_detected_aligned_and_cached(tmp_path: Path, face_frame: np.ndarray, cache: Path) -> None:
    cv2.imwrite(str(tmp_path / "face.jpg"), face_frame)
    cv2.imwrite(str(tmp_path / "blank.jpg"), np.full((360, 640, 3), 128, np.uint8))
    files = [tmp_path / "face.jpg", tmp_path / "blank.jpg"]
    first = crop_files(files, progress=False)
    assert first.found.tolist() == [True, False] and first.crops.shape == (2, 48, 48)
    assert first.crops[0].std() > 20 and not first.crops[1].any()
    assert len(list(cache.rglob("*.npz"))) == 1
    again = crop_files(files, progress=False)
    np.testing.assert_array_equal(again.crops, first.crops)
    assert len(list(cache.rglob("*.npz"))) == 1
    crop_files(files, CropSettings(fallback_detector=False), progress=False)
    assert len(list(cache.rglob("*.npz"))) == 2, "other detector settings are another cache entry"


def test_crop_matches_the_live_pipeline(face_frame: np.ndarray) -> None:
    """Default crop settings are the pipeline's defaults: the same crop, pixel for pixel, also for a frame large enough
    to be detected on a downscaled copy."""
    from leaf_fer.realtime.pipeline import Pipeline, PipelineConfig
    from leaf_fer.realtime.types import Frame

    large = cv2.resize(face_frame, None, fx=2.5, fy=2.5, interpolation=cv2.INTER_CUBIC)
    assert max(large.shape) > PipelineConfig().detect_max_side
    cropper = FaceCropper()
    crops = [cropper.crop(frame) for frame in (face_frame, large)]
    cropper.close()
    with Pipeline(PipelineConfig(draw=False)) as pipeline:
        for frame, crop in zip((face_frame, large), crops):
            np.testing.assert_array_equal(crop, pipeline.process(Frame(0, 0.0, frame, still=True)).crops[0])


def test_labels_csv_mixes_the_label_with_vote_shares(tmp_path: Path, face_frame: np.ndarray, cache: Path) -> None:
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), face_frame)
    cv2.imwrite(str(tmp_path / "img" / "b.jpg"), cv2.flip(face_frame, 1))
    header = ["file", "label", "performer", "vote_happy", "vote_angry", "vote_sad", "vote_fear", "vote_disgust",
              "vote_surprise", "vote_peace"]
    path = write_csv(tmp_path / "labels.csv", header, [["img/a.jpg", "fear", "01", 0, 0, 0, 0.2, 0, 0.8, 0],
                                                      ["img/b.jpg", "happy", "02", 1, 0, 0, 0, 0, 0, 0]])
    data = load_dataset(path)
    assert len(data) == 2 and data.images.shape == (2, 48, 48)
    targets = targets_for(data, FERPLUS_CLASSES)
    fear, surprise = FERPLUS_CLASSES.index("fear"), FERPLUS_CLASSES.index("surprise")
    assert targets.soft[0, fear] == pytest.approx(POSED_LABEL_WEIGHT + (1 - POSED_LABEL_WEIGHT) * 0.2)
    assert targets.soft[0, surprise] == pytest.approx((1 - POSED_LABEL_WEIGHT) * 0.8)
    assert targets.hard.tolist() == [fear, FERPLUS_CLASSES.index("happiness")], "the posed label stays the answer"
    seven = targets_for(data, FER2013_CLASSES)
    assert np.allclose(seven.soft.sum(axis=1), 1.0)
    assert labeled_files(path)[1] == [fear, FERPLUS_CLASSES.index("happiness")]


def test_labels_csv_rejects_unknown_classes(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "labels.csv", ["file", "label"], [["x.jpg", "bored"]])
    with pytest.raises(DataError, match="row 2: unknown class 'bored'"):
        load_labels_csv(path)


def test_labels_csv_columns_go_by_other_names(tmp_path: Path) -> None:
    """``image``/``Emotion`` and the like, a byte-order mark, an upper-case suffix, posed sets' two-letter codes."""
    path = tmp_path / "LEGEND.CSV"
    path.write_text("\ufeffuser,Image,Emotion\nu1,faces/a.jpg,HAPPINESS\nu2,/abs/b.png,Sad\nu3,c.tiff,FE\n",
                    encoding="utf-8")
    files, labels = labeled_files(path)
    assert files == [tmp_path / "faces" / "a.jpg", Path("/abs/b.png"), tmp_path / "c.tiff"]
    assert labels == [FERPLUS_CLASSES.index(c) for c in ("happiness", "sadness", "fear")]
    missing = write_csv(tmp_path / "no_label.csv", ["file", "score"], [["x.jpg", 1]])
    with pytest.raises(DataError, match=r"missing column\(s\) label \(or emotion, expression, class\)"):
        labeled_files(missing)
    with pytest.raises(DataError, match="unknown CSV layout"):
        load_dataset(missing)
    with pytest.raises(DataError, match="nowhere: no such file or folder"):
        labeled_files(tmp_path / "nowhere")


def test_rafdb_list_file_with_aligned_images(tmp_path: Path, face_frame: np.ndarray, cache: Path) -> None:
    aligned = tmp_path / "Image" / "aligned"
    aligned.mkdir(parents=True)
    face = cv2.resize(face_frame[40:320, 180:460], (100, 100))
    for name in ("train_00001", "test_0001"):
        cv2.imwrite(str(aligned / f"{name}_aligned.jpg"), face)
    (tmp_path / "list_patition_label.txt").write_text("train_00001.jpg 1\ntest_0001.jpg 6\n")
    surprise, anger = FERPLUS_CLASSES.index("surprise"), FERPLUS_CLASSES.index("anger")
    for usage, expected in (("Training", [surprise]), ("PublicTest", [anger]), (None, [surprise, anger])):
        data = load_dataset(tmp_path / "list_patition_label.txt", usage=usage)
        assert targets_for(data, FERPLUS_CLASSES).hard.tolist() == expected, "train_* trains, test_* validates"
    assert labeled_files(tmp_path / "list_patition_label.txt") == ([aligned / "test_0001_aligned.jpg"], [anger])
    (tmp_path / "list_patition_label.txt").write_text("train_00001.jpg 9\n")
    with pytest.raises(DataError, match="LABEL in 1..7"):
        load_rafdb(tmp_path / "list_patition_label.txt")


def test_rafdb_official_layout(tmp_path: Path, face_frame: np.ndarray, cache: Path) -> None:
    """``basic/EmoLabel/list_patition_label.txt`` beside ``basic/Image/aligned/``, saved with a byte-order mark."""
    (tmp_path / "basic" / "EmoLabel").mkdir(parents=True)
    (tmp_path / "basic" / "Image" / "aligned").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "basic" / "Image" / "aligned" / "train_00001_aligned.jpg"),
                cv2.resize(face_frame[40:320, 180:460], (100, 100)))
    (tmp_path / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("\ufefftrain_00001.jpg 4\n", encoding="utf-8")
    data = load_dataset(tmp_path / "basic" / "EmoLabel" / "list_patition_label.txt")
    assert targets_for(data, FERPLUS_CLASSES).hard.tolist() == [FERPLUS_CLASSES.index("happiness")]


def test_affectnet_official_layout_and_missing_images(tmp_path: Path, face_frame: np.ndarray, cache: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``Manually_Annotated_file_lists/training.csv`` beside ``Manually_Annotated_Images/``; images that are not
    there are counted as such, and none at all is an error that says so."""
    (tmp_path / "Manually_Annotated_file_lists").mkdir()
    (tmp_path / "Manually_Annotated_Images" / "7").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "Manually_Annotated_Images" / "7" / "face.jpg"), face_frame)
    rows = [["7/face.jpg", 200, 40, 240, 280, "", 3, 0, 0], ["7/gone.jpg", 200, 40, 240, 280, "", 1, 0, 0]]
    path = write_csv(tmp_path / "Manually_Annotated_file_lists" / "training.csv", AFFECTNET_HEADER, rows)
    data = load_dataset(path)
    assert targets_for(data, FERPLUS_CLASSES).hard.tolist() == [FERPLUS_CLASSES.index("surprise")]
    assert "1 of 2 skipped: 1 not found (first: " in capsys.readouterr().out
    assert labeled_files(path) == ([tmp_path / "Manually_Annotated_Images" / "7" / name for name in ("face.jpg", "gone.jpg")],
                                   [FERPLUS_CLASSES.index("surprise"), FERPLUS_CLASSES.index("happiness")])
    path = write_csv(tmp_path / "Manually_Annotated_file_lists" / "validation.csv", AFFECTNET_HEADER, rows[1:])
    with pytest.raises(DataError, match="no face in any of its 1 images .1 not found"):
        load_dataset(path)


def test_labels_csv_as_users_write_them(tmp_path: Path, face_frame: np.ndarray, cache: Path) -> None:
    """Windows separators and stray spaces in paths, a row without a label, a CSV that is not UTF-8."""
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), face_frame)
    path = tmp_path / "labels.csv"
    path.write_text("file,label\n img\\a.jpg , happy \n", encoding="utf-8")
    assert labeled_files(path) == ([tmp_path / "img" / "a.jpg"], [FERPLUS_CLASSES.index("happiness")])
    assert len(load_dataset(path)) == 1
    path.write_text("file,label\nimg/a.jpg\n", encoding="utf-8")
    with pytest.raises(DataError, match="row 2: unknown class ''"):
        labeled_files(path)
    path.write_bytes("file,label\nimg/caf\u00e9.jpg,happy\n".encode("cp1252"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        labeled_files(path)


def test_affectnet_csv_uses_the_face_box_and_skips_non_expressions(tmp_path: Path, face_frame: np.ndarray,
                                                                   cache: Path) -> None:
    (tmp_path / "1").mkdir()
    blank = np.full((360, 640, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "1" / "face.jpg"), face_frame)
    cv2.imwrite(str(tmp_path / "1" / "blank.jpg"), blank)
    path = write_csv(tmp_path / "training.csv", AFFECTNET_HEADER, [["1/face.jpg", 200, 40, 240, 280, "", 7, 0, 0],
                                                                  ["1/blank.jpg", 100, 100, 100, 100, "", 1, 0, 0],
                                                                  ["1/face.jpg", 200, 40, 240, 280, "", 10, 0, 0]])
    data = load_affectnet_csv(path)
    assert len(data) == 2, "no-face (10) rows are skipped; a box without a detection is still the face"
    assert targets_for(data, FERPLUS_CLASSES).hard.tolist() == [FERPLUS_CLASSES.index("contempt"),
                                                                 FERPLUS_CLASSES.index("happiness")]
    assert (data.images[1] == 90).all()


def test_class_folders_skip_hidden_folders_and_unreadable_images(tmp_path: Path, face_frame: np.ndarray, cache: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("happy", "sad", ".git"):
        (tmp_path / name).mkdir()
    cv2.imwrite(str(tmp_path / "happy" / "a.jpg"), face_frame)
    cv2.imwrite(str(tmp_path / "sad" / "small.png"), np.full((48, 48), 77, np.uint8))
    (tmp_path / "sad" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / ".git" / "x.png").write_bytes(b"")
    data = load_image_folder(tmp_path)
    assert len(data) == 2
    assert (data.images[1] == 77).all(), "a 48x48 image is a face crop already: resized, not detected"
    assert f"{tmp_path}: 1 of 3 skipped: 1 unreadable or without a face" in capsys.readouterr().out


def test_class_folders_keep_images_in_sub_folders(tmp_path: Path) -> None:
    """One sub-folder per subject inside each class folder, as posed sets come."""
    (tmp_path / "happy" / "S005").mkdir(parents=True)
    (tmp_path / "happy" / ".cache").mkdir()
    for name in ("S005/a.png", "b.png", ".cache/c.png"):
        cv2.imwrite(str(tmp_path / "happy" / name), np.full((48, 48), 50, np.uint8))
    files, labels = labeled_files(tmp_path)
    assert files == [tmp_path / "happy" / "S005" / "a.png", tmp_path / "happy" / "b.png"]
    assert labels == [FERPLUS_CLASSES.index("happiness")] * 2
