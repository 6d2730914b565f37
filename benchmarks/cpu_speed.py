"""CPU latency of the fast model's fused plan against the reference eager model, side by side.

    python benchmarks/cpu_speed.py [--stacks 8] [--size 256] [--batch 1] [--repeats 7] [--warmup 2]

Both models hold the same random weights (non-trivial BN statistics), run eval mode under
``torch.inference_mode`` in float32, and alternate run by run, so machine load hits both
alike. A third row runs the fast model with ``SHG_FAST_WINOGRAD=0`` (oneDNN's direct 3x3
convolutions) to show what the Winograd kernel adds. Prints each row's median, min and max
time and the ratios of the medians to the reference's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from shg_fast import StackedHourglass, reference
from shg_fast.tolerances import randomize_batchnorm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=8)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    ref = randomize_batchnorm(reference.StackedHourglass(args.stacks, args.features)).eval()
    fast = StackedHourglass(args.stacks, args.features).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(args.batch, 3, args.size, args.size)
    rows = {"reference": (ref, {}), "fast": (fast, {}), "fast, direct 3x3": (fast, {"SHG_FAST_WINOGRAD": "0"})}
    times: dict[str, list[float]] = {name: [] for name in rows}
    with torch.inference_mode():
        err = max((a - b).abs().max().item() / b.abs().max().item() for a, b in zip(fast(x), ref(x)))
        for i in range(args.warmup + args.repeats):
            for name, (model, env) in rows.items():
                with _environment(env):
                    start = time.perf_counter()
                    model(x)
                    elapsed = time.perf_counter() - start
                if i >= args.warmup:
                    times[name].append(elapsed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.stacks} stacks, {args.features} features, {args.size}x{args.size}, float32, "
          f"{args.repeats} runs after {args.warmup} warm-up")
    reference_median = statistics.median(times["reference"])
    for name, ts in times.items():
        print(f"{name:>16}: median {statistics.median(ts) * 1e3:8.1f} ms  (min {min(ts) * 1e3:.1f}, "
              f"max {max(ts) * 1e3:.1f}); reference median / median {reference_median / statistics.median(ts):.2f}x")
    ratio = reference_median / statistics.median(times["fast"])
    print(f"speed-up (reference median / fast median): {ratio:.2f}x; max relative difference {err:.1e}")


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """Set environment variables for the duration of the block."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


if __name__ == "__main__":
    main()
