"""End-to-end model benchmarks: reference vs fast vs torch.compile (and the CUDA graph at batch 1).

GPU: 8 stacks at 256x256, batch 1 and 32, fp32 / TF32 / bf16. CPU: 1 stack at 64x64, batch 1
and 2, fp32. Each benchmark also checks the variant's output against the float64 reference.
"""

import copy

import pytest
import torch

from conftest import DEVICE, ON_GPU
from shg_fast import benchmarking
from shg_fast.reference import StackedHourglass
from shg_fast.testing import max_rel_error, randomize_batchnorm
from shg_fast.variants import build_variant

STACKS, SIZE, BATCHES = (8, 256, (1, 32)) if ON_GPU else (1, 64, (1, 2))
DTYPES = ("fp32", "tf32", "bf16") if ON_GPU else ("fp32",)
FLOPS_PER_IMAGE = 2 * benchmarking.conv_macs(STACKS, SIZE)
CASES = [(variant, batch, dtype) for dtype in DTYPES for batch in BATCHES
         for variant in ("reference", "fast", "compile", "cuda_graph") if variant != "cuda_graph" or batch == 1]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    master = randomize_batchnorm(StackedHourglass(num_stacks=STACKS).eval(), seed=0)
    return master, copy.deepcopy(master).to(device=DEVICE, dtype=torch.float64)


@pytest.mark.parametrize("variant, batch, dtype_name", CASES)
def test_model(variant, batch, dtype_name, models, timed, benchmark):
    if variant == "compile" and benchmark.disabled:
        pytest.skip("torch.compile takes minutes (max-autotune on a GPU, C++ code generation on a CPU): "
                    "run only when benchmarks are enabled")
    master, truth_model = models
    benchmark.group = f"model {STACKS} stacks {SIZE}px batch {batch} {dtype_name}"
    with benchmarking.precision(dtype_name) as dtype:
        # Models are built outside inference_mode: inference-tensor weights cannot be tracked, so
        # the fast model would rebuild its plan on every call.
        reference = copy.deepcopy(master).to(device=DEVICE, dtype=dtype)
        x = benchmarking.example_input(batch, SIZE, DEVICE, dtype)
        fn = build_variant(variant, reference, x)
    with torch.inference_mode(), benchmarking.precision(dtype_name):
        out = benchmarking.stacked_outputs(timed(fn, x, images=batch, flops_per_image=FLOPS_PER_IMAGE))
        check_images = benchmarking.default_config(DEVICE).check_images
        truth, bound, n = benchmarking.ground_truth(truth_model, reference, x, dtype_name, check_images)
    assert out.shape == (STACKS, batch, 16, SIZE // 4, SIZE // 4)
    assert max_rel_error(out[:, :n], truth) <= bound
