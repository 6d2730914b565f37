"""End-to-end model benchmarks: every variant of :data:`MODEL_VARIANTS` at the paper's setting.

Default on every device: 8 stacks at 256x256 (the paper's setting); batch 1 on a CPU (fp32),
batch 1 and 32 on a GPU (fp32, TF32, bf16). ``--shg-quick`` runs 1 stack at 64x64 instead
(``--benchmark-disable`` does too: nothing is timed there). Each benchmark is timed within its
budget (``BUDGETS`` in conftest.py: about 5 s of calls per variant on a CPU, 2 s on a GPU) and
checks the variant's output against the float64 reference. On a CPU the reference takes 0.55 s
per image on an idle 2-core AMD EPYC (benchmarks/results/cpu-2vcpu.md), so about 10 rounds fill
its budget; on a busy machine, 3 (the minimum). The end-of-run summary compares the variants
with the reference and with the paper's 75 ms per image.

ONNX Runtime and OpenVINO (the reference exported to ONNX; CPU only, float32) run when installed
(``pip install 'shg_fast[peers]'``), else the summary says what is missing.

A new variant (another runtime, another compiler) is one :class:`ModelVariant` entry in
:data:`MODEL_VARIANTS`: how to build it, and why it cannot run on a device (a missing package,
no GPU), which the summary then shows once.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Callable

import pytest
import torch

from conftest import DEVICE, model_setting, not_run_here, record_model_result
from shg_fast import benchmarking
from shg_fast.reference import StackedHourglass
from shg_fast.tolerances import max_rel_error, randomize_batchnorm
from shg_fast.variants import build_variant, variant_reasons


def _needs_gpu(device: str, disabled: bool) -> str | None:
    if device != "cuda":
        return "cuda_graph: needs a CUDA GPU (on a CPU it is the fast model)"
    return None


def _compile_opt_in(device: str, disabled: bool) -> str | None:
    if disabled:
        return "compile: torch.compile takes minutes; run only when benchmarks are enabled"
    if device == "cpu":
        return ("compile: torch.compile of the model takes minutes to compile on a CPU; "
                "add it with --shg-variants=reference,fast,compile")
    return None


def _peer_reasons(name: str) -> Callable[[str, bool], str | None]:
    """Why peer ``name`` cannot run here in float32 (a package missing, not a CPU), or None."""

    def reasons(device: str, disabled: bool) -> str | None:
        return "; ".join(variant_reasons(name, device, torch.float32)) or None

    return reasons


@dataclasses.dataclass(frozen=True)
class ModelVariant:
    """One entry of the suite's variant registry.

    Attributes:
        name: the name in test ids, ``--shg-variants`` and the summary.
        build: ``(reference, example) -> callable x -> list of heatmaps``, from the eval-mode
            reference model on the example input's device and dtype.
        cannot_run: ``(device, benchmarks disabled) -> reason or None``: why it cannot run here
            (decided before anything runs; the variant is then left out, the reason shown once).
        opt_in: ``(device, benchmarks disabled) -> reason or None``: why it is left out unless
            named in ``--shg-variants``.
        batch_one_only: runs at batch 1 only (a CUDA graph is captured for one shape).
    """

    name: str
    build: Callable[[torch.nn.Module, torch.Tensor], Callable]
    cannot_run: Callable[[str, bool], str | None] = lambda device, disabled: None
    opt_in: Callable[[str, bool], str | None] = lambda device, disabled: None
    batch_one_only: bool = False


MODEL_VARIANTS = {v.name: v for v in (
    ModelVariant("reference", functools.partial(build_variant, "reference")),
    ModelVariant("fast", functools.partial(build_variant, "fast")),
    ModelVariant("compile", functools.partial(build_variant, "compile"), opt_in=_compile_opt_in),
    ModelVariant("cuda_graph", functools.partial(build_variant, "cuda_graph"), cannot_run=_needs_gpu,
                 batch_one_only=True),
    # the peers: the reference exported to ONNX (once per model: tens of seconds at 8 stacks), run by
    # ONNX Runtime / OpenVINO on the CPU in float32 (pip install 'shg_fast[peers]')
    ModelVariant("onnxruntime", functools.partial(build_variant, "onnxruntime"), cannot_run=_peer_reasons("onnxruntime")),
    ModelVariant("openvino", functools.partial(build_variant, "openvino"), cannot_run=_peer_reasons("openvino")),
)}


@dataclasses.dataclass(frozen=True)
class ModelCase:
    variant: str
    batch: int
    dtype: str
    stacks: int
    size: int

    @property
    def id(self) -> str:  # the device and network are in the id, so saved runs compare like with like
        return f"{DEVICE}-{self.stacks}x{self.size}-b{self.batch}-{self.dtype}-{self.variant}"


def selected_variants(config: pytest.Config) -> list[str]:
    """``--shg-variants`` (checked against the registry), else every variant that is not opt-in here."""
    disabled = config.getoption("benchmark_disable")
    asked = config.getoption("shg_variants")
    if asked:
        names = [n.strip() for n in asked.split(",") if n.strip()]
        unknown = [n for n in names if n not in MODEL_VARIANTS]
        if unknown or not names:
            raise pytest.UsageError(f"--shg-variants: unknown {unknown or asked!r}; expected some of "
                                    + ", ".join(MODEL_VARIANTS))
        return names
    names = []
    for name, variant in MODEL_VARIANTS.items():
        why = variant.opt_in(DEVICE, disabled)
        if why:
            not_run_here(config, why, f"test_models.py::{name}")
        else:
            names.append(name)
    return names


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    setting = model_setting(config)
    disabled = config.getoption("benchmark_disable")
    cases = []
    for name in selected_variants(config):
        variant = MODEL_VARIANTS[name]
        why = variant.cannot_run(DEVICE, disabled)
        if why:
            not_run_here(config, why, f"test_models.py::{name}")
            continue
        for dtype in setting.dtypes:
            for batch in setting.batches:
                if variant.batch_one_only and batch != 1:
                    not_run_here(config, f"{name}: batch 1 only", f"test_models.py::{name}-b{batch}")
                else:
                    cases.append(ModelCase(name, batch, dtype, setting.stacks, setting.size))
    metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="module")
def models(request):
    """The master model (random weights, non-trivial BN statistics) and its float64 copy on the device."""
    torch.manual_seed(0)
    stacks = model_setting(request.config).stacks
    master = randomize_batchnorm(StackedHourglass(num_stacks=stacks).eval(), seed=0)
    return master, copy.deepcopy(master).to(device=DEVICE, dtype=torch.float64)


@pytest.fixture(scope="module")
def truths():
    """(batch, dtype) -> :func:`shg_fast.benchmarking.ground_truth`, computed once for all variants."""
    return {}


def test_model(case, models, truths, timed, benchmark, request):
    master, truth_model = models
    benchmark.group = f"model {case.stacks} stacks {case.size}px batch {case.batch} {case.dtype}"
    with benchmarking.precision(case.dtype) as dtype:
        # Models are built outside inference_mode: inference-tensor weights cannot be tracked, so
        # the fast model would rebuild its plan on every call.
        reference = copy.deepcopy(master).to(device=DEVICE, dtype=dtype)
        x = benchmarking.example_input(case.batch, case.size, DEVICE, dtype)
        fn = MODEL_VARIANTS[case.variant].build(reference, x)
    flops = 2 * benchmarking.conv_macs(case.stacks, case.size)
    with torch.inference_mode(), benchmarking.precision(case.dtype):
        out = benchmarking.stacked_outputs(timed(fn, x, images=case.batch, flops_per_image=flops, kind="model"))
        if (case.batch, case.dtype) not in truths:
            check_images = benchmarking.default_config(DEVICE).check_images
            truths[case.batch, case.dtype] = benchmarking.ground_truth(truth_model, reference, x, case.dtype,
                                                                       check_images)
    truth, bound, n = truths[case.batch, case.dtype]
    assert out.shape == (case.stacks, case.batch, 16, case.size // 4, case.size // 4)
    err = max_rel_error(out[:, :n], truth)
    record_model_result(request.config, benchmark, variant=case.variant, batch=case.batch, dtype=case.dtype,
                        stacks=case.stacks, size=case.size, max_rel_error=err, tolerance=bound,
                        agrees=err <= bound, checked_images=n)
    assert err <= bound
