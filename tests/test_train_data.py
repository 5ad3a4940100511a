import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from leaf_fer.train.data import (
    DataError,
    FaceData,
    ferplus_majority,
    load_dataset,
    load_fer2013_csv,
    load_image_folder,
    load_npz,
    stratified_fraction,
    targets_for,
)
from leaf_fer.common import ConfigError
from leaf_fer.train.config import split_extra
from leaf_fer.train.model_spec import FER2013_CLASSES, FERPLUS_CLASSES


def write_fer_csvs(folder, rows):
    """rows: (emotion, pixels array, usage, votes list of 10)."""
    fer = folder / "fer2013.csv"
    new = folder / "fer2013new.csv"
    with open(fer, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for emotion, pixels, usage, _ in rows:
            writer.writerow([emotion, " ".join(map(str, pixels.ravel())), usage])
    with open(new, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                         "contempt", "unknown", "NF"])
        for i, (_, _, usage, votes) in enumerate(rows):
            writer.writerow([usage, f"fer{i:07d}.png", *votes])
    return fer, new


def test_npz_loads_shared_data(publictest_npz):
    data = load_npz(publictest_npz)
    assert data.images.shape == (3589, 48, 48) and data.images.dtype == np.uint8
    assert data.ferplus_votes.shape == (3589, 10)
    targets = targets_for(data, FERPLUS_CLASSES)
    assert np.allclose(targets.soft[targets.usable].sum(axis=1), 1.0)
    assert 2500 < (targets.hard >= 0).sum() < 3589


