"""The tactic table of the inference engine: which backend and launch configuration runs each step.

A tactic is ``(backend, config, reason)``. The builder of :mod:`shg_fast.engine` asks
:func:`lookup` once per step, with the step's op, its layer-shape key, the dtype, the batch
and the device name; a matching entry of the table wins if its backend can run here,
otherwise the default rule below decides.

The table is ``shg_fast/assets/tactics.json``::

    {"format": 1, "about": "...", "entries": [
      {"op": "residual_block", "shape": "cin=256 mid=128 cout=256 h=64 w=64 up",
       "dtype": "float16", "batch": 1, "device": "H200",
       "backend": "cuda", "config": {}, "reason": "0.011 ms vs 0.019 ms for triton (measured ...)"},
      {"op": "conv", "shape": "cin=256 cout=16 k=1 s=1 h=64 w=64", "dtype": "*", "batch": "*",
       "backend": "triton", "config": {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 64, "num_warps": 4,
       "num_stages": 3}, "reason": "..."}]}

* ``op``: ``residual_block``, ``conv``, ``max_pool`` or ``decode``; ``shape``: the step's key
  exactly as ``shg-fast info --plan`` prints it (:func:`shg_fast.engine.shape_key`).
* ``dtype`` (``float32``, ``float16``, ``bfloat16``, ...) and ``batch`` (an int) match exactly,
  ``"*"`` matches any; ``device`` (optional) must occur in the device's name (``torch.cuda
  .get_device_properties(...).name``, ``cpu`` on the CPU).
* ``backend``: ``cuda`` (the whole-block CUDA kernel; ``residual_block`` only), ``triton``
  (``conv`` and ``residual_block`` as implicit-GEMM convs, ``decode``), or ``aten``
  (``max_pool``). ``config`` is the backend's launch configuration: for ``triton`` convs the
  keys of :func:`shg_fast.kernels.conv_bn_relu.conv_config` (``BLOCK_M``, ``BLOCK_N``,
  ``BLOCK_K``, ``num_warps``, ``num_stages``; missing keys take the heuristic's value); ``cuda``
  and ``aten`` take none. ``reason`` says where the entry comes from (a measurement, a kernel
  analysis); it is shown next to the step.
* The first matching entry wins. Adding entries needs no code change.

Default rule (no entry, or the entry's backend cannot run here):

* CUDA devices: a residual block runs on the backend :func:`default_residual_block` predicts
  faster, ``cuda`` (the whole-block kernel, one launch) or ``triton`` (three implicit-GEMM
  convs), among those that can run (the extension has CUDA kernels and the block's shared
  memory fits the device; Triton imports); else on the ``reference`` ops. A PREDICTION-BASED
  DEFAULT until a GPU measures both (then the table holds the measured choice). A conv runs on
  ``triton`` with the ``conv_config`` tiles and the split-K of :func:`split_k_default`, else
  ``reference``; a max-pool is fused into the block that reads it (else ``aten``); the decode
  on ``triton``, else ``cuda``.
* CPU, float32, ``auto`` backend and oneDNN present: the ``mkldnn`` tactics of the CPU runner
  (1x1 convs by ``conv1x1`` with the clamp prologue, bias, add and ReLU fused unless
  ``SHG_FAST_CONV1X1=0``, then on maps of at most 64 pixels by ``aten``; 3x3 convs by
  ``winograd`` on maps of 8x8 and up unless ``SHG_FAST_WINOGRAD=0``; the rest prepacked oneDNN
  convs with fused add).
* Otherwise (other dtypes, a forced ``SHG_FAST_BACKEND``, no oneDNN) the public op's backend,
  chosen once when the program is built (the forced one, or the first of the ``auto`` order
  that can run); a forced ``triton`` on CPU tensors (the interpreter) runs the engine's own
  Triton steps, as on a GPU.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources

import torch

from .roofline import REDUCE_LAUNCH_STEPS, block_prediction, split_k_default, triton_block_prediction

__all__ = ["Tactic", "TABLE_PATH", "REDUCE_LAUNCH_STEPS", "load_table", "lookup", "dtype_name", "split_k_default",
           "default_residual_block"]

#: Where the table lives inside the package.
TABLE_PATH = "assets/tactics.json"
_FORMAT = 1
_KEYS = {"op", "shape", "dtype", "batch", "backend", "config", "reason"}


@dataclass(frozen=True)
class Tactic:
    """How one step runs: the backend, its launch configuration, and why it was chosen."""

    backend: str
    reason: str
    config: dict = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        config = " ".join(f"{k}={v}" for k, v in sorted(self.config.items()))
        return f"{self.backend}" + (f" [{config}]" if config else "")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` → ``float16``, as the table writes dtypes."""
    return str(dtype).removeprefix("torch.")


