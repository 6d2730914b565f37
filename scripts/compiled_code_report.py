"""The compiled-code report of the GPU kernels: what ptxas made of them, and a roofline prediction.

Two parts, written to ``benchmarks/results/compiled-code.json``:

``kernels``
    every Triton kernel variant the plan launches for the 8-stack 256x256 network (fp32, TF32,
    bf16, fp16; batch 1 and 64), compiled for sm_90a without a GPU (scripts/compile_triton_sm90.py):
    registers, spill bytes, shared memory, CTAs per SM, the tensor-core family in the SASS.
    Entries of other Triton versions already in the file are kept (run once per Triton).
``cuda_kernels`` (``--cuda``)
    every kernel of csrc/cuda compiled by nvcc for sm_90a; for the residual block kernel per
    variant its path (tensor_core / exact), ldmatrix and cp.async counts, and per tile size the
    dynamic shared memory and CTAs per SM of the 256 -> 256 block.
``layers`` / ``predicted_ms``
    per layer of the network a roofline (FLOPs, DRAM bytes, the time at the H200's rates) and a
    predicted time of our kernels (shg_fast/predictions.py: Triton convs as padded tiles in waves
    over 132 SMs; the CUDA block kernel with its tiling, mma.sync rate and weight-chunk latency;
    a 2 us launch floor); residual blocks on the backend the default rule predicts faster.
    Summed per dtype and batch. PREDICTIONS: no GPU has run these kernels.

The tactic candidates per distinct layer shape x dtype x batch (for the engine) go to
``benchmarks/results/tactic-candidates.json``, with the default rule's choice.

    python scripts/compiled_code_report.py              # everything (minutes per Triton version)
    python scripts/compiled_code_report.py --no-compile # roofline and tactics only (seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shg_fast.kernels.conv_bn_relu import conv_config  # noqa: E402
from shg_fast.predictions import (COPY_TBPS, ELEMENT_SIZE, LAUNCH_FLOOR_US, RATES, block_prediction,  # noqa: E402
                                  conv_prediction, triton_block_prediction)

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "results" / "compiled-code.json"
TACTICS = ROOT / "benchmarks" / "results" / "tactic-candidates.json"
MODES = ("fp32", "tf32", "bf16", "fp16")
BATCHES = (1, 64)


def _conv(name, k, c1, c_out, size, *, count, stride=1, c2=0, prologue=False, out_relu=False, residual=False,
          upsample=False) -> dict:
    return dict(kind="conv", name=name, k=k, stride=stride, c1=c1, c2=c2, c_out=c_out, size=size, count=count,
                prologue=prologue, out_relu=out_relu, residual=residual, upsample=upsample)


def _block(prefix, c_in, c_out, size, count, upsample_count=0, as_block=False) -> list[dict]:
    """The three convs of a folded residual block (projection skip as a second GEMM input), or
    with ``as_block`` the block itself (one row per upsample flag)."""
    if as_block:
        rows = [dict(kind="block", name=prefix, c_in=c_in, c_out=c_out, size=size, count=count - upsample_count,
                     upsample=False)] if count - upsample_count else []
        if upsample_count:
            rows.append(dict(kind="block", name=f"{prefix}+up", c_in=c_in, c_out=c_out, size=size,
                             count=upsample_count, upsample=True))
        return rows
    mid = c_out // 2
    last = dict(c2=c_in) if c_in != c_out else dict(residual=True)
    convs = [_conv(f"{prefix}.conv1", 1, c_in, mid, size, count=count, prologue=True, out_relu=True),
             _conv(f"{prefix}.conv2", 3, mid, mid, size, count=count, out_relu=True)]
    if count - upsample_count:
        convs.append(_conv(f"{prefix}.conv3", 1, mid, c_out, size, count=count - upsample_count, **last))
    if upsample_count:
        convs.append(_conv(f"{prefix}.conv3+up", 1, mid, c_out, size, count=upsample_count, upsample=True, **last))
    return convs


def _copy(name, size, channels, count, reads, writes) -> dict:
    """A memory-bound ATen op: ``reads`` and ``writes`` tensors of (channels, size, size) per image."""
    return dict(kind="copy", name=name, size=size, channels=channels, count=count, reads=reads, writes=writes)


def network_layers(stacks: int = 8, features: int = 256, joints: int = 16, blocks: bool = False) -> list[dict]:
    """Every launch of the fused plan on a 256x256 input, as the triton backend runs it (counts per forward);
    with ``blocks`` each residual block is one ``block`` row (either backend) instead of its three convs."""
    f = features
    layers = [_conv("stem", 7, 3, 64, 128, count=1, stride=2, out_relu=True)]
    layers += _block("r1", 64, 128, 128, 1, as_block=blocks)
    layers.append(_copy("maxpool 128->64", 64, 128, 1, reads=4, writes=1))
    layers += _block("r4", 128, 128, 64, 1, as_block=blocks)
    layers += _block("r5", 128, f, 64, 1, as_block=blocks)
    # Per stack: up1 + res at 64 (up1 takes the upsample), low1/low3 at 32..8, up1 at 32..8, 3 at 4.
    per_size = {64: (2, 1), 32: (3, 1), 16: (3, 1), 8: (3, 1), 4: (3, 0)}
    as_blocks = blocks
    for size, (blocks, ups) in per_size.items():
        layers += _block(f"hg{size}", f, f, size, stacks * blocks, stacks * ups, as_block=as_blocks)
    for size in (32, 16, 8, 4):
        layers.append(_copy(f"maxpool ->{size}", size, f, stacks, reads=4, writes=1))
    layers.append(_conv("lin", 1, f, f, 64, count=stacks, out_relu=True))
    layers.append(_conv("head+merge", 1, f, joints + f, 64, count=stacks - 1))
    layers.append(_conv("head(last)", 1, f, joints, 64, count=1))
    layers.append(_copy("h + merge", 64, f, stacks - 1, reads=2, writes=1))
    return layers


def block_rows(layer: dict, batch: int, mode: str) -> dict:
    """One residual block: roofline, both backends' PREDICTIONS and the default rule's choice (the faster)."""
    cuda = block_prediction(layer["c_in"], layer["c_out"], layer["size"], batch, mode, layer["upsample"])
    triton = triton_block_prediction(layer["c_in"], layer["c_out"], layer["size"], batch, mode, layer["upsample"])
    backend = "triton" if mode == "fp32" or triton["predicted_us"] < cuda["predicted_us"] else "cuda"
    chosen = cuda if backend == "cuda" else triton
    roofline = cuda["roofline_us"]
    return dict(flops=cuda["flops"], bytes=cuda["bytes"], roofline_us=roofline, kernel_us=chosen["kernel_us"],
                kernel_over_roofline=chosen["kernel_us"] / roofline, predicted_us=chosen["predicted_us"],
                predicted_over_roofline=chosen["predicted_us"] / roofline, backend=backend,
                cuda=dict(kernel_us=cuda["kernel_us"], predicted_us=cuda["predicted_us"],
                          kernel_over_roofline=cuda["kernel_over_roofline"], config=cuda["config"]),
                triton=dict(kernel_us=triton["kernel_us"], predicted_us=triton["predicted_us"],
                            kernel_over_roofline=triton["kernel_us"] / roofline, launches=triton["launches"]),
                config=None)


def copy_roofline(layer: dict, batch: int, mode: str) -> dict:
    bytes_ = ELEMENT_SIZE[mode] * batch * layer["channels"] * layer["size"] ** 2 * (layer["reads"] + layer["writes"])
    roofline_us = bytes_ / (COPY_TBPS * 1e12) * 1e6
    predicted_us = max(roofline_us, LAUNCH_FLOOR_US)
    return dict(flops=0.0, bytes=bytes_, roofline_us=roofline_us, kernel_us=roofline_us, kernel_over_roofline=1.0,
                predicted_us=predicted_us, predicted_over_roofline=predicted_us / roofline_us, config=None)


def layer_report() -> tuple[list[dict], dict]:
    """Per layer, dtype and batch the roofline and prediction; the forward totals (all PREDICTIONS).

    Residual blocks run on the backend the default rule predicts faster (``backend``; both
    predictions in the row); ``triton_only_ms`` sums the forward with every block on the Triton convs.
    """
    estimate = dict(conv=conv_prediction, copy=copy_roofline, block=block_rows)
    rows, totals = [], {}
    for layer in network_layers(blocks=True):
        for mode in MODES:
            for batch in BATCHES:
                est = estimate[layer["kind"]](layer, batch, mode)
                est.pop("launches", None)
                rows.append(dict(layer=layer["name"], kind=layer["kind"], count=layer["count"], dtype=mode,
                                 batch=batch, **est))
                key = f"{mode}/batch{batch}"
                total = totals.setdefault(key, dict(predicted_ms=0.0, triton_only_ms=0.0, roofline_ms=0.0, gflop=0.0))
                total["predicted_ms"] += layer["count"] * est["predicted_us"] / 1e3
                total["triton_only_ms"] += layer["count"] * (est["triton"]["predicted_us"] if "triton" in est
                                                             else est["predicted_us"]) / 1e3
                total["roofline_ms"] += layer["count"] * est["roofline_us"] / 1e3
                total["gflop"] += layer["count"] * est["flops"] / 1e9
    for total in totals.values():
        for name in total:
            total[name] = round(total[name], 4)
    return rows, totals


def conv_variants(modes=MODES) -> list[dict]:
    """The compiled conv variants the network's launches need, grouped by what sets registers and shared memory.

    A group is (dtype, kernel size, tiles, warps, stages, packed taps, second input, prologue);
    its members differ only in epilogue flags, split-K and integer specialisation. The member
    compiled is the one with the most epilogue work (residual and upsample over partial sums);
    ``layers`` lists every layer@batch of the group. Plus one split-K reduce kernel per dtype.
    """
    from compile_triton_sm90 import conv_launch, reduce_launch

    groups: dict = {}
    reduces: dict = {}
    for mode in modes:
        for layer in network_layers():
            if layer["kind"] != "conv":
                continue
            for batch in BATCHES:
                launch = conv_launch(layer, batch, mode)
                c, lk = launch["constexprs"], launch["launch"]
                key = (mode, c["KH"], c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], lk["num_warps"], lk["num_stages"],
                       c["PACK_TAPS"], c["HAS_X2"], c["HAS_SCALE"])
                weight = (c["SPLIT_K"] == 1, c["HAS_RESIDUAL"] + c["HAS_UPSAMPLE"])
                group = groups.setdefault(key, dict(weight=None, launch=None, layers=[]))
                group["layers"].append(f"{layer['name']}@batch{batch}")
                if group["weight"] is None or weight > group["weight"]:
                    group["weight"], group["launch"] = weight, launch
                if c["SPLIT_K"] > 1 and mode not in reduces:
                    reduces[mode] = reduce_launch(dict(layer, residual=True, upsample=True), batch, mode, 8)
    variants = []
    for key, group in groups.items():
        mode, k, bm, bn, bk, warps, stages, packed, x2, prologue = key
        name = (f"conv_bn_relu_{mode}_k{k}_{bm}x{bn}x{bk}_w{warps}s{stages}{'_packed' if packed else ''}"
                f"{'_x2' if x2 else ''}{'_bnrelu' if prologue else ''}")
        variants.append(dict(name=name, dtype=mode, kernel="conv_bn_relu_kernel", gemm=True,
                             launch=group["launch"], layers=group["layers"]))
    for mode, launch in reduces.items():
        variants.append(dict(name=f"conv_split_k_reduce_{mode}_split8_res_up", dtype=mode,
                             kernel="conv_split_k_reduce_kernel", gemm=False, launch=launch, layers=["split-K layers"]))
    return variants


def tactic_candidates() -> list[dict]:
    """Per distinct conv layer shape x dtype x batch: the candidate tactics and the default rule's choice.

    DEFAULT RULE, NOT MEASURED: the Triton implicit GEMM with ``conv_config``'s tiles. The CUDA
    block kernel (a whole residual block per launch) and cuDNN + an epilogue kernel are listed
    as candidates for a GPU measurement to choose between.
    """
    entries, seen = [], set()
    for layer in network_layers():
        if layer["kind"] != "conv":
            continue
        shape = (layer["k"], layer["stride"], layer["c1"], layer["c2"], layer["c_out"], layer["size"],
                 layer["prologue"], layer["out_relu"], layer["residual"], layer["upsample"])
        for mode in MODES:
            for batch in BATCHES:
                if (shape, mode, batch) in seen:
                    continue
                seen.add((shape, mode, batch))
                cfg = conv_config(batch * layer["size"] ** 2, layer["c1"], layer["c2"], layer["c_out"], layer["k"],
                                  layer["k"], ELEMENT_SIZE[mode], mode == "tf32")
                candidates = [dict(backend="triton", config=cfg),
                              dict(backend="aten+epilogue", config=dict(conv="cudnn", epilogue="triton"))]
                in_block = layer["name"].split(".")[0] not in ("stem", "lin", "head+merge", "head(last)")
                if in_block and mode in ("bf16", "fp16"):
                    candidates.append(dict(backend="cuda", config=dict(kernel="residual_block (whole block)")))
                entries.append(dict(
                    key=dict(op="conv", k=layer["k"], stride=layer["stride"], c_in=layer["c1"], c_in2=layer["c2"],
                             c_out=layer["c_out"], size=layer["size"], prologue=layer["prologue"],
                             out_relu=layer["out_relu"], residual=layer["residual"], upsample=layer["upsample"],
                             dtype=mode, batch=batch),
                    example_layer=layer["name"], candidates=candidates,
                    choice=dict(backend="triton", config=cfg,
                                reason="default rule, not measured: Triton implicit GEMM, tiles by conv_config"),
                    measured=False))
    for layer in network_layers(blocks=True):
        if layer["kind"] != "block":
            continue
        for mode in MODES:
            for batch in BATCHES:
                row = block_rows(layer, batch, mode)
                entries.append(dict(
                    key=dict(op="residual_block", c_in=layer["c_in"], c_out=layer["c_out"], size=layer["size"],
                             upsample=layer["upsample"], dtype=mode, batch=batch),
                    example_layer=layer["name"],
                    candidates=[dict(backend="cuda", config=dict(tile=row["cuda"]["config"]["tile"],
                                                                 cluster=row["cuda"]["config"]["cluster"]),
                                     predicted_us=round(row["cuda"]["predicted_us"], 3)),
                                dict(backend="triton", config=dict(kernel="three implicit-GEMM convs"),
                                     predicted_us=round(row["triton"]["predicted_us"], 3))],
                    choice=dict(backend=row["backend"],
                                reason="default rule, not measured: the faster PREDICTION (shg_fast.tactics."
                                       "default_residual_block)" + ("; exact fp32 never takes the CUDA scalar path"
                                                                    if mode == "fp32" else "")),
                    measured=False))
    return entries


def write_tactics(path: pathlib.Path) -> None:
    """Write the tactic candidates (one entry per layer shape, dtype, batch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(
        note="Tactic candidates per distinct conv layer shape and residual block x dtype x batch of the 8-stack "
             "256x256 network. 'choice' is a DEFAULT RULE, NOT MEASURED (no GPU has run them; block choices follow "
             "the PREDICTED times listed); a GPU run replaces it.",
        entries=tactic_candidates()), indent=1) + "\n")


