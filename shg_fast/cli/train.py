"""``shg-fast train``: train a Stacked Hourglass (synthetic stick figures or MPII)."""

from __future__ import annotations

import argparse
import json
import math

from . import _args
from ._args import CLIError

#: Upper bounds of the model and input sizes, checked before anything is built.
MAX_STACKS, MAX_FEATURES, MAX_MODULES, MAX_RES = 64, 2048, 16, 2048
#: At most this many parameters (4 GB of float32 weights, before gradients and optimizer state).
MAX_PARAMETERS = 10**9
BIG = 2**31 - 1


def add_parser(sub) -> argparse.ArgumentParser:
    from ..train import add_arguments

    p = sub.add_parser("train", help="train on synthetic stick figures or MPII (torchrun for DDP)",
                       description="Intermediate supervision (MSE on every stack), RMSprop; "
                                   "launch with torchrun for DistributedDataParallel.")
    add_arguments(p)
    _args.retype(p, {
        "stacks": _args.int_in(1, MAX_STACKS), "features": _args.int_in(2, MAX_FEATURES),
        "modules": _args.int_in(1, MAX_MODULES), "res": _args.int_in(64, MAX_RES),
        "annot": _args.input_file, "images": _args.input_dir, "image_list": _args.input_file,
        "val_annot": _args.input_file, "val_image_list": _args.input_file,
        "train_size": _args.int_in(1, BIG), "val_size": _args.int_in(1, BIG), "workers": _args.int_in(0, 256),
        "epochs": _args.int_in(1, BIG), "batch_size": _args.int_in(1, 65536),
        "lr": _args.float_in(0, 1, open_low=True), "max_steps": _args.int_in(0, BIG), "seed": _args.int_in(0, BIG),
        "device": _args.device, "out": _args.output_dir, "resume": _args.checkpoint_file,
        "val_every": _args.int_in(0, BIG),
    })
    return p


def parameter_count(stacks: int, features: int, modules: int, joints: int = 16) -> int:
    """The parameters of a Stacked Hourglass of this size (BN affine included), counted without building it."""

    def residual(cin: int, cout: int) -> int:  # BN, conv 1x1, BN, conv 3x3, BN, conv 1x1, projection skip
        mid = cout // 2
        skip = cin * cout + cout if cin != cout else 0
        return 2 * cin + cin * mid + mid + 2 * mid + 9 * mid * mid + mid + 2 * mid + mid * cout + cout + skip

    f = features
    stem = 3 * 64 * 49 + 64 + 2 * 64 + residual(64, 128) + residual(128, 128) + residual(128, f)
    per_stack = 14 * modules * residual(f, f) + f * f + 3 * f + joints * f + joints  # 4 levels + res, lin, heatmaps
    merges = (stacks - 1) * (f * f + f + joints * f + f)
    return stem + stacks * per_stack + merges


def check(args: argparse.Namespace) -> None:
    """Options that depend on each other or on the machine, all before any data or model is built."""
    if args.res % 64:
        raise CLIError(f"--res must be a multiple of 64, got {args.res}")
    if args.features % 2:
        raise CLIError(f"--features must be even (the residuals' middle layers have half as many), got {args.features}")
    params = parameter_count(args.stacks, args.features, args.modules)
    if params > MAX_PARAMETERS:
        raise CLIError(f"--stacks {args.stacks} --features {args.features} --modules {args.modules} make about "
                       f"{params:.2e} parameters; at most {MAX_PARAMETERS:.0e} are allowed")
    if args.sigma != "torch7":
        try:
            sigma = float(args.sigma)
        except ValueError:
            sigma = math.nan
        if not (math.isfinite(sigma) and 0 < sigma <= args.res):
            raise CLIError(f"--sigma must be 'torch7' or a positive number of heatmap pixels, got {args.sigma!r}")
    if args.memory_efficient and args.model != "fast":
        raise CLIError(f"--memory-efficient needs --model fast (the reference model has no such mode), got --model "
                       f"{args.model}")
    _args.check_device(args.device)
    if args.data == "mpii":
        _check_mpii(args)
    elif args.train_size < args.batch_size:
        raise CLIError(f"--train-size {args.train_size} is smaller than --batch-size {args.batch_size}: an epoch would "
                       "have no full batch")


def _check_mpii(args: argparse.Namespace) -> None:
    from ..pose.pckh import read_h5

    if not args.annot or not args.images:
        raise CLIError("--data mpii needs --annot (.h5) and --images (folder)")
    try:
        people = read_h5(args.annot, ("part",))["part"].shape[0]
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(f"--annot: {exc}") from None
    if people < args.batch_size:
        raise CLIError(f"--annot has {people} people, fewer than --batch-size {args.batch_size}")


def run(args: argparse.Namespace) -> int:
    from ..train import train

    try:
        history = train(args)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc).splitlines()[0]) from exc
    except FloatingPointError as exc:  # the loss diverged: not a usage error
        raise CLIError(str(exc), status=1) from None
    if history["val"]:
        last = history["val"][-1]
        print(json.dumps({"step": last["step"], "pckh_all": round(last["total_all16"], 2),
                          "pckh_14_weighted": round(last["total_weighted"], 2)}))
    return 0
