"""Roofline and kernel-model PREDICTIONS of GPU times on an H200 or H100 (no GPU has run these kernels).

Used by ``scripts/compiled_code_report.py`` (benchmarks/results/compiled-code.json), by the
default rule of :mod:`shg_fast.tactics` for residual blocks, and next to the measurements of
``scripts/gpu_check.py``. Every figure here is computed from FLOPs, bytes and the rates and
assumptions below; none is a measurement.

Modes: ``fp32`` (exact fp32 FMA), ``tf32``, ``bf16``, ``fp16``.

The rates are those of one device profile (:data:`DEVICE_PROFILES`): the H200 by default (the
tactic table and ``benchmarks/results/compiled-code.json`` are computed for it), or the one
:func:`use_device` picks from a CUDA device name (``torch.cuda.get_device_name()``); ``RATES``
says which profile is in force and why.
"""

from __future__ import annotations

import math

__all__ = ["REDUCE_LAUNCH_STEPS", "split_k_default", "MATRIX_TFLOPS", "COPY_TBPS", "LAUNCH_FLOOR_US", "ELEMENT_SIZE",
           "ASSUMPTIONS", "RATES", "DEFAULT_DEVICE", "DEVICE_PROFILES", "device_profile", "use_device",
           "conv_prediction", "block_prediction", "triton_block_prediction", "latency_floor_us", "classify_miss",
           "BELOW_LATENCY_FLOOR", "KERNEL_INEFFICIENCY"]

HOPPER_SMS = 132  # the H100 SXM and the H200 alike (both GH100 with 132 SMs enabled)
HOPPER_SMEM_OPTIN = 232448  # bytes of shared memory one block may opt in to
HOPPER_SMEM_PER_SM = 233472
HOPPER_REGISTERS_PER_SM = 65536
ELEMENT_SIZE = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}
#: Rates per device (TFLOP/s, TB/s, GHz). Both are Hopper SXM parts with 132 SMs, the same matrix units
#: and the same 1.98 GHz boost clock (so the same per-SM figures below); they differ in memory. bf16 is
#: the dense matrix rate measured on random data and copy_tbps the device-to-device copy (bytes read
#: plus written) measured on one such machine of the lending workplace (its notes on the lent machines),
#: not the datasheet's 989 TFLOP/s and 4.8 (H200, HBM3e) / 3.35 (H100 SXM, HBM3) TB/s, which a
#: running kernel does not reach. TF32 is half the bf16 rate and plain fp32 FMA 67/990 of it, the
#: datasheet's ratios.
DEVICE_PROFILES = {
    "H200": dict(bf16_tflops=790.0, copy_tbps=4.3, clock_ghz=1.98, l2_mb=60, hbm_gb=141,
                 source="bf16 788-798 TFLOP/s and copy 4.3 TB/s measured on H200s (device notes, 2026-10/11); "
                        "datasheet 989 TFLOP/s dense bf16, 4.8 TB/s HBM3e"),
    "H100 SXM": dict(bf16_tflops=798.0, copy_tbps=3.0, clock_ghz=1.98, l2_mb=50, hbm_gb=80,
                     source="bf16 798 TFLOP/s and copy 3.0 TB/s measured on one H100 80GB HBM3 (device notes, "
                            "2026-11-13); datasheet 989 TFLOP/s dense bf16, 3.35 TB/s HBM3"),
}
DEFAULT_DEVICE = "H200"
MATRIX_TFLOPS: dict[str, float] = {}
COPY_TBPS = 0.0
LAUNCH_FLOOR_US = 2.0  # assumed per-kernel floor in a CUDA-graph replay (ramp up and drain)
#: Assumptions of the CUDA block kernel's model (not measured; a GPU run should replace them).
ASSUMPTIONS = dict(
    mma_sync_fraction=0.6,      # mma.sync (HMMA) reaches this fraction of the wgmma matrix rate
    l2_latency_us=0.5,          # one cp.async chunk round trip from L2 (~1000 cycles at 1.98 GHz)
    sm_l2_bytes_per_us=126720,  # one SM's L2 read bandwidth: 64 B/clock at 1.98 GHz
    cluster_barrier_us=0.2,     # one cluster barrier plus its DSMEM gather's latency
    registers=124,              # the tensor-core kernel's registers per thread (ptxas, sm_90a: 123-124)
)
RATES: dict = dict(launch_floor_us=LAUNCH_FLOOR_US, cuda_block_model=ASSUMPTIONS,
                   note="bf16 rate and copy bandwidth measured on one device of the profile (device notes); TF32 "
                        "and fp32 derived from the datasheet ratios; the launch floor and the CUDA block model's "
                        "figures are assumptions")


