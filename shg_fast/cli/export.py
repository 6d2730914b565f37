"""``shg-fast export --onnx OUT``: the model as an ONNX file that any ONNX consumer runs.

The file holds the reference computation in float32 (opset 18, input ``image`` with a dynamic
batch dimension, outputs ``heatmaps_0`` ... one per stack, the last final); the format is
documented in :mod:`shg_fast.peers`. Users who deploy through ONNX Runtime, OpenVINO or
TensorRT start from it.
"""

from __future__ import annotations

import argparse

from . import _args
from ._args import CLIError

#: Bounds of --size (input height and width fixed in the file).
MIN_SIZE, MAX_SIZE = 64, 2048


def _size(text: str) -> int:
    value = _args.int_in(MIN_SIZE, MAX_SIZE)(text)
    if value % 64:
        raise argparse.ArgumentTypeError(f"expected a multiple of 64 from {MIN_SIZE} to {MAX_SIZE}, got {text!r}")
    return value


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export", help="export the model as ONNX (opset 18, dynamic batch)",
        description="Write the model's eval-mode computation (the reference network in float32, BatchNorm "
                    "with its running statistics, the input mean subtracted when the checkpoint has one) as "
                    "an ONNX file: opset 18, input 'image' (batch, 3, SIZE, SIZE) RGB in [0, 1] with a dynamic "
                    "batch dimension, outputs 'heatmaps_0'... (batch, joints, SIZE/4, SIZE/4), one per stack, "
                    "the last the final prediction. Needs onnx and onnxscript (pip install 'shg_fast[peers]').",
    )
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", type=_args.output_file((".onnx",)),
                   help="the ONNX file to write (its folder must exist; replaced atomically)")
    p.add_argument("--checkpoint", type=_args.checkpoint_file,
                   help="checkpoint (.pt) to export; default: the shipped synthetic-data model")
    p.add_argument("--size", type=_size, default=256,
                   help=f"input height and width fixed in the file, a multiple of 64 from {MIN_SIZE} to "
                        f"{MAX_SIZE} (default 256)")
    p.add_argument("--check", action="store_true",
                   help="run the written file with ONNX Runtime on a random batch of 2 and compare it with "
                        "the model run in float64 (needs onnxruntime)")
    return p


def check(args: argparse.Namespace) -> None:
    """The exporter's packages (and onnxruntime for --check) are installed."""
    from shg_fast.peers import export_reasons, onnxruntime_reasons

    reasons = onnxruntime_reasons() if args.check else export_reasons()
    if reasons:
        raise CLIError("; ".join(reasons))


def run(args: argparse.Namespace) -> int:
    import contextlib
    import io

    import torch

    from shg_fast.checkpoints import SHIPPED_CHECKPOINT, model_from_checkpoint
    from shg_fast.peers import ONNX_OPSET, export_onnx, load_onnxruntime
    from shg_fast.tolerances import max_rel_error, tolerance

    path = args.checkpoint or SHIPPED_CHECKPOINT
    try:
        model, _ = model_from_checkpoint(path, "reference")
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc).splitlines()[0]) from exc
    except RuntimeError as exc:  # load_state_dict: the weights do not fit the configuration
        raise CLIError(f"checkpoint {path} does not fit the model: {str(exc).splitlines()[0]}") from exc
    model = model.float().eval()
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        export_onnx(model, args.onnx, args.size)
    print(f"{path} -> {args.onnx}: opset {ONNX_OPSET}, input 'image' (batch, 3, {args.size}, {args.size}), "
          f"{model.num_stacks} outputs heatmaps_0..{model.num_stacks - 1} "
          f"(batch, {model.num_joints}, {args.size // 4}, {args.size // 4})")
    if args.check:
        x = torch.rand(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            truth = torch.stack(model.double()(x.double()))
            err = max_rel_error(torch.stack(load_onnxruntime(args.onnx)(x)), truth)
        bound = tolerance("float32")
        print(f"ONNX Runtime on {args.onnx} vs the model in float64, batch 2: max relative error {err:.1e} "
              f"(tolerance {bound:.0e})")
        if not err <= bound:
            raise CLIError(f"the exported file disagrees with the model (error {err:.1e} > {bound:.0e})", status=1)
    return 0
