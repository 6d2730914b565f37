"""The inference engine: a fused plan compiled into a program for one (device, dtype, batch, H, W).

:func:`build_program` takes a :class:`~shg_fast.plan.FusedPlan` and an input shape and resolves,
once, everything a forward pass would otherwise decide per call:

* a flat list of :class:`Step` objects in execution order, each with its :class:`~shg_fast.tactics.Tactic`
  (backend and launch configuration, from the table of :mod:`shg_fast.tactics` or its default
  rule, with the reason);
* weights in each kernel's layout, made once: ``w2`` tap-major for the whole-block CUDA kernel
  (:func:`~shg_fast.ops.extension_backend.prepack_for_cuda`), conv3 and the projection skip
  concatenated for the Triton GEMM, the merged head split into heatmap and residual-stream
  convs, oneDNN-packed and Winograd-transformed weights on the CPU;
* on a GPU, the outputs of the engine's Triton launches allocated once (buffers reused between
  steps whose lifetimes do not overlap), launch grids and integer arguments computed once, the
  heatmaps written contiguous by the conv that produces them.

:meth:`Program.__call__` is then a loop over prebound steps: no backend choice, no environment
read, no device query. A step that fails raises :class:`StepError` naming the step, its op and
its tactic; there is no fallback at run time ("cannot run here" is the builder's decision).

Kernel launches per 8-stack forward on a GPU (counted by :func:`recorded_gpu` programs, in which
every launch is recorded instead of run): one per whole-block CUDA residual block, three per
Triton one, one per conv (plus a reduce when it splits K) and decode. No max-pool launches: a
max-pool's output is read only by the residual block after it (the stem's, and each hourglass
level's ``low1``), so that block reads the pool's input 2x2-max-pooled as it loads it
(``pool_input`` of the CUDA kernel; ``POOL_X``/``POOL_X2``/``POOL_RES`` of the Triton conv). The
CPU runner and the public-op steps keep a separate ATen max-pool: there no launch is saved, and
the pooled tensor is read by two convs (conv1 and the skip).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.nn import functional as F

from . import _extension, tactics
from .backends import AUTO_ORDER, BackendUnavailableError, requested_backend, triton_interpreter
from .cpu_runner import CpuConvs, conv1x1_enabled, mkldnn_runner_reasons, winograd_enabled
from .folding import FoldedResidual, HourglassPlan
from .ops.conv_bn_relu import CONV_BN_RELU
from .ops.extension_backend import cuda_smem_bytes, prepack_for_cuda
from .ops.decode_heatmaps import DECODE_HEATMAPS, flip_permutation
from .ops.residual_block import RESIDUAL_BLOCK
from .tactics import Tactic

__all__ = ["DeviceCaps", "Program", "Settings", "Step", "StepError", "StreamOrder", "build_program",
           "current_settings", "recorded_gpu", "shape_key"]

_INT32_LIMIT = 2**31  # the Triton kernels address elements with int32 offsets
_MAX_FLIP_JOINTS = 256  # SHG_MAX_FLIP_JOINTS of csrc/cuda/launchers.h: the CUDA decode's flip permutation


class StepError(RuntimeError):
    """A step of a program failed: the message names the step, its op and its tactic."""


@dataclass(frozen=True)
class Settings:
    """The process settings a program is built for (read by :func:`current_settings`, never while it runs)."""

    backend: str  # requested backend: 'auto' or a forced one ($SHG_FAST_BACKEND)
    winograd: bool  # the CPU runner's 3x3 convs by Winograd ($SHG_FAST_WINOGRAD, kernel present)
    conv1x1: bool  # the CPU runner's float32 1x1 convs by shg_fast::conv1x1 ($SHG_FAST_CONV1X1, kernel present)
    tf32: bool  # float32 Triton convs with TF32 products (torch.backends.cuda.matmul.allow_tf32)
    interpreter: bool  # Triton runs in its interpreter (TRITON_INTERPRET=1)


def current_settings() -> Settings:
    """The settings now in force (environment and PyTorch flags): part of a program's cache key."""
    return Settings(requested_backend(), winograd_enabled(), conv1x1_enabled(),
                    bool(torch.backends.cuda.matmul.allow_tf32), triton_interpreter())


@dataclass(frozen=True)
class DeviceCaps:
    """What the builder knows about the device, queried once per program."""

    device: torch.device
    name: str  # the GPU's name ('cpu' on the CPU), matched by table entries
    smem_per_block: int  # opt-in shared memory per thread block (bytes), 0 off CUDA
    cuda_kernels: bool  # the extension has its CUDA kernels
    triton_reason: str | None  # why Triton kernels cannot run here, None when they can
    mkldnn: bool  # oneDNN convolutions are present (CPU)
    recorded: bool = False  # kernels are recorded, not run (see recorded_gpu)

    @classmethod
    def query(cls, device: torch.device, settings: Settings) -> "DeviceCaps":
        """The capabilities of ``device`` (the only device queries a program makes)."""
        from .ops import triton_backend

        triton_reason = triton_backend.IMPORT_ERROR
        if device.type == "cpu" and not settings.interpreter:
            triton_reason = triton_reason or "Triton runs on CUDA tensors (or CPU ones with TRITON_INTERPRET=1)"
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            return cls(device, props.name, props.shared_memory_per_block_optin,
                       _extension.has_kernel("residual_block", "CUDA"), triton_reason, False)
        mkldnn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        return cls(device, device.type, 0, False, triton_reason, mkldnn)


def recorded_gpu(name: str = "recorded GPU (sm_90 limits)", smem_per_block: int = 232_448,
                 cuda_kernels: bool = True) -> DeviceCaps:
    """A CUDA device whose kernels are recorded instead of launched: builds the GPU program on any machine.

    Tensors live on the ``meta`` device; every launch appends its op name to
    :attr:`Program.launches`. For counting launches and timing the host side of a forward
    without a GPU (``benchmarks/host_overhead.py``); the results are not computed.
    """
    return DeviceCaps(torch.device("meta"), name, smem_per_block, cuda_kernels, None, False, recorded=True)


