"""Resources: repeated forward passes do not grow memory."""

import ctypes
import ctypes.util
import gc
import os

import pytest
import torch

from shg_fast.ops import decode_heatmaps, upsample_add
from shg_fast.reference import StackedHourglass
from shg_fast.tolerances import RSS_GROWTH_LIMIT_BYTES

from .helpers import randomize_bn

PASSES = 1000
WARMUP = 50


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_free_memory() -> None:
    """Collect garbage and hand free heap pages back to the OS (glibc ``malloc_trim``), so that
    memory freed by earlier tests cannot silently absorb a leak."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def rss_growth(fn, passes=PASSES) -> int:
    """RSS gained over ``passes`` calls of ``fn`` after a warm-up."""
    for _ in range(WARMUP):
        fn()
    release_free_memory()
    before = rss_bytes()
    for _ in range(passes):
        fn()
    release_free_memory()
    return rss_bytes() - before


def _tiny_model(device="cpu"):
    return randomize_bn(StackedHourglass(num_stacks=1, num_features=16, num_joints=4)).eval().to(device)


pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")


def test_the_measure_sees_a_leak():
    kept = []
    assert rss_growth(lambda: kept.append(torch.ones(4096)), passes=PASSES * 4) > RSS_GROWTH_LIMIT_BYTES


def test_forward_passes_do_not_grow_rss(one_thread):
    model, x = _tiny_model(), torch.rand(1, 3, 64, 64)

    def step():
        with torch.no_grad():
            heatmaps = model(x)[-1]
        decode_heatmaps(heatmaps)
        upsample_add(heatmaps[:, :, :8, :8], heatmaps)

    growth = rss_growth(step)
    assert growth < RSS_GROWTH_LIMIT_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB over {PASSES} passes"


@pytest.mark.gpu
def test_forward_passes_do_not_grow_gpu_memory():
    model, x = _tiny_model("cuda"), torch.rand(1, 3, 64, 64, device="cuda")

    def step():
        with torch.no_grad():
            decode_heatmaps(model(x)[-1])

    for _ in range(WARMUP):
        step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(PASSES):
        step()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
