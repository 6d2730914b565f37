"""What this CPU is: its model name and feature flags, read from /proc/cpuinfo (Linux)."""

from __future__ import annotations

import platform

__all__ = ["cpu_name", "cpu_flags"]


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (``platform``'s guess off Linux)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's feature flags (``avx2``, ``fma``, ``avx512f``...) from /proc/cpuinfo; empty elsewhere."""
    return sorted((_cpuinfo_field("flags") or "").split())