@dataclass(frozen=True)
class Step:
    """One resolved step of a program: what it computes, how (tactic) and how many kernels it launches."""

    name: str  # where it sits in the network, e.g. 'stack3.hg1.up1.0'
    op: str  # 'conv', 'residual_block', 'max_pool', 'decode', 'flip_input'
    shape: str  # the layer-shape key of the tactic table
    tactic: Tactic
    launches: int  # kernel launches on a GPU (0 where not applicable: CPU)


def shape_key(op: str, **dims) -> str:
    """The tactic-table key of a step: ``'cin=256 mid=128 cout=256 h=64 w=64 up'`` (flags without ``=``)."""
    return " ".join(k if v is True else f"{k}={v}" for k, v in dims.items() if v is not False and v is not None)


@dataclass
class _Node:
    """A step under construction: its registers and how to make its run closure."""

    step: Step
    ins: tuple[int, ...]
    out: int | None
    out_spec: tuple | None  # (shape, channels_last) of a buffer the engine allocates, else None
    make: Callable  # make(out_buffer or None) -> run(env)


class Program:
    """A fused plan resolved for one input shape: call it on ``x`` ``(N, 3, H, W)`` → list of heatmaps.

    With ``decode`` it returns ``(heatmaps, coords, maxvals)`` (see :func:`build_program`). The
    heatmaps are new tensors on each call; intermediate buffers are the program's own, so one
    call runs at a time: a lock serialises concurrent calls on the host, and on a GPU a call on
    another CUDA stream than the last call's first makes its stream wait for the last one's work
    (:class:`StreamOrder`), so two streams never run the program's kernels on its buffers at once.
    Calls on one stream cost no synchronisation. The outputs belong to the calling stream, as any
    PyTorch op's do. Replays of a CUDA graph captured from the program are not ordered by it:
    replay such a graph on one stream (:func:`shg_fast.cuda_graph` replays on the caller's).
    """

    def __init__(self, key: tuple, steps: list[Step], runs: list[Callable], outputs: list[int], nregs: int,
                 out_alloc: Callable | None, out_regs: slice | None, decode_regs: tuple[int, int] | None,
                 guard: Callable | None, recorder: list | None, settings: Settings, caps: DeviceCaps,
                 unflipped: int | None, stream_order: "StreamOrder | None" = None):
        self.key = key
        self.steps = steps
        self.settings = settings
        self.caps = caps
        self.launches = recorder  # recorded kernel launches (recorded_gpu programs), else None
        self._runs = runs
        self._outputs = outputs
        self._nregs = nregs
        self._out_alloc = out_alloc
        self._out_regs = out_regs
        self._decode_regs = decode_regs
        self._guard = guard
        self._unflipped = unflipped  # flip test: the heatmaps returned are the first this many of the batch
        self._lock = threading.Lock()
        self._stream_order = stream_order

    @property
    def launch_count(self) -> int:
        """Kernel launches per call on a GPU (the sum over steps)."""
        return sum(s.launches for s in self.steps)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` has the shape, dtype and device this program was built for."""
        got = (tuple(x.shape), x.dtype, x.device)
        if got != self.key[:3]:
            raise ValueError(f"input is {got} (shape, dtype, device); this program was built for {self.key[:3]}")

    def __call__(self, x: torch.Tensor):
        self.check_input(x)
        with self._lock:
            if self._stream_order is not None:
                self._stream_order()
            env = [None] * self._nregs
            env[0] = x
            if self._out_alloc is not None:
                env[self._out_regs] = self._out_alloc().unbind(0)
            i = 0
            try:
                if self._guard is None:
                    for run in self._runs:
                        run(env)
                        i += 1
                else:
                    with self._guard():
                        for run in self._runs:
                            run(env)
                            i += 1
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                step = self.steps[i]
                raise StepError(f"step {i} {step.name} ({step.op} {step.shape}) failed on tactic "
                                f"{step.tactic.describe()}: {type(exc).__name__}: {exc}") from exc
            heatmaps = [env[r] for r in self._outputs]
            if self._unflipped is not None:
                heatmaps = [h[:self._unflipped] for h in heatmaps]
            if self._decode_regs is None:
                return heatmaps
            return heatmaps, env[self._decode_regs[0]], env[self._decode_regs[1]]

    def info(self) -> list[dict]:
        """One dict per step: name, op, shape key, backend, config, launches and the reason for the tactic."""
        return [dict(name=s.name, op=s.op, shape=s.shape, backend=s.tactic.backend, config=dict(s.tactic.config),
                     launches=s.launches, reason=s.tactic.reason) for s in self.steps]

    def describe(self) -> list[str]:
        """The steps as text, one line each (``shg-fast info --plan``)."""
        device, dtype, batch, h, w = self.key[2], self.key[1], *self.key[0][:1], *self.key[0][2:]
        lines = [f"program for {self.caps.name} ({device}), {tactics.dtype_name(dtype)}, batch {batch}, {h}x{w}: "
                 f"{len(self.steps)} steps, {self.launch_count} GPU kernel launches"]
        for i, s in enumerate(self.steps):
            lines.append(f"{i:4d} {s.name:<24} {s.op:<14} {s.shape:<40} {s.tactic.describe():<28} {s.tactic.reason}")
        return lines


class StreamOrder:
    """Orders the calls of one GPU program across CUDA streams: its buffers are shared between calls.

    Called at the start of each call (under the program's lock): when the current stream of
    ``device`` is not the last call's, it waits for all the work queued on the last call's stream
    so far (``wait_stream``: one event, no host synchronisation), which includes that call's
    kernels. Calls then run in the order they were made, whatever their streams. Nothing is done
    while a stream is being captured into a CUDA graph: capture begins on a synchronised device,
    and a capturing stream cannot wait on uncaptured work.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.last = None  # the stream of the last call

    def __call__(self) -> None:
        if torch.cuda.is_current_stream_capturing():
            return
        stream = torch.cuda.current_stream(self.device)
        if self.last is not None and stream != self.last:
            stream.wait_stream(self.last)
        self.last = stream


# ----------------------------------------------------------------------------------------------
# Tactic choice (the default rule of shg_fast.tactics, after the table)


def _fused_op_backend(op, settings: Settings, device: torch.device, *example) -> tuple[str, str]:
    """The public op's backend for this call, chosen once (forced, or the first of the auto order)."""
    if settings.backend != "auto":
        why = op.reasons(settings.backend, device, *example)
        if why:
            raise BackendUnavailableError(f"backend {settings.backend!r} cannot run {op.name}: " + "; ".join(why))
        return settings.backend, f"forced by {settings.backend!r}"
    for name in AUTO_ORDER.get(device.type, ("reference",)):
        why = op.reasons(name, device, *example)
        if not why:
            return name, f"first backend of the auto order that can run {op.name} here"
    raise AssertionError("reference always runs")


class _Choice:
    """Default-rule decisions shared by the steps of one build."""

    def __init__(self, caps: DeviceCaps, settings: Settings, dtype: torch.dtype, batch: int):
        self.caps, self.settings, self.dtype, self.batch = caps, settings, dtype, batch
        gpu = caps.recorded or caps.device.type == "cuda"
        forced = settings.backend
        self.triton_ok = caps.triton_reason is None and dtype in (torch.float32, torch.float16, torch.bfloat16)
        # The engine's own Triton/CUDA steps: on a GPU under auto (or forced triton/cuda), or on CPU
        # tensors in the Triton interpreter when triton is forced.
        self.gpu_engine = (gpu and forced in ("auto", "triton", "cuda")) or (
            caps.device.type == "cpu" and forced == "triton" and self.triton_ok)
        if forced == "triton" and not self.triton_ok:
            raise BackendUnavailableError(f"backend 'triton' cannot run here: {caps.triton_reason or dtype}")
        self.cuda_ok = gpu and caps.cuda_kernels and forced in ("auto", "cuda")
        if forced == "cuda" and not self.cuda_ok:
            raise BackendUnavailableError("backend 'cuda' cannot run here: "
                                          + ("no CUDA kernels in the extension" if gpu else "tensors are not on CUDA"))
        # float32, and bfloat16 where oneDNN has it (issue 18)
        self.cpu_runner = (caps.device.type == "cpu" and forced == "auto" and caps.mkldnn
                           and not mkldnn_runner_reasons(dtype))

    def table(self, op: str, shape: str) -> Tactic | None:
        tactic = tactics.lookup(op, shape, self.dtype, self.batch, self.caps.name)
        if tactic is None:
            return None
        runnable = {"cuda": self.cuda_ok and self.gpu_engine, "triton": self.triton_ok and self.gpu_engine,
                    "aten": True}.get(tactic.backend, False)
        return tactic if runnable else None


# ----------------------------------------------------------------------------------------------
# Step implementations. Each make_* returns run(env) closures with everything static prebound.


def _spec_strides(spec: tuple) -> tuple[int, ...]:
    shape, channels_last = spec
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, device="meta").contiguous(memory_format=fmt).stride()


def _max_offset(shape: Sequence[int], strides: Sequence[int]) -> int:
    """The largest element offset a kernel computes for a tensor of this shape and strides."""
    return sum((s - 1) * st for s, st in zip(shape, strides) if s > 0)


def _check_offsets(what: str, tensors: dict[str, tuple]) -> None:
    """Raise BackendUnavailableError when a tensor's largest offset does not fit int32 (decided at build)."""
    for name, (shape, strides) in tensors.items():
        if _max_offset(shape, strides) >= _INT32_LIMIT:
            raise BackendUnavailableError(f"{what}: {name} {tuple(shape)} has offsets past int32")


class _Recorder:
    """Stands in for kernels when building for a recorded GPU: each launch appends its name."""

    def __init__(self):
        self.calls: list[str] = []

    def kernel(self, name: str):
        calls = self.calls

        class _Launcher:
            def __getitem__(self, grid):
                return self

            def __call__(self, *args, **kwargs):
                calls.append(name)

        return _Launcher()

    def op(self, name: str, result):
        calls = self.calls

        def launch(*args, **kwargs):
            calls.append(name)
            return result

        return launch


# ----------------------------------------------------------------------------------------------
# The builder


class _Builder:
    def __init__(self, plan, batch: int, height: int, width: int, caps: DeviceCaps, settings: Settings):
        self.batch, self.height, self.width = batch, height, width
        self.caps, self.settings = caps, settings
        self.dtype = plan.dtype
        self.device = caps.device
        self.choice = _Choice(caps, settings, plan.dtype, batch)
        self.recorder = _Recorder() if caps.recorded else None
        self.nodes: list[_Node] = []
        self.specs: list[tuple] = [((batch, 3, height, width), False)]  # register 0: the input
        self.cpu = None
        if self.choice.cpu_runner:
            self.cpu = CpuConvs(settings.winograd, settings.conv1x1)
        if self.choice.gpu_engine:
            from .kernels.conv_bn_relu import (H200_SMS, REDUCE_BLOCK, conv_bn_relu_kernel, conv_config,
                                               conv_split_k_reduce_kernel, k_steps)
            from .kernels.decode_heatmaps import decode_block_size, decode_heatmaps_kernel

            self.conv_config, self.decode_block_size, self.reduce_block = conv_config, decode_block_size, REDUCE_BLOCK
            self.k_steps = k_steps
            self.sms = (torch.cuda.get_device_properties(self.device).multi_processor_count
                        if self.device.type == "cuda" else H200_SMS)
            rec = self.recorder
            self.conv_kernel = rec.kernel("triton.conv_bn_relu") if rec else conv_bn_relu_kernel
            self.reduce_kernel = rec.kernel("triton.conv_split_k_reduce") if rec else conv_split_k_reduce_kernel
            self.decode_kernel = rec.kernel("triton.decode_heatmaps") if rec else decode_heatmaps_kernel

    # -- registers -----------------------------------------------------------------------------

    def new_reg(self, shape: tuple, channels_last: bool = True) -> int:
        self.specs.append((tuple(shape), channels_last))
        return len(self.specs) - 1

    def add(self, step: Step, ins, out, make, out_spec=None) -> None:
        self.nodes.append(_Node(step, tuple(ins), out, out_spec, make))

    # -- convs -------------------------------------------------------------------------------------

    def conv(self, name: str, x: int, w: torch.Tensor, b: torch.Tensor, *, stride=1, padding=None, relu=False,
             residual: int | None = None, x2: int | None = None, in_scale=None, in_shift=None,
             upsample: int | None = None, out_reg: int | None = None, contiguous_out: bool = False,
             pool: tuple[bool, bool, bool] = (False, False, False)) -> int:
        """A conv step (also one of the three convs of a Triton residual block); returns its output register.

        ``pool``: (x, x2, residual) read 2x2/stride-2 max-pooled (Triton only: the block of a fused max-pool).
        """
        (n, _, h, wd), _ = self.specs[x]
        if pool[0]:
            h, wd = h // 2, wd // 2
        k = w.shape[-1]
        pad = k // 2 if padding is None else padding
        oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
        cin = w.shape[1]
        key = shape_key("conv", cin=cin, cout=w.shape[0], k=k, s=stride, h=h, w=wd, pool=any(pool))
        out_shape = (n, w.shape[0], oh, ow)
        if out_reg is None:
            out_reg = self.new_reg(out_shape, not contiguous_out)
        if self.choice.gpu_engine:
            tactic = self.choice.table("conv", key) if self.choice.triton_ok else None
            if tactic is None and self.choice.triton_ok:
                tactic = Tactic("triton", "default rule: implicit-GEMM Triton conv, conv_config tiles and split-K")
            if tactic is not None:
                self._triton_conv(name, key, tactic, x, w, b, stride, pad, relu, residual, x2, in_scale, in_shift,
                                  upsample, out_reg, contiguous_out, pool)
                return out_reg
        if any(pool):
            raise AssertionError("a pooled conv input is only built for Triton convs")
        if self.cpu is not None and x2 is None and in_scale is None and upsample is None:
            self._cpu_conv(name, key, x, w, b, stride, pad, relu, residual, out_reg, contiguous_out)
            return out_reg
        self._ops_conv(name, key, x, w, b, stride, pad, relu, residual, x2, in_scale, in_shift, upsample, out_reg,
                       contiguous_out)
        return out_reg

    def _triton_conv(self, name, key, tactic, x, w, b, stride, pad, relu, residual, x2, in_scale, in_shift, upsample,
                     out_reg, contiguous_out, pool):
        specs = self.specs
        (n, c1, h, wd), _ = specs[x]
        if pool[0]:  # the kernel's H, W are the conv's input size; x's strides stay those of the stored tensor
            h, wd = h // 2, wd // 2
        c2 = 0 if x2 is None else specs[x2][0][1]
        out_shape, _ = specs[out_reg]
        cout, oh, ow = out_shape[1:]
        m = n * oh * ow
        cfg = self.conv_config(m, c1, c2, cout, w.shape[2], w.shape[3], w.element_size(), self.settings.tf32,
                               self.sms, pool[0] or pool[1])
        steps = self.k_steps(c1, c2, w.shape[2], w.shape[3], cfg["BLOCK_K"], cfg["PACK_TAPS"])
        cfg["SPLIT_K"] = tactics.split_k_default(steps, cfg["SPLIT_K"])  # weighs the reduce launch
        cfg.update(tactic.config)
        tactic = dataclasses.replace(tactic, config=cfg)
        split = cfg["SPLIT_K"]
        strides = {r: _spec_strides(specs[r]) for r in (x, x2, residual, upsample, out_reg) if r is not None}
        _check_offsets(f"{name} triton conv", {f"register {r}": (specs[r][0], st) for r, st in strides.items()}
                       | {"weight": (w.shape, w.stride())})
        tiles = -(-m // cfg["BLOCK_M"]) * -(-cout // cfg["BLOCK_N"])
        # Split-K partial sums: one float32 buffer per step, allocated once (StreamOrder orders streams).
        part = torch.empty((split, m, cout), dtype=torch.float32, device=self.device) if split > 1 else None
        sizes = (n, c1, c2, h, wd, cout, oh, ow)
        res_strides = strides[x if residual is None else residual]
        up_strides = strides[x if upsample is None else upsample]
        ints = (*sizes, stride, pad, *strides[x], *strides[x if x2 is None else x2], *w.stride(),
                *res_strides, *up_strides, *strides[out_reg])
        flags = (b is not None, relu, residual is not None, upsample is not None, pool[2])
        # The kernel's constexprs in signature order, passed positionally (keyword arguments cost more per call).
        consts = (w.shape[2], w.shape[3], x2 is not None, b is not None, in_scale is not None, in_shift is not None,
                  in_scale is not None, relu, residual is not None, upsample is not None, *pool, self.settings.tf32,
                  cfg["PACK_TAPS"], split, cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"])
        args = ints + consts
        opts = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
        launch = self.conv_kernel[(tiles, split)]
        reduce_m, reduce_n = self.reduce_block
        reduce = self.reduce_kernel[(-(-m // reduce_m) * -(-cout // reduce_n),)]
        reduce_args = (m, cout, oh, ow, *res_strides, *up_strides, *strides[out_reg], *flags, split, reduce_m, reduce_n)
        # Absent optional tensors are never read (their HAS_* flag is off): x stands in for them.
        ix2, ires, iup = (x if r is None else r for r in (x2, residual, upsample))
        bias, scale, shift = (w if t is None else t for t in (b, in_scale, in_shift))

        def make(buf):
            def run(env):
                out = env[out_reg] if buf is None else buf  # None: the per-call output the program allocates
                launch(env[x], env[ix2], w, bias, scale, shift, env[ires], env[iup], out,
                       out if part is None else part, *args, **opts)
                if part is not None:  # deterministic sum of the partials, then the epilogue once
                    reduce(part, bias, env[ires], env[iup], out, *reduce_args, num_warps=4)
                env[out_reg] = out
            return run

        ins = [r for r in (x, x2, residual, upsample) if r is not None]
        step = Step(name, "conv", key, tactic, 1 if split == 1 else 2)
        self.add(step, ins, out_reg, make, None if contiguous_out else specs[out_reg])

    def _cpu_conv(self, name, key, x, w, b, stride, pad, relu, residual, out_reg, contiguous_out):
        shape = self.specs[x][0]
        conv, tactic = self.cpu.conv(w, b, shape, stride=stride, padding=pad, relu=relu, add=residual is not None)
        if contiguous_out:  # a new NCHW tensor per call (the heatmaps the program returns)
            if residual is None:
                def run(env):
                    env[out_reg] = conv(env[x]).contiguous()
            else:
                def run(env):
                    env[out_reg] = conv(env[x], env[residual]).contiguous()
            make, out_spec = (lambda buf: run), None
        else:  # written into an engine buffer, reused from call to call
            def make(buf):
                if residual is None:
                    def run(env):
                        env[out_reg] = conv(env[x], out=buf)
                else:
                    def run(env):
                        env[out_reg] = conv(env[x], env[residual], out=buf)
                return run
            out_spec = self.specs[out_reg]
        ins = [x] if residual is None else [x, residual]
        self.add(Step(name, "conv", key, tactic, 0), ins, out_reg, make, out_spec)

    def _ops_conv(self, name, key, x, w, b, stride, pad, relu, residual, x2, in_scale, in_shift, upsample, out_reg,
                  contiguous_out):
        if x2 is not None:
            raise AssertionError("a second conv input is only built for Triton convs")
        example = torch.empty(self.specs[x][0], dtype=self.dtype, device=self.device)
        backend, why = _fused_op_backend(CONV_BN_RELU, self.settings, self.device, example, w, b)
        impl = CONV_BN_RELU.impls[backend]
        kwargs = dict(stride=stride, padding=pad, in_scale=in_scale, in_shift=in_shift,
                      in_relu=in_scale is not None, out_relu=relu)

        def run(env):
            y = impl(env[x], w, b, residual=None if residual is None else env[residual],
                     upsample=None if upsample is None else env[upsample], **kwargs)
            env[out_reg] = y.contiguous() if contiguous_out else y

        ins = [r for r in (x, residual, upsample) if r is not None]
        self.add(Step(name, "conv", key, Tactic(backend, why), 0), ins, out_reg, lambda buf: run)

    # -- residual blocks ---------------------------------------------------------------------------

    def block(self, name: str, x: int, block: FoldedResidual, upsample: int | None = None,
              pool_input: bool = False) -> int:
        """A residual block step; with ``pool_input`` on ``max_pool2d(x, 2, 2)`` (fused where a kernel can)."""
        (n, cin, h, w), _ = self.specs[x]
        if pool_input:
            h, w = h // 2, w // 2
        dims = dict(cin=cin, mid=block.mid_channels, cout=block.out_channels, h=h, w=w, up=upsample is not None)
        key = shape_key("residual_block", **dims, pool=pool_input)
        out_shape = (n, block.out_channels, h, w)
        choice = self.choice
        if choice.gpu_engine:
            tactic = choice.table("residual_block", key)
            if tactic is None:
                tactic = self._default_gpu_block(block, h, w, upsample is not None, pool_input)
            if pool_input and tactic.backend == "cuda":
                tactic = dataclasses.replace(tactic, reason=tactic.reason + "; the max-pool before it fused (read as x "
                                                                            "loads)")
            if tactic.backend == "cuda":
                return self._cuda_block(name, key, tactic, x, block, upsample, out_shape, pool_input)
            if tactic.backend == "triton":
                return self._triton_block(name, x, block, upsample, pool_input)
        if pool_input:  # no kernel here pools as it loads: a max-pool step, then the block on its output
            x = self.max_pool(f"{name}.pool", x)
            key = shape_key("residual_block", **dims)
        if self.cpu is not None:
            return self._cpu_block(name, key, x, block, upsample, out_shape)
        return self._ops_block(name, key, x, block, upsample, out_shape)

    def _default_gpu_block(self, block: FoldedResidual, h: int, w: int, upsample: bool, pool_input: bool) -> Tactic:
        choice = self.choice
        cuda_why = None
        if choice.cuda_ok:
            probe = torch.empty(0, dtype=self.dtype)
            need = cuda_smem_bytes(probe, block)
            if need <= self.caps.smem_per_block:
                rule = tactics.default_residual_block(block.in_channels, block.out_channels, h, w, self.dtype, self.batch,
                                                      tf32=self.settings.tf32, upsample=upsample, pool_input=pool_input)
                if rule.backend == "cuda" or not choice.triton_ok:
                    return Tactic("cuda", f"{rule.reason}; whole-block CUDA kernel, {need} B of shared memory fits")
                return rule
            cuda_why = f"whole-block CUDA kernel needs {need} B of shared memory, the device allows " \
                       f"{self.caps.smem_per_block}"
        elif self.settings.backend != "triton":
            cuda_why = "the extension has no CUDA kernels"
        if choice.triton_ok:
            return Tactic("triton", "default rule: three Triton convs" + (f" ({cuda_why})" if cuda_why else ""))
        return Tactic("reference", f"default rule: no kernel can run ({cuda_why}; {self.caps.triton_reason})")

    def _cuda_block(self, name, key, tactic, x, block, upsample, out_shape, pool_input):
        packed = prepack_for_cuda(block)
        # The glue copies nothing when these hold: NHWC activations, tap-major w2, dense 1x1 weights.
        assert packed.w2.permute(2, 3, 0, 1).is_contiguous() and packed.w1.is_contiguous()
        assert packed.w3.is_contiguous() and (packed.ws is None or packed.ws.is_contiguous())
        assert self.specs[x][1] and (upsample is None or self.specs[upsample][1])
        out = self.new_reg(out_shape)
        args = (packed.in_scale, packed.in_shift, packed.w1, packed.b1, packed.w2, packed.b2, packed.w3, packed.b3,
                packed.ws, packed.bs)
        if self.recorder is not None:
            fn = self.recorder.op("cuda.residual_block", torch.empty(out_shape, dtype=self.dtype, device="meta")
                                  .contiguous(memory_format=torch.channels_last))
        else:
            fn = torch.ops.shg_fast.residual_block.default
        if upsample is None:
            def run(env):
                env[out] = fn(env[x], *args, None, pool_input)
        else:
            def run(env):
                env[out] = fn(env[x], *args, env[upsample], pool_input)
        ins = [x] if upsample is None else [x, upsample]
        self.add(Step(name, "residual_block", key, tactic, 1), ins, out, lambda buf: run)
        return out

    def _triton_block(self, name, x, block, upsample, pool_input):
        (n, cin, h, w), _ = self.specs[x]
        mid = block.mid_channels
        # A fused max-pool: conv1 and the skip (identity in conv3's epilogue, or projection along its K) read x pooled.
        t1 = self.conv(f"{name}.conv1", x, block.w1, block.b1, relu=True, in_scale=block.in_scale,
                       in_shift=block.in_shift, pool=(pool_input, False, False))
        t2 = self.conv(f"{name}.conv2", t1, block.w2, block.b2, relu=True)
        assert self.specs[t2][0] == ((n, mid, h // 2, w // 2) if pool_input else (n, mid, h, w))
        w3, b3 = block.last_gemm()
        w3 = w3.contiguous(memory_format=torch.channels_last)
        if block.ws is None:
            return self.conv(f"{name}.conv3", t2, w3, b3, residual=x, upsample=upsample,
                             pool=(False, False, pool_input))
        return self.conv(f"{name}.conv3+skip", t2, w3, b3, x2=x, upsample=upsample, pool=(False, pool_input, False))

    def _cpu_block(self, name, key, x, block, upsample, out_shape):
        run_block, tactic = self.cpu.block(block, self.specs[x][0], upsample is not None)
        out = self.new_reg(out_shape)

        def make(buf):  # the block's output written into an engine buffer, reused from call to call
            if upsample is None:
                def run(env):
                    env[out] = run_block(env[x], out=buf)
            else:
                def run(env):
                    env[out] = run_block(env[x], env[upsample], out=buf)
            return run

        ins = [x] if upsample is None else [x, upsample]
        self.add(Step(name, "residual_block", key, tactic, 0), ins, out, make, self.specs[out])
        return out

    def _ops_block(self, name, key, x, block, upsample, out_shape):
        example = torch.empty(self.specs[x][0], dtype=self.dtype, device=self.device)
        backend, why = _fused_op_backend(RESIDUAL_BLOCK, self.settings, self.device, example, block)
        impl = RESIDUAL_BLOCK.impls[backend]
        out = self.new_reg(out_shape)

        def run(env):
            env[out] = impl(env[x], block, None if upsample is None else env[upsample])

        ins = [x] if upsample is None else [x, upsample]
        self.add(Step(name, "residual_block", key, Tactic(backend, why), 0), ins, out, lambda buf: run)
        return out

    # -- max-pool, flip, decode ------------------------------------------------------------------------

    def max_pool(self, name: str, x: int) -> int:
        """A separate 2x2/stride-2 max-pool step (where the block after it cannot pool as it loads)."""
        (n, c, h, w), _ = self.specs[x]
        key = shape_key("max_pool", c=c, h=h, w=w)
        out_shape = (n, c, h // 2, w // 2)
        out = self.new_reg(out_shape)
        gpu = self.choice.gpu_engine
        reason = ("default rule: ATen max_pool2d (one launch; the block after it runs on the public ops)"
                  if gpu else "default rule: ATen max_pool2d")
        if self.recorder is not None:
            fn = self.recorder.op("aten.max_pool2d", torch.empty(out_shape, dtype=self.dtype, device="meta")
                                  .contiguous(memory_format=torch.channels_last))

            def run(env):
                env[out] = fn(env[x], 2, 2)
        else:
            def run(env):
                env[out] = F.max_pool2d(env[x], 2, 2)
        self.add(Step(name, "max_pool", key, Tactic("aten", reason), 1 if gpu else 0), [x], out, lambda buf: run)
        return out

    def channels_last_input(self, x: int) -> int:
        """The input in channels_last, as the CPU and public-op steps take it (the Triton stem reads any layout)."""
        (n, c, h, w), _ = self.specs[x]
        out = self.new_reg((n, c, h, w))

        def run(env):
            env[out] = env[x].contiguous(memory_format=torch.channels_last)

        step = Step("input.layout", "layout", shape_key("layout", n=n, h=h, w=w),
                    Tactic("aten", "activations run channels_last"), 0)
        self.add(step, [x], out, lambda buf: run)
        return out

    def flip_input(self, x: int) -> int:
        """The input followed by its mirror image along the batch: ``(2N, 3, H, W)`` written by two launches."""
        (n, c, h, w), _ = self.specs[x]
        out = self.new_reg((2 * n, c, h, w), False)
        index = torch.arange(w - 1, -1, -1, device=self.device)  # built once: no host copy per call
        rec = self.recorder
        copy = rec.op("aten.copy_", None) if rec else torch.Tensor.copy_
        select = rec.op("aten.index_select", None) if rec else torch.index_select

        def make(buf):
            first, second = buf[:n], buf[n:]

            def run(env):
                copy(first, env[x])
                select(env[x], 3, index, out=second)
                env[out] = buf
            return run

        step = Step("input.flip", "flip_input", shape_key("flip_input", n=n, h=h, w=w),
                    Tactic("aten", "copy and mirrored index_select into one static batch"), 2)
        self.add(step, [x], out, make, self.specs[out])
        return out

    def decode(self, heatmaps: int, n: int, flip_pairs) -> tuple[int, int]:
        """Decode the first ``n`` maps of ``heatmaps`` (averaged with the mirrored last ``n`` when flipping)."""
        (_, k, h, w), _ = self.specs[heatmaps]
        flip = flip_pairs is not None
        key = shape_key("decode", k=k, h=h, w=w, flip=flip)
        coords, maxvals = self.new_reg((n, k, 2), False), self.new_reg((n, k), False)
        perm = flip_permutation(k, flip_pairs) if flip and len(flip_pairs) else list(range(k))
        if self.choice.gpu_engine and self.choice.triton_ok:
            self._triton_decode(key, heatmaps, n, flip, perm, coords, maxvals)
            return coords, maxvals
        if self.choice.gpu_engine and self.choice.cuda_ok and not (flip and k > _MAX_FLIP_JOINTS):
            self._cuda_decode(key, heatmaps, n, flip, perm, coords, maxvals)
            return coords, maxvals
        example = torch.empty((n, k, h, w), dtype=self.dtype, device=self.device)
        backend, why = _fused_op_backend(DECODE_HEATMAPS, self.settings, self.device, example,
                                         example if flip else None, perm)
        impl = DECODE_HEATMAPS.impls[backend]

        def run(env):
            hm = env[heatmaps]
            env[coords], env[maxvals] = impl(hm[:n], hm[n:] if flip else None, perm if flip else [])

        step = Step("decode", "decode", key, Tactic(backend, why), 1 if self.device.type == "cuda" else 0)
        self.add(step, [heatmaps], None, lambda buf: run)
        return coords, maxvals

    def _cuda_decode(self, key, heatmaps, n, flip, perm, coords, maxvals):
        """The CUDA decode kernel: its flip permutation is a kernel parameter passed by value (no host copy, so
        a CUDA graph can capture it)."""
        k = self.specs[heatmaps][0][1]
        perm = list(perm) if flip else []
        if self.recorder is not None:
            f32 = dict(dtype=torch.float32, device="meta")
            fn = self.recorder.op("cuda.decode_heatmaps", (torch.empty((n, k, 2), **f32), torch.empty((n, k), **f32)))
        else:
            fn = torch.ops.shg_fast.decode_heatmaps.default

        def run(env):
            hm = env[heatmaps]
            env[coords], env[maxvals] = fn(hm[:n], hm[n:] if flip else None, perm)

        tactic = Tactic("cuda", "default rule: CUDA decode (Triton cannot run here), flip permutation by value")
        self.add(Step("decode", "decode", key, tactic, 1), [heatmaps], None, lambda buf: run)

    def _triton_decode(self, key, heatmaps, n, flip, perm, coords, maxvals):
        (_, k, h, w), _ = self.specs[heatmaps]
        strides = torch.empty((2 * n if flip else n, k, h, w), device="meta").stride()
        perm_t = torch.tensor(perm, dtype=torch.int32, device=self.device)  # on the device once
        block = self.decode_block_size(h, w)
        flat = strides[3] == 1 and strides[2] == w  # row-major maps: the kernel's flat offsets
        launch = self.decode_kernel[(n * k,)]
        f32 = dict(dtype=torch.float32, device=self.device)
        tactic = Tactic("triton", "default rule: Triton decode, flip permutation stored on the device",
                        {"BLOCK": block})
        _check_offsets("decode", {"heatmaps": ((2 * n if flip else n, k, h, w), strides)})

        def make(buf):
            def run(env):
                hm = env[heatmaps]
                out_c, out_m = torch.empty((n, k, 2), **f32), torch.empty((n, k), **f32)
                launch(hm, hm[n:] if flip else hm, perm_t, out_c, out_m, k, h, w, *strides, *strides, flip, flat, block)
                env[coords], env[maxvals] = out_c, out_m
            return run

        self.add(Step("decode", "decode", key, tactic, 1), [heatmaps], None, make)

    # -- the network -------------------------------------------------------------------------------

    def blocks(self, name: str, x: int, blocks: list[FoldedResidual], upsample: int | None = None,
               pool_input: bool = False) -> int:
        """The blocks in order; ``pool_input``: the first runs on ``max_pool2d(x, 2, 2)``."""
        if pool_input and not blocks:
            return self.max_pool(f"{name}.pool", x)
        for i, b in enumerate(blocks):
            x = self.block(f"{name}.{i}", x, b, upsample if i == len(blocks) - 1 else None, pool_input and i == 0)
        return x

    def hourglass(self, name: str, x: int, hg, level: int = 1) -> int:
        low = self.blocks(f"{name}{level}.low1", x, hg.low1, pool_input=True)
        if isinstance(hg.low2, HourglassPlan):
            low = self.hourglass(name, low, hg.low2, level + 1)
        else:
            low = self.blocks(f"{name}{level}.low2", low, hg.low2)
        low = self.blocks(f"{name}{level}.low3", low, hg.low3)
        return self.blocks(f"{name}{level}.up1", x, hg.up1, upsample=low)

    def network(self, plan, x: int) -> list[int]:
        h = self.conv("stem.conv", x, plan.stem_w, plan.stem_b, stride=2, padding=3, relu=True)
        h = self.block("stem.res0", h, plan.stem_blocks[0])
        if len(plan.stem_blocks) == 1:
            h = self.max_pool("stem.pool", h)
        for i, block in enumerate(plan.stem_blocks[1:], 1):
            h = self.block(f"stem.res{i}", h, block, pool_input=i == 1)  # the stem's max-pool, fused
        k = plan.num_joints
        outputs = []
        for s, stack in enumerate(plan.stacks):
            ll = self.blocks(f"stack{s}.res", self.hourglass(f"stack{s}.hg", h, stack.hourglass), stack.res)
            ll = self.conv(f"stack{s}.lin", ll, stack.lin_w, stack.lin_b, relu=True)
            w, b = stack.head_w, stack.head_b
            hm_reg = self.heatmap_regs[s] if self.heatmap_regs is not None else None
            outputs.append(self.conv(f"stack{s}.heatmaps", ll, _cl(w[:k]), b[:k].contiguous(), out_reg=hm_reg,
                                     contiguous_out=True))
            if w.shape[0] > k:
                h = self.conv(f"stack{s}.merge", ll, _cl(w[k:]), b[k:].contiguous(), residual=h)
        return outputs


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _dead_after(nodes: list[_Node], keep: set[int]) -> list[tuple[int, ...]]:
    """Per step, the registers nothing reads after it (their tensors are dropped, so memory is reused)."""
    last_use = {}
    for i, node in enumerate(nodes):
        for r in node.ins:
            last_use[r] = i
    dead: list[list[int]] = [[] for _ in nodes]
    for r, i in last_use.items():
        if r not in keep:
            dead[i].append(r)
    return [tuple(d) for d in dead]


def _releasing(run: Callable, dead: tuple[int, ...]) -> Callable:
    """``run``, then the step's dead registers cleared."""
    if not dead:
        return run
    if len(dead) == 1:
        (r,) = dead

        def step(env):
            run(env)
            env[r] = None
        return step

    def step(env):
        run(env)
        for r in dead:
            env[r] = None
    return step


def _allocate(nodes: list[_Node], specs: list[tuple], dtype: torch.dtype, device: torch.device,
              keep: set[int]) -> list[torch.Tensor | None]:
    """One buffer per engine-allocated output, reused once every reader of its previous register has run."""
    last_use = {}
    for i, node in enumerate(nodes):
        for r in node.ins:
            last_use[r] = i
    free: dict[tuple, list[torch.Tensor]] = {}
    holder: dict[int, torch.Tensor] = {}
    buffers: list[torch.Tensor | None] = []
    for i, node in enumerate(nodes):
        buf = None
        if node.out_spec is not None:
            pool = free.get(node.out_spec)
            if pool:
                buf = pool.pop()
            else:
                shape, channels_last = node.out_spec
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                buf = torch.empty(shape, dtype=dtype, device=device).contiguous(memory_format=fmt)
            holder[node.out] = buf
        buffers.append(buf)
        for r in set(node.ins):
            if last_use.get(r) == i and r in holder and r not in keep:
                free.setdefault(specs[r], []).append(holder.pop(r))
    return buffers


@torch.no_grad()
def build_program(plan, batch: int, height: int, width: int, *, caps: DeviceCaps | None = None,
                  settings: Settings | None = None, decode: bool = False, flip_pairs=None) -> Program:
    """Compile ``plan`` for inputs ``(batch, 3, height, width)`` on its device (or on ``caps``'s).

    Args:
        plan: a :class:`~shg_fast.plan.FusedPlan`.
        caps: the device's capabilities; default :meth:`DeviceCaps.query` of the plan's device.
            :func:`recorded_gpu` builds the GPU program with every launch recorded (tensors on
            ``meta``; the plan is moved there).
        settings: default :func:`current_settings`.
        decode: also decode the last stack's heatmaps; the program then returns
            ``(heatmaps, coords, maxvals)`` as :func:`shg_fast.ops.decode_heatmaps` does.
        flip_pairs: with ``decode``, run the flip test: the program runs the network on the input
            and its mirror image (batch ``2 * batch``) and decodes their average, joints swapped by
            these pairs; the heatmaps returned are those of the unflipped input.

    Raises BackendUnavailableError when a forced backend cannot run a step.
    """
    settings = current_settings() if settings is None else settings
    caps = DeviceCaps.query(plan.device, settings) if caps is None else caps
    if caps.recorded:
        plan = plan.to("meta")
    elif caps.device != plan.device:
        raise ValueError(f"the plan is on {plan.device}, the capabilities describe {caps.device}")
    if flip_pairs is not None and not decode:
        raise ValueError("flip_pairs needs decode=True")
    b = _Builder(plan, batch, height, width, caps, settings)
    x = 0
    net_batch = 2 * batch if flip_pairs is not None else batch
    if flip_pairs is not None:
        x = b.flip_input(x)
    oh, ow = height // 4, width // 4
    k, stacks = plan.num_joints, len(plan.stacks)
    out_alloc = out_regs = None
    b.heatmap_regs = None
    if b.choice.gpu_engine:  # heatmaps written by their conv into one output tensor allocated per call
        first = len(b.specs)
        b.heatmap_regs = [b.new_reg((net_batch, k, oh, ow), False) for _ in range(stacks)]
        out_regs = slice(first, first + stacks)
        alloc_device = caps.device
        out_shape = (stacks, net_batch, k, oh, ow)
        out_alloc = (lambda: torch.empty(out_shape, dtype=plan.dtype, device=alloc_device))
    if not b.choice.gpu_engine:
        x = b.channels_last_input(x)
    outputs = b.network(plan, x)
    decode_regs = b.decode(outputs[-1], batch, flip_pairs) if decode else None
    buffers = _allocate(b.nodes, b.specs, plan.dtype, caps.device, set(outputs))
    keep = set(outputs) | set(decode_regs or ())
    runs = [_releasing(node.make(buf), dead) for node, buf, dead in zip(b.nodes, buffers, _dead_after(b.nodes, keep))]
    guard = order = None
    if caps.device.type == "cuda":
        index = caps.device.index if caps.device.index is not None else torch.cuda.current_device()
        guard = (lambda: torch.cuda.device(index))  # Triton launches on the current device: the input's
        order = StreamOrder(torch.device("cuda", index))
    key = ((batch, 3, height, width), plan.dtype, caps.device if not caps.recorded else torch.device("meta"),
           settings, decode, None if flip_pairs is None else tuple(map(tuple, flip_pairs)))
    return Program(key, [n.step for n in b.nodes], runs, outputs, len(b.specs), out_alloc, out_regs, decode_regs,
                   guard, b.recorder.calls if b.recorder else None, settings, caps,
                   batch if flip_pairs is not None else None, order)

