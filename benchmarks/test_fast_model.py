"""Fast model forward time, fused eval plan (CPU-sized: 1 stack, 128x128); compare test_reference_model.py."""

import torch

from shg_fast import StackedHourglass


def test_fast_forward(benchmark):
    torch.manual_seed(0)
    model = StackedHourglass(num_stacks=1).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        out = benchmark(model, x)
    assert len(out) == 1 and out[0].shape == (1, 16, 32, 32)
