"""Overlay annotators on synthetic results: bar panels laid out clear of faces and of each other, legible tags,
boxes in the expression's colour, and an FPS meter that reads the true frame rate."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from leaf_fer.realtime.annotators import (
    BoxAnnotator,
    FpsMeter,
    LabelAnnotator,
    ProbabilityBarsAnnotator,
    class_color,
    label_tags,
)
from leaf_fer.realtime.types import Detection, FacePrediction, Frame, FrameResult, StageTimings

CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
GREY = 128


def result_for(boxes: list[tuple[float, float, float, float]], labels: list[int], shape=(360, 640)) -> FrameResult:
    faces = []
    for track_id, (box, label) in enumerate(zip(boxes, labels), start=1):
        probs = np.full(len(CLASSES), 0.2 / (len(CLASSES) - 1), dtype=np.float32)
        probs[label] = 0.8
        faces.append(FacePrediction(track_id, Detection(box, 0.9), probs, probs))
    image = np.full((*shape, 3), GREY, dtype=np.uint8)
    return FrameResult(Frame(0, 0.0, image), faces, CLASSES, StageTimings())


def overlap(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def relative_luminance(bgr: np.ndarray) -> float:
    c = bgr[::-1].astype(np.float64) / 255.0
    linear = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


ROW = [(40, 140, 120, 220), (190, 140, 270, 220), (340, 140, 420, 220), (490, 140, 570, 220)]
"""Four faces in a row with 70 px between them: less than a full bar panel's width."""
GROUP = [(30, 40, 100, 110), (250, 40, 320, 110), (470, 40, 540, 110), (140, 220, 210, 290), (360, 220, 430, 290)]
EDGES = [(0, 0, 90, 90), (550, 270, 640, 360), (280, 0, 360, 70)]
CROWD = [(20 + 105 * i, 60 + 130 * j, 90 + 105 * i, 130 + 130 * j) for i in range(6) for j in range(2)]
"""Twelve faces packed so tightly that the panels cannot all find room: they still leave the faces free."""


@pytest.mark.parametrize("boxes", [ROW, GROUP, EDGES, CROWD], ids=["row", "group", "edges", "crowd"])
def test_bar_panels_cover_no_face_no_tag_and_no_other_panel(boxes) -> None:
    result = result_for(boxes, [i % len(CLASSES) for i in range(len(boxes))])
    scene = result.frame.image.copy()
    ProbabilityBarsAnnotator().annotate(scene, result)
    for x1, y1, x2, y2 in boxes:
        face = scene[y1 + 1 : y2, x1 + 1 : x2]
        assert (face == GREY).all(), f"a bar panel is drawn over the face {x1, y1, x2, y2}"

    panels = [rect for rect, _ in ProbabilityBarsAnnotator().layout(scene.shape, result)]
    tags = [rect for rect, _ in label_tags(scene.shape, result)]
    for n, panel in enumerate(panels):
        assert 0 <= panel[0] and 0 <= panel[1] and panel[2] <= 640 and panel[3] <= 360, "panel leaves the image"
        if boxes is not CROWD:
            assert not any(overlap(panel, other) for other in panels[n + 1 :]), "two panels overlap"
            assert not any(overlap(panel, tag) for tag in tags), "a panel covers a tag"
    drawn = (scene != GREY).any(axis=2)
    inside = np.zeros_like(drawn)
    for x1, y1, x2, y2 in panels:
        inside[y1:y2, x1:x2] = True
    assert not (drawn & ~inside).any(), "bars drawn outside their panels"


def test_a_lone_face_keeps_every_class_and_a_crowd_keeps_the_most_likely() -> None:
    alone = result_for([(200, 100, 300, 200)], [3])
    [(_, shown)] = ProbabilityBarsAnnotator().layout((360, 640, 3), alone)
    assert shown == list(range(len(CLASSES)))
    crowd = result_for(CROWD, [3] * len(CROWD))
    for _, shown in ProbabilityBarsAnnotator().layout((360, 640, 3), crowd):
        assert 3 in shown

PHOTO = [(531, 305, 631, 436), (686, 289, 788, 424), (434, 219, 514, 314), (314, 236, 409, 359), (216, 62, 306, 175)]
"""The five faces the detector finds in the media group photo (1000x667), in track order: the tags above faces 3
and 4 collide unless one of them moves."""


@pytest.mark.parametrize("boxes", [ROW, GROUP, EDGES, PHOTO], ids=["row", "group", "edges", "photo"])
def test_tags_cover_no_other_tag_and_no_face(boxes) -> None:
    shape = (667, 1000) if boxes is PHOTO else (360, 640)
    result = result_for(boxes, [1] * len(boxes), shape)
    tags = [rect for rect, _ in label_tags((*shape, 3), result)]
    for n, tag in enumerate(tags):
        assert not any(overlap(tag, other) for other in tags[n + 1 :]), "two tags overlap"
        assert not any(overlap(tag, (x1, y1, x2 + 1, y2 + 1)) for x1, y1, x2, y2 in boxes), "a tag covers a face"


@pytest.mark.parametrize("label", range(len(CLASSES)), ids=CLASSES)
def test_tags_are_large_and_high_contrast(label: int) -> None:
    box = (200, 150, 280, 230)
    result = result_for([box], [label])
    scene = result.frame.image.copy()
    LabelAnnotator().annotate(scene, result)
    region = scene[100:150, 200:460]
    changed = (region != GREY).any(axis=2)
    assert changed.any(), "no tag above the face"
    colours, counts = np.unique(region[changed], axis=0, return_counts=True)
    background = colours[np.argmax(counts)]
    lum = relative_luminance(background)
    ink = np.array([relative_luminance(c) for c in region.reshape(-1, 3)]).reshape(region.shape[:2])
    accent = (region == class_color(CLASSES[label])).all(axis=2)
    text = changed & ~accent & (np.abs(region.astype(int) - background).sum(axis=2) > 150)
    rows = np.nonzero(text.any(axis=1))[0]
    assert rows.size and rows[-1] - rows[0] + 1 >= 14, "tag text smaller than an 11 px cap height on a 360p frame"
    text_lum = float(np.median(ink[text]))
    lighter, darker = max(lum, text_lum), min(lum, text_lum)
    assert (lighter + 0.05) / (darker + 0.05) >= 7.0, f"tag text contrast too low on {CLASSES[label]}"


def test_boxes_take_the_colour_of_the_expression_not_of_the_track() -> None:
    boxes = [(100, 100, 180, 180), (300, 100, 380, 180), (500, 100, 580, 180)]
    result = result_for(boxes, [3, 1, 3])
    scene = result.frame.image.copy()
    BoxAnnotator().annotate(scene, result)
    for (x1, y1, _, y2), label in zip(boxes, [3, 1, 3]):
        edge = scene[y1 + 5 : y2 - 5, x1]
        assert (np.abs(edge.astype(int) - class_color(CLASSES[label])).max(axis=1) <= 2).all()


def test_fps_meter_counts_frames_over_time() -> None:
    meter = FpsMeter(window_s=1.0)
    now = 0.0
    for step in itertools.islice(itertools.cycle([0.0137, 0.0697]), 100):
        now += step
        fps = meter.tick(now)
    assert fps == pytest.approx(24.0, abs=0.8), "uneven intervals at 24 fps must still read 24"
    meter.reset()
    assert meter.tick(now + 5.0) == 0.0 and meter.tick(now + 5.5) == pytest.approx(2.0)
