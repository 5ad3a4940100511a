"""GUI tests: the real window and the real realtime pipeline on the shared sample video, under offscreen Qt."""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QPoint, Qt
from PyQt6.QtGui import QColor, QImage
from PyQt6.QtWidgets import QApplication

from leaf_fer.cli import COMMAND_MODULES
from leaf_fer.gui.cameras import candidate_camera_indices
from leaf_fer.gui.commands import register
from leaf_fer.gui.main_window import MainWindow
from leaf_fer.gui.settings_form import SettingsForm
from leaf_fer.gui.widgets import HistoryPlot, ProbabilityBars, VideoView, class_color
from leaf_fer.gui.worker import FramePacket, PipelineFactory, PipelineWorker, SourceFactory
from leaf_fer.realtime.annotators import class_color as overlay_class_color
from leaf_fer.realtime.commands import pipeline_config
from leaf_fer.realtime.settings import PipelineConfig, option_fields
from leaf_fer.realtime.sources import LiveSource, Source, SourceError
from leaf_fer.realtime.types import Detection, FacePrediction, Frame, FrameResult, StageTimings

SHARED = Path(os.environ.get("LEAF_FER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
VIDEO = SHARED / "media" / "single_face.mp4"
LONG_VIDEO = SHARED / "media" / "WolfgangLanger_Pexels.mp4"
MULTI_FACE = SHARED / "media" / "multi_face.jpg"
needs_video = pytest.mark.skipif(not VIDEO.is_file(), reason=f"shared sample video not found at {VIDEO}")
needs_long_video = pytest.mark.skipif(not LONG_VIDEO.is_file(), reason=f"shared 20 s video not found at {LONG_VIDEO}")
FRAME_TIMEOUT_MS = 20000


def qimage_to_bgr(image: QImage) -> np.ndarray:
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    ptr = rgb.constBits()
    assert ptr is not None
    ptr.setsize(rgb.sizeInBytes())
    rows = np.frombuffer(ptr.asstring(), dtype=np.uint8).reshape(rgb.height(), rgb.bytesPerLine())
    return rows[:, : rgb.width() * 3].reshape(rgb.height(), rgb.width(), 3)[:, :, ::-1].copy()


def read_frame(path: Path, index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    try:
        for _ in range(index + 1):
            ok, image = capture.read()
            assert ok, f"could not read frame {index} of {path}"
        return image
    finally:
        capture.release()


def overlay_rgb(name: str) -> tuple[int, int, int]:
    blue, green, red = overlay_class_color(name)
    return red, green, blue


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture
def make_window(qtbot, tmp_path: Path) -> Iterator[Callable[..., MainWindow]]:
    """Real windows (no camera probing); each is closed at the end and must stop its worker in time."""
    made: list[MainWindow] = []

    def make(**kwargs: Any) -> MainWindow:
        kwargs.setdefault("output_dir", tmp_path / "out")
        kwargs.setdefault("probe_cameras_on_start", False)
        win = MainWindow(**kwargs)
        win.show()
        made.append(win)
        return win

    yield make
    for win in made:
        win.close()
        qtbot.waitUntil(lambda: win.worker is None and not win.isVisible(), timeout=15000)
        win.deleteLater()


@pytest.fixture
def window(make_window: Callable[..., MainWindow]) -> MainWindow:
    return make_window()


def wait_frames(qtbot, win: MainWindow, count: int) -> None:
    start = win.view.frames_shown
    qtbot.waitUntil(lambda: win.view.frames_shown >= start + count, timeout=FRAME_TIMEOUT_MS)


FAKE_CLASSES = ("neutral", "happiness", "surprise", "sadness")


class FakePipeline:
    """Stands in for the realtime pipeline: one face per frame, each frame taking the next of ``work_s`` seconds."""

    classes = FAKE_CLASSES

    def __init__(self, config: PipelineConfig, work_s: tuple[float, ...]) -> None:
        self.backend_name = "onnxruntime" if config.backend == "auto" else config.backend
        self._work = itertools.cycle(work_s)

    def process(self, frame: Frame) -> FrameResult:
        time.sleep(next(self._work))
        probs = np.array([0.1, 0.7, 0.1, 0.1], dtype=np.float32)
        face = FacePrediction(1, Detection((40.0, 30.0, 120.0, 110.0), 0.9), probs, probs)
        return FrameResult(frame, [face], FAKE_CLASSES, StageTimings(), annotated=frame.image)

    def close(self) -> None:
        pass


def fake_pipelines(work_s: tuple[float, ...] = (0.0,)) -> PipelineFactory:
    """Fake pipelines on any backend but TensorRT, which fails as it does where it is not installed."""

    def make(config: PipelineConfig) -> FakePipeline:
        if config.backend == "tensorrt":
            raise RuntimeError("TensorRT backend unavailable: tensorrt is not installed")
        return FakePipeline(config, work_s)

    return make


class SyntheticVideo(Source):
    """A video file of grey frames whose brightness steps with the frame index."""

    def __init__(self, name: str, frames: int, fps: float) -> None:
        self.name, self.frame_count, self.fps = name, frames, fps

    def frames(self) -> Iterator[Frame]:
        return (Frame(i, i / self.fps, np.full((180, 320, 3), i % 200, np.uint8)) for i in range(self.frame_count))


def synthetic_video(frames: int = 100000, fps: float = 24.0) -> SourceFactory:
    return lambda spec: SyntheticVideo(str(spec), frames, fps)


@pytest.fixture
def fake_window(make_window: Callable[..., MainWindow]) -> Callable[..., MainWindow]:
    """A window on fake pipelines and a synthetic 24 fps video (start it with ``win.start()``)."""

    def make(work_s: tuple[float, ...] = (0.0,), frames: int = 100000, **kwargs: Any) -> MainWindow:
        win = make_window(pipeline_factory=fake_pipelines(work_s), source_factory=synthetic_video(frames), **kwargs)
        win.source_combo.setEditText("clip.mp4")
        return win

    return make


@needs_video
def test_frames_are_shown_with_overlay_on_the_face(qtbot, window: MainWindow) -> None:
    window.open_file(VIDEO)
    wait_frames(qtbot, window, 2)
    first = qimage_to_bgr(window.view.image())
    qtbot.waitUntil(lambda: window.last_packet is not None and len(window.last_packet.faces) == 1, timeout=FRAME_TIMEOUT_MS)
    wait_frames(qtbot, window, 3)
    packet: FramePacket = window.last_packet
    shown = qimage_to_bgr(window.view.image())
    assert shown.shape == (360, 640, 3)
    assert np.abs(shown.astype(int) - first.astype(int)).mean() > 0.5, "the view did not change between frames"

    raw = read_frame(VIDEO, packet.index)
    grey = cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)
    cascade = cv2.CascadeClassifier(str(Path(cv2.__file__).parent / "data" / "haarcascade_frontalface_default.xml"))
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(60, 60))
    assert len(found) >= 1, "the independent Haar detector found no face in the sample frame"
    x, y, w, h = max(found, key=lambda r: r[2] * r[3])
    face = packet.faces[0]
    assert iou(face.box, (x, y, x + w, y + h)) > 0.3

    x1, y1, x2, y2 = (int(round(v)) for v in face.box)
    outline = np.concatenate([shown[y1 + 6 : y2 - 6, x1], shown[y2, x1 + 6 : x2 - 6]])
    original = np.concatenate([raw[y1 + 6 : y2 - 6, x1], raw[y2, x1 + 6 : x2 - 6]])
    colour = np.array(overlay_class_color(face.label))
    on_colour = np.abs(outline.astype(int) - colour).max(axis=1) <= 40
    assert on_colour.mean() > 0.9, "the face box outline is not drawn in the colour of the face's expression"
    changed = np.abs(outline.astype(int) - original.astype(int)).max(axis=1) > 40
    assert changed.mean() > 0.8, "the outline pixels are the video's own, not an overlay"
    inside = shown[y1 + 20 : y2 - 20, x1 + 20 : x2 - 20]
    assert (np.abs(inside.astype(int) - colour).max(axis=2) <= 40).mean() < 0.2, "the face itself is painted over"

    assert window.faces_label.text() == "Faces: 1"
    assert window.fps_label.text().startswith("FPS: ") and float(window.fps_label.text()[5:]) > 0
    assert float(window.latency_label.text().split()[1]) > 0
    assert any(name in window.backend_label.text() for name in ("torch", "ONNX Runtime", "TensorRT"))
    assert window.face_panel.selected_track == face.track_id
    assert window.face_panel.bars.values() == pytest.approx(face.probabilities)
    assert len(window.face_panel.history) >= 2


@needs_long_video
def test_recording_writes_playable_video_csv_and_snapshot(qtbot, window: MainWindow) -> None:
    window.open_file(LONG_VIDEO)
    wait_frames(qtbot, window, 1)
    window.record_action.trigger()
    assert window.record_action.isChecked()
    qtbot.waitUntil(lambda: window.recording_label.text() != "", timeout=FRAME_TIMEOUT_MS)
    wait_frames(qtbot, window, 5)
    snapshot = window.snapshot()
    window.record_action.trigger()
    qtbot.waitUntil(lambda: window.last_recording is not None, timeout=FRAME_TIMEOUT_MS)
    assert window.worker is not None, "stopping the recording should not stop the video"
    wait_frames(qtbot, window, 3)
    assert window.recording_label.text() == "" and not window.record_action.isChecked()
    video, table = window.last_recording

    assert video.parent == window.output_dir and video.suffix == ".mp4"
    capture = cv2.VideoCapture(str(video))
    frames = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        assert image.shape == (360, 640, 3)
        frames += 1
    capture.release()
    assert frames >= 5
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 1
    assert {"frame", "track_id", "x1", "y1", "x2", "y2", "label"} <= set(rows[0])
    assert rows[0]["label"] in window.last_packet.classes
    assert not list(window.output_dir.glob(".*partial*")), "temporary files left behind"

    assert snapshot is not None and snapshot.suffix == ".png"
    png = cv2.imread(str(snapshot))
    assert png is not None and png.shape == (360, 640, 3)


@needs_video
def test_errors_show_a_message_and_the_ui_stays_alive(qtbot, window: MainWindow, tmp_path: Path) -> None:
    window.open_file(tmp_path / "missing.mp4")
    qtbot.waitUntil(lambda: "no such file" in window.message_text(), timeout=FRAME_TIMEOUT_MS)
    qtbot.waitUntil(lambda: window.worker is None, timeout=FRAME_TIMEOUT_MS)
    assert window.banner.isVisible() and window.banner.kind == "error"

    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    window.open_file(not_video)
    qtbot.waitUntil(lambda: "cannot open" in window.message_text(), timeout=FRAME_TIMEOUT_MS)

    window.source_combo.setEditText("97")
    window.start_action.trigger()
    qtbot.waitUntil(lambda: "97" in window.message_text() and window.worker is None, timeout=FRAME_TIMEOUT_MS)
    assert window.banner.kind == "error"
    assert window.start_action.isEnabled() and not window.stop_action.isEnabled()

    window.open_file(VIDEO)
    wait_frames(qtbot, window, 2)
    assert window.banner.kind != "error"


def test_no_webcam_is_reported_in_the_window(qtbot, make_window: Callable[..., MainWindow]) -> None:
    if candidate_camera_indices(6):
        pytest.skip("this machine has video devices")
    win = make_window(probe_cameras_on_start=True)
    qtbot.waitUntil(lambda: win._probe is None, timeout=10000)
    assert "No webcam found" in win.view.message()
    assert win.source_combo.count() == 0
    win.refresh_cameras()
    win.start_source(0)
    qtbot.waitUntil(lambda: "webcam 0" in win.message_text().lower() and win.worker is None, timeout=FRAME_TIMEOUT_MS)


class FailingCapture:
    """A camera that delivers a few frames of the sample video and is then unplugged (reads fail)."""

    def __init__(self, frames: int) -> None:
        self._capture = cv2.VideoCapture(str(VIDEO))
        self._left = frames

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self._left <= 0:
            return False, None
        self._left -= 1
        return self._capture.read()

    def release(self) -> None:
        self._capture.release()


@needs_video
def test_camera_unplugged_while_running_shows_a_message(qtbot, make_window: Callable[..., MainWindow]) -> None:
    opened: list[FailingCapture] = []

    def opener() -> FailingCapture | None:
        if opened:
            return None
        opened.append(FailingCapture(frames=15))
        return opened[0]

    def source(spec: int | str) -> LiveSource:
        return LiveSource(opener, f"webcam {spec}", fps=30.0, stall_timeout_s=2.0, max_reconnects=1, reconnect_delay_s=0.05)

    win = make_window(source_factory=source)
    win.source_combo.setEditText("0")
    win.start()
    qtbot.waitUntil(lambda: "stopped delivering frames" in win.message_text(), timeout=FRAME_TIMEOUT_MS)
    qtbot.waitUntil(lambda: win.worker is None, timeout=FRAME_TIMEOUT_MS)
    assert win.view.frames_shown >= 1
    assert win.isVisible() and win.start_action.isEnabled()


@needs_long_video
def test_settings_pause_and_stop_while_playing(qtbot, window: MainWindow, tmp_path: Path) -> None:
    window.open_file(LONG_VIDEO)
    wait_frames(qtbot, window, 1)
    worker = window.worker
    assert worker is not None
    window.settings_form.set_value("detector_range", "full")
    window.settings_form.set_value("smoothing_alpha", 0.0)
    window.apply_settings_now()
    qtbot.waitUntil(lambda: worker.config.detector_range == "full" and worker.config.smoothing_alpha == 0.0, timeout=FRAME_TIMEOUT_MS)
    wait_frames(qtbot, window, 2)
    assert window.worker is worker

    window.settings_form.set_value("weights", str(tmp_path / "missing.safetensors"))
    window.apply_settings_now()
    qtbot.waitUntil(lambda: "Settings not applied" in window.message_text(), timeout=FRAME_TIMEOUT_MS)
    wait_frames(qtbot, window, 2)
    assert window.worker is worker and worker.config.weights is None
    assert window.settings_form.config().weights is None, "the form shows the weights that run again"

    window.pause_action.trigger()
    assert worker.is_paused()
    qtbot.wait(300)
    paused_at = window.view.frames_shown
    qtbot.wait(500)
    assert window.view.frames_shown == paused_at, "frames kept coming while paused"
    window.pause_action.trigger()
    wait_frames(qtbot, window, 2)
    window.stop_action.trigger()
    qtbot.waitUntil(lambda: window.worker is None, timeout=FRAME_TIMEOUT_MS)
    assert not window.stop_action.isEnabled() and window.start_action.isEnabled()


@pytest.mark.skipif(not MULTI_FACE.is_file(), reason=f"shared group photo not found at {MULTI_FACE}")
def test_image_rerun_on_settings_change_and_click_selects_a_face(qtbot, window: MainWindow) -> None:
    window.open_file(MULTI_FACE)
    qtbot.waitUntil(lambda: window.view.frames_shown == 1 and window.worker is None, timeout=FRAME_TIMEOUT_MS)
    assert "Analysed image" in window.message_text()
    window.settings_form.set_value("detector_range", "full")
    window.apply_settings_now()
    qtbot.waitUntil(lambda: window.view.frames_shown == 2 and window.worker is None, timeout=FRAME_TIMEOUT_MS)
    faces = window.last_packet.faces
    assert len(faces) >= 2, "the full-range detector should find several faces in the group photo"
    panel = window.face_panel
    target = next(f for f in faces if f.track_id != panel.selected_track)
    centre = window.view.image_to_widget((target.box[0] + target.box[2]) / 2, (target.box[1] + target.box[3]) / 2)
    qtbot.mouseClick(window.view, Qt.MouseButton.LeftButton, pos=centre.toPoint())
    assert panel.selected_track == target.track_id
    assert panel.combo.currentData() == target.track_id
    assert panel.bars.values() == pytest.approx(target.probabilities)
    assert panel.label.text() == target.label


@needs_long_video
def test_closing_the_window_stops_the_thread_and_finishes_the_recording(qtbot, window: MainWindow) -> None:
    win = window
    win.open_file(LONG_VIDEO)
    wait_frames(qtbot, win, 1)
    win.record_action.trigger()
    qtbot.waitUntil(lambda: win.recording_label.text() != "", timeout=FRAME_TIMEOUT_MS)
    worker = win.worker
    assert worker is not None and worker.isRunning()
    with qtbot.waitSignal(worker.finished, timeout=15000):
        win.close()
    qtbot.waitUntil(lambda: not win.isVisible(), timeout=5000)
    assert win.worker is None
    assert win.last_recording is not None
    video, table = win.last_recording
    capture = cv2.VideoCapture(str(video))
    assert capture.isOpened() and capture.read()[0]
    capture.release()
    assert table.read_text().count("\n") >= 2


@needs_video
def test_worker_drops_frames_while_the_ui_is_busy(qtbot) -> None:
    worker = PipelineWorker(str(VIDEO), PipelineConfig(), pace=False)
    received: list[FramePacket] = []
    worker.frame_ready.connect(received.append)
    with qtbot.waitSignal(worker.finished, timeout=30000):
        worker.start()
    assert len(received) == 1, "frames were queued while the UI had not taken the previous one"
    assert worker.frames_processed == 72
    assert worker.frames_dropped == worker.frames_processed - 1
    worker.wait()


def test_a_backend_that_fails_puts_the_controls_back_on_what_runs(qtbot, fake_window) -> None:
    win = fake_window()
    form = win.settings_form
    form.set_value("backend", "torch")
    win.start()
    wait_frames(qtbot, win, 2)
    worker = win.worker
    form.set_value("backend", "tensorrt")
    win.apply_settings_now()
    qtbot.waitUntil(lambda: "Settings not applied" in win.message_text(), timeout=FRAME_TIMEOUT_MS)
    assert form.editors["backend"].widget.currentData() == "torch" and win.config.backend == "torch"
    assert "TensorRT" in win.message_text() and "still running torch" in win.message_text()
    form.set_value("smoothing_alpha", 0.2)
    win.apply_settings_now()
    qtbot.waitUntil(lambda: worker.config.smoothing_alpha == 0.2, timeout=FRAME_TIMEOUT_MS)
    assert worker.config.backend == "torch" and win.worker is worker

    win.stop()
    qtbot.waitUntil(lambda: win.worker is None, timeout=FRAME_TIMEOUT_MS)
    form.set_value("backend", "tensorrt")
    win.start()
    wait_frames(qtbot, win, 2)
    assert "TensorRT could not start" in win.message_text() and "ONNX Runtime" in win.message_text()
    assert form.editors["backend"].widget.currentData() == "auto" and win.worker.config.backend == "auto"
    assert win.backend_label.text() == "Backend: ONNX Runtime"


def test_space_pauses_and_types_only_into_a_source_box_clicked_on_purpose(qtbot, fake_window) -> None:
    win = fake_window()
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow)
    line = win.source_combo.lineEdit()
    line.setFocus()
    qtbot.keyClick(line, Qt.Key.Key_Return)
    wait_frames(qtbot, win, 2)
    qtbot.keyClick(QApplication.focusWidget() or win, Qt.Key.Key_Space)
    assert win.pause_action.isChecked() and win.worker.is_paused()
    assert win.source_combo.currentText() == "clip.mp4"
    qtbot.keyClick(QApplication.focusWidget() or win, Qt.Key.Key_Space)
    assert not win.pause_action.isChecked()

    qtbot.mouseClick(line, Qt.MouseButton.LeftButton)
    line.end(False)
    qtbot.keyClicks(line, " b")
    assert win.source_combo.currentText() == "clip.mp4 b" and not win.pause_action.isChecked()


