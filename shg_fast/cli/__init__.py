"""``shg-fast`` / ``python -m shg_fast``: one subcommand per module listed in COMMANDS.

Each module defines ``add_parser(subparsers) -> argparse.ArgumentParser``, ``check(args)``
and ``run(args) -> int``, importing anything heavy inside them. ``main`` parses (options are
typed by the validators of :mod:`._args`), checks ``$SHG_FAST_BACKEND`` (except for ``info``,
which reports it), runs ``check`` (the machine, input files, combinations of options), and
only then ``run``. A user mistake raises :class:`CLIError` (or fails an argparse type),
printed as one line with exit status 2 (an OSError while working: one line, status 1);
warnings are printed as one line each.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ._args import CLIError, Parser, check_backend_env

__all__ = ["COMMANDS", "CLIError", "main"]

COMMANDS = ("info", "bench", "eval", "train", "predict", "convert", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="shg-fast", description="Stacked Hourglass, fast.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_parser(sub).set_defaults(_check=module.check, _run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, check everything, then run the chosen subcommand; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line argparse error already printed
        return exc.code if isinstance(exc.code, int) else 2
    prefix = f"shg-fast {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"{prefix}: warning: {message}", file=sys.stderr)
        try:
            if args.command != "info":
                check_backend_env()
            args._check(args)
            return int(args._run(args) or 0)
        except CLIError as exc:
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            return exc.status
        except OSError as exc:  # the machine refused (disk full, permissions changed while running)
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return 130
