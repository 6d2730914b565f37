"""``shg-fast eval``: PCKh of MPII-style predictions against annotations."""

from __future__ import annotations

import argparse
import json

from . import CLIError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="PCKh@0.5 of predictions (.h5 'preds') against MPII annotations (.h5)")
    p.add_argument("--preds", required=True, help=".h5 with 'preds' (N, 16, 2), 1-based image coordinates")
    p.add_argument("--annot", required=True, help=".h5 with 'part' (N, 16, 2) and 'normalize' (N,)")
    p.add_argument("--threshold", type=float, default=0.5, help="PCKh threshold (default 0.5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--curve", metavar="PNG", help="also write the PCKh curve over thresholds 0..0.5")
    return p


def run(args: argparse.Namespace) -> int:
    from ..pose import pckh

    if not 0 < args.threshold:
        raise CLIError(f"--threshold must be positive, got {args.threshold}")
    try:
        ann = pckh.load_annotations(args.annot)
        preds = pckh.load_predictions(args.preds, ann["part"].shape[0])
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    result = pckh.pck(preds, ann["part"], ann["normalize"], args.threshold)
    if args.curve:
        try:
            pckh.save_pck_curve(args.curve, pckh.pck_curve(preds, ann["part"], ann["normalize"]))
        except OSError as exc:
            raise CLIError(f"cannot write {args.curve}: {exc}") from exc
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(pckh.format_table(result))
    return 0
