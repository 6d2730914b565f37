"""Where the fast model's CPU time goes: torch.profiler over its program, grouped by op and map size.

    python benchmarks/cpu_profile.py [--stacks 8] [--size 256] [--batch 1] [--repeats 3] [--top 25]

Runs the fast model (random weights, non-trivial BN statistics) in eval mode under
``torch.inference_mode`` after two warm-up calls, profiles ``--repeats`` calls, and prints per
(op, input shape) the total self CPU time per call, its share and the number of calls. The
wall time per call is printed with the sum of the ops' self times; the difference is Python
and dispatch overhead.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from shg_fast import StackedHourglass
from shg_fast.tolerances import randomize_batchnorm

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = randomize_batchnorm(StackedHourglass(args.stacks)).eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        start = time.perf_counter()
        for _ in range(args.repeats):
            model(x)
        wall = (time.perf_counter() - start) / args.repeats
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.repeats):
                model(x)
    totals = collections.defaultdict(lambda: [0.0, 0])
    for event in prof.key_averages(group_by_input_shape=True):
        shapes = [list(s) for s in event.input_shapes] if event.input_shapes else []
        key = (event.key, str(shapes[0]) if shapes else "")
        entry = totals[key]
        entry[0] += event.self_cpu_time_total / 1e3 / args.repeats
        entry[1] += event.count // args.repeats
    ops_ms = sum(v[0] for v in totals.values())
    print(f"wall {wall * 1e3:.1f} ms per call (unprofiled), ops' self time {ops_ms:.1f} ms per call (profiled), "
          f"batch {args.batch}, {args.stacks} stacks, {args.size}x{args.size}, {torch.get_num_threads()} threads")
    print(f"{'ms/call':>8} {'share':>6} {'calls':>6}  op  input")
    for (name, shape), (ms, count) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{ms:8.2f} {ms / ops_ms:6.1%} {count:6d}  {name}  {shape}")
    by_op = collections.defaultdict(float)
    for (name, _), (ms, _) in totals.items():
        by_op[name] += ms
    print("\nby op:")
    for name, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]:
        print(f"{ms:8.2f} {ms / ops_ms:6.1%}  {name}")


if __name__ == "__main__":
    main()