def compile_kernels(modes=MODES, limit: int | None = None, progress=None) -> list[dict]:
    """Compile the variants (the first ``limit`` of them) for sm_90a; one report entry each."""
    import compile_triton_sm90 as sm90
    from shg_fast.kernels.conv_bn_relu import conv_bn_relu_kernel, conv_split_k_reduce_kernel

    kernels = {"conv_bn_relu_kernel": conv_bn_relu_kernel, "conv_split_k_reduce_kernel": conv_split_k_reduce_kernel}
    entries = []
    for variant in conv_variants(modes)[:limit]:
        launch = variant["launch"]
        stats = sm90.compile_variant(kernels[variant["kernel"]], launch["pointer_types"], launch["ints"],
                                     launch["constexprs"], **launch["launch"])
        entry = dict(name=variant["name"], dtype=variant["dtype"], gemm=variant["gemm"], **stats,
                     constexprs=launch["constexprs"], layers=variant["layers"])
        entries.append(entry)
        if progress:
            progress(entry)
    return entries


CUDA_TYPES = {"float": "fp32", "double": "fp64", "__half": "fp16", "__nv_bfloat16": "bf16"}


def cuda_kernels(sources=None) -> list[dict]:
    """Each kernel of csrc/cuda/*.cu compiled by nvcc for sm_90a: resources and tensor-core family per function.

    ``shared_bytes`` is the static shared memory; the residual block kernel adds dynamic shared
    memory per launch (shg_residual_block_smem_bytes), so its ``ctas_per_sm`` counts registers only.
    """
    import re
    import shutil
    import subprocess
    import tempfile

    import compile_triton_sm90 as sm90

    nvcc, tool, demangle = shutil.which("nvcc"), sm90.cuobjdump(), shutil.which("c++filt")
    if nvcc is None or tool is None or demangle is None:
        raise FileNotFoundError("nvcc, cuobjdump or c++filt missing")
    entries = []
    for source in sources or sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        with tempfile.TemporaryDirectory() as tmp:
            obj = pathlib.Path(tmp) / "k.o"
            subprocess.run([nvcc, "-c", "-std=c++17", "-O2", "-gencode", "arch=compute_90a,code=sm_90a",
                            "-I", str(ROOT / "csrc"), str(source), "-o", str(obj)], check=True, capture_output=True)
            usage = subprocess.run([tool, "--dump-resource-usage", str(obj)], capture_output=True, text=True,
                                   check=True).stdout
            sass = subprocess.run([tool, "--dump-sass", str(obj)], capture_output=True, text=True, check=True).stdout
        resources = dict(re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", usage))
        for chunk in sass.split("Function : ")[1:]:
            mangled = chunk.split(None, 1)[0]
            fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", resources.get(mangled, "")))
            opcodes = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", chunk)
            family = next((f for f in sm90.TENSOR_CORE_FAMILIES if f in opcodes), None)
            name = subprocess.run([demangle, mangled], capture_output=True, text=True).stdout.strip()
            name = re.sub(r"^void |shg_fast::cuda::|\(anonymous namespace\)::", "", name)
            short = name[:name.index(">(") + 1] if ">(" in name else name.split("(")[0]
            dtype = next((CUDA_TYPES[t] for t in sorted(CUDA_TYPES, key=len, reverse=True)
                          if re.search(rf"<{re.escape(t)}\b", short)), None)
            registers, shared = int(fields.get("REG", 0)), int(fields.get("SHARED", 0))
            entry = dict(name=short, dtype=dtype, source=f"csrc/cuda/{source.name}",
                         gemm="residual_block" in short, registers=registers, spill_bytes=int(fields.get("STACK", 0)),
                         spill_instructions=sum(op in ("STL", "LDL") for op in opcodes),
                         shared_bytes=shared, ctas_per_sm=sm90.ctas_per_sm(registers, shared, 8),
                         tensor_core=family, mma_instructions=sum(op == family for op in opcodes) if family else 0,
                         compiler="nvcc sm_90a")
            if entry["gemm"]:
                entry.update(_block_kernel_facts(short, dtype, registers, opcodes))
            entries.append(entry)
    return entries


def _block_kernel_facts(name: str, dtype: str, registers: int, opcodes: list[str]) -> dict:
    """Path, instruction counts, and per tile size the dynamic shared memory and CTAs per SM of one
    residual_block_kernel<T, kMma> for the network's largest block (256 -> 256)."""
    import compile_triton_sm90 as sm90
    from shg_fast.ops.cuda_backend import TILE_SIZES, block_smem_bytes

    tensor = name.endswith("true>")
    mode = "tf32" if dtype == "fp32" and tensor else dtype
    elem = {"fp64": 8, "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}[mode]
    tiles = {}
    for tile in TILE_SIZES:
        smem = block_smem_bytes(elem, tensor, 256, 128, False, tile)
        tiles[f"S{tile}"] = dict(dynamic_shared_bytes=smem, ctas_per_sm=sm90.ctas_per_sm(registers, smem, 8))
    return dict(dtype=mode, path="tensor_core" if tensor else "exact", per_tile_256x256=tiles,
                ldmatrix=sum(op == "LDSM" for op in opcodes), cp_async=sum(op == "LDGSTS" for op in opcodes))


def _miss_reason(row: dict) -> str:
    """Why a layer's predicted kernel time is over 2x its roofline (from the model's terms)."""
    if row["kind"] == "block" and row["backend"] == "cuda":
        c = row["cuda"]["config"]
        if c["weights_us"] >= c["mma_us"]:
            return (f"cuda S{c['tile']} R{c['cluster']}: every CTA streams 1/{c['cluster']} of the block's weights "
                    f"from L2 ({c['weights_us']} us, cp.async chunk latency) while the roofline reads them once "
                    f"from DRAM at 4.3 TB/s")
        return f"cuda S{c['tile']} R{c['cluster']}: mma.sync at 60% of the matrix rate, halo recomputed in stage B"
    cfg = row.get("config") or {}
    if cfg.get("ctas", 1 << 30) < 132:
        return f"triton: {cfg['ctas']} CTAs on 132 SMs (small map, one wave under-filled)"
    return "triton: padded tiles / waves (tile quantisation)"


def goals(kernels: list[dict], cuda: list[dict], rows: list[dict]) -> dict:
    """The issue's goals checked on this report: Triton variants (every version in it) and the CUDA kernels."""
    def check(entries, families):
        gemms = [k for k in entries if k["gemm"]]
        tensor_modes = [k for k in gemms if k["dtype"] in ("tf32", "bf16", "fp16") and k.get("path") != "exact"]
        return dict(gemm_variants=len(gemms),
                    no_spills_in_gemms=all(k["spill_bytes"] == 0 and k["spill_instructions"] == 0 for k in gemms),
                    tensor_cores_in_every_tensor_core_gemm=all(k["tensor_core"] in families for k in tensor_modes),
                    tensor_core_families=sorted(families),
                    without=sorted({k["name"] for k in tensor_modes if k["tensor_core"] not in families}))

    kernel_over = [f"{r['layer']} {r['dtype']} batch{r['batch']} ({r.get('backend', 'triton')}): "
                   f"{r['kernel_over_roofline']:.2f}x; {_miss_reason(r)}" for r in rows if r["kernel_over_roofline"] > 2.0]
    cuda_over = [f"{r['layer']} {r['dtype']} batch{r['batch']}: {r['cuda']['kernel_over_roofline']:.2f}x"
                 for r in rows if r["kind"] == "block" and r["dtype"] != "fp32" and
                 r["cuda"]["kernel_over_roofline"] > 2.0]
    launch_bound = sum(r["predicted_over_roofline"] > 2.0 for r in rows)
    return dict(triton=check(kernels, ("HGMMA",)), cuda=check(cuda, ("HMMA", "HGMMA")),
                layers_kernel_over_2x_roofline=kernel_over, cuda_block_kernel_over_2x_roofline=cuda_over,
                layer_rows_over_2x_with_launch_floor=f"{launch_bound} of {len(rows)}")


def _load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_report(path: pathlib.Path, new_kernels: list[dict] | None, new_cuda: list[dict] | None = None) -> dict:
    """Write the report: this Triton's kernels (others' kept), the CUDA kernels, layers, totals, goals."""
    import triton

    rows, totals = layer_report()
    previous = _load(path)
    old = previous.get("kernels", [])
    kernels = old if new_kernels is None else \
        [k for k in old if k.get("triton") != triton.__version__] + new_kernels
    cuda = previous.get("cuda_kernels", []) if new_cuda is None else new_cuda
    report = dict(
        note="PREDICTIONS and compile-time facts only: no GPU has run these kernels. Registers, spills, shared "
             "memory and instruction families are read from sm_90a cubins (Triton + ptxas, nvcc, cuobjdump); "
             "roofline_us and predicted_us are computed from FLOPs, bytes and the rates and assumptions below "
             "(shg_fast/predictions.py). Residual blocks: 'backend' is the default rule's choice, the faster "
             "PREDICTION of the whole-block CUDA kernel ('cuda') and the three Triton convs ('triton'); both "
             "models count MMA waves, DRAM bytes and the L2 latency of their pipelined loads.",
        rates=RATES, kernels=kernels, cuda_kernels=cuda, predicted_ms=totals, goals=goals(kernels, cuda, rows),
        layers=rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compile", action="store_true", help="roofline, totals and tactics only")
    parser.add_argument("--cuda", action="store_true", help="also compile csrc/cuda/*.cu with nvcc (minutes)")
    parser.add_argument("--modes", default=",".join(MODES), help="dtypes to compile, comma-separated")
    parser.add_argument("--out", type=pathlib.Path, default=REPORT, help="report path")
    parser.add_argument("--tactics", type=pathlib.Path, default=TACTICS, help="tactic-candidates path")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; expected some of {MODES}")
    kernels = None
    if not args.no_compile:
        done: list[dict] = []

        def progress(entry: dict) -> None:  # the report is rewritten after each variant: partial runs count
            done.append(entry)
            write_report(args.out, done)
            print(f"{entry['name']}: {entry['registers']} regs, {entry['spill_bytes']} B spill, "
                  f"{entry['shared_bytes']} B smem, {entry['tensor_core']}, {entry['compile_s']} s", flush=True)

        kernels = compile_kernels(modes, progress=progress)
    report = write_report(args.out, kernels, cuda_kernels() if args.cuda else None)
    write_tactics(args.tactics)
    print(json.dumps(dict(predicted_ms=report["predicted_ms"], goals=report["goals"]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
