"""Numerical tolerances of shg_fast, in one table, and the comparisons that use them.

Errors are measured against a higher-precision reference (float64 on the same inputs) as
``max |out - ref| / max |ref|``. For 16-bit dtypes the bound is relative to the reference
implementation's own error in that dtype (docs/DESIGN.md): a kernel may be at most
``LOW_PRECISION_FACTOR`` times as far from the float64 truth as PyTorch's own run in that dtype.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TOLERANCES", "LOW_PRECISION_FACTOR", "WINOGRAD_ERROR_FACTOR", "RSS_GROWTH_LIMIT_BYTES",
           "MEMORY_EFFICIENT_SAVED_RATIO", "WELL_CONDITIONED_BN_BIAS",
           "max_rel_error", "tolerance", "assert_close_to_reference", "randomize_batchnorm"]

#: Bound on max|out - ref| / max|ref| per compute mode, for fp32-class results.
TOLERANCES: dict[str, float] = {
    "float64": 1e-10,
    "float32": 1e-4,  # IEEE fp32 (TF32 off)
    # another port's own model vs ours with its converted weights, both fp32 (the same convs in the same order)
    "port_float32": 1e-5,
    "tf32": 5e-3,
    # 16-bit results are bounded relative to the reference's own error (see module doc),
    # never tighter than these floors (rounding of a single output in that dtype).
    "float16": 2e-3,
    "bfloat16": 1.6e-2,
    # training: relative difference of per-step losses (fast vs reference, same seed; bf16 autocast vs fp32)
    "train_loss": 1e-3,
    "train_loss_bf16_autocast": 5e-2,
    # float32 training gradients vs float64, normwise (||g - g64|| / ||g64|| over all parameters), on a
    # model whose BNs are well-conditioned (WELL_CONDITIONED_BN_BIAS); like the 16-bit modes, raised to
    # LOW_PRECISION_FACTOR x the reference's own float32 error measured the same way
    "float32_train": 1e-5,
}

#: A 16-bit kernel may be at most this many times as far from float64 as the reference run in that dtype.
LOW_PRECISION_FACTOR = 2.0

#: The float32 Winograd F(4x4, 3x3) convolution may be at most this many times as far from float64 as
#: the direct float32 convolution (measured 1.4-2.7x with its points 0, -1, 1, 1/2, -2; the usual
#: 0, +-1, +-2 give about 6x).
WINOGRAD_ERROR_FACTOR = 4.0


#: BN shifts (with scales in [0.5, 1.5]) for float32 training comparisons. A training-mode network
#: of random BNs is chaotic at float32 precision: rounding moves a few ReLU inputs across zero (or
#: max-pool inputs across a tie), each such flip moves the gradients by up to 1e-2 relative, and a
#: perturbation of the input by 1e-7 moves them as much as the float32 arithmetic does -- so two
#: correct float32 implementations disagree by a coin toss. Shifts of 3.5-4.5 keep BN outputs far
#: from the ReLU's kink: the gradients' float32 error drops from 1e-4..1e-2 to about 1e-6, and flips
#: become rare (about one problem in ten on a 1-stack 16-feature model at 128x128, batch 2).
WELL_CONDITIONED_BN_BIAS = (3.5, 4.5)


#: Resident memory a run of 1,000 small forward passes may gain after warm-up (allocator noise);
#: a leak of one 64x64 float32 map per pass (16 MB) exceeds it.
RSS_GROWTH_LIMIT_BYTES = 8 * 2**20


#: Bytes saved for backward by a memory-efficient training forward, at most this fraction of the
#: reference's (activations; issue 19's goal at 8 stacks, 256x256, batch 8 counts parameters too).
MEMORY_EFFICIENT_SAVED_RATIO = 0.6


def max_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max |ref|`` in float64 (inf when ``out`` has a NaN that ``ref`` lacks)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if out64.shape != ref64.shape:
        raise AssertionError(f"shape {tuple(out64.shape)} != reference {tuple(ref64.shape)}")
    if torch.isnan(out64).any() and not torch.isnan(ref64).any():
        return float("inf")
    scale = ref64.abs().max().item() if ref64.numel() else 1.0
    return (out64 - ref64).abs().max().item() / max(scale, 1e-30) if ref64.numel() else 0.0


def tolerance(mode: str, reference_error: float | None = None) -> float:
    """The bound on ``max_rel_error`` vs float64 for ``mode`` (a key of :data:`TOLERANCES`).

    For ``float16``/``bfloat16``/``float32_train``, ``reference_error`` (the reference run's own
    error in that dtype, measured the same way) raises the bound to
    ``LOW_PRECISION_FACTOR * reference_error`` when that is larger.
    """
    bound = TOLERANCES[mode]
    if mode in ("float16", "bfloat16", "float32_train") and reference_error is not None:
        bound = max(bound, LOW_PRECISION_FACTOR * reference_error)
    return bound


def assert_close_to_reference(out: torch.Tensor, truth: torch.Tensor, mode: str,
                              reference_same_dtype: torch.Tensor | None = None) -> float:
    """Assert ``out`` is within the tolerance of ``mode`` of the float64 ``truth``; returns the error.

    For ``float16``/``bfloat16`` pass ``reference_same_dtype`` (the reference computed in that
    dtype): the bound is then ``max(floor, LOW_PRECISION_FACTOR * its error)``.
    """
    err = max_rel_error(out, truth)
    reference_error = None if reference_same_dtype is None else max_rel_error(reference_same_dtype, truth)
    bound = tolerance(mode, reference_error)
    if not err <= bound:
        raise AssertionError(f"{mode}: max relative error {err:.3e} exceeds {bound:.3e}")
    return err


@torch.no_grad()
def randomize_batchnorm(module: nn.Module, seed: int | None = None,
                        bias: tuple[float, float] = (-0.5, 0.5)) -> nn.Module:
    """Give every BatchNorm in ``module`` non-trivial running statistics and affine parameters.

    A freshly built model has identity BNs, under which a wrong BN folding goes unnoticed.
    ``seed`` makes the values reproducible on their own; ``None`` draws from torch's global RNG.
    ``bias`` is the range of the shifts (see :data:`WELL_CONDITIONED_BN_BIAS`); scales are in [0.5, 1.5].
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for tensor, low, high in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0),
                                      (m.weight, 0.5, 1.5), (m.bias, *bias)):
                tensor.copy_(torch.empty(tensor.shape).uniform_(low, high, generator=generator))
    return module
