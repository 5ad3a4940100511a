"""The main window: source picker, live view, selected-face panel, settings, readouts, recording and snapshots."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from PyQt6.QtCore import QStandardPaths, Qt, QTimer
from PyQt6.QtGui import QAction, QCloseEvent, QKeySequence, QResizeEvent
from PyQt6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QScrollArea,
    QSplitter,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from leaf_fer.common import IMAGE_EXTENSIONS
from leaf_fer.gui.cameras import CameraProbe
from leaf_fer.gui.face_panel import FacePanel
from leaf_fer.gui.settings_form import SettingsForm
from leaf_fer.gui.widgets import MessageBanner, VideoView
from leaf_fer.gui.worker import (
    FramePacket,
    PipelineFactory,
    PipelineWorker,
    SourceFactory,
    SourceSpec,
    backend_label,
)
from leaf_fer.realtime.settings import PipelineConfig
from leaf_fer.realtime.sources import VIDEO_EXTENSIONS, Source


def _file_filter(kind: str, extensions: frozenset[str]) -> str:
    return f"{kind} ({' '.join('*' + suffix for suffix in sorted(extensions))});;All files (*)"


VIDEO_FILTER = _file_filter("Videos", VIDEO_EXTENSIONS)
IMAGE_FILTER = _file_filter("Images", IMAGE_EXTENSIONS)
STOP_GRACE_MS = 10000


class MainWindow(QMainWindow):
    """Live facial-expression analysis window; all heavy work happens in a :class:`PipelineWorker`."""

    def __init__(
        self,
        config: PipelineConfig | None = None,
        output_dir: Path | None = None,
        probe_cameras_on_start: bool = True,
        pace: bool = True,
        pipeline_factory: PipelineFactory | None = None,
        source_factory: SourceFactory | None = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle("leaf-fer — live facial expression analysis")
        self.config = config or PipelineConfig()
        self.output_dir = Path(output_dir) if output_dir else default_output_dir()
        self.pace = pace
        self._pipeline_factory = pipeline_factory
        self._source_factory = source_factory
        self.worker: PipelineWorker | None = None
        self._retired_worker: PipelineWorker | None = None
        self._retired_probe: CameraProbe | None = None
        self.last_packet: FramePacket | None = None
        self.last_recording: tuple[Path, Path] | None = None
        self.last_snapshot: Path | None = None
        self.opened_source: Source | None = None
        self._source: SourceSpec | None = None
        self._pending_start: SourceSpec | None = None
        self._closing = False
        self._probe: CameraProbe | None = None
        self._settings_timer = QTimer(self)
        self._settings_timer.setSingleShot(True)
        self._settings_timer.setInterval(300)
        self._settings_timer.timeout.connect(self._apply_settings)
        self._force_timer = QTimer(self)
        self._force_timer.setSingleShot(True)
        self._force_timer.setInterval(STOP_GRACE_MS)
        self._force_timer.timeout.connect(self._force_close)
        self._build_ui()
        self._update_buttons()
        if probe_cameras_on_start:
            self.refresh_cameras()

    def _build_ui(self) -> None:
        self.source_bar = QToolBar("Source")
        self.controls_bar = QToolBar("Playback")
        for toolbar in (self.source_bar, self.controls_bar):
            toolbar.setMovable(False)
            self.addToolBar(toolbar)
        toolbar = self.source_bar
        self.source_combo = QComboBox()
        self.source_combo.setEditable(True)
        self.source_combo.setMinimumContentsLength(22)
        self.source_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.source_combo.setToolTip("Webcam index, video/image path or stream URL")
        line_edit = self.source_combo.lineEdit()
        if line_edit is not None:
            line_edit.setPlaceholderText("camera index, file or URL")
            line_edit.returnPressed.connect(self.start)
        toolbar.addWidget(QLabel(" Source "))
        toolbar.addWidget(self.source_combo)
        self.refresh_action = self._action(toolbar, "⟳", self.refresh_cameras, tip="Look for webcams again")
        self.open_video_action = self._action(toolbar, "Open video…", self.choose_video, QKeySequence.StandardKey.Open)
        self.open_image_action = self._action(toolbar, "Open image…", self.choose_image, "Ctrl+I")
        toolbar = self.controls_bar
        self.start_action = self._action(toolbar, "▶ Start", self.start, "Ctrl+Return")
        self.pause_action = self._action(toolbar, "❚❚ Pause", None, "Space", checkable=True)
        self.pause_action.toggled.connect(self.set_paused)
        self.stop_action = self._action(toolbar, "■ Stop", self.stop, "Ctrl+.")
        toolbar.addSeparator()
        self.record_action = self._action(toolbar, "● Record", None, "Ctrl+R", checkable=True)
        self.record_action.toggled.connect(self.set_recording)
        self.snapshot_action = self._action(toolbar, "Snapshot", self.snapshot, "Ctrl+S")

        self.view = VideoView()
        self.banner = MessageBanner(self.view)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(6, 6, 0, 6)
        left_layout.addWidget(self.view, 1)

        side = QScrollArea()
        side.setWidget(self._build_side_panel())
        side.setWidgetResizable(True)
        side.setFrameShape(QFrame.Shape.NoFrame)
        side.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scrollbar = side.verticalScrollBar()
        extra = scrollbar.sizeHint().width() if scrollbar is not None else 0
        side.setMinimumWidth(290 + extra)
        side.setMaximumWidth(380 + extra)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(side)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 0)
        splitter.setCollapsible(0, False)
        self.setCentralWidget(splitter)

        status = self.statusBar()
        assert status is not None
        self.fps_label = QLabel("FPS: –")
        self.latency_label = QLabel("Latency: –")
        self.backend_label = QLabel("Backend: –")
        self.faces_label = QLabel("Faces: 0")
        self.recording_label = QLabel("")
        self.recording_label.setStyleSheet("color:#c62828; font-weight:bold;")
        for label in (self.recording_label, self.fps_label, self.latency_label, self.backend_label, self.faces_label):
            label.setMinimumWidth(90)
            status.addPermanentWidget(label)
        self.resize(1180, 700)

    def _build_side_panel(self) -> QWidget:
        """The selected face and the settings; it scrolls when the window is too short to show all of it."""
        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(6, 6, 6, 6)
        self.face_panel = FacePanel()
        self.face_panel.highlight_changed.connect(self.view.set_highlight)
        self.view.image_clicked.connect(self.face_panel.select_at)
        layout.addWidget(self.face_panel, 1)

        settings_box = QGroupBox("Settings")
        self.settings_form = SettingsForm(self.config)
        self.settings_form.changed.connect(self._settings_edited)
        self.output_edit = QLineEdit(str(self.output_dir))
        self.output_edit.editingFinished.connect(self._output_edited)
        self.settings_form.rows.addRow("Save to", _path_row(self.output_edit, "Folder for recordings and snapshots",
                                                            self.choose_output_dir))
        QVBoxLayout(settings_box).addWidget(self.settings_form)
        layout.addWidget(settings_box)
        return panel

    def _action(
        self,
        toolbar: QToolBar,
        text: str,
        slot: Callable[[], object] | None,
        shortcut: QKeySequence.StandardKey | str | None = None,
        checkable: bool = False,
        tip: str | None = None,
    ) -> QAction:
        action = QAction(text, self)
        action.setCheckable(checkable)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setToolTip(tip)
        if slot is not None:
            action.triggered.connect(lambda _checked=False, fn=slot: fn())
        toolbar.addAction(action)
        return action

    def resizeEvent(self, event: QResizeEvent | None) -> None:
        """Move the playback buttons to a second toolbar row when one row cannot show them all."""
        super().resizeEvent(event)
        wrap = self.source_bar.sizeHint().width() + self.controls_bar.sizeHint().width() > self.width()
        if wrap != self.toolBarBreak(self.controls_bar):
            if wrap:
                self.insertToolBarBreak(self.controls_bar)
            else:
                self.removeToolBarBreak(self.controls_bar)

    def _status(self, text: str, timeout_ms: int = 3000) -> None:
        bar = self.statusBar()
        if bar is not None:
            bar.showMessage(text, timeout_ms)

    def show_error(self, text: str) -> None:
        self.banner.show_message("error", text)

    def show_info(self, text: str) -> None:
        self.banner.show_message("info", text)

    def message_text(self) -> str:
        """The text of the in-window message banner ('' when none is shown)."""
        return self.banner.text() if self.banner.isVisible() or self.banner.kind else ""

    def is_running(self) -> bool:
        return self.worker is not None

    def refresh_cameras(self) -> None:
        """Probe webcams in the background; the combo keeps any text the user typed."""
        if self._probe is not None:
            return
        if self._running_live():
            self._status("Stop the live source before looking for webcams.")
            return
        self._probe = CameraProbe()
        self._probe.found.connect(self._cameras_found)
        self._probe.finished.connect(self._probe_finished)
        self._status("Looking for webcams…", 3000)
        self._probe.start()

    def _cameras_found(self, indices: list[int]) -> None:
        combo = self.source_combo
        typed = combo.currentText()
        current = combo.currentIndex()
        selected = combo.itemData(current) if current >= 0 and combo.itemText(current) == typed else None
        files = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count()) if isinstance(combo.itemData(i), str)]
        combo.clear()
        for index in indices:
            combo.addItem(f"Camera {index}", index)
        for text, data in files:
            combo.addItem(text, data)
            combo.setItemData(combo.count() - 1, data, Qt.ItemDataRole.ToolTipRole)
        if selected is not None and combo.findData(selected) >= 0:
            combo.setCurrentIndex(combo.findData(selected))
        elif typed:
            combo.setEditText(typed)
        if not indices and not self.is_running():
            self._status("No webcam found — open a video or an image file.", 8000)
            if combo.count() == 0 and self.view.image() is None:
                self.view.set_message("No webcam found — open a video or an image file")

    def _probe_finished(self) -> None:
        if self._probe is not None:
            self._probe.wait(2000)
            self._retired_probe = self._probe
        self._probe = None
        if self._closing:
            self.close()
        elif self._pending_start is not None and self.worker is None:
            spec, self._pending_start = self._pending_start, None
            self._launch(spec)

    def current_source(self) -> SourceSpec | None:
        """The source the combo designates: the item whose text was typed or picked, else the text itself."""
        text = self.source_combo.currentText().strip()
        if not text:
            return None
        index = self.source_combo.currentIndex()
        if index < 0 or self.source_combo.itemText(index) != text:
            index = self.source_combo.findText(text, Qt.MatchFlag.MatchFixedString)
        data = self.source_combo.itemData(index) if index >= 0 else None
        return data if isinstance(data, (int, str)) else text

    def choose_video(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open video", str(Path.home()), VIDEO_FILTER)
        if path:
            self.open_file(path)

    def choose_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", str(Path.home()), IMAGE_FILTER)
        if path:
            self.open_file(path)

    def open_file(self, path: str | os.PathLike[str]) -> None:
        """Start a video, image or folder; once it opens, the source box lists it (see :meth:`_on_source_opened`)."""
        self.source_combo.setEditText(str(path))
        self.start_source(str(path))

    def choose_output_dir(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Save recordings and snapshots to", str(self.output_dir))
        if path:
            self.output_edit.setText(path)
            self._output_edited()

    def _output_edited(self) -> None:
        text = self.output_edit.text().strip()
        if text:
            self.output_dir = Path(text).expanduser()

    def start(self) -> None:
        """Start (or restart) the source shown in the source box."""
        spec = self.current_source()
        if spec is None:
            self.show_error("Choose a source first: a webcam, a video file or an image.")
            return
        self.start_source(spec)

    def start_source(self, spec: SourceSpec) -> None:
        """Run ``spec``; a running worker is stopped first, and a running webcam probe is let finish (the source may
        be one of the webcams it opens)."""
        if self._closing:
            return
        if self.worker is not None:
            self._pending_start = spec
            self.worker.request_stop()
            return
        if self._probe is not None:
            self._pending_start = spec
            self.view.set_message("Waiting for the webcam search to finish…")
            return
        self._launch(spec)

    def _launch(self, spec: SourceSpec) -> None:
        self.banner.dismiss()
        self._source = spec
        self.opened_source = None
        self.face_panel.forget()
        self.last_packet = None
        self.view.set_message("Starting…")
        self.view.set_badge("Starting…")
        if self.source_combo.hasFocus():
            self.view.setFocus()
        self._settings_timer.stop()
        self.config = self.settings_form.config()
        worker = PipelineWorker(
            spec,
            self.config,
            pipeline_factory=self._pipeline_factory,
            source_factory=self._source_factory,
            pace=self.pace,
        )
        worker.frame_ready.connect(self._on_frame)
        worker.error.connect(self._on_worker_error)
        worker.config_rejected.connect(self._on_config_rejected)
        worker.source_opened.connect(self._on_source_opened)
        worker.source_ended.connect(self._on_source_ended)
        worker.pipeline_ready.connect(self._on_pipeline_ready)
        worker.recording_started.connect(self._on_recording_started)
        worker.recording_finished.connect(self._on_recording_finished)
        worker.recording_failed.connect(self._on_recording_failed)
        worker.finished.connect(self._on_worker_finished)
        self.worker = worker
        self.pause_action.setChecked(False)
        worker.start()
        if self.record_action.isChecked():
            self._begin_recording()
        self._update_buttons()
        self._status(f"Running {spec}", 4000)

    def set_paused(self, paused: bool) -> None:
        """Pause or resume; "Paused" stays on the view and in the status bar until playback resumes."""
        if self.worker is None:
            if paused:
                self.pause_action.setChecked(False)
            return
        self.worker.set_paused(paused)
        self.fps_label.setText("FPS: –")
        self.view.set_badge("❚❚ Paused" if paused else "")
        self._status("Paused" if paused else "Running", 0 if paused else 2000)

    def stop(self) -> None:
        self._pending_start = None
        if self.worker is not None:
            self.worker.request_stop()

    def set_recording(self, on: bool) -> None:
        """Start or finish recording the annotated stream (video + CSV) into the output folder."""
        if not on:
            if self.worker is not None:
                self.worker.stop_recording()
            return
        if self.worker is None:
            self.show_error("Start a source before recording.")
            self.record_action.setChecked(False)
            return
        self._begin_recording()

    def _output_paths(self, *suffixes: str) -> list[Path] | None:
        """New files in the output folder (as the Save-to field reads now, even unconfirmed) named by the time to
        the millisecond, none of which exists yet; None, with the error shown, when the folder cannot be made."""
        self._output_edited()
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.show_error(f"Cannot create the output folder {self.output_dir}: {exc}")
            return None
        now = time.time()
        stem = f"leaf-fer_{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{int(now * 1000) % 1000:03d}"
        attempt = 0
        while True:
            paths = [self.output_dir / f"{stem}{f'_{attempt}' if attempt else ''}{suffix}" for suffix in suffixes]
            if not any(path.exists() for path in paths):
                return paths
            attempt += 1

    def _begin_recording(self) -> None:
        paths = self._output_paths(".mp4", ".csv")
        if paths is None:
            self.record_action.setChecked(False)
            return
        assert self.worker is not None
        self.worker.start_recording(*paths)

    def snapshot(self) -> Path | None:
        """Save the frame on screen (with its overlay) as a PNG in the output folder."""
        image = self.view.image()
        if image is None or image.isNull():
            self.show_error("Nothing to snapshot yet.")
            return None
        paths = self._output_paths(".png")
        if paths is None:
            return None
        [path] = paths
        if not image.save(str(path), "PNG"):
            self.show_error(f"Could not write {path}.")
            return None
        self.last_snapshot = path
        self.show_info(f"Snapshot saved: {path}")
        return path

    def _settings_edited(self) -> None:
        self._settings_timer.start()

    def apply_settings_now(self) -> None:
        """Apply pending settings edits immediately instead of after the debounce delay."""
        self._settings_timer.stop()
        self._apply_settings()

    def _apply_settings(self) -> None:
        new = self.settings_form.config()
        if new == self.config:
            return
        self.config = new
        if self.worker is not None:
            self.worker.update_config(new)
            if not self.pause_action.isChecked():
                self._status("Applying settings…", 2000)
        elif self._source is not None and self.last_packet is not None and self.last_packet.still:
            self.start_source(self._source)

    def _on_config_rejected(self, text: str, requested: PipelineConfig, running: PipelineConfig) -> None:
        """Put the controls back on the settings that actually run (unless newer edits are on their way)."""
        if self.sender() is not self.worker:
            return
        if self.config == requested:
            self.config = running
            self.settings_form.show_config(running)
        self.show_error(text)

    def _on_source_opened(self, source: Source) -> None:
        """List a file, image or folder that opened in the source box, so that it can be picked again."""
        if self.sender() is not self.worker:
            return
        self.opened_source = source
        self._update_buttons()
        if source.is_live:
            return
        index = self.source_combo.findData(self._source)
        if index < 0:
            self.source_combo.addItem(Path(source.name).name or source.name, self._source)
            index = self.source_combo.count() - 1
            self.source_combo.setItemData(index, source.name, Qt.ItemDataRole.ToolTipRole)
        self.source_combo.setCurrentIndex(index)

    def _on_pipeline_ready(self, backend: str, classes: tuple[str, ...]) -> None:
        """A (re)built pipeline; the faces' histories survive settings changes unless the classes change."""
        if self.sender() is not self.worker:
            return
        self.backend_label.setText(f"Backend: {backend_label(backend)}")
        self.face_panel.set_classes(tuple(classes))

    def _is_sender(self, worker: PipelineWorker) -> bool:
        """Whether the signal being handled comes from ``worker`` (late signals of replaced workers are ignored)."""
        return self.sender() is worker

    def _on_frame(self, packet: FramePacket) -> None:
        worker = self.worker
        if worker is None or not self._is_sender(worker):
            return
        try:
            self._show_packet(packet)
        finally:
            worker.frame_consumed()

    def _show_packet(self, packet: FramePacket) -> None:
        self.last_packet = packet
        paused = self.pause_action.isChecked()
        self.view.set_image(packet.image)
        self.view.set_badge("❚❚ Paused" if paused else "")
        self.face_panel.show_packet(packet)
        fps = 0.0 if paused else packet.fps
        self.fps_label.setText(f"FPS: {fps:.1f}" if fps > 0 else "FPS: –")
        self.latency_label.setText(f"Latency: {packet.latency_ms:.1f} ms")
        self.latency_label.setToolTip("\n".join(f"{k}: {v:.1f} ms" for k, v in packet.stage_ms.items()))
        self.backend_label.setText(f"Backend: {backend_label(packet.backend)}")
        self.faces_label.setText(f"Faces: {len(packet.faces)}")

    def _on_worker_error(self, text: str) -> None:
        self.show_error(text)

    def _on_source_ended(self, text: str) -> None:
        if not (self.banner.kind == "error" and self.banner.isVisible()):
            self.show_info(text)

    def _on_recording_started(self, video: str, csv: str) -> None:
        if self.sender() is not self.worker:
            return
        self.recording_label.setText("● REC")
        self._status(f"Recording to {video}", 4000)

    def _on_recording_finished(self, video: str, csv: str, follows: bool) -> None:
        self.last_recording = (Path(video), Path(csv))
        if self.sender() is self.worker:
            self._recording_ended(follows)
        saved = f"Recording saved: {video} and {Path(csv).name}"
        if self.banner.kind == "error" and self.banner.isVisible():
            self._status(saved, 15000)
        else:
            self.show_info(saved)

    def _on_recording_failed(self, text: str, follows: bool) -> None:
        if self.sender() is self.worker:
            self._recording_ended(follows)
        self.show_error(text)

    def _recording_ended(self, follows: bool) -> None:
        """The current worker's recording is over: Record stays checked only when another one has been asked for."""
        self.recording_label.setText("")
        if not follows:
            self.record_action.blockSignals(True)
            self.record_action.setChecked(False)
            self.record_action.blockSignals(False)

    def _on_worker_finished(self) -> None:
        """Reset the controls; the finished worker is kept (not deleted) until the next one finishes."""
        worker = self.worker
        if worker is None or not self._is_sender(worker):
            return
        worker.wait(2000)
        self._retired_worker = worker
        self.worker = None
        self.recording_label.setText("")
        self.record_action.blockSignals(True)
        self.record_action.setChecked(False)
        self.record_action.blockSignals(False)
        self.pause_action.blockSignals(True)
        self.pause_action.setChecked(False)
        self.pause_action.blockSignals(False)
        self.opened_source = None
        self.fps_label.setText("FPS: –")
        still = self.last_packet is not None and self.last_packet.still
        if not still:
            self._show_stopped()
        self._update_buttons()
        if self._closing:
            self.close()
            return
        if self._pending_start is not None:
            spec, self._pending_start = self._pending_start, None
            self.start_source(spec)
        elif still and worker.config != self.config and self._source is not None:
            self.start_source(self._source)

    def _show_stopped(self) -> None:
        """Mark the view as stopped and clear the readouts of faces that are no longer being analysed."""
        self.last_packet = None
        self.view.set_message("Stopped")
        self.view.set_badge("■ Stopped")
        self.face_panel.clear()
        self.faces_label.setText("Faces: –")
        self.latency_label.setText("Latency: –")
        self.latency_label.setToolTip("")
        self._status("Stopped")

    def _update_buttons(self) -> None:
        running = self.worker is not None
        self.pause_action.setEnabled(running)
        self.stop_action.setEnabled(running)
        self.record_action.setEnabled(running)
        self.refresh_action.setEnabled(not self._running_live())
        self.start_action.setText("⟲ Restart" if running else "▶ Start")

    def _running_live(self) -> bool:
        """Whether a live source (a webcam, a stream) is being analysed."""
        return self.worker is not None and self.opened_source is not None and self.opened_source.is_live

    def closeEvent(self, event: QCloseEvent | None) -> None:
        """Stop the worker first (it releases the camera and finalises recordings); close once it has finished."""
        if event is None:
            return
        self._settings_timer.stop()
        if self.worker is None and self._probe is None:
            self._force_timer.stop()
            event.accept()
            return
        if not self._closing:
            self._closing = True
            self._pending_start = None
            if self.worker is not None:
                self.worker.request_stop()
            self.view.set_message("Stopping…")
            self._force_timer.start()
        event.ignore()

    def _force_close(self) -> None:
        """Last resort if a thread ignores the stop request for STOP_GRACE_MS: end it and close anyway."""
        for thread in (self.worker, self._probe):
            if thread is not None and not thread.wait(2000):
                thread.terminate()
                thread.wait(2000)
        self.worker = None
        self._probe = None
        self.close()


def default_output_dir() -> Path:
    """Recordings and snapshots go to <Movies or home>/leaf-fer by default."""
    movies = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.MoviesLocation)
    base = Path(movies) if movies else Path.home()
    return base / "leaf-fer"


def _path_row(edit: QLineEdit, tooltip: str, choose: Callable[[], None]) -> QHBoxLayout:
    """A path field with a "…" button that opens a chooser."""
    button = QToolButton()
    button.setText("…")
    button.setToolTip(tooltip)
    button.clicked.connect(choose)
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    row.addWidget(button)
    return row
