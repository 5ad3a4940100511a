"""The model through the whole pipeline: the smiling segment of the sample clip reads as happiness."""

from __future__ import annotations

from collections import Counter

import pytest
from realtime_media import SAMPLE_HAPPY_FRAMES

from leaf_fer.realtime.annotate import sample_video
from leaf_fer.realtime.pipeline import Pipeline, PipelineConfig
from leaf_fer.realtime.sources import open_source


@pytest.mark.slow
def test_happy_segment_predicted_as_happiness() -> None:
    labels: Counter[str] = Counter()
    with Pipeline(PipelineConfig(draw=False)) as pipeline, open_source(sample_video()) as source:
        for frame in source:
            if frame.index < SAMPLE_HAPPY_FRAMES.start - 30:
                continue  # decode only; start tracking and smoothing a second before the segment
            result = pipeline.process(frame)
            if frame.index in SAMPLE_HAPPY_FRAMES:
                assert len(result.faces) == 1
                labels[result.classes[result.faces[0].label_index()]] += 1
    assert sum(labels.values()) == len(SAMPLE_HAPPY_FRAMES)
    top, count = labels.most_common(1)[0]
    assert top == "happiness", f"label counts over the smiling frames: {dict(labels)}"
    assert all(n < count for label, n in labels.items() if label != "happiness"), dict(labels)
