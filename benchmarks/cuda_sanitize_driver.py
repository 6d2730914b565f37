"""Small driver for compute-sanitizer: every CUDA kernel of the extension once per code path.

Run by benchmarks/cuda_sanitize.sh; exits non-zero when a result differs from the reference
or the extension has no CUDA kernels. Shapes are small and odd so partial tiles are exercised.
"""

from __future__ import annotations

import sys

import torch

from shg_fast import _extension
from shg_fast.folding import FoldedResidual
from shg_fast.ops import (
    decode_heatmaps,
    decode_heatmaps_reference,
    residual_block,
    residual_block_reference,
    upsample_add,
    upsample_add_reference,
)
from shg_fast.reference import Residual
from shg_fast.tolerances import assert_close_to_reference


def run_upsample_add() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for channels_last in (False, True):
            skip = torch.randn(2, 19, 5, 7, device="cuda").to(dtype)
            low = torch.randn(2, 19, 3, 4, device="cuda").to(dtype)
            if channels_last:
                skip, low = skip.to(memory_format=torch.channels_last), low.to(memory_format=torch.channels_last)
            out = upsample_add(low, skip, backend="cuda")
            assert torch.equal(out, upsample_add_reference(low.double(), skip.double()).to(dtype))


def run_decode_heatmaps() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        hm = torch.randn(2, 16, 9, 11, device="cuda").to(dtype)
        flipped = torch.randn(2, 16, 9, 11, device="cuda").to(dtype)
        for fl in (None, flipped):
            coords, maxvals = decode_heatmaps(hm, fl, backend="cuda")
            perm = [5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10] if fl is not None else []
            ref_coords, ref_max = decode_heatmaps_reference(hm, fl, perm)
            assert torch.equal(coords, ref_coords) and torch.equal(maxvals, ref_max)


def run_residual_block() -> None:
    # (C_in, C_out): projection and identity; 16-multiples take the tensor-core path in 16-bit.
    for cin, cout in ((19, 38), (38, 38), (32, 64), (64, 64)):
        module = Residual(cin, cout).double().eval()
        block64 = FoldedResidual.from_module(module).to("cuda")
        x64 = torch.randn(2, cin, 5, 19, dtype=torch.float64, device="cuda")
        up64 = torch.randn(2, cout, 3, 10, dtype=torch.float64, device="cuda")
        truth = residual_block_reference(x64, block64, up64)
        for dtype, mode in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16"), (torch.float16, "float16"),
                            (torch.float64, "float64")):
            block, x, up = block64.to(dtype), x64.to(dtype).to(memory_format=torch.channels_last), up64.to(dtype)
            out = residual_block(x, block, up, backend="cuda")
            same = residual_block_reference(x, block, up) if mode in ("float16", "bfloat16") else None
            assert_close_to_reference(out, truth, mode, same)


def main() -> int:
    if not torch.cuda.is_available() or not _extension.has_kernel("residual_block", "CUDA"):
        print("needs a GPU and the extension built with CUDA (FORCE_CUDA=1 pip install -e . --no-build-isolation)")
        return 2
    torch.manual_seed(0)
    run_upsample_add()
    run_decode_heatmaps()
    run_residual_block()
    torch.cuda.synchronize()
    print("cuda_sanitize_driver: all CUDA kernels ran and matched the references")
    return 0


if __name__ == "__main__":
    sys.exit(main())
