"""``shg-fast convert IN OUT``: a checkpoint of another port → a shg_fast state_dict file."""

from __future__ import annotations

import argparse

from . import CLIError


def add_parser(sub) -> argparse.ArgumentParser:
    from shg_fast.convert import SOURCES

    p = sub.add_parser("convert", help="convert a checkpoint of another Stacked Hourglass port to shg_fast's")
    p.add_argument("input", metavar="IN", help="checkpoint file (princeton-vl, bearpaw, anibali or shg_fast)")
    p.add_argument("output", metavar="OUT", help="where to write the shg_fast state_dict (torch.save)")
    p.add_argument("--source", default="auto", choices=("auto",) + SOURCES,
                   help="layout of IN (default: detect from its key names)")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from shg_fast.convert import detect_source, load_checkpoint, load_state_dict, model_config

    try:
        checkpoint = load_checkpoint(args.input)
        source = args.source if args.source != "auto" else detect_source(checkpoint)
        state_dict = load_state_dict(checkpoint, source=source)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    try:
        torch.save(state_dict, args.output)
    except OSError as exc:
        raise CLIError(f"cannot write {args.output!r}: {exc}") from None
    config = ", ".join(f"{k}={v}" for k, v in model_config(state_dict).items())
    print(f"{args.input} ({source}) -> {args.output}: StackedHourglass({config}), {len(state_dict)} tensors")
    if source in ("bearpaw", "anibali"):
        print("note: these weights expect mean-subtracted input; use shg_fast.convert.prepare_input(x, "
              f"{source!r})")
    return 0