def test_readouts_follow_what_is_shown_paused_and_stopped(qtbot, fake_window) -> None:
    win = fake_window(work_s=(0.002, 0.03))
    win.start()
    wait_frames(qtbot, win, 3)
    win._cameras_found([])
    assert "webcam" not in (win.statusBar().currentMessage() + win.view.message()).lower()
    qtbot.wait(1500)
    fps = float(win.fps_label.text().split()[1])
    assert 20.0 <= fps <= 26.5, f"a 24 fps video with uneven processing times reads {fps} FPS"
    shown = len(win.face_panel.history)
    win.settings_form.set_value("smoothing_alpha", 0.1)
    win.apply_settings_now()
    qtbot.waitUntil(lambda: win.worker.config.smoothing_alpha == 0.1, timeout=FRAME_TIMEOUT_MS)
    wait_frames(qtbot, win, 2)
    assert len(win.face_panel.history) >= shown, "changing a setting wiped the history plot"

    win.pause_action.trigger()
    qtbot.wait(2300)
    assert win.statusBar().currentMessage() == "Paused" and "Paused" in win.view.badge()
    assert win.fps_label.text() == "FPS: –"
    win.pause_action.trigger()
    wait_frames(qtbot, win, 3)
    assert win.view.badge() == "" and win.fps_label.text() != "FPS: –"

    win.stop_action.trigger()
    qtbot.waitUntil(lambda: win.worker is None, timeout=FRAME_TIMEOUT_MS)
    assert "Stopped" in win.view.badge()
    panel = win.face_panel
    assert (win.faces_label.text(), win.fps_label.text(), panel.label.text()) == ("Faces: –", "FPS: –", "–")
    assert panel.bars.values() == () and panel.combo.count() == 0 and win.last_packet is None


