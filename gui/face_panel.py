"""The selected face: track picker, expression label, per-class probability bars and the recent history plot."""

from __future__ import annotations

from collections import deque

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QComboBox, QGroupBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from leaf_fer.gui.widgets import HistoryPlot, ProbabilityBars
from leaf_fer.gui.worker import FaceInfo, FramePacket

HISTORY_SECONDS = 10.0


class FacePanel(QGroupBox):
    """Follows one tracked face across packets: the first face is selected until another is picked (in the combo,
    or with :meth:`select_at`); each face's probabilities of the last ``HISTORY_SECONDS`` are kept, so that a newly
    selected face shows its past at once. ``highlight_changed`` carries the box to outline on the video (None when
    there is only one face, or none)."""

    highlight_changed = pyqtSignal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Selected face", parent)
        self.selected_track: int | None = None
        self.last_packet: FramePacket | None = None
        self._classes: tuple[str, ...] = ()
        self._histories: dict[int, deque[tuple[float, tuple[float, ...]]]] = {}
        self.combo = QComboBox()
        self.combo.setPlaceholderText("no face")
        self.combo.activated.connect(self._combo_activated)
        self.label = QLabel("–")
        self.label.setStyleSheet("font-weight:bold;")
        self.bars = ProbabilityBars()
        self.history = HistoryPlot(window_s=HISTORY_SECONDS)
        row = QHBoxLayout()
        row.addWidget(QLabel("Track"))
        row.addWidget(self.combo, 1)
        row.addWidget(self.label)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.bars)
        layout.addWidget(self.history, 1)

    def set_classes(self, classes: tuple[str, ...]) -> None:
        """A (re)built pipeline's classes; the faces' histories survive unless the classes change."""
        if classes == self._classes:
            return
        self._classes = classes
        self.forget()
        self.bars.set_classes(classes)
        self.history.set_classes(classes)

    def forget(self) -> None:
        """A new source: no selection, no histories."""
        self._histories.clear()
        self.history.clear()
        self.selected_track = None
        self.last_packet = None

    def show_packet(self, packet: FramePacket) -> None:
        """Record the packet's faces and show the selected one (the lowest track id when it is gone)."""
        self.last_packet = packet
        for face in packet.faces:
            history = self._histories.setdefault(face.track_id, deque(maxlen=int(HISTORY_SECONDS * 60)))
            history.append((packet.timestamp_s, face.probabilities))
        present = {face.track_id for face in packet.faces}
        for track_id in [t for t in self._histories if t not in present]:
            last_t = self._histories[track_id][-1][0] if self._histories[track_id] else 0.0
            if packet.timestamp_s - last_t > HISTORY_SECONDS or packet.timestamp_s < last_t:
                del self._histories[track_id]
        self._update_combo(packet.faces)
        if self.selected_track not in present and packet.faces:
            self.select_track(min(present))
        else:
            self._show_selected(packet)

    def clear(self) -> None:
        """No faces are being analysed any more: empty readouts (the history plot stays)."""
        self.last_packet = None
        self._update_combo(())
        self.bars.set_values(None)
        self.label.setText("–")
        self.highlight_changed.emit(None)

    def select_track(self, track_id: int) -> None:
        """Make ``track_id`` the selected face and show its history so far."""
        self.selected_track = track_id
        self.history.set_history(list(self._histories.get(track_id, ())))
        index = self.combo.findData(track_id)
        if index >= 0:
            self.combo.setCurrentIndex(index)
        if self.last_packet is not None:
            self._show_selected(self.last_packet, append=False)

    def select_at(self, x: float, y: float) -> None:
        """Select the face whose box contains the image point (the smallest, if boxes overlap)."""
        if self.last_packet is None:
            return
        hits = [f for f in self.last_packet.faces if f.box[0] <= x <= f.box[2] and f.box[1] <= y <= f.box[3]]
        if hits:
            face = min(hits, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            self.select_track(face.track_id)

    def _update_combo(self, faces: tuple[FaceInfo, ...]) -> None:
        ids = sorted(face.track_id for face in faces)
        if ids != [self.combo.itemData(i) for i in range(self.combo.count())]:
            self.combo.blockSignals(True)
            self.combo.clear()
            for track_id in ids:
                self.combo.addItem(f"#{track_id}", track_id)
            self.combo.blockSignals(False)
        index = self.combo.findData(self.selected_track)
        if index != self.combo.currentIndex():
            self.combo.setCurrentIndex(index)

    def _show_selected(self, packet: FramePacket, append: bool = True) -> None:
        face = next((f for f in packet.faces if f.track_id == self.selected_track), None)
        self.bars.set_values(face.probabilities if face else None)
        self.label.setText(face.label if face else "–")
        self.highlight_changed.emit(face.box if face is not None and len(packet.faces) > 1 else None)
        if face is not None and append:
            self.history.append(packet.timestamp_s, face.probabilities)

    def _combo_activated(self, index: int) -> None:
        track_id = self.combo.itemData(index)
        if isinstance(track_id, int):
            self.select_track(track_id)
