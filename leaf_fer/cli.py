"""`leaf-fer` console command: a thin dispatcher; each package registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

from leaf_fer.common import LeafFerError, one_line

COMMAND_MODULES = (
    "leaf_fer.train.commands",
    "leaf_fer.engines.commands",
    "leaf_fer.realtime.commands",
    "leaf_fer.gui.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leaf-fer", description="Real-time video facial expression analysis (LEAF).")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("leaf-fer: interrupted", file=sys.stderr)
        return 130
    except (LeafFerError, OSError) as exc:
        print(f"leaf-fer {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
