"""Application entry: argument handling, QApplication set-up and the main window's life cycle."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import QApplication

from leaf_fer.common import LeafFerError
from leaf_fer.gui.commands import add_gui_arguments
from leaf_fer.gui.main_window import MainWindow
from leaf_fer.realtime.commands import pipeline_config


def _check_display() -> None:
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise LeafFerError("no display found: set DISPLAY (or run under Xvfb), or QT_QPA_PLATFORM=offscreen")


def launch(args: argparse.Namespace) -> int:
    """Open the window for parsed ``args`` and run the event loop until it closes."""
    config = pipeline_config(args)
    _check_display()
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("leaf-fer")
    window = MainWindow(config, output_dir=args.output_dir, probe_cameras_on_start=not args.no_camera_probe)
    window.show()
    if args.source is not None:
        window.source_combo.setEditText(args.source)
        QTimer.singleShot(0, window.start)
    signal.signal(signal.SIGINT, lambda *_: window.close())
    heartbeat = QTimer()
    heartbeat.timeout.connect(lambda: None)
    heartbeat.start(250)
    return int(app.exec())


def run_app(argv: list[str] | None = None) -> int:
    """``leaf-fer gui`` without the dispatcher: parse ``argv`` (default ``sys.argv[1:]``) and launch."""
    parser = argparse.ArgumentParser(prog="leaf-fer gui", description="Live facial expression analysis window.")
    add_gui_arguments(parser)
    return launch(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_app())