def device_profile(device_name: str | None) -> tuple[str, str]:
    """The profile of :data:`DEVICE_PROFILES` for a CUDA device name, and why it was chosen.

    'NVIDIA H200' -> H200, 'NVIDIA H100 80GB HBM3' (the SXM part) -> H100 SXM; any other name (an
    H100 PCIe or NVL has other rates and SM counts), or none, -> :data:`DEFAULT_DEVICE`, said so.
    """
    name = (device_name or "").upper()
    if "H200" in name:
        return "H200", f"device name {device_name!r}"
    if "H100" in name and "PCIE" not in name and "NVL" not in name:
        return "H100 SXM", f"device name {device_name!r}"
    return DEFAULT_DEVICE, f"default: no profile for {device_name!r}" if device_name else "default: no device named"


def use_device(device_name: str | None) -> str:
    """Make every prediction of this module use the rates of ``device_name``'s profile; returns its name.

    Updates :data:`MATRIX_TFLOPS`, :data:`COPY_TBPS` and :data:`RATES` (which names the profile and
    the reason) in place, so importers of the dicts see the change.
    """
    global COPY_TBPS
    profile, reason = device_profile(device_name)
    rates = DEVICE_PROFILES[profile]
    bf16 = rates["bf16_tflops"]
    MATRIX_TFLOPS.update(bf16=bf16, fp16=bf16, tf32=bf16 / 2, fp32=67.0 * bf16 / 990.0)
    COPY_TBPS = rates["copy_tbps"]
    RATES.update(device=profile, device_reason=reason, device_source=rates["source"], matrix_tflops=MATRIX_TFLOPS,
                 copy_tbps=COPY_TBPS)
    return profile


use_device(None)
_CHUNK_BYTES, _N_PASS, _STAGES, _THREADS = 128, 64, 3, 256


def _roofline_us(flops: float, bytes_: float, mode: str) -> float:
    return max(flops / (MATRIX_TFLOPS[mode] * 1e12), bytes_ / (COPY_TBPS * 1e12)) * 1e6


BELOW_LATENCY_FLOOR = "below the single-launch latency floor"
KERNEL_INEFFICIENCY = "kernel inefficiency"


def latency_floor_us(flops: float, bytes_: float, mode: str, launch: bool = True) -> float:
    """The least time any ONE-launch kernel computing a layer could take under this model's assumptions.

    Its first operands arrive one ``l2_latency_us`` round trip after it starts (an ideal kernel
    requests its input and every weight at once; a block's intermediates stay on chip, their
    dependent stages costing nothing more), then its FLOPs take at least their time at the full
    matrix rate of all 132 SMs; its DRAM bytes take at least their time at the copy bandwidth
    (overlapped with both). With ``launch``, at least :data:`LAUNCH_FLOOR_US`: the model applies
    the launch floor as the least duration of any kernel in a graph replay (ramp-up and drain),
    not as an added cost, so the floor does the same.
    """
    compute_us = ASSUMPTIONS["l2_latency_us"] + flops / (MATRIX_TFLOPS[mode] * 1e12) * 1e6
    floor = max(compute_us, bytes_ / (COPY_TBPS * 1e12) * 1e6)
    return max(floor, LAUNCH_FLOOR_US) if launch else floor


def classify_miss(time_us: float, roofline_us: float, floor_us: float) -> str | None:
    """Why ``time_us`` misses "within 2x of the roofline" (None when it does not miss).

    :data:`BELOW_LATENCY_FLOOR` when the floor itself is over 2x the roofline (no one-launch kernel
    per layer can meet the goal; only fusing layers into fewer launches can), else
    :data:`KERNEL_INEFFICIENCY` (a better kernel could).
    """
    if time_us <= 2.0 * roofline_us:
        return None
    return BELOW_LATENCY_FLOOR if floor_us > 2.0 * roofline_us else KERNEL_INEFFICIENCY


