"""``shg-fast train``: train a Stacked Hourglass (synthetic stick figures or MPII)."""

from __future__ import annotations

import argparse
import json

from . import CLIError


def add_parser(sub) -> argparse.ArgumentParser:
    from ..train import add_arguments

    p = sub.add_parser("train", help="train on synthetic stick figures or MPII (torchrun for DDP)",
                       description="Intermediate supervision (MSE on every stack), RMSprop; "
                                   "launch with torchrun for DistributedDataParallel.")
    return add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..train import train

    if args.res <= 0 or args.res % 64:
        raise CLIError(f"--res must be a positive multiple of 64, got {args.res}")
    for name in ("stacks", "features", "modules", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    try:
        history = train(args)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc).splitlines()[0]) from exc
    if history["val"]:
        last = history["val"][-1]
        print(json.dumps({"step": last["step"], "pckh_all": round(last["total_all16"], 2),
                          "pckh_14_weighted": round(last["total_weighted"], 2)}))
    return 0
