"""Backend selection for the fused ops.

Every fused op has up to four implementations:

``reference``
    pure PyTorch, the ground truth; runs anywhere.
``cpu``
    C++ kernels in the extension ``shg_fast._C`` (CPU tensors).
``triton``
    Triton kernels in ``shg_fast.kernels`` (CUDA tensors; CPU tensors only in the Triton
    interpreter, ``TRITON_INTERPRET=1``, which is for testing).
``cuda``
    CUDA kernels in the extension (CUDA tensors; the extension must be built with CUDA).

Selection: ``backend=`` on a call, else the environment variable ``SHG_FAST_BACKEND``,
else ``auto``. A forced backend that cannot run raises :class:`BackendUnavailableError`
listing every reason; ``auto`` takes the first backend that can run, in the order
``cuda, triton, reference`` for CUDA tensors and ``cpu, reference`` for CPU tensors, and so
never fails for want of a backend.

Fallback: on CPU tensors, :meth:`FusedOp.run` under ``auto`` also survives a backend that
breaks at run time (a kernel that raises) or an extension that failed to import: it warns once
per (op, backend) with a :class:`BackendFallbackWarning` and runs the next backend. On CUDA
tensors a kernel that raises is never hidden: a failed launch can leave the device in an error
state that a fallback would only blame on a later op, and inside graph capture it would enqueue
into a broken capture; :class:`KernelLaunchError` names the op and the backend. A forced backend
never falls back; its error propagates.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from . import _extension

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "BackendFallbackWarning",
    "BackendUnavailableError",
    "FusedOp",
    "KernelLaunchError",
    "requested_backend",
    "backend_status",
]

BACKENDS = ("reference", "cpu", "triton", "cuda")
ENV_VAR = "SHG_FAST_BACKEND"
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


class BackendUnavailableError(RuntimeError):
    """A backend was forced (by argument or ``SHG_FAST_BACKEND``) but cannot run this call."""


class KernelLaunchError(RuntimeError):
    """A backend's kernel raised on CUDA tensors under ``auto`` (never hidden by a fallback there)."""


class BackendFallbackWarning(RuntimeWarning):
    """``auto`` skipped a backend that should have run (it failed to load or raised)."""


#: The (op, backend) pairs already warned about: each fallback is reported once per process.
_WARNED: set[tuple[str, str]] = set()


def _warn_fallback(op: str, backend: str, why: str, stacklevel: int) -> None:
    """Warn once per (op, backend); ``stacklevel`` counts from this function to the user's call."""
    if (op, backend) in _WARNED:
        return
    _WARNED.add((op, backend))
    warnings.warn(f"shg_fast: {backend} backend of {op} failed ({why}); falling back to the next backend "
                  "(warned once)", BackendFallbackWarning, stacklevel=stacklevel)


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: ``backend`` if given, else ``$SHG_FAST_BACKEND``, else ``auto``."""
    source = "backend="
    if backend is None:
        backend, source = os.environ.get(ENV_VAR, "auto"), ENV_VAR
    name = backend.strip().lower() or "auto"
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} from {source}; expected 'auto' or one of {BACKENDS}")
    return name


@torch.compiler.assume_constant_result  # torch.compile calls it instead of tracing importlib and lru_cache
def _triton_import_reason() -> str | None:
    """Why Triton cannot be imported, or None when it can."""
    return _find_triton()


@functools.lru_cache(maxsize=None)
def _find_triton() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install must not break shg_fast
        return f"Triton failed to import ({exc})"
    return None


def triton_interpreter() -> bool:
    """True when Triton kernels run in the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _device_reasons(name: str, op: str, device: torch.device) -> list[str]:
    """Why backend ``name`` cannot run op ``op`` on ``device``, independent of dtypes and shapes."""
    if name == "reference":
        return []
    if name == "cpu":
        reasons = [] if device.type == "cpu" else [f"tensors are on {device.type}, cpu backend needs CPU tensors"]
        why = _extension.load_error()
        if why:
            reasons.append(why)
        elif not _extension.has_kernel(op, "CPU"):
            reasons.append(f"extension has no CPU kernel for {op}")
        return reasons
    if name == "cuda":
        reasons = [] if device.type == "cuda" else [f"tensors are on {device.type}, cuda backend needs CUDA tensors"]
        why = _extension.load_error()
        if why:
            reasons.append(why)
        elif not _extension.has_kernel(op, "CUDA"):
            reasons.append(f"extension was built without CUDA kernels for {op} (see `python -m shg_fast info`)")
        return reasons
    if name == "triton":
        reasons = []
        why = _triton_import_reason()
        if why:
            reasons.append(why)
        if device.type == "cpu" and not triton_interpreter():
            reasons.append("tensors are on cpu; Triton runs on CUDA tensors (or CPU ones with TRITON_INTERPRET=1)")
        elif device.type not in ("cpu", "cuda"):
            reasons.append(f"tensors are on {device.type}; Triton runs on CUDA tensors")
        return reasons
    raise AssertionError(name)


