"""Compile the Triton kernels of shg_fast for sm_90a (H100/H200) without a GPU and read the cubins.

Runs Triton's full lowering and ptxas, then reads each cubin with ``cuobjdump`` (the one
Triton's package carries, or one on PATH): registers, stack (spill) bytes, shared memory, the
spill instructions (STL/LDL) and the tensor-core instruction family (HGMMA: Hopper warpgroup
MMA; HMMA: warp-level MMA) in the SASS. Integer arguments are specialised as Triton's JIT does
for the real launch (a value of 1 becomes a constant, a multiple of 16 is marked divisible by
16), so the code read here is the code a launch with those sizes and strides gets.

    python scripts/compile_triton_sm90.py            # every conv variant of the network, all dtypes

``scripts/compiled_code_report.py`` uses :func:`compile_variant` for the committed report.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from shg_fast.kernels.conv_bn_relu import (REDUCE_BLOCK, conv_bn_relu_kernel, conv_config,
                                           conv_split_k_reduce_kernel)
from shg_fast.kernels.decode_heatmaps import decode_block_size, decode_heatmaps_kernel
from shg_fast.kernels.upsample_add import UPSAMPLE_ADD_BLOCK, upsample_add_kernel

TARGET = GPUTarget("cuda", 90, 32)
SM90_REGISTERS = 65536  # per SM
SM90_SHARED = 228 * 1024  # per SM; each resident block also reserves 1 KB
SM90_MAX_BLOCKS = 32
SM90_MAX_THREADS = 2048
DTYPES = {"fp32": ("fp32", 4, False), "tf32": ("fp32", 4, True), "bf16": ("bf16", 2, False),
          "fp16": ("fp16", 2, False)}  # mode -> (Triton pointer type, element size, TF32 products)
TENSOR_CORE_FAMILIES = ("HGMMA", "HMMA")


def cuobjdump() -> str | None:
    """Path of a cuobjdump: on PATH, else the one bundled with Triton's NVIDIA backend."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else None


def read_cubin(cubin: bytes) -> dict:
    """Registers, stack bytes, shared memory, spill instructions and tensor-core family of one cubin."""
    tool = cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (install Triton's NVIDIA backend or the CUDA toolkit)")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        usage = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "--dump-sass", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass)
    family = next((f for f in TENSOR_CORE_FAMILIES if f in opcodes), None)
    return dict(registers=int(fields.get("REG", 0)), stack_bytes=int(fields.get("STACK", 0)),
                local_bytes=int(fields.get("LOCAL", 0)),
                spill_instructions=sum(op in ("STL", "LDL") for op in opcodes),
                tensor_core=family, mma_instructions=sum(op == family for op in opcodes) if family else 0,
                ffma_instructions=sum(op == "FFMA" for op in opcodes))


def ctas_per_sm(registers: int, shared_bytes: int, num_warps: int) -> int:
    """Resident blocks per SM on sm_90 by registers (8-register granules), shared memory and threads."""
    regs = max(8, (registers + 7) // 8 * 8)
    by_regs = SM90_REGISTERS // (regs * 32 * num_warps)
    by_smem = SM90_SHARED // (shared_bytes + 1024)
    by_threads = SM90_MAX_THREADS // (32 * num_warps)
    return max(0, min(by_regs, by_smem, by_threads, SM90_MAX_BLOCKS))


def _specialize(kernel, pointer_types: dict, ints: dict, constexprs: dict) -> tuple[dict, dict, dict]:
    """Signature, constexprs and attributes as Triton's JIT specialises a launch with these integers."""
    params = list(inspect.signature(kernel.fn).parameters)
    constexprs = dict(constexprs)
    signature, attrs = {}, {}
    for i, name in enumerate(params):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointer_types:
            signature[name] = pointer_types[name]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        else:
            value = ints[name]
            if value == 1:
                constexprs[name] = 1
                signature[name] = "constexpr"
            else:
                signature[name] = "i32"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def compile_variant(kernel, pointer_types: dict, ints: dict, constexprs: dict, num_warps: int,
                    num_stages: int) -> dict:
    """Compile one specialisation for sm_90a; its resource use and instruction families."""
    signature, consts, attrs = _specialize(kernel, pointer_types, ints, constexprs)
    start = time.time()
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs),
                              target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))
    seconds = time.time() - start
    stats = read_cubin(compiled.asm["cubin"])
    shared = int(compiled.metadata.shared)
    return dict(stats, shared_bytes=shared, spill_bytes=stats["stack_bytes"], compile_s=round(seconds, 1),
                ctas_per_sm=ctas_per_sm(stats["registers"], shared, num_warps), num_warps=num_warps,
                num_stages=num_stages, triton=triton.__version__)


