"""``shg-fast`` / ``python -m shg_fast``: one subcommand per module listed in COMMANDS.

Each module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``, importing anything heavy inside ``run``. An ordinary user mistake
raises :class:`CLIError`, printed as a one-line error with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["COMMANDS", "CLIError", "main"]

COMMANDS = ("info", "bench", "eval", "train", "predict", "convert")


class CLIError(Exception):
    """A user-facing error: printed as one line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shg-fast", description="Stacked Hourglass, fast.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_parser(sub).set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CLIError as exc:
        print(f"shg-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shg-fast {args.command}: interrupted", file=sys.stderr)
        return 130