def test_the_end_of_a_video_is_shown_as_stopped(qtbot, fake_window) -> None:
    win = fake_window(frames=8)
    win.start()
    qtbot.waitUntil(lambda: win.worker is None, timeout=FRAME_TIMEOUT_MS)
    assert "End of video clip.mp4" in win.message_text()
    assert "Stopped" in win.view.badge() and win.faces_label.text() == "Faces: –"


def test_source_errors_keep_the_case_of_paths_and_urls(qtbot, make_window: Callable[..., MainWindow]) -> None:
    url = "rtsp://cam.local/live"

    def unreachable(spec: int | str) -> Iterator[Frame]:
        raise SourceError(f"{spec}: cannot open stream (unreachable, wrong URL or unsupported format)")

    win = make_window(pipeline_factory=fake_pipelines(), source_factory=unreachable)
    for text in (url, "missing-clip.mp4"):
        win.source_combo.setEditText(text)
        win.start()
        qtbot.waitUntil(lambda: win.message_text().startswith(f"{text}: "), timeout=FRAME_TIMEOUT_MS)
        qtbot.waitUntil(lambda: win.worker is None, timeout=FRAME_TIMEOUT_MS)


def test_the_window_shrinks_and_keeps_its_controls_and_video_in_place(qtbot, window: MainWindow) -> None:
    window.resize(900, 480)
    qtbot.waitUntil(lambda: window.height() <= 490, timeout=2000)
    assert window.view.height() >= 200

    window.resize(window.minimumSizeHint().width(), 600)
    qtbot.waitUntil(lambda: window.width() < 720, timeout=2000)
    buttons = [
        window.controls_bar.widgetForAction(action)
        for action in (window.start_action, window.pause_action, window.stop_action, window.record_action)
    ]
    qtbot.waitUntil(lambda: all(button is not None and button.isVisible() for button in buttons), timeout=2000)
    for button in buttons:
        assert window.rect().contains(button.mapTo(window, button.rect().bottomRight()))

    before = window.view.geometry()
    window.show_error("Could not start the pipeline: " + "a long reason " * 20)
    qtbot.wait(50)
    assert window.view.geometry() == before, "the video moved when a message appeared"
    assert window.banner.isVisible() and window.view.rect().contains(window.banner.geometry())