#: What the split-K reduce launch costs, counted in K steps of one conv tile. A prediction, not a
#: measurement: about 2 us of GPU time for one more kernel in a graph (launch gap, then a reduce
#: that reads the partials from L2 and runs the epilogue) over about 0.12 us per K step of a
#: latency-bound 16-bit tensor-core tile (a 16 KB operand load from L2 per step). Exact float32
#: steps run on FMA units and take longer, so the rule splits them a little less often than their
#: time would justify. The GPU check should measure it and the table override it where it errs.
REDUCE_LAUNCH_STEPS = 16


def split_k_default(steps: int, split: int) -> int:
    """The engine's default split-K factor for a conv whose tiles take ``steps`` K steps each.

    ``split`` is :func:`shg_fast.kernels.conv_bn_relu.conv_config`'s factor: the most that keeps
    every share at least ``MIN_STEPS_PER_SPLIT`` steps while the tiles alone would leave SMs
    idle, which happens at batch 1 on the small maps of the hourglass. Splitting by ``s`` cuts
    each tile's K loop to ``ceil(steps / s)`` steps but adds one launch, the deterministic reduce.
    The rule takes the ``s`` in 1, 2, 4 ... ``split`` with the least predicted time,
    ``ceil(steps / s) + (REDUCE_LAUNCH_STEPS if s > 1 else 0)`` K steps (the smaller ``s`` on a
    tie), so a split must save more K steps than the reduce launch costs: a 3x3 conv with 128
    channels in 16-bit (18 steps of 64 channels) runs whole, its float32 twin (72 steps of 16)
    splits by 8.
    """
    best, best_cost = 1, steps
    s = 2
    while s <= split:
        cost = -(-steps // s) + REDUCE_LAUNCH_STEPS
        if cost < best_cost:
            best, best_cost = s, cost
        s *= 2
    return best


def conv_prediction(conv: dict, batch: int, mode: str) -> dict:
    """FLOPs, DRAM bytes, roofline and the Triton conv's predicted time for one launch.

    ``conv``: ``k``, ``stride``, ``c1``, ``c2`` (second GEMM input, 0 if none), ``c_out``, output
    ``size``, flags ``residual`` and ``upsample``, optional ``pool_x`` / ``pool_x2`` / ``pool_res``
    (that input read 2x2 max-pooled: four times its bytes). The kernel's time is its padded tiles
    (``conv_config``) in waves over 132 SMs, each CTA the slower of its MMA work at the matrix
    rate after one ``l2_latency_us`` round trip (its first operands) and its K loop's load latency
    (``num_stages - 1`` steps in flight, ``l2_latency_us`` each), at least the DRAM time.
    """
    from .kernels.conv_bn_relu import conv_config

    elem = ELEMENT_SIZE[mode]
    k, size, c1, c2, c_out = conv["k"], conv["size"], conv["c1"], conv["c2"], conv["c_out"]
    m = batch * size * size
    in_size = size * conv["stride"]
    flops = 2.0 * m * c_out * k * k * (c1 + c2)
    reads = {name: 4 if conv.get(f"pool_{name}", False) else 1 for name in ("x", "x2", "res")}
    bytes_ = elem * (batch * in_size * in_size * (c1 * reads["x"] + c2 * reads["x2"]) + c_out * (c1 + c2) * k * k
                     + m * c_out * (1 + conv["residual"] * reads["res"])
                     + (batch * ((size + 1) // 2) ** 2 * c_out if conv["upsample"] else 0))
    rate = MATRIX_TFLOPS[mode] * 1e12
    roofline_us = _roofline_us(flops, bytes_, mode)
    cfg = conv_config(m, c1, c2, c_out, k, k, elem, mode == "tf32", pooled=reads["x"] > 1 or reads["x2"] > 1)
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    steps = (math.ceil(k * k * c1 / bk) if cfg["PACK_TAPS"] else
             k * k * (math.ceil(c1 / bk) + (math.ceil(c2 / bk) if c2 else 0)))
    split = cfg["SPLIT_K"] = split_k_default(steps, cfg["SPLIT_K"])  # as the engine launches it
    ctas = math.ceil(m / bm) * math.ceil(c_out / bn) * split
    cta_steps = math.ceil(steps / split)
    mma_us = 2.0 * bm * bn * bk * cta_steps / (rate / HOPPER_SMS) * 1e6
    # The K loop's loads: num_stages - 1 steps in flight, each an L2 round trip (as the CUDA block model); the
    # MMAs start one round trip in, when the first operands arrive.
    latency_us = cta_steps * ASSUMPTIONS["l2_latency_us"] / max(1, cfg["num_stages"] - 1)
    cta_us = max(mma_us + ASSUMPTIONS["l2_latency_us"], latency_us)
    partial_bytes = 2 * 4 * split * m * c_out if split > 1 else 0
    kernel_us = max(math.ceil(ctas / HOPPER_SMS) * cta_us, (bytes_ + partial_bytes) / (COPY_TBPS * 1e12) * 1e6)
    launches = 2 if split > 1 else 1
    predicted_us = max(kernel_us, LAUNCH_FLOOR_US * launches)
    return dict(flops=flops, bytes=bytes_, roofline_us=roofline_us, kernel_us=kernel_us,
                kernel_over_roofline=kernel_us / roofline_us, predicted_us=predicted_us,
                predicted_over_roofline=predicted_us / roofline_us, launches=launches,
                config={**cfg, "ctas": ctas})


def triton_block_prediction(cin: int, cout: int, size: int, batch: int, mode: str, upsample: bool,
                            pool: bool = False) -> dict:
    """A residual block as the three Triton convs (projection skip as the last conv's second input);
    ``pool``: the block reads its input 2x2 max-pooled (conv1's x and the skip)."""
    mid = cout // 2
    base = dict(stride=1, size=size, residual=False, upsample=False)
    convs = [dict(base, k=1, c1=cin, c2=0, c_out=mid, pool_x=pool), dict(base, k=3, c1=mid, c2=0, c_out=mid),
             dict(base, k=1, c1=mid, c2=cin if cin != cout else 0, c_out=cout, residual=cin == cout,
                  upsample=upsample, pool_x2=pool and cin != cout, pool_res=pool and cin == cout)]
    parts = [conv_prediction(c, batch, mode) for c in convs]
    return dict(kernel_us=sum(p["kernel_us"] for p in parts), predicted_us=sum(p["predicted_us"] for p in parts),
                launches=sum(p["launches"] for p in parts))


def _block_flops_bytes(cin, cout, size, batch, mode, upsample, pool):
    mid, elem = cout // 2, ELEMENT_SIZE[mode]
    m = batch * size * size
    proj = cin != cout
    flops = 2.0 * m * (cin * mid + 9 * mid * mid + mid * cout + (cin * cout if proj else 0))
    weights = cin * mid + 9 * mid * mid + cout * mid + (cin * cout if proj else 0)
    bytes_ = elem * (m * cin * (4 if pool else 1) + m * cout + weights + (batch * ((size + 1) // 2) ** 2 * cout if upsample else 0))
    return flops, bytes_


def block_prediction(cin: int, cout: int, size: int, batch: int, mode: str, upsample: bool,
                     pool: bool = False) -> dict:
    """Roofline of one residual block and the whole-block CUDA kernel's predicted time (PREDICTIONS).

    Tiling and shared memory as the launcher picks them on an H100 SXM or H200
    (:func:`shg_fast.ops.extension_backend.block_tiling`, :func:`~shg_fast.ops.extension_backend.block_launch_smem`):
    ``ctas`` = tiles x R in waves of 132 x CTAs-per-SM (registers and shared memory). Per CTA:

    * streamed weights: the slower of its MMA work (warp tiles padded to 16 rows x 32 columns) at
      ``mma_sync_fraction`` of the matrix rate shared by the CTAs of one SM, and its weight chunks
      (``kStages - 1`` in flight, each an ``l2_latency_us`` round trip) or its bytes at one SM's L2
      bandwidth; plus the halo load (one round trip and its bytes);
    * resident weights (the whole share requested at the start with x): one ``l2_latency_us`` round
      trip and the weights' and halo's bytes at the SM's L2 bandwidth, then the MMA work (nothing
      left to overlap it with);

    plus, with clusters, three barriers. ``pool``: the halo is read 2x2 max-pooled (four times its
    bytes). The kernel is a programmatic dependent launch whose L2 prefetch of the weights may
    overlap the previous kernel; that overlap is NOT credited (the 2 us launch floor stays whole):
    how much it hides is for a GPU to measure. Exact fp32 (TF32 off) takes the scalar path,
    modelled at a quarter of the fp32 FMA rate (operands from shared memory and L1, one load per FMA).
    """
    from .ops.extension_backend import block_launch_smem, block_tiling

    elem, mid, proj = ELEMENT_SIZE[mode], cout // 2, cin != cout
    mma = mode != "fp32"
    flops, bytes_ = _block_flops_bytes(cin, cout, size, batch, mode, upsample, pool)
    roofline_us = _roofline_us(flops, bytes_, mode)
    S, R = block_tiling(elem, mma, cin, mid, cout, proj, batch, size, size, HOPPER_SMS, HOPPER_SMEM_OPTIN, True)
    halo, pixels = (S + 2) ** 2, S * S
    ctas = batch * math.ceil(size / S) ** 2 * R
    smem, held = block_launch_smem(elem, mma, cin, mid, cout, proj, batch, size, size, HOPPER_SMS, HOPPER_SMEM_OPTIN,
                                   True)
    per_sm = min(HOPPER_REGISTERS_PER_SM // (ASSUMPTIONS["registers"] * _THREADS), HOPPER_SMEM_PER_SM // (smem + 1024))
    sharing = max(1, min(per_sm, math.ceil(ctas / HOPPER_SMS)))  # CTAs sharing one SM
    waves = math.ceil(ctas / (HOPPER_SMS * per_sm))

    def pad(x, to):
        return math.ceil(x / to) * to

    n_mid, n_out = mid // R, cout // R
    macs = (pad(halo, 16) * pad(n_mid, 32) * cin + pad(pixels, 16) * pad(n_mid, 32) * 9 * mid
            + pad(pixels, 16) * pad(n_out, 32) * (mid + (cin if proj else 0)))
    if mma:
        sm_rate = MATRIX_TFLOPS[mode] * 1e12 * ASSUMPTIONS["mma_sync_fraction"] / HOPPER_SMS
    else:
        sm_rate = MATRIX_TFLOPS["fp32"] * 1e12 / 4 / HOPPER_SMS
    mma_us = 2.0 * macs / sm_rate * 1e6 * sharing

    def chunks(rows, k_elems):  # weight chunks of one GEMM: passes of <= 64 rows, chunks of up to 8 KB
        total = 0
        for p0 in range(0, rows, _N_PASS):
            np_ = min(_N_PASS, rows - p0)
            chunk = _CHUNK_BYTES * 8
            while chunk > _CHUNK_BYTES and np_ * (chunk + 16) > _N_PASS * (_CHUNK_BYTES + 16):
                chunk //= 2
            total += math.ceil(k_elems * elem / chunk)
        return total

    n_chunks = chunks(n_mid, cin) + chunks(n_mid, 9 * mid) + chunks(n_out, mid + (cin if proj else 0))
    weight_bytes = elem * (n_mid * cin + 9 * n_mid * mid + n_out * (mid + (cin if proj else 0)))
    sm_bw = ASSUMPTIONS["sm_l2_bytes_per_us"] / sharing
    halo_bytes = elem * halo * cin * (4 if pool else 1)
    sync_us = 3 * ASSUMPTIONS["cluster_barrier_us"] if R > 1 else 0.0
    if held:  # one round trip for all the weights and x, then the three GEMMs from shared memory
        weights_us = weight_bytes / sm_bw
        halo_us = ASSUMPTIONS["l2_latency_us"] + halo_bytes / sm_bw
        cta_us = halo_us + weights_us + mma_us + sync_us
    else:
        weights_us = weight_bytes / sm_bw
        if mma:  # cp.async chunks, kStages - 1 in flight
            weights_us = max(weights_us, n_chunks * ASSUMPTIONS["l2_latency_us"] / (_STAGES - 1))
        halo_us = ASSUMPTIONS["l2_latency_us"] + halo_bytes / sm_bw
        cta_us = max(mma_us, weights_us) + halo_us + sync_us
    kernel_us = max(waves * cta_us, bytes_ / (COPY_TBPS * 1e12) * 1e6)
    predicted_us = max(kernel_us, LAUNCH_FLOOR_US)
    return dict(flops=flops, bytes=bytes_, roofline_us=roofline_us, kernel_us=kernel_us,
                kernel_over_roofline=kernel_us / roofline_us, predicted_us=predicted_us,
                predicted_over_roofline=predicted_us / roofline_us, launches=1,
                config=dict(tile=S, cluster=R, ctas=ctas, ctas_per_sm=per_sm, waves=waves, smem_bytes=smem,
                            resident_weights=held, mma_us=round(mma_us, 3), weights_us=round(weights_us, 3), halo_us=round(halo_us, 3),
                            sync_us=sync_us))
