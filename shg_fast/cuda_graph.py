"""Low-latency inference: capture an eval model in a CUDA graph for a fixed input shape and dtype."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from . import model as model_module
from .model import StackedHourglass, state_key
from .reference import check_input

__all__ = ["cuda_graph"]


def cuda_graph(model: nn.Module, example_input: torch.Tensor, *, warmup: int = 3, clone_outputs: bool = True,
               decode: bool = False, flip_pairs: Sequence[Sequence[int]] | None = None) -> Callable:
    """A callable ``f(x)`` running the eval ``model`` as one CUDA-graph replay.

    Args:
        model: an eval-mode Stacked Hourglass (fast or reference), on ``example_input``'s device.
        example_input: ``(N, 3, H, W)``; fixes the batch, size, dtype and device of every call.
        warmup: forward passes run before capture (program building, Triton compiles, allocator).
        clone_outputs: return copies of the graph's static outputs (safe to keep across calls);
            with False the same tensors are returned and overwritten by the next call.
        decode: ``f(x)`` returns ``(heatmaps, coords, maxvals)``: the last stack's heatmaps also
            decoded to joints (:func:`shg_fast.ops.decode_heatmaps`) inside the graph. Fast model only.
        flip_pairs: with ``decode``, the flip test inside the graph: the network runs on ``x`` and
            its mirror image, joints swapped by these pairs (e.g. ``shg_fast.ops.MPII_FLIP_PAIRS``).

    ``f(x)`` copies ``x`` into the static input and replays the graph; it raises ValueError if
    ``x``'s shape, dtype or device differ from ``example_input``'s, or if the model was switched
    to training mode. Recapture when the weights change: for the fast
    :class:`~shg_fast.StackedHourglass` a replay reads one counter
    (:func:`shg_fast.model.state_generation`, O(1), no per-tensor work) and, only when it moved,
    re-reads the model's state and recaptures if its plan changed; what that counter does not
    see is listed in :mod:`shg_fast.model` (call ``model.invalidate_plan()`` after those). For a
    reference model every replay compares :func:`~shg_fast.model.state_key` (one pass over its
    tensors). The backends and settings are those in force at capture. On a CPU
    ``example_input`` there are no graphs: ``f`` runs the model under ``torch.inference_mode``.
    """
    check_input(example_input)
    if model.training:
        raise ValueError("cuda_graph needs an eval-mode model: call model.eval() first")
    fast = isinstance(model, StackedHourglass)
    if (decode or flip_pairs is not None) and not fast:
        raise TypeError("decode and flip_pairs need the fast shg_fast.StackedHourglass")
    if flip_pairs is not None and not decode:
        raise ValueError("flip_pairs needs decode=True")
    expected = (tuple(example_input.shape), example_input.dtype, example_input.device)

    def check(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor input, got {type(x).__name__}")
        got = (tuple(x.shape), x.dtype, x.device)
        if got != expected:
            raise ValueError(f"input is {got} (shape, dtype, device); this graph was captured for {expected}")
        if model.training:
            raise ValueError("the model was switched to training mode; cuda_graph needs eval mode")

    def forward(x: torch.Tensor):
        if not fast:
            return model(x)
        return model.fused_plan().program(x, decode=decode, flip_pairs=flip_pairs)(x)

    if example_input.device.type != "cuda":
        def run_eager(x: torch.Tensor):
            check(x)
            with torch.inference_mode():
                return forward(x) if decode else model(x)

        return run_eager

    static_input = example_input.detach().clone()
    captured: dict = {}

    def capture() -> None:
        stream = torch.cuda.Stream(device=static_input.device)
        stream.wait_stream(torch.cuda.current_stream(static_input.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmup):
                forward(static_input)
        torch.cuda.current_stream(static_input.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            outputs = forward(static_input)
        captured.update(graph=graph, outputs=outputs, copy=_copier(outputs, clone_outputs),
                        key=None if fast else state_key(model), generation=model_module.state_generation(),
                        plan=model.fused_plan() if fast else None)

    def stale() -> bool:
        if not fast:
            key = state_key(model)
            return key is None or key != captured["key"]
        if captured["generation"] == model_module._generation:
            return False
        if model._refresh().training:
            raise ValueError("a submodule was switched to training mode; cuda_graph needs eval mode")
        captured["generation"] = model_module._generation
        return model.fused_plan() is not captured["plan"]

    def replay(x: torch.Tensor):
        check(x)
        if stale():
            capture()
        static_input.copy_(x)
        captured["graph"].replay()
        return captured["copy"]()

    capture()
    return replay


def _copier(outputs, clone: bool) -> Callable:
    """What a replay returns: the static outputs, or copies made with as few launches as possible."""
    if decode_result := isinstance(outputs, tuple):
        heatmaps, coords, maxvals = outputs
    else:
        heatmaps, coords, maxvals = outputs, None, None
    if not clone:
        return (lambda: (list(heatmaps), coords, maxvals)) if decode_result else (lambda: list(heatmaps))
    base = heatmaps[0]._base
    views = None
    if base is not None and all(h._base is base for h in heatmaps):  # one clone of the program's output tensor
        views = [(h.shape, h.stride(), h.storage_offset() - base.storage_offset()) for h in heatmaps]

    def copy_heatmaps() -> list[torch.Tensor]:
        if views is None:
            return [h.clone() for h in heatmaps]
        c = base.clone()
        return [c.as_strided(*v) for v in views]

    if not decode_result:
        return copy_heatmaps
    return lambda: (copy_heatmaps(), coords.clone(), maxvals.clone())