def test_video_view_keeps_aspect_and_maps_clicks(qtbot) -> None:
    view = VideoView()
    qtbot.addWidget(view)
    view.resize(400, 400)
    image = QImage(200, 100, QImage.Format.Format_RGB888)
    image.fill(QColor("red"))
    view.set_image(image)
    rect = view.image_rect()
    assert (rect.x(), rect.y(), rect.width(), rect.height()) == (0, 100, 400, 200)
    with qtbot.waitSignal(view.image_clicked) as blocker:
        qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=QPoint(200, 150))
    assert blocker.args == pytest.approx([100.0, 25.0])
    grabbed = view.grab().toImage()
    assert grabbed.pixelColor(200, 200) == QColor("red")
    assert grabbed.pixelColor(200, 50) != QColor("red")


def test_probability_bars_and_history_paint_class_colours(qtbot) -> None:
    bars = ProbabilityBars()
    qtbot.addWidget(bars)
    bars.resize(300, 200)
    bars.set_classes(["a", "b", "c"])
    bars.set_values([1.0, 0.0, 0.5])
    image = bars.grab().toImage()
    colours = [{image.pixelColor(x, 4 + row * 20 + 10).name() for x in range(image.width())} for row in range(3)]
    assert class_color(0).name() in colours[0]
    assert class_color(1).name() not in colours[1]
    assert class_color(2).name() in colours[2]
    assert class_color(1, "happiness") == QColor(*overlay_rgb("happiness"))

    plot = HistoryPlot(window_s=10.0)
    qtbot.addWidget(plot)
    plot.resize(300, 150)
    for i in range(20):
        plot.append(i * 0.1, [0.0, 0.9, 0.1])
    pixels = qimage_to_bgr(plot.grab().toImage()).astype(int)

    def rows_of(index: int) -> np.ndarray:
        colour = class_color(index)
        near = np.abs(pixels - np.array([colour.blue(), colour.green(), colour.red()])).max(axis=2) <= 30
        return np.nonzero(near)[0]

    high, low = rows_of(1), rows_of(2)
    assert len(high) > 20 and len(low) > 20
    assert high.mean() < low.mean() - 50, "the 0.9 line is not drawn above the 0.1 line"
    plot.append(0.0, [0.5, 0.5, 0.0])
    assert len(plot) == 1


