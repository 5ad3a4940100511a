"""Painted widgets: the video view, per-class probability bars, a rolling history plot and the message banner."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from PyQt6.QtCore import QEvent, QObject, QPointF, QRectF, QSize, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QFont, QFontMetrics, QImage, QMouseEvent, QPainter, QPainterPath, QPaintEvent, QPen
from PyQt6.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QToolButton, QWidget

from leaf_fer.realtime.annotators import CLASS_COLORS as OVERLAY_CLASS_COLORS

FALLBACK_COLORS: tuple[str, ...] = (
    "#9e9e9e",
    "#fbc02d",
    "#ab47bc",
    "#1e88e5",
    "#e53935",
    "#43a047",
    "#fb8c00",
    "#00acc1",
    "#6d4c41",
    "#ec407a",
)


def class_color(index: int, name: str = "") -> QColor:
    """Colour of a class: the overlay's colour for known class names, else a stable palette entry by index."""
    if name in OVERLAY_CLASS_COLORS:
        blue, green, red = OVERLAY_CLASS_COLORS[name]
        return QColor(red, green, blue)
    return QColor(FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


class VideoView(QWidget):
    """Shows the latest frame scaled to fit with its aspect ratio kept; reports clicks in image coordinates.

    A badge ("Paused", "Stopped") can be drawn over the frame; clicking the view takes the keyboard focus, so that
    Space goes to the window's shortcut rather than to a text field.
    """

    image_clicked = pyqtSignal(float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image: QImage | None = None
        self._message = "No source"
        self._highlight: tuple[float, float, float, float] | None = None
        self._badge = ""
        self.frames_shown = 0
        self.setMinimumSize(320, 180)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

    def sizeHint(self) -> QSize:
        return QSize(800, 450)

    def set_image(self, image: QImage) -> None:
        """Show ``image`` (the view keeps a reference; pass a copy that nothing else writes to)."""
        self._image = image
        self.frames_shown += 1
        self.update()

    def image(self) -> QImage | None:
        return self._image

    def message(self) -> str:
        return self._message

    def set_message(self, text: str) -> None:
        """Text drawn when there is no frame to show."""
        self._message = text
        self.update()

    def badge(self) -> str:
        return self._badge

    def set_badge(self, text: str) -> None:
        """Text drawn over the bottom of the frame ('' for none); the frame under it is dimmed."""
        self._badge = text
        self.update()

    def set_highlight(self, box: tuple[float, float, float, float] | None) -> None:
        """Outline the selected face (image-pixel box) on top of the frame; ``None`` removes it."""
        self._highlight = box
        self.update()

    def image_rect(self) -> QRectF:
        """Where the image is drawn inside the widget (empty when there is no image)."""
        if self._image is None or self._image.isNull():
            return QRectF()
        iw, ih = self._image.width(), self._image.height()
        scale = min(self.width() / iw, self.height() / ih)
        w, h = iw * scale, ih * scale
        return QRectF((self.width() - w) / 2.0, (self.height() - h) / 2.0, w, h)

    def widget_to_image(self, pos: QPointF) -> QPointF | None:
        """Map a widget position to image pixels; ``None`` outside the image."""
        rect = self.image_rect()
        if rect.isEmpty() or not rect.contains(pos) or self._image is None:
            return None
        scale = rect.width() / self._image.width()
        return QPointF((pos.x() - rect.x()) / scale, (pos.y() - rect.y()) / scale)

    def image_to_widget(self, x: float, y: float) -> QPointF:
        rect = self.image_rect()
        scale = rect.width() / self._image.width() if self._image is not None and not rect.isEmpty() else 1.0
        return QPointF(rect.x() + x * scale, rect.y() + y * scale)

    def mousePressEvent(self, event: QMouseEvent | None) -> None:
        if event is not None and event.button() == Qt.MouseButton.LeftButton:
            point = self.widget_to_image(event.position())
            if point is not None:
                self.image_clicked.emit(point.x(), point.y())
        super().mousePressEvent(event)

    def paintEvent(self, event: QPaintEvent | None) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#101214"))
        rect = self.image_rect()
        if self._image is None or rect.isEmpty():
            painter.setPen(QColor("#c0c4c8"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self._message)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(rect, self._image)
        if self._highlight is not None:
            x1, y1, x2, y2 = self._highlight
            top_left = self.image_to_widget(x1, y1)
            bottom_right = self.image_to_widget(x2, y2)
            pen = QPen(QColor("white"), 1.5, Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(QRectF(top_left, bottom_right).adjusted(-4, -4, 4, 4))
        if self._badge:
            painter.fillRect(rect, QColor(0, 0, 0, 90))
            font = QFont(painter.font())
            font.setBold(True)
            painter.setFont(font)
            height = QFontMetrics(font).height() + 12
            band = QRectF(rect.left(), rect.bottom() - height, rect.width(), height)
            painter.fillRect(band, QColor(0, 0, 0, 170))
            painter.setPen(QColor("white"))
            painter.drawText(band, Qt.AlignmentFlag.AlignCenter, self._badge)


class ProbabilityBars(QWidget):
    """Horizontal bar per class with its probability; the most likely class is drawn bold."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._classes: tuple[str, ...] = ()
        self._values: tuple[float, ...] = ()
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._row_height = 20
        self.setMinimumHeight(self._row_height * 8 + 8)

    def sizeHint(self) -> QSize:
        return QSize(260, max(8, len(self._classes)) * self._row_height + 8)

    def set_classes(self, classes: Sequence[str]) -> None:
        self._classes = tuple(classes)
        self._values = ()
        self.setMinimumHeight(max(1, len(self._classes)) * self._row_height + 8)
        self.updateGeometry()
        self.update()

    def set_values(self, values: Sequence[float] | None) -> None:
        """Probabilities in class order; ``None`` clears the bars."""
        self._values = tuple(float(v) for v in values) if values is not None else ()
        self.update()

    def values(self) -> tuple[float, ...]:
        return self._values

    def paintEvent(self, event: QPaintEvent | None) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        regular, bold = QFont(painter.font()), QFont(painter.font())
        bold.setBold(True)
        metrics = QFontMetrics(bold)
        label_w = max((metrics.horizontalAdvance(c) for c in self._classes), default=0) + 8
        value_w = metrics.horizontalAdvance("100%") + 6
        bar_x = label_w
        bar_w = max(10, self.width() - label_w - value_w)
        best = max(range(len(self._values)), key=lambda i: self._values[i]) if self._values else -1
        for i, name in enumerate(self._classes):
            top = 4 + i * self._row_height
            row = QRectF(0, top, self.width(), self._row_height)
            painter.setFont(bold if i == best else regular)
            painter.setPen(self.palette().windowText().color())
            painter.drawText(QRectF(0, top, label_w - 6, self._row_height), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, name)
            track = QRectF(bar_x, row.y() + 4, bar_w, self._row_height - 8)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor(127, 127, 127, 50))
            painter.drawRoundedRect(track, 3, 3)
            if i < len(self._values):
                value = min(1.0, max(0.0, self._values[i]))
                painter.setBrush(class_color(i, name))
                painter.drawRoundedRect(QRectF(track.x(), track.y(), track.width() * value, track.height()), 3, 3)
                painter.setPen(self.palette().windowText().color())
                painter.drawText(
                    QRectF(bar_x + bar_w, top, value_w, self._row_height),
                    Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                    f"{value * 100:.0f}%",
                )


class HistoryPlot(QWidget):
    """Rolling line plot of each class probability over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 10.0, max_points: int = 600, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.window_s = window_s
        self._classes: tuple[str, ...] = ()
        self._points: deque[tuple[float, tuple[float, ...]]] = deque(maxlen=max_points)
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(260, 140)

    def set_classes(self, classes: Sequence[str]) -> None:
        """Class names, used to colour each line like the overlay and the bars."""
        self._classes = tuple(classes)
        self.update()

    def clear(self) -> None:
        self._points.clear()
        self.update()

    def append(self, t: float, values: Sequence[float]) -> None:
        """Add one sample at time ``t`` seconds; a step back in time (a new source) starts a fresh history."""
        if self._points and t < self._points[-1][0]:
            self._points.clear()
        self._points.append((t, tuple(float(v) for v in values)))
        self.update()

    def set_history(self, points: Sequence[tuple[float, Sequence[float]]]) -> None:
        """Replace the plotted samples (e.g. when another face is selected)."""
        self._points.clear()
        for t, values in points:
            self._points.append((float(t), tuple(float(v) for v in values)))
        self.update()

    def __len__(self) -> int:
        return len(self._points)

    def paintEvent(self, event: QPaintEvent | None) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        area = QRectF(self.rect()).adjusted(28, 6, -6, -16)
        painter.fillRect(area, QColor(127, 127, 127, 25))
        text_color = self.palette().windowText().color()
        painter.setPen(QPen(QColor(127, 127, 127, 90), 1, Qt.PenStyle.DotLine))
        for level in (0.0, 0.5, 1.0):
            y = area.bottom() - level * area.height()
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
        painter.setPen(text_color)
        small = QFont(painter.font())
        small.setPointSizeF(max(6.0, small.pointSizeF() * 0.8))
        painter.setFont(small)
        for level in (0.0, 0.5, 1.0):
            y = area.bottom() - level * area.height()
            painter.drawText(QRectF(0, y - 8, 24, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{level:g}")
        painter.drawText(
            QRectF(area.left(), area.bottom(), area.width(), 16),
            Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
            f"last {self.window_s:g} s",
        )
        if len(self._points) < 2:
            return
        t_end = self._points[-1][0]
        t_start = t_end - self.window_s
        visible = [(t, v) for t, v in self._points if t >= t_start]
        if len(visible) < 2:
            return
        n_classes = len(visible[-1][1])
        for c in range(n_classes):
            path = QPainterPath()
            for k, (t, values) in enumerate(visible):
                if c >= len(values):
                    continue
                x = area.left() + (t - t_start) / self.window_s * area.width()
                y = area.bottom() - min(1.0, max(0.0, values[c])) * area.height()
                if k == 0 or path.elementCount() == 0:
                    path.moveTo(x, y)
                else:
                    path.lineTo(x, y)
            painter.setPen(QPen(class_color(c, self._classes[c] if c < len(self._classes) else ""), 1.6))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawPath(path)


class MessageBanner(QFrame):
    """A message (errors in red, notices in blue) with a dismiss button, floating over the top of ``parent``.

    It overlays its parent instead of taking layout space, so the video does not move when a message comes or goes.
    """

    STYLES = {
        "error": "background:#fdecea; color:#611a15; border:1px solid #f5c2c0; border-radius:4px;",
        "info": "background:#e8f1fb; color:#0d3c61; border:1px solid #b6d4f2; border-radius:4px;",
    }

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        parent.installEventFilter(self)
        self.kind = ""
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.clicked.connect(self.dismiss)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(close)
        self.hide()

    def show_message(self, kind: str, text: str) -> None:
        self.kind = kind
        self.setStyleSheet(f"MessageBanner {{{self.STYLES[kind]}}} QLabel {{border:none; background:transparent;}}")
        self.label.setText(text)
        self._place()
        self.show()
        self.raise_()

    def _place(self) -> None:
        parent = self.parentWidget()
        if parent is None:
            return
        width = max(1, parent.width() - 16)
        height = self.heightForWidth(width)
        self.setGeometry(8, 8, width, height if height > 0 else self.sizeHint().height())

    def eventFilter(self, watched: QObject | None, event: QEvent | None) -> bool:
        if watched is self.parentWidget() and event is not None and event.type() == QEvent.Type.Resize:
            self._place()
        return False

    def dismiss(self) -> None:
        self.kind = ""
        self.label.clear()
        self.hide()

    def text(self) -> str:
        return self.label.text()