@functools.lru_cache(maxsize=None)
def load_table() -> tuple[dict, ...]:
    """The entries of the packaged table (read and checked once per process); ValueError if malformed."""
    text = resources.files("shg_fast").joinpath(TABLE_PATH).read_text()
    data = json.loads(text)
    if data.get("format") != _FORMAT or not isinstance(data.get("entries"), list):
        raise ValueError(f"shg_fast/{TABLE_PATH}: expected format {_FORMAT} with a list of entries")
    for i, entry in enumerate(data["entries"]):
        missing = _KEYS - set(entry)
        if missing:
            raise ValueError(f"shg_fast/{TABLE_PATH}: entry {i} lacks {sorted(missing)}")
        if not isinstance(entry["config"], dict):
            raise ValueError(f"shg_fast/{TABLE_PATH}: entry {i} config must be an object")
    return tuple(data["entries"])


def lookup(op: str, shape: str, dtype: torch.dtype, batch: int, device_name: str,
           table: tuple[dict, ...] | None = None) -> Tactic | None:
    """The first table entry for this step (``None`` when there is none); see the module docstring."""
    name = dtype_name(dtype)
    for entry in load_table() if table is None else table:
        if (entry["op"] == op and entry["shape"] == shape and entry["dtype"] in ("*", name)
                and entry["batch"] in ("*", batch) and entry.get("device", "") in device_name):
            return Tactic(entry["backend"], f"table: {entry['reason']}", dict(entry["config"]))
    return None


def _mode(dtype: torch.dtype, tf32: bool) -> str | None:
    """The prediction mode of a dtype (``None``: no prediction, e.g. float64)."""
    if dtype == torch.float32:
        return "tf32" if tf32 else "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)


def default_residual_block(cin: int, cout: int, height: int, width: int, dtype: torch.dtype, batch: int, *,
                           tf32: bool, upsample: bool, pool_input: bool = False) -> Tactic:
    """The default backend of a residual block on a GPU, by PREDICTED time (no GPU has measured it).

    Compares :func:`shg_fast.roofline.block_prediction` (the whole-block CUDA kernel: one
    launch, its tiling on an H200) with :func:`~shg_fast.roofline.triton_block_prediction`
    (three Triton convs, their split-K reduce launches included), each with the assumed 2 us
    per-launch floor of a graph replay, for a ``max(height, width)`` square map (``height`` x
    ``width``: the block's own size; ``pool_input``: it reads its input 2x2 max-pooled). float32
    without TF32 goes to ``triton`` (the CUDA kernel's exact path is a slow scalar loop);
    float64 (no prediction) to ``cuda``. The caller checks that the backend can run here.
    """
    mode = _mode(dtype, tf32)
    if mode is None:
        return Tactic("cuda", f"default rule: no prediction for {dtype_name(dtype)}; whole-block CUDA kernel")
    if mode == "fp32":
        return Tactic("triton", "default rule: exact float32 (TF32 off) runs on the Triton convs; the CUDA "
                                "kernel's exact path is a scalar loop")
    size = max(height, width)
    cuda_us = block_prediction(cin, cout, size, batch, mode, upsample, pool_input)["predicted_us"]
    triton_us = triton_block_prediction(cin, cout, size, batch, mode, upsample, pool_input)["predicted_us"]
    backend = "cuda" if cuda_us <= triton_us else "triton"
    return Tactic(backend, f"default rule (PREDICTED on an H200, not measured): cuda {cuda_us:.1f} us vs "
                           f"triton {triton_us:.1f} us")