def test_gui_command_builds_the_pipeline_config() -> None:
    assert "leaf_fer.gui.commands" in COMMAND_MODULES
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gui", "--source", "0", "--backend", "torch", "--weights", "w.safetensors"])
    config = pipeline_config(args)
    assert (args.source, config.backend, config.weights) == ("0", "torch", "w.safetensors")
    assert callable(args.func)
    assert pipeline_config(parser.parse_args(["gui"])) == PipelineConfig(), "command-line defaults = record defaults"
    with pytest.raises(ValueError, match="smoothing"):
        pipeline_config(parser.parse_args(["gui", "--smoothing", "1.5"]))
    assert not pipeline_config(parser.parse_args(["gui", "--no-fallback-detector"])).fallback_detector


FORM_VALUES = {"weights": "w.safetensors", "backend": "torch", "precision": "fp32", "detector_range": "full",
               "fallback_detector": False, "min_detection_confidence": 0.5, "smoothing_alpha": 0.35, "max_faces": 3}
"""A value other than the default for every option the form shows."""


def test_the_settings_form_is_built_from_the_record(qtbot) -> None:
    start = PipelineConfig(max_faces=40, draw_hud=False)
    form = SettingsForm(start)
    qtbot.addWidget(form)
    shown = {item.name: option for item, option in option_fields() if option.in_form}
    assert set(form.editors) == set(shown) == set(FORM_VALUES), "one widget per option with a form label"
    assert form.config() == start, "a value beyond the form's range (from the command line) is kept"
    for name, option in shown.items():
        assert form.rows.labelForField(form.editors[name].widget).text() == option.label
        assert form.editors[name].widget.toolTip() == option.help
    combo = form.editors["backend"].widget
    assert [combo.itemData(i) for i in range(combo.count())] == list(shown["backend"].choices)
    spin = form.editors["smoothing_alpha"].widget
    assert (spin.minimum(), spin.maximum(), spin.singleStep()) == (0.0, 0.95, 0.05)

    edits: list[PipelineConfig] = []
    form.changed.connect(edits.append)
    expected = start
    for name, value in FORM_VALUES.items():
        form.set_value(name, value)
        expected = replace(expected, **{name: value})
        assert edits[-1] == expected == form.config(), f"changing {name} did not give a record with it"
    assert not expected.draw_hud, "fields the form does not show keep their values"
    form.show_config(PipelineConfig())
    assert form.config() == PipelineConfig() and len(edits) == len(FORM_VALUES), "showing a record is no edit"


