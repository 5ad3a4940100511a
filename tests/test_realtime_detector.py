"""Face detection on real images and clips: faces where they are, none where there are none."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from realtime_media import (
    FACE_NOFACE_EMPTY_FRAMES,
    FACE_NOFACE_FACE_FRAMES,
    MULTI_FACE_JPG_FACE_CENTRES,
    SINGLE_FACE_JPG_FACE_CENTRE,
    media_file,
)

from leaf_fer.realtime.align import align_faces
from leaf_fer.realtime.detector import CascadeDetector, FaceDetector, YuNetDetector, model_bytes
from leaf_fer.realtime.sources import open_source, read_image


def _rgb(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _contains(box: tuple[float, float, float, float], point: tuple[float, float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def test_models_are_shipped_in_the_package() -> None:
    for detector_range in ("short", "full"):
        assert len(model_bytes(detector_range)) > 100_000
    with pytest.raises(ValueError, match="detector range"):
        model_bytes("medium")  # type: ignore[arg-type]


@pytest.mark.parametrize("detector_range", ["short", "full"])
def test_single_face_image(detector_range: str) -> None:
    image = read_image(media_file("single_face.jpg"))
    with FaceDetector(detector_range) as detector:  # type: ignore[arg-type]
        detections = detector.detect(_rgb(image))
    assert len(detections) == 1
    face = detections[0]
    assert _contains(face.box, SINGLE_FACE_JPG_FACE_CENTRE)
    width = face.box[2] - face.box[0]
    assert 150 < width < 260, "the face is about 200 px wide"
    right_eye, left_eye, nose, mouth = face.keypoints[:4]
    assert right_eye[0] < nose[0] < left_eye[0], "subject's right eye is on the image's left"
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1], "eyes above nose above mouth"
    assert face.score > 0.8


def test_group_photo_all_five_faces_full_range() -> None:
    image = read_image(media_file("multi_face.jpg"))
    with FaceDetector("full") as detector:
        detections = detector.detect(_rgb(image))
    assert len(detections) == len(MULTI_FACE_JPG_FACE_CENTRES)
    for centre in MULTI_FACE_JPG_FACE_CENTRES:
        assert sum(_contains(d.box, centre) for d in detections) == 1, f"face at {centre} found exactly once"
    scores = [d.score for d in detections]
    assert scores == sorted(scores, reverse=True)


def test_max_faces_keeps_the_best() -> None:
    image = read_image(media_file("multi_face.jpg"))
    with FaceDetector("full", max_faces=2) as detector:
        assert len(detector.detect(_rgb(image))) == 2


def _faces_per_frame(name: str, step: int = 1) -> dict[int, int]:
    counts: dict[int, int] = {}
    with FaceDetector("short") as detector, open_source(media_file(name)) as source:
        for frame in source:
            if frame.index % step == 0:
                counts[frame.index] = len(detector.detect(_rgb(frame.image), int(frame.timestamp_s * 1000)))
    return counts


def test_no_face_clip_has_no_detections() -> None:
    counts = _faces_per_frame("no_face.mp4")
    assert len(counts) >= 90
    assert sum(counts.values()) == 0, {i: n for i, n in counts.items() if n}


def test_face_then_no_face_clip() -> None:
    counts = _faces_per_frame("face_noface.mov", step=2)
    with_face = [counts[i] for i in FACE_NOFACE_FACE_FRAMES if i in counts]
    without = [counts[i] for i in FACE_NOFACE_EMPTY_FRAMES if i in counts]
    assert with_face and all(n == 1 for n in with_face)
    assert without and all(n == 0 for n in without)


def test_video_timestamps_may_restart() -> None:
    """A second video through the same detector restarts at t=0; the wrapper keeps MediaPipe's timestamps increasing."""
    rgb = _rgb(read_image(media_file("single_face.jpg")))
    with FaceDetector("short") as detector:
        assert len(detector.detect(rgb, 1000)) == 1
        assert len(detector.detect(rgb, 0)) == 1
        assert len(detector.detect(rgb)) == 1


def test_rejects_non_rgb() -> None:
    with FaceDetector("short") as detector, pytest.raises(ValueError, match="RGB uint8"):
        detector.detect(np.zeros((10, 10), np.uint8))


def test_group_photo_missed_by_mediapipe_is_found_by_the_yunet_fallback() -> None:
    rgb = _rgb(read_image(media_file("multi_face.jpg")))
    with CascadeDetector("short", fallback=False) as mediapipe_only:
        assert mediapipe_only.detect(rgb) == []
    with CascadeDetector("short") as cascade:
        detections = cascade.detect(rgb)
        assert cascade.last_detector == "yunet"
    for centre in MULTI_FACE_JPG_FACE_CENTRES:
        assert sum(_contains(d.box, centre) for d in detections) == 1


def test_yunet_keypoints_are_moved_where_mediapipe_puts_them() -> None:
    image = read_image(media_file("single_face.jpg"))
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    with FaceDetector("short") as mediapipe, YuNetDetector() as yunet:
        a, b = mediapipe.detect(_rgb(image)), yunet.detect(_rgb(image))
    assert len(a) == len(b) == 1 and _contains(b[0].box, SINGLE_FACE_JPG_FACE_CENTRE)
    for point in range(4):
        assert np.linalg.norm(a[0].keypoints[point] - b[0].keypoints[point]) < 0.2 * np.linalg.norm(
            a[0].keypoints[1] - a[0].keypoints[0]), f"keypoint {point}"
    crops = [align_faces(gray, d, 48)[0].astype(float) for d in (a, b)]
    assert np.abs(crops[0] - crops[1]).mean() < 20


def test_tight_crop_and_blank_frame() -> None:
    image = read_image(media_file("single_face.jpg"))
    x, y = SINGLE_FACE_JPG_FACE_CENTRE
    tight = np.ascontiguousarray(_rgb(image)[y - 110:y + 110, x - 90:x + 90])
    with CascadeDetector("short") as cascade:
        assert len(cascade.detect(tight)) == 1
        assert cascade.detect(np.zeros((360, 640, 3), np.uint8)) == []


def test_a_detector_left_open_exits_without_a_traceback() -> None:
    """MediaPipe cannot close a task once the interpreter shuts its threads down; an unclosed detector is closed
    before that."""
    script = ("import numpy as np\n"
              "from leaf_fer.realtime.detector import FaceDetector\n"
              "detector = FaceDetector()\n"
              "detector.detect(np.zeros((64, 64, 3), np.uint8), 0)\n"
              "detector.detect(np.zeros((64, 64, 3), np.uint8))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
