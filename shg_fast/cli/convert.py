"""``shg-fast convert IN OUT``: a checkpoint of another port → a shg_fast state_dict file."""

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
                   help="where to write the shg_fast state_dict (torch.save); its folder must exist")
    p.add_argument("--source", default="auto", choices=("auto",) + SOURCES,
                   help="layout of IN (default: detect from its key names)")
    return p


def check(args: argparse.Namespace) -> None:
    """Everything is checked by the option types (IN a torch.save file, OUT's folder writable)."""


def run(args: argparse.Namespace) -> int:
    import torch

    from shg_fast.convert import detect_source, load_checkpoint, load_state_dict, model_config

    try:
        checkpoint = load_checkpoint(args.input)
        source = args.source if args.source != "auto" else detect_source(checkpoint)
        state_dict = load_state_dict(checkpoint, source=source)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    with _args.atomic_path(args.output) as tmp:
        torch.save(state_dict, tmp)
    config = ", ".join(f"{k}={v}" for k, v in model_config(state_dict).items())
    print(f"{args.input} ({source}) -> {args.output}: StackedHourglass({config}), {len(state_dict)} tensors")
    if source in ("bearpaw", "anibali"):
        print("note: these weights expect mean-subtracted input; use shg_fast.convert.prepare_input(x, "
              f"{source!r})")
    return 0
