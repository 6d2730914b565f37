"""Loading the compiled extension ``shg_fast._C`` lazily, remembering why it failed."""

from __future__ import annotations

import functools
import importlib

import torch


@functools.lru_cache(maxsize=None)
def load() -> tuple[object | None, str | None]:
    """Import ``shg_fast._C`` once; return ``(module, None)`` or ``(None, reason)``.

    Importing the extension registers the ``shg_fast::*`` schemas and their CPU (and,
    when built with CUDA, CUDA) kernels with the dispatcher. It never initialises CUDA.
    """
    try:
        module = importlib.import_module("shg_fast._C")
    except ImportError as exc:  # not built, or built against another torch
        return None, f"extension shg_fast._C not importable ({exc}); run `pip install -e . --no-build-isolation`"
    return module, None


# The two questions asked while dispatching are marked constant for torch.compile: Dynamo calls
# them once while tracing instead of tracing importlib and an lru_cache (which break fullgraph=True).


@torch.compiler.assume_constant_result
def load_error() -> str | None:
    """Why ``shg_fast._C`` cannot be imported, or None when it can (see :func:`load`)."""
    return load()[1]


@torch.compiler.assume_constant_result
def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when the extension registered ``shg_fast::op`` for ``dispatch_key`` (CPU, CUDA)."""
    module, _ = load()
    if module is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"shg_fast::{op}", dispatch_key)
    except RuntimeError:  # no such operator in the library
        return False
