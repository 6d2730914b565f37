"""The Stacked Hourglass in other runtimes: ONNX export, ONNX Runtime and OpenVINO on the CPU.

:func:`export_onnx` writes the reference computation (:class:`shg_fast.reference.StackedHourglass`,
BatchNorm in eval mode, the input mean subtracted when the model has one) as an ONNX file that
any ONNX consumer runs:

* exporter: ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based exporter, the default
  since torch 2.9; it needs ``onnxscript``), the same on torch 2.11 and 2.13;
* opset :data:`ONNX_OPSET` (18: Conv, BatchNormalization, Relu, MaxPool, Resize nearest, Add);
* input ``image``: float32 ``(batch, 3, H, W)``, RGB in [0, 1], the batch dimension dynamic
  (named ``batch``), H and W fixed at export (multiples of 64);
* outputs ``heatmaps_0`` ... ``heatmaps_{S-1}``: float32 ``(batch, J, H/4, W/4)``, one per stack;
  the last is the final prediction (the reference's ``forward`` list, in order).

:func:`load_onnxruntime` and :func:`load_openvino` build callables ``x -> list of heatmaps``
from such a file: the peers that ``shg-fast bench`` and the benchmark suite time
(:mod:`shg_fast.variants`); the ``*_reasons`` functions say why one cannot run here (a package
missing, no bf16 on this CPU), decided before anything runs.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

from ._atomic import atomic_path
from .machine import cpu_flags
from .reference import StackedHourglass

__all__ = ["ONNX_OPSET", "INPUT_NAME", "BATCH_DIM", "output_names", "export_reasons", "onnxruntime_reasons",
           "openvino_reasons", "cpu_bf16_support", "export_onnx", "exported_bytes", "load_onnxruntime",
           "load_openvino"]

#: The ONNX opset of exported files (the lowest the torch.export-based exporter writes).
ONNX_OPSET = 18
#: The input's name in exported files, and the name of its dynamic batch dimension.
INPUT_NAME, BATCH_DIM = "image", "batch"

Forward = Callable[[torch.Tensor], list]


def output_names(num_stacks: int) -> list[str]:
    """The exported outputs' names: ``heatmaps_0`` ... ``heatmaps_{num_stacks - 1}`` (the last is final)."""
    return [f"heatmaps_{s}" for s in range(num_stacks)]


def _missing(*packages: str) -> list[str]:
    return [p for p in packages if importlib.util.find_spec(p) is None]


def export_reasons() -> list[str]:
    """Why :func:`export_onnx` cannot run here (empty when it can)."""
    missing = _missing("onnx", "onnxscript")
    return [f"ONNX export needs {' and '.join(missing)} (pip install 'shg_fast[peers]')"] if missing else []


def onnxruntime_reasons() -> list[str]:
    """Why the ONNX Runtime peer cannot run here (empty when it can)."""
    missing = _missing("onnxruntime")
    return export_reasons() + ([f"needs onnxruntime (pip install 'shg_fast[peers]')"] if missing else [])


def openvino_reasons(precision: str = "f32") -> list[str]:
    """Why the OpenVINO peer in ``precision`` (``f32`` or ``bf16``) cannot run here (empty when it can)."""
    if _missing("openvino"):
        return export_reasons() + ["needs openvino (pip install 'shg_fast[peers]')"]
    reasons = export_reasons()
    if precision == "bf16" and not cpu_bf16_support()["openvino"]:
        reasons.append("OpenVINO bf16 inference needs a CPU with AVX-512 BF16 or AMX; OpenVINO reports "
                       "no BF16 in this CPU's optimization capabilities")
    return reasons


def cpu_bf16_support() -> dict:
    """What this CPU offers for bfloat16, as detected (never assumed).

    ``flags``: the bf16-related flags of /proc/cpuinfo present (``avx512_bf16``, ``amx_bf16``,
    ``amx_tile``); ``mkldnn_bf16``: torch's oneDNN reports native bf16 (AVX-512 BF16 or AMX);
    ``openvino``: OpenVINO lists ``BF16`` in the CPU's optimization capabilities (False when
    OpenVINO is not installed).
    """
    flags = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in cpu_flags()]
    mkldnn_bf16 = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    openvino = False
    if not _missing("openvino"):
        import openvino as ov

        openvino = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return {"flags": flags, "mkldnn_bf16": mkldnn_bf16, "openvino": openvino}


