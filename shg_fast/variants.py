"""The model variants a benchmark compares, built from one reference model.

``reference``
    :class:`shg_fast.reference.StackedHourglass` in eager PyTorch.
``fast``
    ``shg_fast.StackedHourglass`` (fused plan in eval mode) with the reference's weights.
``compile``
    ``torch.compile`` of the reference: mode ``max-autotune`` on a GPU; on a CPU the default mode
    (inductor) with ``freezing`` (weights folded as constants, BN folded into the convs) and the
    model and input channels_last (the input's conversion is inside the timed call).
``cuda_graph``
    ``shg_fast.cuda_graph(fast_model, example)``: the fast model captured in a CUDA graph
    (a plain callable on a CPU).
``onnxruntime``
    The reference exported to ONNX (:func:`shg_fast.peers.export_onnx`) run by ONNX Runtime's
    CPU provider, every graph optimisation, torch's thread count; float32 only.
``openvino``
    The same file run by OpenVINO's CPU plugin with torch's thread count: inference precision
    ``f32`` for float32 inputs, ``bf16`` for bfloat16 inputs (fed as float32, outputs cast back;
    only where OpenVINO reports BF16 on this CPU).

The peers (``onnxruntime``, ``openvino``) are optional packages (``pip install 'shg_fast[peers]'``);
:func:`variant_reasons` says why a variant cannot run for a (device, dtype), before anything is built.
"""

from __future__ import annotations

import copy
import tempfile
import weakref
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import peers
from .cuda_graph import cuda_graph
from .model import StackedHourglass as FastStackedHourglass

__all__ = ["VARIANTS", "PEERS", "build_variant", "compile_mode", "variant_reasons"]

VARIANTS = ("reference", "fast", "compile", "cuda_graph", "onnxruntime", "openvino")
#: The variants that run the model in another runtime (optional packages).
PEERS = ("onnxruntime", "openvino")

Forward = Callable[[torch.Tensor], list]


def compile_mode(device: torch.device) -> str | None:
    """The torch.compile mode used for ``device``: ``max-autotune`` on CUDA, default elsewhere."""
    return "max-autotune" if device.type == "cuda" else None


def _fast_model(reference: nn.Module, example: torch.Tensor) -> nn.Module:
    model = FastStackedHourglass(**reference.config)
    model.load_state_dict(reference.state_dict())
    return model.to(device=example.device, dtype=example.dtype).eval()


def variant_reasons(name: str, device: str, dtype: torch.dtype) -> list[str]:
    """Why variant ``name`` cannot run on ``device`` (``cpu``/``cuda``) in ``dtype`` (empty when it can)."""
    if name not in PEERS:
        return []
    if device != "cpu":
        return [f"{name}: the peers run on the CPU only here (their CPU execution provider/plugin)"]
    if name == "onnxruntime":
        reasons = [] if dtype == torch.float32 else ["the exported file is float32 (ONNX Runtime's CPU provider "
                                                     "has no bfloat16 convolutions)"]
        return [f"onnxruntime: {r}" for r in reasons + peers.onnxruntime_reasons()]
    precision = {torch.float32: "f32", torch.bfloat16: "bf16"}.get(dtype)
    if precision is None:
        return [f"openvino: runs float32 or bfloat16, not {dtype}"]
    return [f"openvino ({precision}): {r}" for r in peers.openvino_reasons(precision)]


#: The ONNX file of each reference model, per (input size, parameter versions): exported once per model.
_ONNX_FILES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _onnx_bytes(reference: nn.Module, size: int) -> bytes:
    key = (size, tuple(t._version for t in reference.state_dict().values()))
    files = _ONNX_FILES.setdefault(reference, {})
    if key not in files:
        files.clear()
        files[key] = peers.exported_bytes(reference, size)
    return files[key]


def _compile_cpu(reference: nn.Module) -> Forward:
    """torch.compile (inductor) of a channels_last copy with weights frozen; the input made channels_last."""
    model = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    compiled = torch.compile(model, dynamic=False, options={"freezing": True})
    return lambda x: compiled(x.contiguous(memory_format=torch.channels_last))


def _openvino(reference: nn.Module, example: torch.Tensor) -> Forward:
    """OpenVINO at the precision of ``example``'s dtype; bfloat16 inputs fed as float32, outputs cast back."""
    precision = "bf16" if example.dtype == torch.bfloat16 else "f32"
    with tempfile.TemporaryDirectory(prefix="shg_fast_onnx_") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(_onnx_bytes(reference, example.shape[-1]))
        run = peers.load_openvino(path, tuple(example.shape), precision)
    if example.dtype == torch.float32:
        return run
    return lambda x: [o.to(x.dtype) for o in run(x.float())]


def build_variant(name: str, reference: nn.Module, example: torch.Tensor) -> Forward:
    """A callable ``x -> list of heatmaps`` for variant ``name``.

    Args:
        name: one of :data:`VARIANTS` (raises RuntimeError with :func:`variant_reasons` when it
            cannot run here).
        reference: the eval-mode reference model on ``example``'s device and dtype.
        example: an input of the shape, dtype and device the callable will be run on (CUDA
            graphs are captured for exactly this shape).
    """
    reasons = variant_reasons(name, example.device.type, example.dtype)
    if reasons:
        raise RuntimeError("; ".join(reasons))
    if name == "reference":
        return reference
    if name == "fast":
        return _fast_model(reference, example)
    if name == "compile":
        torch._dynamo.reset()  # each (batch, dtype) gets a fresh compile, never a cache-limit fallback
        if example.device.type == "cpu":
            return _compile_cpu(reference)
        return torch.compile(reference, mode=compile_mode(example.device), dynamic=False)
    if name == "cuda_graph":
        return cuda_graph(_fast_model(reference, example), example)
    if name == "onnxruntime":
        return peers.load_onnxruntime(_onnx_bytes(reference, example.shape[-1]), example.shape[0])
    if name == "openvino":
        return _openvino(reference, example)
    raise ValueError(f"unknown variant {name!r}; expected one of {VARIANTS}")
