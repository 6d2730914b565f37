"""Low-latency inference: capture an eval model in a CUDA graph for a fixed input shape and dtype."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .model import state_key
from .reference import check_input

__all__ = ["cuda_graph"]


def cuda_graph(model: nn.Module, example_input: torch.Tensor, *, warmup: int = 3,
               clone_outputs: bool = True) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """A callable ``f(x) -> list of heatmaps`` running the eval ``model`` as one CUDA-graph replay.

    Args:
        model: an eval-mode Stacked Hourglass (fast or reference), on ``example_input``'s device.
        example_input: ``(N, 3, H, W)``; fixes the batch, size, dtype and device of every call.
        warmup: forward passes run before capture (plan building, backend selection, allocator).
        clone_outputs: return copies of the graph's static outputs (safe to keep across calls);
            with False the same tensors are returned and overwritten by the next call.

    ``f(x)`` copies ``x`` into the static input and replays the graph; it raises ValueError
    if ``x``'s shape, dtype or device differ from ``example_input``'s. If the model's weights,
    buffers or mode change after capture, the next call captures again (never stale). On a CPU
    ``example_input`` there are no graphs: ``f`` runs the model under ``torch.inference_mode``.
    """
    check_input(example_input)
    if model.training:
        raise ValueError("cuda_graph needs an eval-mode model: call model.eval() first")
    expected = (tuple(example_input.shape), example_input.dtype, example_input.device)

    def check(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor input, got {type(x).__name__}")
        got = (tuple(x.shape), x.dtype, x.device)
        if got != expected:
            raise ValueError(f"input is {got} (shape, dtype, device); this graph was captured for {expected}")

    if example_input.device.type != "cuda":
        def run_eager(x: torch.Tensor) -> list[torch.Tensor]:
            check(x)
            with torch.inference_mode():
                return model(x)

        return run_eager

    static_input = example_input.detach().clone()
    captured: dict = {}

    def capture() -> None:
        stream = torch.cuda.Stream(device=static_input.device)
        stream.wait_stream(torch.cuda.current_stream(static_input.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmup):
                model(static_input)
        torch.cuda.current_stream(static_input.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            outputs = model(static_input)
        captured.update(graph=graph, outputs=outputs, key=state_key(model))

    def replay(x: torch.Tensor) -> list[torch.Tensor]:
        check(x)
        if model.training:
            raise ValueError("the model was switched to training mode; cuda_graph needs eval mode")
        key = state_key(model)
        if key is None or key != captured["key"]:
            capture()
        static_input.copy_(x)
        captured["graph"].replay()
        outputs = captured["outputs"]
        return [o.clone() for o in outputs] if clone_outputs else list(outputs)

    capture()
    return replay
