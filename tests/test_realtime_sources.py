"""Sources: files, images, folders, clear errors for bad input, and live sources that never fall behind or hang."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from realtime_media import media_file

from leaf_fer.realtime.sources import (
    FolderSource,
    ImageSource,
    LiveSource,
    SourceError,
    VideoFileSource,
    open_source,
)


def test_video_file_frames_and_timestamps() -> None:
    with open_source(media_file("single_face.mp4")) as source:
        assert isinstance(source, VideoFileSource) and not source.is_live
        frames = list(source)
    assert [f.index for f in frames] == list(range(72))
    assert frames[0].image.shape == (360, 640, 3)
    assert frames[30].timestamp_s == pytest.approx(1.0, abs=1e-6), "30 fps clip"
    assert all(f.decode_ms > 0 for f in frames)
    assert not source.truncated


def test_image_and_folder(tmp_path: Path) -> None:
    single = media_file("single_face.jpg")
    source = open_source(single)
    assert isinstance(source, ImageSource)
    (frame,) = list(source)
    assert frame.still and frame.image.shape == (562, 572, 3)
    shutil.copy(single, tmp_path / "a.jpg")
    shutil.copy(media_file("multi_face.jpg"), tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "c.png").write_bytes(b"broken")
    gray = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
    for name in ("d.tiff", "e.pgm"):
        assert cv2.imwrite(str(tmp_path / name), gray), "grayscale TIFF and PGM, as posed-face sets ship them"
    folder = open_source(tmp_path)
    assert isinstance(folder, FolderSource)
    frames = list(folder)
    assert [f.image.shape for f in frames] == [(562, 572, 3), (667, 1000, 3), (562, 572, 3), (562, 572, 3)]
    assert all(f.still for f in frames)
    assert len(folder.skipped) == 1 and "c.png" in folder.skipped[0]


def test_bad_inputs_give_one_line_errors(tmp_path: Path) -> None:
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 20)
    empty_video = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty_video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    writer.release()
    truncated = tmp_path / "truncated.mov"
    truncated.write_bytes(media_file("face_noface.mov").read_bytes()[:500_000])
    cases = {
        tmp_path / "missing.mp4": "no such file",
        zero: "empty file",
        text: "cannot open as a video",
        empty_video: "no frames",
        truncated: "cannot open as a video",
        tmp_path / "missing.jpg": "no such file",
    }
    (tmp_path / "empty_dir").mkdir()
    cases[tmp_path / "empty_dir"] = "no images"
    for path, expected in cases.items():
        with pytest.raises(SourceError, match=expected) as info:
            open_source(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_video_is_flagged(tmp_path: Path) -> None:
    data = media_file("WolfgangLanger_Pexels.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    source = open_source(cut)
    assert isinstance(source, VideoFileSource)
    frames = sum(1 for _ in source)
    assert 0 < frames < 472 and source.truncated


def test_missing_webcam_fails_fast() -> None:
    started = time.perf_counter()
    with pytest.raises(SourceError, match="webcam 97: not found"):
        open_source(97)
    assert time.perf_counter() - started < 10


class FakeCamera:
    """A capture that produces a numbered frame every ``period`` seconds; can stall or fail after some frames."""

    def __init__(self, period: float = 0.005, fail_after: int | None = None, hang_after: int | None = None) -> None:
        self.period = period
        self.fail_after = fail_after
        self.hang_after = hang_after
        self.count = 0
        self.released = threading.Event()

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.period)
        if self.hang_after is not None and self.count >= self.hang_after:
            self.released.wait(30)
            return False, None
        if self.fail_after is not None and self.count >= self.fail_after:
            return False, None
        self.count += 1
        return True, np.full((8, 8, 3), self.count % 256, np.uint8)

    def release(self) -> None:
        self.released.set()


def test_live_source_drops_stale_frames_for_a_slow_consumer() -> None:
    camera = FakeCamera(period=0.004)
    source = LiveSource(lambda: camera, "fake")
    latencies, indices = [], []
    for frame in source:
        latencies.append(time.perf_counter() - frame.captured_at)
        indices.append(frame.index)
        time.sleep(0.03)  # a consumer ~7x slower than the camera
        if len(indices) == 15:
            break
    source.close()
    assert indices == sorted(indices) and len(set(indices)) == len(indices), "newest frames, in order, never twice"
    assert indices[-1] - indices[0] > 3 * (len(indices) - 1), "most frames were skipped, not queued"
    assert source.dropped > 30
    assert max(latencies[1:]) < 0.05, "a handed-out frame is about one camera period old; a queue would add ~26 ms per frame"


def test_live_source_that_stops_reconnects_then_errors() -> None:
    opened: list[FakeCamera] = []

    def opener() -> FakeCamera | None:
        if opened:
            return None  # the camera is gone for good
        opened.append(FakeCamera(fail_after=5))
        return opened[-1]

    source = LiveSource(opener, "webcam 0", max_reconnects=2, reconnect_delay_s=0.05, stall_timeout_s=5)
    started = time.perf_counter()
    with pytest.raises(SourceError, match="stopped delivering frames; 2 reconnect attempts failed"):
        for _ in source:
            pass
    assert time.perf_counter() - started < 3


def test_live_source_reconnects_and_continues() -> None:
    cameras = [FakeCamera(fail_after=3), FakeCamera()]
    source = LiveSource(lambda: cameras.pop(0) if cameras else None, "flaky", reconnect_delay_s=0.02)
    got = 0
    for _ in source:
        got += 1
        time.sleep(0.001)
        if got == 10:
            break
    source.close()
    assert source.reconnects == 1 and got == 10


def test_live_source_that_hangs_times_out() -> None:
    camera = FakeCamera(hang_after=2)
    source = LiveSource(lambda: camera, "webcam 1", stall_timeout_s=0.5)
    started = time.perf_counter()
    with pytest.raises(SourceError, match="no frame for 0.5 s"):
        for _ in source:
            pass
    assert time.perf_counter() - started < 3


def test_live_unopenable() -> None:
    with pytest.raises(SourceError, match="cannot open"):
        LiveSource(lambda: None, "nothing")


def test_video_file_played_live_keeps_its_pace() -> None:
    source = open_source(media_file("single_face.mp4"), live=True)
    assert isinstance(source, LiveSource) and source.fps == pytest.approx(30.0)
    started = time.perf_counter()
    frames = list(source)
    elapsed = time.perf_counter() - started
    assert elapsed > 72 / 30 * 0.8, "played at its frame rate, not as fast as decoding allows"
    assert frames[-1].index == 71


def test_stream_errors_redact_every_credential() -> None:
    with pytest.raises(SourceError) as refused:
        open_source("rtsp://viewer:p@ss@127.0.0.1:9/live?token=a@b", stall_timeout_s=1)
    message = str(refused.value)
    assert message.startswith("rtsp://***@127.0.0.1:9/live?token=a@b: cannot open stream")
    assert "viewer" not in message and "p@ss" not in message and "ss@" not in message
