"""Webcam discovery that cannot hang the UI: only plausible indices, each probe in a thread with a time limit."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import cv2
from PyQt6.QtCore import QThread, pyqtSignal


def candidate_camera_indices(max_index: int) -> list[int]:
    """Indices worth probing: on Linux only those with a /dev/videoN node, elsewhere 0..max_index-1."""
    if sys.platform.startswith("linux"):
        found = []
        for path in Path("/dev").glob("video*"):
            suffix = path.name[len("video"):]
            if suffix.isdigit() and int(suffix) < max_index:
                found.append(int(suffix))
        return sorted(found)
    return list(range(max_index))


def probe_cameras(max_index: int = 6, timeout_s: float = 2.0) -> list[int]:
    """Webcam indices that open and deliver a frame (busy cameras do not); each probe has a time limit."""
    available: list[int] = []
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        for index in candidate_camera_indices(max_index):
            ok: list[bool] = []

            def attempt(i: int = index) -> None:
                capture = cv2.VideoCapture(i)
                try:
                    ok.append(bool(capture.isOpened() and capture.read()[0]))
                finally:
                    capture.release()

            thread = threading.Thread(target=attempt, name=f"probe-camera-{index}", daemon=True)
            thread.start()
            thread.join(timeout_s)
            if ok and ok[0]:
                available.append(index)
    finally:
        cv2.utils.logging.setLogLevel(level)
    return available


class CameraProbe(QThread):
    """Probes webcams off the UI thread and reports the indices that work."""

    found = pyqtSignal(list)

    def __init__(self, max_index: int = 6) -> None:
        super().__init__()
        self.max_index = max_index

    def run(self) -> None:
        self.found.emit(probe_cameras(self.max_index))
