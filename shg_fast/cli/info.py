"""``shg-fast info``: versions, the GPU if any, and which backends can run (and why not).

``--plan`` also prints the inference program of a default model (:mod:`shg_fast.engine`): every
step with its tactic and the reason, for the best device here, the CPU, or a recorded GPU (the
GPU program built on any machine, its launches counted, nothing run).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess


PLAN_DEVICES = ("auto", "cpu", "cuda", "recorded-gpu", "recorded-gpu-triton")
PLAN_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "float64": "float64"}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="print versions, the GPU and the available backends")
    p.add_argument("--plan", action="store_true",
                   help="also print the inference program's steps with their tactics and reasons")
    p.add_argument("--plan-device", choices=PLAN_DEVICES, default="auto",
                   help="device of the program: auto (CUDA if present, else CPU), cpu, cuda, or a GPU whose "
                        "launches are recorded (recorded-gpu: with the extension's CUDA kernels; "
                        "recorded-gpu-triton: Triton only)")
    p.add_argument("--batch", type=int, default=1, help="batch of the program (default 1)")
    p.add_argument("--size", type=int, default=256, help="input height and width, a multiple of 64 (default 256)")
    p.add_argument("--dtype", choices=tuple(PLAN_DTYPES), default="float32", help="dtype of the program")
    p.add_argument("--stacks", type=int, default=8, help="hourglass stacks of the model (default 8)")
    return p


def plan_lines(device: str = "auto", batch: int = 1, size: int = 256, dtype: str = "float32",
               stacks: int = 8) -> list[str]:
    """The program of a default (randomly initialised) model for these settings, one line per step."""
    import torch

    from shg_fast import StackedHourglass
    from shg_fast.cli import CLIError
    from shg_fast.engine import build_program, recorded_gpu

    if batch < 1 or size < 64 or size % 64 or stacks < 1:
        raise CLIError(f"--batch and --stacks must be >= 1 and --size a multiple of 64, got {batch}, {stacks}, {size}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--plan-device cuda: no CUDA device here (try recorded-gpu)")
    caps = None
    if device.startswith("recorded"):
        caps = recorded_gpu(cuda_kernels=device == "recorded-gpu")
        device = "cpu"
    model = StackedHourglass(num_stacks=stacks).eval()
    plan = model.fused_plan().to(device=device, dtype=getattr(torch, PLAN_DTYPES[dtype]))
    return build_program(plan, batch, size, size, caps=caps).describe()


def check(args: argparse.Namespace) -> None:
    """Nothing to check: info reports problems (an invalid ``$SHG_FAST_BACKEND``) instead of failing."""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _nvcc_version() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "not on PATH"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed ({exc})"
    release = [line for line in out.splitlines() if "release" in line]
    return release[-1].strip() if release else out.strip()


def _cpu_runner() -> str:
    """How float32 CPU inference runs: oneDNN (and Winograd 3x3 convs) or the public ops, and why."""
    from shg_fast import ops, plan

    reasons = plan.mkldnn_runner_reasons()
    if reasons:
        return "public ops (" + "; ".join(reasons) + ")"
    if plan.conv1x1_enabled():
        pointwise = f"1x1 convs by shg_fast::conv1x1 ({ops.winograd.winograd_isa()})"
    else:
        why = f"{plan.CONV1X1_ENV_VAR}=0" if ops.conv1x1_available() else "no conv1x1 kernel in the extension"
        pointwise = f"1x1 convs on oneDNN ({why})"
    if plan.winograd_enabled():
        return f"{pointwise}, 3x3 convs by Winograd F(4x4, 3x3) ({ops.winograd.winograd_isa()} transforms)"
    why = f"{plan.WINOGRAD_ENV_VAR}=0" if ops.winograd_available() else "no Winograd kernel in the extension"
    return f"{pointwise}, oneDNN direct 3x3 ({why})"


def info_lines() -> list[str]:
    """The report printed by ``shg-fast info``, one line per entry."""
    import torch

    import shg_fast
    from shg_fast import _extension, backends

    lines = [
        f"shg_fast      {shg_fast.__version__}",
        f"python        {__import__('sys').version.split()[0]}",
        f"torch         {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"triton        {_version('triton')}",
        f"nvcc          {_nvcc_version()}",
    ]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"gpu           {props.name}, sm_{props.major}{props.minor}, "
                     f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs "
                     f"({torch.cuda.device_count()} visible)")
    else:
        lines.append("gpu           none (torch.cuda.is_available() is False)")
    module, why = _extension.load()
    lines.append(f"extension     {'loaded: ' + module.__file__ if module else why}")
    if module is not None:
        cuda_kernels = _extension.has_kernel("upsample_add", "CUDA")
        lines.append(f"              CUDA kernels {'built' if cuda_kernels else 'not built'}")
    env = f"{backends.ENV_VAR}={os.environ.get(backends.ENV_VAR, '(unset: auto)')}"
    try:
        backends.requested_backend()
    except ValueError as exc:
        lines.append(f"backend env   {env}: INVALID, every other command refuses to run ({exc})")
        lines.append(f"cpu runner    unknown until {backends.ENV_VAR} is fixed")
    else:
        lines.append(f"backend env   {env}")
        lines.append(f"cpu runner    {_cpu_runner()}")
    for device in ("cpu", "cuda"):
        lines.append(f"backends for {device} tensors:")
        for name, reasons in backends.backend_status(device).items():
            status = "available" if not reasons else "unavailable: " + "; ".join(reasons)
            lines.append(f"  {name:<10} {status}")
    return lines


def run(args: argparse.Namespace) -> int:
    lines = info_lines()
    if args.plan:
        lines += plan_lines(args.plan_device, args.batch, args.size, args.dtype, args.stacks)
    print("\n".join(lines))
    return 0
