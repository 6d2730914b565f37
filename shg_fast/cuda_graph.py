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
    check = _input_check(model, example_input)
    forward = _forward(model, fast, decode, flip_pairs)

    if example_input.device.type != "cuda":
        def run_eager(x: torch.Tensor):
            check(x)
            with torch.inference_mode():
                return forward(x)[0] if decode else model(x)

        return run_eager

    return _GraphRunner(model, example_input, forward, warmup, clone_outputs, fast, check)


def _forward(model: nn.Module, fast: bool, decode: bool, flip_pairs) -> Callable:
    """``forward(x) -> (outputs, program)``: the model's forward, and for the fast model the
    :class:`~shg_fast.engine.Program` that ran it (None for a reference model)."""
    def forward(x: torch.Tensor):
        if not fast:
            return model(x), None
        x = model.normalize_input(x)
        program = model.fused_plan().program(x, decode=decode, flip_pairs=flip_pairs)
        return program(x), program

    return forward


class _GraphRunner:
    """The replaying callable of :func:`cuda_graph`: capture once, then check one counter and replay.

    It holds the :class:`~shg_fast.engine.Program` it captured: the graph replays into that
    program's buffers and reads its prepacked weights, so they must live as long as the graph,
    also once the plan's program cache (``MAX_PROGRAMS``) has dropped the program.
    """

    def __init__(self, model, example_input, forward, warmup, clone_outputs, fast, check):
        self.model, self.forward, self.warmup, self.clone_outputs = model, forward, warmup, clone_outputs
        self.fast, self.check = fast, check
        self.static_input = example_input.detach().clone()
        self.capture()

    def capture(self) -> None:
        """Warm up on a side stream, capture one forward, remember what the capture depends on."""
        static_input, forward = self.static_input, self.forward
        stream = torch.cuda.Stream(device=static_input.device)
        stream.wait_stream(torch.cuda.current_stream(static_input.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(self.warmup):
                forward(static_input)
        torch.cuda.current_stream(static_input.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            outputs, program = forward(static_input)
        self.captured(graph, outputs, program)

    def captured(self, graph, outputs, program) -> None:
        model = self.model
        self.graph, self.copy, self.program = graph, _copier(outputs, self.clone_outputs), program
        self.key = None if self.fast else state_key(model)
        self.generation = model_module.state_generation()
        self.plan = model.fused_plan() if self.fast else None

    def stale(self) -> bool:
        """True when the model's plan changed since the capture (one counter read while nothing happened)."""
        if not self.fast:
            key = state_key(self.model)
            return key is None or key != self.key
        if self.generation == model_module._generation:
            return False
        if self.model._refresh().training:
            raise ValueError("a submodule was switched to training mode; cuda_graph needs eval mode")
        self.generation = model_module._generation
        return self.model.fused_plan() is not self.plan

    def __call__(self, x: torch.Tensor):
        self.check(x)
        if self.stale():
            self.capture()
        self.static_input.copy_(x)
        self.graph.replay()
        return self.copy()


def _input_check(model: nn.Module, example_input: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """Raise unless an input matches ``example_input`` (shape, dtype, device) and the model is in eval mode."""
    expected = (tuple(example_input.shape), example_input.dtype, example_input.device)

    def check(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor input, got {type(x).__name__}")
        got = (tuple(x.shape), x.dtype, x.device)
        if got != expected:
            raise ValueError(f"input is {got} (shape, dtype, device); this graph was captured for {expected}")
        if model.training:
            raise ValueError("the model was switched to training mode; cuda_graph needs eval mode")

    return check


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

