"""Shared test set-up: the Triton interpreter on CPU-only machines, the `gpu` marker, seeds."""

import os

import torch

if not torch.cuda.is_available():
    # Triton kernels run in the interpreter on CPU tensors; must be set before triton.jit runs.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_GPU = torch.cuda.is_available()

# torch starts with at most as many threads as the machine has cores; a run asked for more
# (OMP_NUM_THREADS=3 on 2 cores, to try another summation order) gets what it asked for.
if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poison_empty():
    """Fill every torch.empty with NaN so an element a kernel never writes shows up."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old_det)
    torch.utils.deterministic.fill_uninitialized_memory = old_fill


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny convs gain nothing from more, and a shared CI machine loses a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def devices():
    """CPU always; CUDA as a gpu-marked param."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
