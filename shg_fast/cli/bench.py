"""``shg-fast bench``: time the reference, fast and peer models side by side (ms/image, images/s).

The timing, checking and formatting live in :mod:`shg_fast.benchmarking`; this module parses
options, prints the table and writes the requested files. Exit status 1 when a variant fails
or disagrees with the reference.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import _args
from ._args import CLIError

#: Upper bounds of the sizes, checked before anything is built.
MAX_STACKS, MAX_SIZE, MAX_BATCH, MAX_CALLS = 64, 2048, 4096, 100_000


def add_parser(sub) -> argparse.ArgumentParser:
    from shg_fast.benchmarking import default_config

    gpu, cpu = default_config("cuda"), default_config("cpu")

    def defaults(key: str, fmt=str) -> str:
        return f"default: {fmt(getattr(gpu, key))} on a GPU, {fmt(getattr(cpu, key))} on a CPU"

    def joined(values) -> str:
        return ",".join(map(str, values))

    p = sub.add_parser(
        "bench", help="time the reference and fast models side by side on this machine",
        description="Time reference, fast, torch.compile and CUDA-graph variants of the model, and on a CPU "
                    "the peers ONNX Runtime and OpenVINO, on the best device present, taking turns call by "
                    "call; check their outputs against a float64 reference; compare with the paper's "
                    "75 ms/image and with the best peer.",
    )
    p.add_argument("--device", default="auto", help="auto (GPU if present, else CPU), cpu or cuda")
    p.add_argument("--stacks", type=_args.int_in(1, MAX_STACKS), help=f"hourglass stacks ({defaults('stacks')})")
    p.add_argument("--size", type=_args.int_in(64, MAX_SIZE),
                   help=f"input height and width, a multiple of 64 up to {MAX_SIZE} ({defaults('size')})")
    p.add_argument("--batch", help=f"batch sizes, comma-separated, each 1..{MAX_BATCH} ({defaults('batches', joined)})")
    p.add_argument("--dtype", help=f"dtypes from fp32, tf32, bf16, comma-separated ({defaults('dtypes', joined)})")
    p.add_argument("--variants", help="from reference, fast, compile, cuda_graph, onnxruntime, openvino, "
                                      "comma-separated; the peers onnxruntime and openvino need "
                                      f"'pip install shg_fast[peers]' ({defaults('variants', joined)})")
    p.add_argument("--warmup", type=_args.int_in(0, MAX_CALLS),
                   help=f"untimed calls before each timing ({defaults('warmup')})")
    p.add_argument("--repeats", type=_args.int_in(1, MAX_CALLS),
                   help=f"timed calls, median reported ({defaults('repeats')})")
    p.add_argument("--threads", type=_args.int_in(1, 1024),
                   help="CPU threads for torch and the peers (default: torch's, the cores it sees)")
    quick = default_config("cpu", quick=True)
    p.add_argument("--quick", action="store_true",
                   help=f"a short smoke run: fewer batches and calls (on a CPU: {quick.stacks} stack, "
                        f"{quick.size}x{quick.size}, batch {joined(quick.batches)}, {quick.repeats} timed calls)")
    p.add_argument("--json", metavar="FILE", type=_args.output_file(), help="write the full report as JSON")
    p.add_argument("--markdown", metavar="FILE", type=_args.output_file(),
                   help="write machine, versions and the table as Markdown")
    p.add_argument("--plot", metavar="FILE.png", type=_args.output_file(_args.IMAGE_SUFFIXES),
                   help="draw ms/image by batch size (needs matplotlib)")
    return p


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"{option} expects comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise CLIError(f"{option} values must be positive, got {text!r}")
    if any(v > MAX_BATCH for v in values):
        raise CLIError(f"{option} values must be at most {MAX_BATCH}, got {text!r}")
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
    _args.check_device(name)
    return name


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
    return config


def check(args: argparse.Namespace) -> None:
    """The options make a valid run on a device present here; --plot has matplotlib (output paths: option types)."""
    args.config = config_from_args(args)
    if args.plot:
        _args.check_matplotlib("--plot")


def run(args: argparse.Namespace) -> int:
    from shg_fast import benchmarking

    config = args.config
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"shg-fast bench: {config.device}, {config.stacks} stack(s), {config.size}x{config.size}, "
          f"batch {','.join(map(str, config.batches))}, {','.join(config.dtypes)}, "
          f"variants {','.join(config.variants)}")
    report = benchmarking.run_benchmark(config, progress=True)
    print("\n".join(benchmarking.format_markdown(report).splitlines()[2:]))
    if args.json:
        _args.write_text(args.json, json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.markdown:
        _args.write_text(args.markdown, benchmarking.format_markdown(report))
        print(f"wrote {args.markdown}")
    if args.plot:
        with _args.atomic_path(args.plot) as tmp:
            benchmarking.plot_report(report, tmp)
        print(f"wrote {args.plot}")
    disagree = [r for r in report["results"] if not r["agrees"]]
    if report["errors"] or disagree:
        print(f"shg-fast bench: {len(report['errors'])} variant(s) failed, {len(disagree)} disagree with "
              "the float64 reference (see the table)", file=sys.stderr)
        return 1
    return 0
