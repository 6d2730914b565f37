"""CPU latency of the fast model's fused plan against the reference eager model, side by side.

    python benchmarks/cpu_speed.py [--stacks 8] [--size 256] [--batch 1] [--repeats 7] [--warmup 2]

Both models hold the same random weights (non-trivial BN statistics), run eval mode under
``torch.inference_mode`` in float32, and alternate run by run, so machine load hits both
alike. Prints each model's median, min and max time and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from shg_fast import StackedHourglass, reference
from shg_fast.testing import randomize_batchnorm


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
    models = {"reference": ref, "fast": fast}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        err = max((a - b).abs().max().item() / b.abs().max().item() for a, b in zip(fast(x), ref(x)))
        for i in range(args.warmup + args.repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.stacks} stacks, {args.features} features, {args.size}x{args.size}, float32, "
          f"{args.repeats} runs after {args.warmup} warm-up")
    for name, ts in times.items():
        print(f"{name:>9}: median {statistics.median(ts) * 1e3:8.1f} ms  "
              f"(min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f})")
    ratio = statistics.median(times["reference"]) / statistics.median(times["fast"])
    print(f"speed-up (reference median / fast median): {ratio:.2f}x; max relative difference {err:.1e}")


if __name__ == "__main__":
    main()