def _reference_copy(model: torch.nn.Module) -> StackedHourglass:
    """A float32 CPU eval-mode reference model with ``model``'s weights (reference or drop-in fast)."""
    reference = StackedHourglass(**model.config)
    reference.load_state_dict(model.state_dict())
    return reference.float().eval()


@contextlib.contextmanager
def _quiet_registration_log():
    """The exporter logs one warning per torchvision op it cannot register (torchvision is not needed here)."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, size: int = 256) -> None:
    """Write ``model``'s eval-mode computation to ``path`` as ONNX (see the module doc for the format).

    Args:
        model: a reference or drop-in fast Stacked Hourglass (its weights and BN statistics are
            exported; the model itself is not changed).
        path: the ``.onnx`` file, written atomically (nothing is left behind on failure).
        size: the input height and width fixed in the file (a positive multiple of 64).

    Raises RuntimeError when the packages the exporter needs are missing, ValueError for a bad size.
    """
    reasons = export_reasons()
    if reasons:
        raise RuntimeError("; ".join(reasons))
    if not isinstance(size, int) or size <= 0 or size % 64:
        raise ValueError(f"size must be a positive multiple of 64, got {size!r}")
    reference = _reference_copy(copy.deepcopy(model).cpu())
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # batch 2: not specialised
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings(), _quiet_registration_log():
        # torch's own exporter code warns about its own deprecated pytree call; nothing a caller can change
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        program = torch.onnx.export(
            reference, (example,), dynamo=True, opset_version=ONNX_OPSET, verbose=False,
            input_names=[INPUT_NAME], output_names=output_names(reference.num_stacks),
            dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},), external_data=False,
        )
        program.save(tmp, external_data=False)


def exported_bytes(reference: torch.nn.Module, size: int) -> bytes:
    """The ONNX file :func:`export_onnx` writes for ``reference`` at ``size``, as bytes."""
    with tempfile.TemporaryDirectory(prefix="shg_fast_onnx_") as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(reference, path, size)
        return path.read_bytes()


def _numpy_input(x: torch.Tensor):
    if x.device.type != "cpu" or x.dtype != torch.float32:
        raise ValueError(f"the ONNX peers run float32 CPU inputs, got {x.dtype} on {x.device}")
    return x.detach().contiguous().numpy()


def load_onnxruntime(source: bytes | str | os.PathLike, batch: int | None = None,
                     threads: int | None = None) -> Forward:
    """ONNX Runtime running an ONNX file written by :func:`export_onnx` (its path, or its bytes).

    CPU execution provider, every graph optimisation (``ORT_ENABLE_ALL``), ``threads`` intra-op
    threads (default: torch's ``get_num_threads()``), one inter-op thread; ``batch`` fixes the
    dynamic batch dimension (so the optimiser sees static shapes).
    """
    reasons = onnxruntime_reasons()
    if reasons:
        raise RuntimeError("; ".join(reasons))
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    if batch is not None:
        options.add_free_dimension_override_by_name(BATCH_DIM, batch)
    session = ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                   providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(o) for o in session.run(None, {INPUT_NAME: _numpy_input(x)})]

    return run


def load_openvino(path: str | os.PathLike, shape: tuple[int, ...] | None = None, precision: str = "f32",
                  threads: int | None = None) -> Forward:
    """OpenVINO (CPU plugin) running the ONNX file at ``path`` written by :func:`export_onnx`.

    ``shape`` reshapes the model to a static input shape; ``precision`` is the inference precision
    hint (``f32``, or ``bf16`` where the CPU has it: :func:`openvino_reasons`); ``threads``
    inference threads (default: torch's); latency performance hint.
    """
    if precision not in ("f32", "bf16"):
        raise ValueError(f"precision must be 'f32' or 'bf16', got {precision!r}")
    reasons = openvino_reasons(precision)
    if reasons:
        raise RuntimeError("; ".join(reasons))
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if shape is not None:
        model.reshape({INPUT_NAME: list(shape)})
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
    })
    request = compiled.create_infer_request()
    names = output_names(len(compiled.outputs))

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        results = request.infer({INPUT_NAME: _numpy_input(x)})
        by_name = {next(iter(k.get_names())): v for k, v in results.items()}
        return [torch.from_numpy(by_name[n].copy()) for n in names]

    return run
