"""``shg-fast eval``: PCKh of MPII-style predictions against annotations."""

from __future__ import annotations

import argparse
import json

from . import _args
from ._args import CLIError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="PCKh@0.5 of predictions (.h5 'preds') against MPII annotations (.h5)")
    p.add_argument("--preds", required=True, type=_args.input_file,
                   help=".h5 with 'preds' (N, 16, 2), 1-based image coordinates")
    p.add_argument("--annot", required=True, type=_args.input_file,
                   help=".h5 with 'part' (N, 16, 2) and 'normalize' (N,), positive")
    p.add_argument("--threshold", type=_args.float_in(0, 10, open_low=True), default=0.5,
                   help="PCKh threshold, a fraction of the head size in (0, 10] (default 0.5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--curve", metavar="PNG", type=_args.output_file(_args.IMAGE_SUFFIXES),
                   help="also write the PCKh curve over thresholds 0..0.5 (needs matplotlib)")
    return p


def check(args: argparse.Namespace) -> None:
    """--curve needs matplotlib; the .h5 files must hold annotations and predictions of one size."""
    from ..pose import pckh

    if args.curve:
        _args.check_matplotlib("--curve")
    try:
        args.annotations = pckh.load_annotations(args.annot)
        args.predictions = pckh.load_predictions(args.preds, args.annotations["part"].shape[0])
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..pose import pckh

    ann, preds = args.annotations, args.predictions
    result = pckh.pck(preds, ann["part"], ann["normalize"], args.threshold)
    if args.curve:
        with _args.atomic_path(args.curve) as tmp:
            pckh.save_pck_curve(tmp, pckh.pck_curve(preds, ann["part"], ann["normalize"]))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(pckh.format_table(result))
    return 0
