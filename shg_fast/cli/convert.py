"""``shg-fast convert IN OUT``: a checkpoint of another port (or our own) → a shg_fast checkpoint.

OUT is the package's checkpoint format, ``{"model": state_dict, "config": model config, "source"}``
(see :func:`shg_fast.convert.convert_checkpoint`), which ``predict --checkpoint`` and
``train --init`` read as they are.
"""

from __future__ import annotations

import argparse

from . import _args
from ._args import CLIError


def add_parser(sub) -> argparse.ArgumentParser:
    from shg_fast.convert import SOURCES

    p = sub.add_parser("convert", help="convert a checkpoint of another Stacked Hourglass port to shg_fast's")
    p.add_argument("input", metavar="IN", type=_args.checkpoint_file,
                   help="checkpoint file (princeton-vl, bearpaw, anibali or shg_fast)")
    p.add_argument("output", metavar="OUT", type=_args.output_file(),
                   help="where to write the shg_fast checkpoint (weights + model config); its folder must exist")
    p.add_argument("--source", default="auto", choices=("auto",) + SOURCES,
                   help="layout of IN (default: detect from its key names)")
    return p


def check(args: argparse.Namespace) -> None:
    """Everything is checked by the option types (IN a torch.save file, OUT's folder writable)."""


def run(args: argparse.Namespace) -> int:
    import torch

    from shg_fast.convert import convert_checkpoint

    try:
        checkpoint = convert_checkpoint(args.input, source=args.source)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    try:
        with _args.atomic_path(args.output) as tmp:
            torch.save(checkpoint, tmp)
    except OSError as exc:
        raise CLIError(f"cannot write {args.output!r}: {exc}", status=1) from None
    config = checkpoint["config"]
    described = ", ".join(f"{k}={config[k]!r}" for k in ("num_stacks", "num_features", "num_joints", "num_modules",
                                                         "stem", "input_mean"))
    print(f"{args.input} ({checkpoint['source']}) -> {args.output}: StackedHourglass({described}), "
          f"{len(checkpoint['model'])} tensors")
    if config["input_mean"] is not None:
        print("note: these weights expect mean-subtracted input; the model subtracts input_mean itself")
    return 0
