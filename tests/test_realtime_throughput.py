"""The per-frame speed-ups and the pieces segments are built of, on real media: the threaded reader and writer,
keyframe seeks checked by timestamp (variable frame rate included), MP4 joining, detection on a downscaled copy,
segment planning and track matching."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from realtime_media import media_file

from leaf_fer.realtime.annotate import sample_video
from leaf_fer.realtime.mp4 import concat_mp4
from leaf_fer.realtime.pipeline import Pipeline, PipelineConfig
from leaf_fer.realtime.segments import Segment, face_dtype, match_tracks, pieces, plan, warmup_frames
from leaf_fer.realtime.sources import SourceError, VideoFileSource, VideoIndex, prefetch, scan_video
from leaf_fer.realtime.types import Frame
from leaf_fer.realtime.writers import BackgroundWriter, VideoWriter, WriterError


def _decode(path: Path) -> list[np.ndarray]:
    with VideoFileSource(path) as source:
        return [frame.image for frame in source.frames()]


def test_prefetch_keeps_order_stays_bounded_and_passes_errors_on() -> None:
    made: list[int] = []

    def numbers():
        for i in range(50):
            made.append(i)
            yield i

    consumed = []
    for value in prefetch(numbers(), 3):
        time.sleep(0.002)
        assert len(made) - value <= 5, "the reader runs at most a few items ahead"
        consumed.append(value)
    assert consumed == list(range(50))

    def broken():
        yield 1
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        list(prefetch(broken(), 2))
    before = threading.active_count()
    early = prefetch(iter(range(10_000)), 2)
    assert next(early) == 0
    early.close()
    assert threading.active_count() == before, "closing the consumer stops the reader thread"


def test_background_writer_writes_in_order_and_raises_its_error() -> None:
    written: list[int] = []
    with BackgroundWriter(written.append, 2) as writer:
        for i in range(20):
            writer.put(i)
    assert written == list(range(20))

    def fail(item: int) -> None:
        if item == 3:
            raise WriterError("disk full")
        written.append(item)

    written.clear()
    writer = BackgroundWriter(fail, 2)
    with pytest.raises(WriterError, match="disk full"):
        for i in range(100):
            writer.put(i)
        writer.close()
    assert written == [0, 1, 2], "nothing after the failure is written"


@pytest.mark.parametrize("name", ["sample", "face_noface.mov"])
def test_seeks_land_on_the_frame_asked_for(name: str) -> None:
    """sample.mp4 has a constant frame rate; face_noface.mov a variable one, where OpenCV's own seek misses."""
    path = sample_video() if name == "sample" else media_file(name)
    frames = _decode(path)
    index = scan_video(path, len(frames))
    assert index is not None and len(index.timestamps_ms) == len(frames) and index.keyframes[0] == 0
    for start in (1, 37, len(frames) // 2, len(frames) - 3, *index.keyframes[1:3]):
        with VideoFileSource(path, start, index.timestamps_ms[start], stop=start + 3) as source:
            got = list(source.frames())
        assert [f.index for f in got] == list(range(start, start + 3))
        assert all(np.array_equal(f.image, frames[f.index]) for f in got), f"{name}: frame {start}"
        assert source.last_ms == pytest.approx(index.timestamps_ms[start + 2], abs=1e-3)
    with pytest.raises(SourceError, match="cannot seek"):
        VideoFileSource(path, 5, index.timestamps_ms[5] + 0.5)


def test_scan_refuses_a_video_whose_packets_do_not_number_its_frames() -> None:
    path = media_file("single_face.mp4")
    assert scan_video(path, 72) is not None
    assert scan_video(path, 73) is None, "packets and frames disagree: no segments"


def test_mp4_parts_join_without_reencoding(tmp_path: Path) -> None:
    frames = _decode(sample_video())[:120]
    parts = []
    for i, (start, stop) in enumerate(((0, 50), (50, 51), (51, 120))):
        with VideoWriter(tmp_path / f"part{i}.mp4", 23.976, (640, 360)) as writer:
            for image in frames[start:stop]:
                writer.write(image)
        parts.append(writer.path)
    joined = concat_mp4(parts, tmp_path / "joined.mp4")
    expected = [image for part in parts for image in _decode(part)]
    decoded = _decode(joined)
    assert len(decoded) == 120 and all(np.array_equal(a, b) for a, b in zip(decoded, expected))
    capture = cv2.VideoCapture(str(joined))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 120 and capture.get(cv2.CAP_PROP_FPS) == pytest.approx(23.976, abs=1e-3)
    capture.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joined.mp4", "part0.mp4", "part1.mp4", "part2.mp4"]
    with VideoWriter(tmp_path / "small.mp4", 23.976, (320, 180)) as writer:
        writer.write(cv2.resize(frames[0], (320, 180)))
    with pytest.raises(WriterError, match="encoded differently"):
        concat_mp4([parts[0], writer.path], tmp_path / "mixed.mp4")


def test_large_frames_are_detected_downscaled_and_mapped_back() -> None:
    images = _decode(media_file("single_face.mp4"))[:20:5]
    big = [cv2.resize(image, (1920, 1080), interpolation=cv2.INTER_LINEAR) for image in images]
    results = {}
    for side in (0, 640):
        with Pipeline(PipelineConfig(detect_max_side=side, draw=False)) as pipeline:
            results[side] = [pipeline.process(Frame(i, i / 30, image)) for i, image in enumerate(big)]
    for full, small in zip(results[0], results[640]):
        assert len(full.faces) == len(small.faces) == 1
        a, b = full.faces[0].detection, small.faces[0].detection
        size = a.box[2] - a.box[0]
        assert size > 300, "the face is measured in full-resolution pixels"
        assert np.abs(np.subtract(a.box, b.box)).max() < 0.05 * size
        assert np.abs(a.keypoints - b.keypoints).max() < 0.05 * size
        assert small.crops is not None and small.crops.std() > 10, "aligned from the full-resolution frame"


def test_plans_cut_at_keyframes_and_overlap_by_the_warmup() -> None:
    assert warmup_frames(PipelineConfig()) == 33
    assert warmup_frames(PipelineConfig(smoothing_alpha=0.0)) == 16, "more than max_lost even without smoothing"
    index = VideoIndex(tuple(i * 40.0 for i in range(1000)), tuple(range(0, 1000, 48)))
    segments = plan(index, 4, 33)
    assert len(segments) == 4 and segments[0] == Segment(0, 0, segments[1].emit_from) and segments[-1].stop is None
    for previous, segment in zip(segments, segments[1:]):
        assert segment.read_from in index.keyframes and segment.emit_from == segment.read_from + 33
        assert previous.stop == segment.emit_from and previous.emit_from < segment.read_from
        assert abs(segment.emit_from - 250 * segments.index(segment)) <= 48
    unaligned = plan(VideoIndex(index.timestamps_ms, (0,)), 2, 33)
    assert [s.emit_from for s in unaligned] == [0, 500], "no keyframe near: read from exactly 33 frames before"
    assert pieces(1000, 2, 1000, None) == 2 and pieces(1000, 2, 4000, None) == 1 and pieces(1000, 8, 1000, None) == 4
    assert pieces(1000, 2, 1000, 0) == 1 and pieces(1000, 1, 1000, 120) == 9


def test_tracks_continue_across_a_seam_by_their_boxes() -> None:
    def records(rows):
        out = np.zeros(len(rows), face_dtype(8))
        for row, (frame, track, box) in zip(out, rows):
            row["frame"], row["track"], row["box"] = frame, track, box
        return out

    left, right = (10, 10, 60, 60), (200, 10, 250, 60)
    previous = records([(f, 7, left) for f in range(5)] + [(f, 9, right) for f in range(5)])
    current = records([(f, 2, right) for f in range(5)] + [(f, 1, left) for f in range(3)] + [(4, 3, (400, 0, 450, 50))])
    assert match_tracks(previous, current) == {1: 7, 2: 9}


def test_throughput_report_projects_hours_per_hour_and_marks_targets() -> None:
    from leaf_fer.realtime.throughput import _targets, chart, markdown, projection

    projected = projection(2.0, 1.5, 0.8)
    table = projected["hours_per_hour"]["640x360"]
    assert table[0][0] == 2.0, "one core, one node: the measured rate"
    assert table[projected["cores"].index(8)][projected["nodes"].index(4)] == pytest.approx(2.0 * 32 * 0.8)
    run = {"workers": 1, "video": True, "wall_s": 10.0, "frames": 500, "video_s": 20.0, "fps": 50.0,
           "realtime_factor": 2.0, "segments": 0, "idle_cores": 0.1, "startup_s": 0.3, "steady_fps": 52.0,
           "steady_realtime_factor": 2.1}
    fast = {**run, "workers": 2, "fps": 90.0, "steady_fps": 95.0, "realtime_factor": 9.0}
    pair = {"one_worker": run, "two_workers": fast, "speedup": 1.8, "steady_speedup": 1.83}
    report = {
        "machine": "test", "created": "now", "startup_s": {"one_worker": 0.3, "two_workers": 2.0, "two_workers_cold": 4.0},
        "inputs": ["a.mp4"], "workers": pair, "long_video": {"frames": 500, **pair},
        "hd_720p": [{**run, "video": v, "workers": n, "realtime_factor": 9.0 if n == 2 else 2.0}
                    for n in (1, 2) for v in (True, False)],
        "int8_latency_5_faces": {p: {"faces_per_frame": 5.0, "end_to_end_p50_ms": ms, "infer_p50_ms": 1.0,
                                     "detect_p50_ms": 5.0} for p, ms in (("fp32", 14.0), ("int8", 9.5))},
        "int8_accuracy": {"data": "x.npz", "accuracy_percent": {"fp32": 90.0, "int8": 89.8}, "gap_points": 0.2},
        "projection": projected,
    }
    report["targets"] = _targets(report)
    assert all(t["met"] for t in report["targets"]), [t for t in report["targets"] if not t["met"]]
    text = markdown(report)
    assert "| 8 | 12.8 | 25.6 | 51.2 | 102.4 |" in text, "640x360 at 2x per worker, 0.8 efficiency"
    assert text.count("— **met**") == len(report["targets"])
    assert chart(report)[:8] == b"\x89PNG\r\n\x1a\n"