CONV_POINTERS = ("x_ptr", "x2_ptr", "w_ptr", "bias_ptr", "scale_ptr", "shift_ptr", "res_ptr", "up_ptr", "out_ptr")


def conv_launch(conv: dict, batch: int, mode: str) -> dict:
    """The launch of one network conv (as scripts/compiled_code_report.network_convs describes it).

    Returns the config, the integer arguments (NHWC activations and residual, channels_last
    weight, as the plan runs them) and the flags; ``key`` names the compiled variant. Optional
    ``pool_x`` / ``pool_x2`` / ``pool_res`` (default False): that input is stored at twice its
    size and read 2x2 max-pooled (the block after a max-pool, as the engine fuses it).
    """
    pool_x, pool_x2, pool_res = (conv.get(name, False) for name in ("pool_x", "pool_x2", "pool_res"))
    ptr, elem, tf32 = DTYPES[mode]
    k, stride, c1, c2, c_out, size = conv["k"], conv["stride"], conv["c1"], conv["c2"], conv["c_out"], conv["size"]
    pad = k // 2
    in_size = size * stride
    m = batch * size * size
    cfg = conv_config(m, c1, c2, c_out, k, k, elem, tf32, pooled=pool_x or pool_x2)
    c_in = c1 + c2

    def nhwc(c, s):  # strides n, c, h, w of an NHWC tensor
        return dict(n=c * s * s, c=1, h=c * s, w=c)

    x, x2, out, up = nhwc(c1, in_size), nhwc(max(c2, 1), in_size), nhwc(c_out, size), nhwc(c_out, (size + 1) // 2)
    x, x2 = nhwc(c1, 2 * in_size) if pool_x else x, nhwc(max(c2, 1), 2 * in_size) if pool_x2 else x2
    res = nhwc(c_out, 2 * size) if pool_res else out
    ints = dict(N=batch, C1=c1, C2=c2, H=in_size, W=in_size, C_out=c_out, OH=size, OW=size, conv_stride=stride,
                pad=pad, sx_n=x["n"], sx_c=1, sx_h=x["h"], sx_w=x["w"], sx2_n=x2["n"], sx2_c=1, sx2_h=x2["h"],
                sx2_w=x2["w"], sw_o=c_in * k * k, sw_c=1, sw_h=c_in * k, sw_w=c_in, sr_n=res["n"], sr_c=1,
                sr_h=res["h"], sr_w=res["w"], su_n=up["n"], su_c=1, su_h=up["h"], su_w=up["w"], so_n=out["n"],
                so_c=1, so_h=out["h"], so_w=out["w"])
    flags = dict(KH=k, KW=k, HAS_X2=c2 > 0, HAS_BIAS=True, HAS_SCALE=conv["prologue"], HAS_SHIFT=conv["prologue"],
                 IN_RELU=conv["prologue"], OUT_RELU=conv["out_relu"], HAS_RESIDUAL=conv["residual"],
                 HAS_UPSAMPLE=conv["upsample"], ALLOW_TF32=tf32, POOL_X=pool_x, POOL_X2=pool_x2, POOL_RES=pool_res)
    launch = dict(num_warps=cfg.pop("num_warps"), num_stages=cfg.pop("num_stages"))
    consts = dict(flags, **cfg)
    key = (mode, tuple(sorted(consts.items())), tuple(sorted((n, v == 1, v % 16 == 0) for n, v in ints.items())),
           tuple(sorted(launch.items())))
    return dict(pointer_types={**{p: f"*{ptr}" for p in CONV_POINTERS}, "part_ptr": "*fp32"}, ints=ints,
                constexprs=consts, launch=launch, key=key, m=m)


def reduce_launch(conv: dict, batch: int, mode: str, split: int) -> dict:
    """The split-K reduce launch that follows ``conv``'s GEMM when its split is > 1."""
    ptr = DTYPES[mode][0]
    c_out, size = conv["c_out"], conv["size"]
    pool_res = conv.get("pool_res", False)
    out, up = dict(n=c_out * size * size, h=c_out * size, w=c_out), (size + 1) // 2
    rs = 2 * size if pool_res else size  # a pooled residual is stored at twice the output size
    ints = dict(M=batch * size * size, C_out=c_out, OH=size, OW=size, sr_n=c_out * rs * rs, sr_c=1, sr_h=c_out * rs,
                sr_w=c_out, su_n=c_out * up * up, su_c=1, su_h=c_out * up, su_w=c_out, so_n=out["n"], so_c=1,
                so_h=out["h"], so_w=out["w"])
    consts = dict(HAS_BIAS=True, OUT_RELU=conv["out_relu"], HAS_RESIDUAL=conv["residual"],
                  HAS_UPSAMPLE=conv["upsample"], POOL_RES=pool_res, SPLIT_K=split,
                  BLOCK_M=REDUCE_BLOCK[0], BLOCK_N=REDUCE_BLOCK[1])
    key = ("reduce", mode, tuple(sorted(consts.items())))
    pointers = {"part_ptr": "*fp32", **{p: f"*{ptr}" for p in ("bias_ptr", "res_ptr", "up_ptr", "out_ptr")}}
    return dict(pointer_types=pointers, ints=ints, constexprs=consts, launch=dict(num_warps=4, num_stages=1),
                key=key)


def other_kernels(mode: str) -> list[tuple[str, object, dict, dict, dict, dict]]:
    """(name, kernel, pointer types, ints, constexprs, launch) of the upsample-add and decode kernels."""
    ptr = DTYPES[mode][0]
    up = (f"upsample_add_{mode}", upsample_add_kernel, {p: f"*{ptr}" for p in ("low_ptr", "skip_ptr", "out_ptr")},
          dict(total=256 * 64 * 64, C=256, H=64, W=64, sl_n=256 * 32 * 32, sl_c=1, sl_h=256 * 32, sl_w=256,
               ss_n=256 * 64 * 64, ss_c=1, ss_h=256 * 64, ss_w=256, so_n=256 * 64 * 64, so_c=1, so_h=256 * 64,
               so_w=256),
          dict(CHANNELS_LAST=True, BLOCK=UPSAMPLE_ADD_BLOCK), dict(num_warps=4, num_stages=1))
    dec = (f"decode_heatmaps_{mode}", decode_heatmaps_kernel,
           {"hm_ptr": f"*{ptr}", "fl_ptr": f"*{ptr}", "perm_ptr": "*i32", "coords_ptr": "*fp32",
            "maxvals_ptr": "*fp32"},
           dict(K=16, H=64, W=64, sh_n=16 * 4096, sh_k=4096, sh_h=64, sh_w=1, sf_n=16 * 4096, sf_k=4096, sf_h=64,
                sf_w=1),
           dict(HAS_FLIP=True, FLAT=True, BLOCK=decode_block_size(64, 64)), dict(num_warps=4, num_stages=1))
    return [up, dec]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="fp32,tf32,bf16,fp16", help="comma-separated: fp32, tf32, bf16, fp16")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(DTYPES))
    if unknown:
        parser.error(f"unknown modes {unknown}; expected some of {sorted(DTYPES)}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from compiled_code_report import compile_kernels  # a sibling script: the conv variants of the network

    def show(name: str, stats: dict) -> None:
        print(f"{name}: {stats['registers']} regs, {stats['spill_bytes']} B spill ({stats['spill_instructions']} "
              f"STL/LDL), {stats['shared_bytes']} B smem, {stats['ctas_per_sm']} CTAs/SM, "
              f"{stats['tensor_core']}, {stats['compile_s']} s", flush=True)

    for mode in modes:
        for name, kernel, pointers, ints, consts, launch in other_kernels(mode):
            show(name, compile_variant(kernel, pointers, ints, consts, **launch))
    compile_kernels(modes, progress=lambda entry: show(entry["name"], entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
