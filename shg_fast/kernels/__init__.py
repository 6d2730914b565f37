"""Triton kernels of shg_fast, installed as ``shg_fast.kernels``.

Only ``@triton.jit`` kernels and their launch heuristics live here; the registered ops that
launch them are in ``shg_fast.ops``. Importing this package imports Triton.
"""