def test_fer2013_csv_pair(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 48, 48))
    rows = [
        (3, images[0], "Training", [0, 9, 1, 0, 0, 0, 0, 0, 0, 0]),
        (0, images[1], "Training", [2, 0, 0, 0, 6, 2, 0, 0, 0, 0]),
        (6, images[2], "PublicTest", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (4, images[3], "Training", [0, 0, 0, 0, 0, 0, 0, 0, 3, 7]),
    ]
    fer, new = write_fer_csvs(tmp_path, rows)
    data = load_fer2013_csv(fer, new, usage="Training")
    assert len(data) == 3
    np.testing.assert_array_equal(data.images[1], images[1])
    assert data.fer2013_labels.tolist() == [3, 0, 4]
    targets = targets_for(data, FERPLUS_CLASSES)
    assert targets.hard.tolist() == [1, 4, -1]
    assert targets.usable.tolist() == [True, True, False]
    np.testing.assert_allclose(targets.soft[1], [0.2, 0, 0, 0, 0.6, 0.2, 0, 0])
    public = load_dataset(fer, new, usage="PublicTest")
    assert len(public) == 1 and targets_for(public, FERPLUS_CLASSES).hard.tolist() == [0]
    labels_only = load_fer2013_csv(fer, None, usage=None)
    assert targets_for(labels_only, FER2013_CLASSES).hard.tolist() == [3, 0, 6, 4]
    kaggle_train = tmp_path / "train.csv"
    kaggle_train.write_text("emotion,pixels\n" + "".join(f"{label},{' '.join(map(str, image.ravel()))}\n"
                                                         for label, image, _, _ in rows))
    assert load_dataset(kaggle_train).fer2013_labels.tolist() == [3, 0, 6, 4], "no Usage column: every row"


def test_fer2013_csv_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_fer2013_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("label,pixels,Usage\n0,1 2 3,Training\n")
    with pytest.raises(DataError, match="missing column"):
        load_fer2013_csv(bad)
    short = tmp_path / "short.csv"
    short.write_text("emotion,pixels,Usage\n0,1 2 3,Training\n")
    with pytest.raises(DataError, match="2304 pixel values"):
        load_fer2013_csv(short)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(1)
    for name, count in (("happy", 2), ("Sad", 1), ("neutral", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), rng.integers(0, 256, (64, 56, 3), dtype=np.uint8))
    data = load_image_folder(tmp_path)
    assert data.images.shape == (6, 48, 48)
    hard = targets_for(data, FERPLUS_CLASSES).hard
    assert sorted(hard.tolist()) == [0, 0, 0, 1, 1, 3]


def test_image_folder_errors(tmp_path, capsys):
    with pytest.raises(DataError, match="folder not found"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "bored").mkdir()
    (tmp_path / "bored" / "a.png").write_bytes(b"any")
    with pytest.raises(DataError, match=r"no images found in class sub-folders; expected a FER\+ class \(neutral"):
        load_image_folder(tmp_path)
    assert "'bored' is not an expression class; skipped" in capsys.readouterr().out
    (tmp_path / "bored" / "a.png").unlink()
    (tmp_path / "bored").rmdir()
    (tmp_path / "happy").mkdir()
    (tmp_path / "happy" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="no face in any of its 1 images"):
        load_image_folder(tmp_path)
    (tmp_path / "happy" / "broken.png").unlink()
    cv2.imwrite(str(tmp_path / "happy" / "tiny.png"), np.zeros((3, 3), np.uint8))
    with pytest.raises(DataError, match="cannot be made a 48x48 face"):
        load_image_folder(tmp_path)


def test_npz_errors(tmp_path):
    path = tmp_path / "faces.npz"
    np.savez(path, images=np.zeros((2, 48, 48), np.uint8))
    with pytest.raises(DataError, match="ferplus_votes' or 'labels"):
        load_npz(path)
    np.savez(path, images=np.zeros((2, 48, 48), np.uint8), labels=np.array([0, 9]))
    with pytest.raises(DataError, match="0..7"):
        load_npz(path)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable npz"):
        load_npz(tmp_path / "junk.npz")


def test_majority_rule():
    votes = np.array([
        [6, 4, 0, 0, 0, 0, 0, 0, 0, 0],  # neutral has 6 of 10 → neutral
        [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],  # tie at half → no majority
        [0, 0, 0, 0, 0, 0, 0, 0, 8, 2],  # unknown majority → dropped
        [0, 0, 0, 0, 0, 0, 0, 3, 0, 1],  # contempt 3 of 4 → contempt
    ])
    assert ferplus_majority(votes).tolist() == [0, -1, -1, 7]


def test_stratified_fraction_is_seeded_and_per_class():
    labels = np.repeat(np.arange(4), [100, 50, 10, 1])
    first = stratified_fraction(labels, 0.1, seed=3)
    assert first.tolist() == stratified_fraction(labels, 0.1, seed=3).tolist()
    assert first.tolist() != stratified_fraction(labels, 0.1, seed=4).tolist()
    counts = np.bincount(labels[first], minlength=4)
    assert counts.tolist() == [10, 5, 1, 1]


def test_subset_and_hash():
    data = FaceData(images=np.arange(4 * 48 * 48, dtype=np.uint8).reshape(4, 48, 48), fer2013_labels=np.arange(4))
    part = data.subset(np.array([1, 3]))
    assert part.fer2013_labels.tolist() == [1, 3]
    assert part.content_hash() != data.content_hash()


def test_unlabeled_faces_from_folder_and_npz(tmp_path):
    from leaf_fer.train.data import load_unlabeled_faces

    crops = tmp_path / "crops" / "clip1"
    crops.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(crops / "a.png"), rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    cv2.imwrite(str(crops / "b.jpg"), rng.integers(0, 255, (40, 40), dtype=np.uint8))
    (crops / "notes.txt").write_text("ignored")
    faces = load_unlabeled_faces(tmp_path / "crops")
    assert faces.shape == (1, 48, 48) and faces.dtype == np.uint8, "a 96 px image without a face is skipped"

    np.savez(tmp_path / "u.npz", images=rng.integers(0, 255, (5, 48, 48), dtype=np.uint8))
    assert load_unlabeled_faces(tmp_path / "u.npz").shape == (5, 48, 48)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no face images"):
        load_unlabeled_faces(tmp_path / "empty")
    (crops / "broken.png").write_bytes(b"not a png")
    assert load_unlabeled_faces(tmp_path / "crops").shape == (1, 48, 48), "an unreadable image is skipped"
    with pytest.raises(DataError, match="expected an .npz file, a face image or a folder"):
        load_unlabeled_faces(tmp_path / "missing")
    (tmp_path / "run" / "clip").mkdir(parents=True)
    np.savez(tmp_path / "run" / "clip" / "clip.faces.npz", images=rng.integers(0, 255, (3, 48, 48), dtype=np.uint8))
    assert load_unlabeled_faces(f"{tmp_path}/**/*.faces.npz").shape == (3, 48, 48)
    with pytest.raises(DataError, match="no files match"):
        load_unlabeled_faces(f"{tmp_path}/**/*.nothing")


def test_float_images_are_scaled_or_refused_never_cast_blindly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 48, 48), dtype=np.uint8)
    votes = np.eye(10, dtype=np.int64)[[0, 1, 2, 3]] * 10
    for name, images, said in (("unit", pixels / 255.0, "scaled by 255"), ("byte", pixels.astype(np.float32), "rounded")):
        np.savez(tmp_path / f"{name}.npz", images=images, ferplus_votes=votes)
        with caplog.at_level(logging.WARNING):
            loaded = load_npz(tmp_path / f"{name}.npz")
        assert loaded.images.dtype == np.uint8 and np.array_equal(loaded.images, pixels), name
        assert said in caplog.text
    for images in (pixels * 2.0 - 10, np.full((4, 48, 48), np.nan, np.float32), pixels.astype(np.int16) * 2):
        np.savez(tmp_path / "bad.npz", images=images, ferplus_votes=votes)
        with pytest.raises(DataError, match="range|NaN"):
            load_npz(tmp_path / "bad.npz")


def test_extra_data_weight_after_the_last_at_sign(tmp_path: Path) -> None:
    assert split_extra("sets/tcce.csv@6.4") == ("sets/tcce.csv", 6.4)
    assert split_extra("sets/tcce.csv") == ("sets/tcce.csv", 1.0)
    (tmp_path / "data@2024").mkdir()
    (tmp_path / "data@2024" / "x.csv").write_text("file,label\n")
    named = str(tmp_path / "data@2024" / "x.csv")
    assert split_extra(named) == (named, 1.0), "the @ of an existing path is the path's"
    assert split_extra(f"{named}@0.1") == (named, 0.1)
    with pytest.raises(ConfigError, match="expected PATH or PATH@WEIGHT with a number"):
        split_extra("x.csv@many")
    for bad in ("x.csv@0", "x.csv@-1", "x.csv@nan", "x.csv@inf"):
        with pytest.raises(ConfigError, match="must be a number > 0"):
            split_extra(bad)