class PacedLive(Source):
    """A live source of grey frames every ``period_s`` seconds."""

    is_live = True

    def __init__(self, period_s: float) -> None:
        self.name, self.period_s = "webcam 0", period_s

    def frames(self) -> Iterator[Frame]:
        for i in itertools.count():
            time.sleep(self.period_s)
            yield Frame(i, time.perf_counter(), np.full((120, 160, 3), 90, np.uint8), captured_at=time.perf_counter())


class FakeRecorder:
    """Counts frames; ``fail`` makes its creation fail."""

    def __init__(self, video: Path, csv_path: Path, fps: float, fail: bool = False) -> None:
        if fail:
            raise OSError("disk full")
        self.video_path, self.csv_path, self.fps, self.frames = video, csv_path, fps, 0

    def write(self, result: FrameResult, image: np.ndarray) -> None:
        self.frames += 1

    def close(self) -> None:
        pass


def test_a_live_recording_runs_at_the_measured_rate_even_when_started_at_once(qtbot) -> None:
    """A recording asked for before any frame waits until the source's rate is measured (not a guessed 15 fps)."""
    made: list[FakeRecorder] = []

    def recorder(video: Path, csv_path: Path, fps: float, classes: tuple[str, ...]) -> FakeRecorder:
        made.append(FakeRecorder(video, csv_path, fps))
        return made[-1]

    worker = PipelineWorker(0, PipelineConfig(), pipeline_factory=fake_pipelines(), recorder_factory=recorder,
                            source_factory=lambda spec: PacedLive(1 / 30))
    worker.frame_ready.connect(lambda packet: worker.frame_consumed())
    worker.start_recording(Path("a.mp4"), Path("a.csv"))
    worker.start()
    qtbot.waitUntil(lambda: bool(made), timeout=FRAME_TIMEOUT_MS)
    with qtbot.waitSignal(worker.finished, timeout=FRAME_TIMEOUT_MS):
        worker.request_stop()
    assert 20 <= made[0].fps <= 31, f"recorded at {made[0].fps} fps from a 30 fps source"


