"""``shg-fast bench``: time the reference model (ms per image, images/s)."""

from __future__ import annotations

import argparse
import statistics
import time

from . import CLIError

PAPER_MS_PER_IMAGE = 75.0  # single prediction, Titan X, original Torch7 code


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="time the model (ms per image) on this machine")
    p.add_argument("--stacks", type=int, default=2, help="hourglass stacks (default 2 on a CPU)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--size", type=int, default=256, help="input height and width (default 256)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs after one warm-up (default 5)")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from shg_fast.reference import StackedHourglass

    if args.stacks < 1 or args.batch < 1 or args.repeat < 1:
        raise CLIError("--stacks, --batch and --repeat must be positive")
    if args.size <= 0 or args.size % 64:
        raise CLIError(f"--size must be a positive multiple of 64, got {args.size}")
    torch.manual_seed(0)
    model = StackedHourglass(num_stacks=args.stacks).eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    times = []
    with torch.inference_mode():
        model(x)
        for i in range(args.repeat):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
            print(f"\r  run {i + 1}/{args.repeat}", end="", flush=True)
    print()
    ms = statistics.median(times) * 1000 / args.batch
    print(f"reference model, {args.stacks} stacks, batch {args.batch}, {args.size}x{args.size}, fp32, "
          f"CPU ({torch.get_num_threads()} threads)")
    print(f"  median {ms:.1f} ms/image, {1000 / ms:.2f} images/s over {args.repeat} runs")
    print(f"  paper: {PAPER_MS_PER_IMAGE:.0f} ms/image (8 stacks, Titan X, Torch7)")
    return 0
