"""The pipeline on real clips: stable ids, one batched inference per frame, timings, overlay, stills."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from realtime_media import MULTI_FACE_JPG_FACE_CENTRES, media_file

from leaf_fer.engines.predictor import Predictor
from leaf_fer.realtime.pipeline import Pipeline, PipelineConfig, create_predictor
from leaf_fer.realtime.sources import open_source
from leaf_fer.realtime.types import Frame


class CountingPredictor(Predictor):
    """Wraps a real predictor and records the batch size of every call."""

    def __init__(self, inner: Predictor) -> None:
        super().__init__(inner.metadata)
        self.inner = inner
        self.backend_name = inner.backend_name
        self.batches: list[int] = []

    def predict(self, faces: np.ndarray) -> np.ndarray:
        self.batches.append(len(faces))
        return self.inner.predict(faces)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        raise AssertionError("predict is overridden")


@pytest.fixture(scope="module")
def predictor() -> Iterator[CountingPredictor]:
    with create_predictor(PipelineConfig()) as inner:
        yield CountingPredictor(inner)


def test_single_face_clip_one_stable_id(predictor: CountingPredictor) -> None:
    with Pipeline(PipelineConfig(), predictor=predictor) as pipeline, open_source(media_file("single_face.mp4")) as src:
        predictor.batches.clear()
        results = list(pipeline.run(src))
    assert len(results) == 72
    assert all(len(r.faces) == 1 for r in results), "the face is found in every frame"
    assert {f.track_id for r in results for f in r.faces} == {1}, "one id over the whole clip"
    assert predictor.batches == [1] * 72, "one inference call per frame"
    for r in results:
        face = r.faces[0]
        assert face.probabilities.shape == (len(pipeline.classes),)
        assert face.probabilities.sum() == pytest.approx(1.0, abs=1e-4)
        assert face.smoothed.sum() == pytest.approx(1.0, abs=1e-4)
        t = r.timings
        assert t.decode_ms > 0 and t.detect_ms > 0 and t.infer_ms > 0 and t.draw_ms > 0
        assert t.total_ms == pytest.approx(
            t.decode_ms + t.detect_ms + t.track_align_ms + t.infer_ms + t.smooth_ms + t.draw_ms
        )
        assert r.latency_ms >= t.total_ms - t.decode_ms - 1e-6
        assert r.annotated is not None and r.annotated.shape == r.frame.image.shape
    changed = np.any(results[0].annotated != results[0].frame.image, axis=2)
    x1, y1, x2, y2 = (int(v) for v in results[0].faces[0].detection.box)
    assert changed[y1 - 1 : y1 + 2, x1:x2].mean() > 0.5, "the box is drawn on the overlay"
    assert not np.shares_memory(results[0].annotated, results[0].frame.image), "the source frame is left untouched"


def test_group_photo_one_batched_call(predictor: CountingPredictor) -> None:
    config = PipelineConfig(detector_range="full", draw=False)
    with Pipeline(config, predictor=predictor) as pipeline, open_source(media_file("multi_face.jpg")) as src:
        predictor.batches.clear()
        (result,) = list(pipeline.run(src))
    assert predictor.batches == [len(MULTI_FACE_JPG_FACE_CENTRES)], "all faces of the frame in one call"
    assert sorted(f.track_id for f in result.faces) == [1, 2, 3, 4, 5]
    assert result.annotated is None


def test_stills_do_not_share_tracks_or_smoothing(predictor: CountingPredictor) -> None:
    image = open_source(media_file("single_face.jpg"))
    (frame,) = list(image)
    with Pipeline(PipelineConfig(smoothing_alpha=0.9, draw=False), predictor=predictor) as pipeline:
        first = pipeline.process(frame)
        second = pipeline.process(frame)
    assert first.faces[0].track_id == second.faces[0].track_id == 1
    np.testing.assert_array_equal(second.faces[0].smoothed, second.faces[0].probabilities)


def test_frames_without_faces(predictor: CountingPredictor) -> None:
    blank = Frame(index=0, timestamp_s=0.0, image=np.full((360, 640, 3), 90, np.uint8))
    with Pipeline(PipelineConfig(), predictor=predictor) as pipeline:
        predictor.batches.clear()
        result = pipeline.process(blank)
    assert result.faces == [] and predictor.batches == [], "no inference call without faces"
    assert result.annotated is not None


def test_config_validation() -> None:
    for bad in (
        PipelineConfig(backend="cuda"),
        PipelineConfig(detector_range="far"),
        PipelineConfig(smoothing_alpha=1.0),
        PipelineConfig(min_detection_confidence=2.0),
        PipelineConfig(max_faces=0),
    ):
        with pytest.raises(ValueError):
            bad.validate()


def test_rejects_non_bgr_frames(predictor: CountingPredictor) -> None:
    with Pipeline(PipelineConfig(), predictor=predictor) as pipeline, pytest.raises(ValueError, match="BGR"):
        pipeline.process(Frame(0, 0.0, np.zeros((10, 10), np.uint8)))


def test_threads_also_set_opencvs_thread_team(predictor: CountingPredictor) -> None:
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        with Pipeline(PipelineConfig(threads=0), predictor=predictor):
            assert cv2.getNumThreads() == 2, "0 leaves OpenCV's default"
        with Pipeline(PipelineConfig(threads=1), predictor=predictor):
            assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