def test_a_recording_that_cannot_start_says_so_and_whether_another_follows(qtbot) -> None:
    worker = PipelineWorker("clip.mp4", PipelineConfig(), pipeline_factory=fake_pipelines(), source_factory=synthetic_video(),
                            recorder_factory=lambda video, csv_path, fps, classes: FakeRecorder(video, csv_path, fps, True))
    worker.frame_ready.connect(lambda packet: worker.frame_consumed())
    failures: list[tuple[str, bool]] = []
    worker.recording_failed.connect(lambda text, follows: failures.append((text, follows)))
    worker.start()
    worker.start_recording(Path("a.mp4"), Path("a.csv"))
    qtbot.waitUntil(lambda: bool(failures), timeout=FRAME_TIMEOUT_MS)
    with qtbot.waitSignal(worker.finished, timeout=FRAME_TIMEOUT_MS):
        worker.request_stop()
    assert failures[0] == ("Could not start recording: disk full", False)


def test_record_stopped_and_restarted_while_paused_stays_checked_and_keeps_both_files(qtbot, fake_window) -> None:
    win = fake_window()
    win.start()
    wait_frames(qtbot, win, 2)
    win.record_action.trigger()
    qtbot.waitUntil(lambda: win.recording_label.text() != "", timeout=FRAME_TIMEOUT_MS)
    win.pause_action.trigger()
    win.record_action.trigger()
    win.record_action.trigger()
    assert win.record_action.isChecked()
    win.pause_action.trigger()
    qtbot.waitUntil(lambda: win.last_recording is not None and win.recording_label.text() != "", timeout=FRAME_TIMEOUT_MS)
    first = win.last_recording
    wait_frames(qtbot, win, 2)
    assert win.record_action.isChecked() and win.recording_label.text() == "● REC", "the second recording runs"
    win.record_action.trigger()
    qtbot.waitUntil(lambda: win.last_recording != first, timeout=FRAME_TIMEOUT_MS)
    assert not win.record_action.isChecked() and win.recording_label.text() == ""
    assert first[0].is_file() and win.last_recording[0].is_file() and first[0] != win.last_recording[0]


