"""``shg-fast info``: versions, the GPU if any, and which backends can run (and why not)."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess


def add_parser(sub) -> argparse.ArgumentParser:
    return sub.add_parser("info", help="print versions, the GPU and the available backends")


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
    if plan.winograd_enabled():
        return f"oneDNN convs, 3x3 convs by Winograd F(4x4, 3x3) ({ops.winograd.winograd_isa()} transforms)"
    why = f"{plan.WINOGRAD_ENV_VAR}=0" if ops.winograd_available() else "no Winograd kernel in the extension"
    return f"oneDNN convs, direct 3x3 ({why})"


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
    print("\n".join(info_lines()))
    return 0
