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
    per layer of the network (every launch of the engine's GPU program: max-pools read by the
    block after them, '+pool' rows) a roofline (FLOPs, DRAM bytes, the time at the H200's rates),
    a predicted time of our kernels (shg_fast/roofline.py: Triton convs as padded tiles in
    waves over 132 SMs; the CUDA block kernel with its tiling, mma.sync rate, streamed or resident
    weights; a 2 us launch floor), the latency floor of any one-launch kernel for the layer, and
    each miss of "within 2x of the roofline" classified (below that floor, or kernel
    inefficiency); residual blocks on the backend the default rule predicts faster. Summed per
    dtype and batch. PREDICTIONS: no GPU has run these kernels.

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
from shg_fast.roofline import (BELOW_LATENCY_FLOOR, ELEMENT_SIZE, KERNEL_INEFFICIENCY, RATES,  # noqa: E402
                                  block_prediction, classify_miss, conv_prediction, latency_floor_us,
                                  triton_block_prediction)

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "results" / "compiled-code.json"
TACTICS = ROOT / "benchmarks" / "results" / "tactic-candidates.json"
MODES = ("fp32", "tf32", "bf16", "fp16")
SM90_SMEM_OPTIN = 232448  # shared memory one CTA may use on sm_90 (static + dynamic, opt-in)
BATCHES = (1, 64)


def _conv(name, k, c1, c_out, size, *, count, stride=1, c2=0, prologue=False, out_relu=False, residual=False,
          upsample=False, pool_x=False, pool_x2=False, pool_res=False) -> dict:
    """One conv launch; ``pool_x`` / ``pool_x2`` / ``pool_res``: that input read 2x2 max-pooled (stored at twice
    ``size``: the block after a fused max-pool)."""
    return dict(kind="conv", name=name, k=k, stride=stride, c1=c1, c2=c2, c_out=c_out, size=size, count=count,
                prologue=prologue, out_relu=out_relu, residual=residual, upsample=upsample, pool_x=pool_x,
                pool_x2=pool_x2, pool_res=pool_res)


def _block(prefix, c_in, c_out, size, count, upsample_count=0, pool_count=0, as_block=False) -> list[dict]:
    """The three convs of a folded residual block (projection skip as a second GEMM input), or
    with ``as_block`` the block itself; one row per variant: plain, ``+up`` (the upsampled add in
    its epilogue), ``+pool`` (reads the max-pool's input 2x2-pooled as it loads it, as the engine
    fuses every max-pool into the block after it)."""
    variants = [("", count - upsample_count - pool_count, False, False), ("+up", upsample_count, True, False),
                ("+pool", pool_count, False, True)]
    rows = []
    for suffix, n, upsample, pool in variants:
        if not n:
            continue
        name = prefix + suffix
        if as_block:
            rows.append(dict(kind="block", name=name, c_in=c_in, c_out=c_out, size=size, count=n, upsample=upsample,
                             pool=pool))
            continue
        mid = c_out // 2
        last = dict(c2=c_in, pool_x2=pool) if c_in != c_out else dict(residual=True, pool_res=pool)
        rows += [_conv(f"{name}.conv1", 1, c_in, mid, size, count=n, prologue=True, out_relu=True, pool_x=pool),
                 _conv(f"{name}.conv2", 3, mid, mid, size, count=n, out_relu=True),
                 _conv(f"{name}.conv3", 1, mid, c_out, size, count=n, upsample=upsample, **last)]
    return rows


def network_layers(stacks: int = 8, features: int = 256, joints: int = 16, blocks: bool = False) -> list[dict]:
    """Every launch of the engine's GPU program on a 256x256 input (counts per forward), residual blocks as the
    triton backend runs them; with ``blocks`` each residual block is one ``block`` row (either backend) instead
    of its three convs. No max-pool launches: each is read by the block after it (``+pool`` rows); each
    stack's merge conv adds the residual stream in its epilogue."""
    f = features
    layers = [_conv("stem", 7, 3, 64, 128, count=1, stride=2, out_relu=True)]
    layers += _block("r1", 64, 128, 128, 1, as_block=blocks)
    layers += _block("r4", 128, 128, 64, 1, pool_count=1, as_block=blocks)  # the stem's max-pool, fused
    layers += _block("r5", 128, f, 64, 1, as_block=blocks)
    # Per stack and map size: (blocks, with the upsampled add, on a fused max-pool). At 64: up1 (takes the
    # upsample) and the stack's residual; 32..8: low1 (pooled), low3, and the next level's up1; 4: low1, low2, low3.
    per_size = {64: (2, 1, 0), 32: (3, 1, 1), 16: (3, 1, 1), 8: (3, 1, 1), 4: (3, 0, 1)}
    for size, (n, ups, pools) in per_size.items():
        layers += _block(f"hg{size}", f, f, size, stacks * n, stacks * ups, stacks * pools, as_block=blocks)
    layers.append(_conv("lin", 1, f, f, 64, count=stacks, out_relu=True))
    layers.append(_conv("heatmaps", 1, f, joints, 64, count=stacks))
    layers.append(_conv("merge", 1, f, f, 64, count=stacks - 1, residual=True))
    return layers


def block_rows(layer: dict, batch: int, mode: str) -> dict:
    """One residual block: roofline, both backends' PREDICTIONS and the default rule's choice (the faster)."""
    shape = (layer["c_in"], layer["c_out"], layer["size"], batch, mode, layer["upsample"], layer["pool"])
    cuda, triton = block_prediction(*shape), triton_block_prediction(*shape)
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


def layer_report() -> tuple[list[dict], dict]:
    """Per layer, dtype and batch the roofline and prediction; the forward totals (all PREDICTIONS).

    Residual blocks run on the backend the default rule predicts faster (``backend``; both
    predictions in the row); ``triton_only_ms`` sums the forward with every block on the Triton convs.
    Each row's ``latency_floor_us`` is the least time any one-launch kernel for that layer could take
    (``kernel_latency_floor_us`` without the launch floor; :func:`shg_fast.roofline.latency_floor_us`);
    ``miss`` / ``kernel_miss`` classify a predicted / kernel time over 2x the roofline
    (:func:`~shg_fast.roofline.classify_miss`). ``latency_floor_ms`` sums the floors: the least forward
    time of one launch per layer; ``launches`` counts the launches of the default choices (the conv
    layers' split-K reduces not counted).
    """
    estimate = dict(conv=conv_prediction, block=block_rows)
    rows, totals = [], {}
    for layer in network_layers(blocks=True):
        for mode in MODES:
            for batch in BATCHES:
                est = estimate[layer["kind"]](layer, batch, mode)
                est.pop("launches", None)
                floor = latency_floor_us(est["flops"], est["bytes"], mode)
                kernel_floor = latency_floor_us(est["flops"], est["bytes"], mode, launch=False)
                est.update(latency_floor_us=floor, kernel_latency_floor_us=kernel_floor,
                           predicted_over_floor=est["predicted_us"] / floor,
                           miss=classify_miss(est["predicted_us"], est["roofline_us"], floor),
                           kernel_miss=classify_miss(est["kernel_us"], est["roofline_us"], kernel_floor))
                rows.append(dict(layer=layer["name"], kind=layer["kind"], count=layer["count"], dtype=mode,
                                 batch=batch, **est))
                key = f"{mode}/batch{batch}"
                total = totals.setdefault(key, dict(predicted_ms=0.0, triton_only_ms=0.0, roofline_ms=0.0,
                                                    latency_floor_ms=0.0, launches=0, gflop=0.0))
                total["latency_floor_ms"] += layer["count"] * floor / 1e3
                total["launches"] += layer["count"] * (1 if layer["kind"] == "conv" or est["backend"] == "cuda"
                                                       else est["triton"]["launches"])
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

    A group is (dtype, kernel size, tiles, warps, stages, packed taps, second input, prologue, an
    input read 2x2 max-pooled); its members differ only in epilogue flags, split-K and integer
    specialisation. The member compiled is the one with the most epilogue work (residual, pooled
    residual and upsample over partial sums); the reduce kernel with every epilogue flag;
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
                       c["PACK_TAPS"], c["HAS_X2"], c["HAS_SCALE"], c["POOL_X"] or c["POOL_X2"])
                weight = (c["SPLIT_K"] == 1, c["HAS_RESIDUAL"] + c["HAS_UPSAMPLE"] + c["POOL_RES"])
                group = groups.setdefault(key, dict(weight=None, launch=None, layers=[]))
                group["layers"].append(f"{layer['name']}@batch{batch}")
                if group["weight"] is None or weight > group["weight"]:
                    group["weight"], group["launch"] = weight, launch
                if c["SPLIT_K"] > 1 and mode not in reduces:
                    reduces[mode] = reduce_launch(dict(layer, residual=True, upsample=True, pool_res=True), batch, mode, 8)
    variants = []
    for key, group in groups.items():
        mode, k, bm, bn, bk, warps, stages, packed, x2, prologue, pooled = key
        name = (f"conv_bn_relu_{mode}_k{k}_{bm}x{bn}x{bk}_w{warps}s{stages}{'_packed' if packed else ''}"
                f"{'_x2' if x2 else ''}{'_bnrelu' if prologue else ''}{'_pool' if pooled else ''}")
        variants.append(dict(name=name, dtype=mode, kernel="conv_bn_relu_kernel", gemm=True,
                             launch=group["launch"], layers=group["layers"]))
    for mode, launch in reduces.items():
        variants.append(dict(name=f"conv_split_k_reduce_{mode}_split8_res_up_poolres", dtype=mode,
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
        pools = dict(pool_x=layer["pool_x"], pool_x2=layer["pool_x2"], pool_res=layer["pool_res"])
        shape = (layer["k"], layer["stride"], layer["c1"], layer["c2"], layer["c_out"], layer["size"],
                 layer["prologue"], layer["out_relu"], layer["residual"], layer["upsample"], *pools.values())
        for mode in MODES:
            for batch in BATCHES:
                if (shape, mode, batch) in seen:
                    continue
                seen.add((shape, mode, batch))
                cfg = conv_config(batch * layer["size"] ** 2, layer["c1"], layer["c2"], layer["c_out"], layer["k"],
                                  layer["k"], ELEMENT_SIZE[mode], mode == "tf32",
                                  pooled=layer["pool_x"] or layer["pool_x2"])
                candidates = [dict(backend="triton", config=cfg),
                              dict(backend="aten+epilogue", config=dict(conv="cudnn", epilogue="triton"))]
                in_block = layer["name"].split(".")[0] not in ("stem", "lin", "heatmaps", "merge")
                if in_block and mode in ("bf16", "fp16"):
                    candidates.append(dict(backend="cuda", config=dict(kernel="residual_block (whole block)")))
                entries.append(dict(
                    key=dict(op="conv", k=layer["k"], stride=layer["stride"], c_in=layer["c1"], c_in2=layer["c2"],
                             c_out=layer["c_out"], size=layer["size"], prologue=layer["prologue"],
                             out_relu=layer["out_relu"], residual=layer["residual"], upsample=layer["upsample"],
                             **pools, dtype=mode, batch=batch),
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
                             upsample=layer["upsample"], pool_input=layer["pool"], dtype=mode, batch=batch),
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
    ``register_cap`` is the per-thread register limit ptxas compiled under (EIATTR_MAXREG_COUNT of the
    cubin's .nv.info: 255 unless ``__launch_bounds__`` asks for a minimum of CTAs per SM); for the
    residual block kernel ``min_ctas_per_sm`` is the CTAs per SM that cap guarantees by registers.
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
            elf = subprocess.run([tool, "-elf", str(obj)], capture_output=True, text=True, check=True).stdout
        resources = dict(re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", usage))
        caps = {m: int(v, 16) for m, v in re.findall(
            r"^\.nv\.info\.(\S+)\n(?:(?!^\.).*\n)*?\s*Attribute:\s*EIATTR_MAXREG_COUNT\n.*\n\s*Value:\s*(0x[0-9a-f]+)",
            elf, re.M)}
        for chunk in sass.split("Function : ")[1:]:
            mangled = chunk.split(None, 1)[0]
            fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", resources.get(mangled, "")))
            opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", chunk)
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
                         compiler="nvcc sm_90a", register_cap=caps.get(mangled, 255))
            if entry["gemm"]:
                entry.update(_block_kernel_facts(short, dtype, registers, opcodes))
                entry["min_ctas_per_sm"] = 65536 // (entry["register_cap"] * 256)  # 256-thread CTAs
            entries.append(entry)
    return entries


def _block_kernel_facts(name: str, dtype: str, registers: int, opcodes: list[str]) -> dict:
    """Path, instruction counts, and for the network's largest block (256 -> 256) per tile size the
    streaming layout's dynamic shared memory and CTAs per SM, and per map size at batch 1 the launch
    an H200 gets (tile, cluster, shared memory, whether the CTAs hold their whole weight share)."""
    import compile_triton_sm90 as sm90
    from shg_fast.ops.extension_backend import TILE_SIZES, block_launch_smem, block_smem_bytes, block_tiling

    tensor = name.endswith("true>")
    mode = "tf32" if dtype == "fp32" and tensor else dtype
    elem = {"fp64": 8, "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}[mode]
    tiles = {}
    for tile in TILE_SIZES:
        smem = block_smem_bytes(elem, tensor, 256, 128, False, tile)
        tiles[f"S{tile}"] = dict(dynamic_shared_bytes=smem, ctas_per_sm=sm90.ctas_per_sm(registers, smem, 8))
    launches = {}
    for size in (64, 32, 16, 8, 4):
        shape = (elem, tensor, 256, 128, 256, False, 1, size, size, 132, SM90_SMEM_OPTIN, True)
        (tile, cluster), (smem, resident) = block_tiling(*shape), block_launch_smem(*shape)
        launches[f"{size}x{size}"] = dict(tile=tile, cluster=cluster, dynamic_shared_bytes=smem,
                                          resident_weights=resident, ctas_per_sm=sm90.ctas_per_sm(registers, smem, 8))
    return dict(dtype=mode, path="tensor_core" if tensor else "exact", per_tile_256x256=tiles,
                batch1_launch_256x256=launches, ldmatrix=sum(op == "LDSM" for op in opcodes),
                cp_async=sum(op == "LDGSTS" for op in opcodes),
                l2_bulk_prefetch=sum(op == "UBLKPF" for op in opcodes),
                griddepcontrol_wait=sum(op == "ACQBULK" for op in opcodes),
                griddepcontrol_launch_dependents=sum(op == "PREEXIT" for op in opcodes))


def _miss_reason(row: dict) -> str:
    """Why a layer's predicted kernel time is over 2x its roofline (from the model's terms)."""
    if row["kind"] == "block" and row["backend"] == "cuda":
        c = row["cuda"]["config"]
        if c["resident_weights"]:
            return (f"cuda S{c['tile']} R{c['cluster']} resident weights: one L2 round trip for x and 1/{c['cluster']} "
                    f"of the weights ({c['halo_us'] + c['weights_us']:.2f} us), then the GEMMs ({c['mma_us']} us, "
                    f"mma.sync at 60% of the matrix rate) with nothing left to overlap"
                    + (f", {c['sync_us']:.1f} us of cluster barriers" if c["sync_us"] else ""))
        if c["weights_us"] >= c["mma_us"]:
            return (f"cuda S{c['tile']} R{c['cluster']}: every CTA streams 1/{c['cluster']} of the block's weights "
                    f"from L2 ({c['weights_us']} us, cp.async chunk latency) while the roofline reads them once "
                    f"from DRAM at 4.3 TB/s")
        return (f"cuda S{c['tile']} R{c['cluster']}: mma.sync at 60% of the matrix rate, stage B computed on the "
                f"(S+2)^2 halo")
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
                    without=sorted({k["name"] for k in tensor_modes if k["tensor_core"] not in families}),
                    over_shared_memory_limit=sorted({k["name"] for k in entries if k["shared_bytes"] > SM90_SMEM_OPTIN}))

    def line(r, over, floor, miss):
        return (f"{r['layer']} {r['dtype']} batch{r['batch']} ({r.get('backend', 'triton')}): {over:.2f}x roofline, "
                f"floor {floor / r['roofline_us']:.2f}x; {miss}; {_miss_reason(r)}")

    def misses(field, over, floor):
        listed = [r for r in rows if r[field]]
        return dict(rows=len(listed), of=len(rows),
                    **{label: sum(r[field] == label for r in listed) for label in (BELOW_LATENCY_FLOOR,
                                                                                   KERNEL_INEFFICIENCY)},
                    layers=[line(r, r[over], r[floor], r[field]) for r in listed])

    cuda_over = [f"{r['layer']} {r['dtype']} batch{r['batch']}: {r['cuda']['kernel_over_roofline']:.2f}x"
                 for r in rows if r["kind"] == "block" and r["dtype"] != "fp32" and
                 r["cuda"]["kernel_over_roofline"] > 2.0]
    return dict(triton=check(kernels, ("HGMMA",)), cuda=check(cuda, ("HMMA", "HGMMA")),
                predicted_misses=misses("miss", "predicted_over_roofline", "latency_floor_us"),
                kernel_misses=misses("kernel_miss", "kernel_over_roofline", "kernel_latency_floor_us"),
                cuda_block_kernel_over_2x_roofline=cuda_over)


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
             "(shg_fast/roofline.py). Residual blocks: 'backend' is the default rule's choice, the faster "
             "PREDICTION of the whole-block CUDA kernel ('cuda') and the three Triton convs ('triton'); both "
             "models count MMA waves, DRAM bytes and the L2 latency of their pipelined loads. latency_floor_us: "
             "the least time of any one-launch kernel for the layer under the same assumptions; 'miss' says "
             "whether a predicted time over 2x the roofline is 'below the single-launch latency floor' (no "
             "per-layer kernel can meet 2x) or 'kernel inefficiency' (a better kernel could); goals."
             "predicted_misses / kernel_misses list them.",
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