@dataclass
class FusedOp:
    """One fused operation and its implementations, one per backend.

    ``impls[name]`` runs the op; ``checks[name]``, when present, returns the reasons (strings)
    why that backend cannot run a particular call (unsupported dtype, layout, size...).
    """

    name: str
    impls: dict[str, Callable] = field(default_factory=dict)
    checks: dict[str, Callable[..., list[str]]] = field(default_factory=dict)

    def register(self, backend: str, impl: Callable, check: Callable[..., list[str]] | None = None) -> None:
        """Register ``impl`` as this op's ``backend`` implementation, with an optional check."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        self.impls[backend] = impl
        if check is not None:
            self.checks[backend] = check

    def reasons(self, backend: str, device: torch.device, *args, **kwargs) -> list[str]:
        """Every reason why ``backend`` cannot run this call; empty when it can."""
        reasons = [] if backend in self.impls else [f"no {backend} implementation of {self.name} yet"]
        reasons += _device_reasons(backend, self.name, device)
        check = self.checks.get(backend)
        if check is not None and not reasons:
            reasons.extend(check(*args, **kwargs))
        return reasons

    def candidates(self, device: torch.device, backend: str | None, *args, **kwargs) -> list[str]:
        """The backends to try for this call, best first.

        A forced backend gives a one-element list or raises BackendUnavailableError; ``auto``
        gives every backend that can run, ending with ``reference``.
        """
        name = requested_backend(backend)
        if name != "auto":
            why = self.reasons(name, device, *args, **kwargs)
            if why:
                raise BackendUnavailableError(
                    f"backend {name!r} cannot run {self.name}: " + "; ".join(why)
                )
            return [name]
        order = AUTO_ORDER.get(device.type, ("reference",))
        return [b for b in order if not self.reasons(b, device, *args, **kwargs)]

    def select(self, device: torch.device, backend: str | None, *args, **kwargs) -> tuple[str, Callable]:
        """The backend that runs this call and its implementation."""
        chosen = self.candidates(device, backend, *args, **kwargs)[0]
        return chosen, self.impls[chosen]

    def run(self, device: torch.device, backend: str | None, *args, **kwargs):
        """Run this call on the best backend, falling back under ``auto`` on CPU tensors.

        A forced backend runs (or raises) as is. Under ``auto`` each candidate is tried in
        order; on CPU tensors one that raises is reported once with a
        :class:`BackendFallbackWarning` and the next one runs, down to ``reference``, whose
        errors propagate; on CUDA tensors it raises :class:`KernelLaunchError`. Out-of-memory errors
        always propagate. An extension that failed to import is reported the same way.
        """
        names = self.candidates(device, backend, *args, **kwargs)
        if requested_backend(backend) != "auto":
            return self.impls[names[0]](*args, **kwargs)
        self._warn_if_extension_broken(device)
        for name in names[:-1]:
            try:
                return self.impls[name](*args, **kwargs)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # any kernel failure: the next backend computes the same op, on CPU
                if device.type == "cuda":
                    raise KernelLaunchError(f"shg_fast: {self.name} failed on the {name} backend "
                                            f"({type(exc).__name__}: {exc})") from exc
                _warn_fallback(self.name, name, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}", 4)
        return self.impls[names[-1]](*args, **kwargs)

    def _warn_if_extension_broken(self, device: torch.device) -> None:
        """Warn once when the extension backend for ``device`` is skipped because it failed to import."""
        name = device.type if device.type in ("cpu", "cuda") else None
        if name is None or (self.name, name) in _WARNED:
            return
        why = _extension.load_error()
        if why:
            _warn_fallback(self.name, name, why, 5)


def common_device(op: str, tensors: Iterable[torch.Tensor | None]) -> torch.device:
    """The one device shared by all given tensors (None entries skipped); ValueError otherwise."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise ValueError(f"{op}: all tensors must be on one device, got {sorted(map(str, devices))}")
    return devices.pop()


def backend_status(device_type: str | None = None) -> dict[str, list[str]]:
    """For each backend, the reasons it cannot run on ``device_type`` (default: best present)."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_type)
    return {name: _device_reasons(name, "upsample_add", device) for name in BACKENDS}


def dtype_check(op: str, supported: Sequence[torch.dtype]) -> Callable[..., list[str]]:
    """A check that rejects tensor arguments whose dtype is not in ``supported``."""

    def check(*args, **kwargs) -> list[str]:
        bad = {a.dtype for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)} - set(supported)
        return [f"{op} does not support dtype {d}" for d in sorted(map(str, bad))]

    return check
