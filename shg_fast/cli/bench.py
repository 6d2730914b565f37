"""``shg-fast bench``: time the reference and fast models side by side (ms/image, images/s).

The timing, checking and formatting live in :mod:`shg_fast.benchmarking`; this module parses
options, prints the table and writes the requested files. Exit status 1 when a variant fails
or disagrees with the reference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from . import CLIError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench", help="time the reference and fast models side by side on this machine",
        description="Time reference, fast, torch.compile and CUDA-graph variants of the model on the best "
                    "device present; check their outputs agree; compare with the paper's 75 ms/image.",
    )
    p.add_argument("--device", default="auto", help="auto (GPU if present, else CPU), cpu or cuda")
    p.add_argument("--stacks", type=int, help="hourglass stacks (default: 8 on a GPU, 1 on a CPU)")
    p.add_argument("--size", type=int, help="input height and width, a multiple of 64 (default 256)")
    p.add_argument("--batch", help="batch sizes, comma-separated (default: 1,8,32,64 on a GPU, 1,4 on a CPU)")
    p.add_argument("--dtype", help="dtypes from fp32, tf32, bf16, comma-separated (default: all on a GPU, fp32 on a CPU)")
    p.add_argument("--variants", help="from reference, fast, compile, cuda_graph, comma-separated "
                                      "(default: all on a GPU, reference,fast on a CPU)")
    p.add_argument("--warmup", type=int, help="untimed calls before each timing (default: 10 GPU, 1 CPU)")
    p.add_argument("--repeats", type=int, help="timed calls, median reported (default: 50 GPU, 3 CPU)")
    p.add_argument("--quick", action="store_true", help="a short smoke run (fewer batches and calls)")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write machine, versions and the table as Markdown")
    p.add_argument("--plot", metavar="FILE.png", help="draw ms/image by batch size (needs matplotlib)")
    return p


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"{option} expects comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise CLIError(f"{option} values must be positive, got {text!r}")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip().lower() for v in text.split(",") if v.strip())


def _device(name: str) -> str:
    import torch

    name = name.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise CLIError(f"--device must be auto, cpu or cuda, got {name!r}")
    return name


def _check_output_path(path: str | None, option: str) -> None:
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"{option} {path}: directory {parent} does not exist")


def config_from_args(args: argparse.Namespace):
    """The :class:`~shg_fast.benchmarking.BenchConfig` the options ask for (CLIError if invalid)."""
    from shg_fast.benchmarking import default_config

    config = default_config(_device(args.device), quick=args.quick)
    overrides = {
        "stacks": args.stacks, "size": args.size, "warmup": args.warmup, "repeats": args.repeats,
        "batches": None if args.batch is None else _int_list(args.batch, "--batch"),
        "dtypes": None if args.dtype is None else _name_list(args.dtype),
        "variants": None if args.variants is None else _name_list(args.variants),
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    try:
        config.validate()
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    for path, option in ((args.json, "--json"), (args.markdown, "--markdown"), (args.plot, "--plot")):
        _check_output_path(path, option)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--plot needs matplotlib (pip install matplotlib)")
    return config


def run(args: argparse.Namespace) -> int:
    from shg_fast import benchmarking

    config = config_from_args(args)
    print(f"shg-fast bench: {config.device}, {config.stacks} stack(s), {config.size}x{config.size}, "
          f"batch {','.join(map(str, config.batches))}, {','.join(config.dtypes)}, "
          f"variants {','.join(config.variants)}")
    report = benchmarking.run_benchmark(config, progress=True)
    print("\n".join(benchmarking.format_markdown(report).splitlines()[2:]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(benchmarking.format_markdown(report))
        print(f"wrote {args.markdown}")
    if args.plot:
        benchmarking.plot_report(report, args.plot)
        print(f"wrote {args.plot}")
    disagree = [r for r in report["results"] if not r["agrees"]]
    if report["errors"] or disagree:
        print(f"shg-fast bench: {len(report['errors'])} variant(s) failed, {len(disagree)} disagree with "
              "the float64 reference (see the table)", file=sys.stderr)
        return 1
    return 0
