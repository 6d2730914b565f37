"""Compile every Triton kernel of shg_fast for sm_90 (H100/H200) without a GPU.

Runs Triton's full lowering and ptxas for the network's main configurations (fp32 IEEE,
fp32 TF32, fp16, bf16), so errors that the interpreter cannot show (layouts, shared memory,
unsupported ops) surface on a CPU-only machine. Takes a few minutes; not part of the tests.

    python scripts/compile_triton_sm90.py
"""

import inspect
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from shg_fast.kernels.conv_bn_relu import conv_block_sizes, conv_bn_relu_kernel
from shg_fast.kernels.decode_heatmaps import decode_block_size, decode_heatmaps_kernel
from shg_fast.kernels.upsample_add import UPSAMPLE_ADD_BLOCK, upsample_add_kernel

TARGET = GPUTarget("cuda", 90, 32)
CONV_POINTERS = ("x_ptr", "x2_ptr", "w_ptr", "bias_ptr", "scale_ptr", "shift_ptr", "res_ptr", "up_ptr", "out_ptr")
# (flags of a 3x3 conv with a ReLU epilogue, flags of the last 1x1 conv of a projection block with everything on)
CONV_VARIANTS = (
    dict(KH=3, KW=3, HAS_X2=False, HAS_BIAS=True, HAS_SCALE=False, HAS_SHIFT=False, IN_RELU=False,
         OUT_RELU=True, HAS_RESIDUAL=False, HAS_UPSAMPLE=False),
    dict(KH=1, KW=1, HAS_X2=True, HAS_BIAS=True, HAS_SCALE=True, HAS_SHIFT=True, IN_RELU=True,
         OUT_RELU=True, HAS_RESIDUAL=True, HAS_UPSAMPLE=True),
)


def compile_kernel(kernel, pointer_types: dict, constexprs: dict, num_warps: int, num_stages: int = 3) -> None:
    """Compile ``kernel`` for TARGET; integer arguments are int32, pointers as given."""
    signature = {
        name: "constexpr" if name in constexprs else pointer_types.get(name, "i32")
        for name in inspect.signature(kernel.fn).parameters
    }
    start = time.time()
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=TARGET,
                              options=dict(num_warps=num_warps, num_stages=num_stages))
    print(f"{kernel.fn.__name__} {constexprs}: ok in {time.time() - start:.1f} s, "
          f"shared memory {compiled.metadata.shared} bytes")


def main() -> None:
    for dtype, tf32 in (("fp32", False), ("fp32", True), ("fp16", False), ("bf16", False)):
        cfg = conv_block_sizes(32 * 64 * 64, 256, 256, 4 if dtype == "fp32" else 2)
        launch = dict(num_warps=cfg.pop("num_warps"), num_stages=cfg.pop("num_stages"))
        for flags in CONV_VARIANTS:
            compile_kernel(conv_bn_relu_kernel, {p: f"*{dtype}" for p in CONV_POINTERS},
                           dict(flags, ALLOW_TF32=tf32, **cfg), **launch)
        compile_kernel(upsample_add_kernel, {p: f"*{dtype}" for p in ("low_ptr", "skip_ptr", "out_ptr")},
                       dict(CHANNELS_LAST=True, BLOCK=UPSAMPLE_ADD_BLOCK), num_warps=4)
        compile_kernel(decode_heatmaps_kernel,
                       {"hm_ptr": f"*{dtype}", "fl_ptr": f"*{dtype}", "perm_ptr": "*i32", "coords_ptr": "*fp32",
                        "maxvals_ptr": "*fp32"},
                       dict(HAS_FLIP=True, BLOCK=decode_block_size(64, 64)), num_warps=4)


if __name__ == "__main__":
    main()