def test_snapshots_go_to_the_folder_typed_and_never_overwrite(qtbot, fake_window, tmp_path: Path) -> None:
    win = fake_window()
    win.start()
    wait_frames(qtbot, win, 1)
    win.output_edit.setText(str(tmp_path / "typed"))
    shots = [win.snapshot(), win.snapshot()]
    assert all(shot is not None and shot.parent == tmp_path / "typed" and shot.is_file() for shot in shots)
    assert shots[0] != shots[1]


def test_a_rebuilt_pipeline_is_closed(qtbot) -> None:
    made: list[FakePipeline] = []
    closed: list[FakePipeline] = []

    def pipelines(config: PipelineConfig) -> FakePipeline:
        made.append(FakePipeline(config, (0.0,)))
        made[-1].close = lambda pipeline=made[-1]: closed.append(pipeline)  # type: ignore[method-assign]
        return made[-1]

    worker = PipelineWorker("clip.mp4", PipelineConfig(), pipeline_factory=pipelines, source_factory=synthetic_video())
    worker.frame_ready.connect(lambda packet: worker.frame_consumed())
    worker.start()
    for smoothing in (0.1, 0.2):
        worker.update_config(PipelineConfig(smoothing_alpha=smoothing))
        qtbot.waitUntil(lambda smoothing=smoothing: worker.config.smoothing_alpha == smoothing, timeout=FRAME_TIMEOUT_MS)
    with qtbot.waitSignal(worker.finished, timeout=FRAME_TIMEOUT_MS):
        worker.request_stop()
    assert len(made) == 3 and closed == made, "every pipeline is closed, the last one when the worker ends"


def test_the_pacer_does_not_race_to_catch_up_after_a_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    from leaf_fer.gui import worker as worker_module

    clock, slept = [100.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(worker_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(worker_module.time, "sleep", sleep)
    pacer = worker_module.FramePacer(worker_module.threading.Event())
    pacer.wait(0.0)
    clock[0] += 2.0
    pacer.wait(1 / 24)
    pacer.wait(2 / 24)
    assert sum(slept) == pytest.approx(1 / 24), "after a 2 s stall the next frames keep their own spacing"


def test_restart_plays_the_file_chosen_when_two_share_a_name(qtbot, make_window: Callable[..., MainWindow]) -> None:
    opened: list[str] = []

    def source(spec: int | str) -> SyntheticVideo:
        opened.append(str(spec))
        return SyntheticVideo(str(spec), 100000, 24.0)

    win = make_window(pipeline_factory=fake_pipelines(), source_factory=source)
    for path in ("/a/clip.mp4", "/b/clip.mp4"):
        win.open_file(path)
        wait_frames(qtbot, win, 1)
        qtbot.waitUntil(lambda path=path: win.source_combo.currentData() == path, timeout=FRAME_TIMEOUT_MS)
    win.start()
    wait_frames(qtbot, win, 1)
    assert opened[-1] == "/b/clip.mp4"


class StillImage(Source):
    """One still image."""

    def __init__(self, name: str) -> None:
        self.name, self.frame_count = name, 1

    def frames(self) -> Iterator[Frame]:
        yield Frame(0, 0.0, np.full((120, 160, 3), 90, np.uint8), self.name, still=True)


def test_a_setting_changed_while_an_image_is_analysed_is_applied(qtbot, make_window: Callable[..., MainWindow]) -> None:
    configs: list[PipelineConfig] = []

    def pipelines(config: PipelineConfig) -> FakePipeline:
        configs.append(config)
        return FakePipeline(config, (0.5,))

    win = make_window(pipeline_factory=pipelines, source_factory=StillImage)
    win.open_file("photo.jpg")
    qtbot.waitUntil(lambda: bool(configs), timeout=FRAME_TIMEOUT_MS)
    win.settings_form.set_value("min_detection_confidence", 0.3)
    win.apply_settings_now()
    qtbot.waitUntil(lambda: len(configs) >= 2 and win.worker is None, timeout=FRAME_TIMEOUT_MS)
    assert configs[-1].min_detection_confidence == 0.3
