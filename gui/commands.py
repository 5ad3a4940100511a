"""Registers the ``leaf-fer gui`` subcommand; Qt is imported only when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from leaf_fer.realtime.commands import add_pipeline_options


def add_gui_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``leaf-fer gui`` and ``leaf_fer.gui.app.run_app``."""
    parser.add_argument("--source", help="webcam index, video/image file or stream URL to start with")
    add_pipeline_options(parser)
    parser.add_argument("-o", "--output-dir", "--output", dest="output_dir", type=Path,
                        help="folder for recordings and snapshots")
    parser.add_argument("--no-camera-probe", action="store_true", help="do not look for webcams at start-up")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gui",
        help="open the live analysis window",
        description="Open the PyQt6 window for live facial expression analysis of a webcam, video or image.",
    )
    add_gui_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from leaf_fer.gui.app import launch

    return launch(args)
