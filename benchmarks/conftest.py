"""Benchmarks run as tests too (`pytest benchmarks --benchmark-disable`), so they never rot."""
