"""The inference engine: programs, tactics, launch counts, O(1) staleness, errors that name their step."""

import collections
import copy
import contextlib
import io

import pytest
import torch

from shg_fast import StackedHourglass, cuda_graph, engine, reference, tactics
from shg_fast import model as model_module
from shg_fast.engine import StepError, build_program, recorded_gpu
from shg_fast.ops import decode_heatmaps_reference
from shg_fast.ops.residual_block import RESIDUAL_BLOCK
from shg_fast.testing import assert_close_to_reference

from .helpers import randomize_bn

PAIRS = ((0, 2),)  # left/right pair of a 3-joint model


def make_pair(num_stacks=1, num_features=16, num_joints=3, num_modules=1):
    ref = randomize_bn(reference.StackedHourglass(num_stacks, num_features, num_joints, num_modules)).eval()
    fast = StackedHourglass(num_stacks, num_features, num_joints, num_modules)
    fast.load_state_dict(ref.state_dict())
    return ref, fast.eval()


def truth(ref, x):
    with torch.no_grad():
        return [o.float() for o in copy.deepcopy(ref).double()(x.double())]


@pytest.fixture(scope="module")
def full_plan():
    """The default 8-stack model's plan (random weights): the network the launch goals are about."""
    return StackedHourglass().eval().fused_plan()


def _expected_launches(plan, program, block_launches: int) -> dict[str, int]:
    """Launches per forward read off the plan's structure: blocks, pools (stem + one per hourglass level), convs,
    and one split-K reduce per conv step whose configuration splits K."""
    stacks = len(plan.stacks)
    blocks = plan.info()["residual_blocks"]
    depth = plan.info()["upsample_add_epilogues"] // stacks
    convs = 1 + stacks + stacks + (stacks - 1)  # stem, lin, heatmaps, merge (all stacks but the last)
    reduces = sum(1 for s in program.steps if s.tactic.backend == "triton" and s.tactic.config.get("SPLIT_K", 1) > 1)
    counts = {"aten.max_pool2d": 1 + depth * stacks, "triton.conv_split_k_reduce": reduces}
    if block_launches == 1:
        return counts | {"cuda.residual_block": blocks, "triton.conv_bn_relu": convs}
    return counts | {"triton.conv_bn_relu": convs + 3 * blocks}


@pytest.mark.parametrize("cuda_kernels", [True, False], ids=["cuda-block", "triton-only"])
def test_recorded_gpu_launch_counts(full_plan, cuda_kernels):
    program = build_program(full_plan, 1, 256, 256, caps=recorded_gpu(cuda_kernels=cuda_kernels))
    expected = _expected_launches(full_plan, program, 1 if cuda_kernels else 3)
    assert program.launch_count == sum(expected.values())
    assert program.launch_count == (180 if cuda_kernels else 700)  # the figures the README quotes
    with torch.no_grad():
        heatmaps = program(torch.empty(1, 3, 256, 256, device="meta"))
    assert collections.Counter(program.launches) == expected  # exactly the launches the steps declare
    assert len(heatmaps) == 8 and all(h.shape == (1, 16, 64, 64) and h.is_contiguous() for h in heatmaps)
    heatmap_steps = [s for s in program.steps if s.name.endswith(".heatmaps")]
    # the conv (and its split-K reduce) writes them: no copy after them
    assert len(heatmap_steps) == 8
    assert all(s.launches == 1 + (s.tactic.config["SPLIT_K"] > 1) for s in heatmap_steps)


def test_recorded_gpu_program_with_flip_decode(full_plan):
    program = build_program(full_plan, 2, 256, 256, caps=recorded_gpu(), decode=True, flip_pairs=((0, 5),))
    with torch.no_grad():
        heatmaps, coords, maxvals = program(torch.empty(2, 3, 256, 256, device="meta"))
    counts = collections.Counter(program.launches)
    assert counts["triton.decode_heatmaps"] == 1 and counts["aten.copy_"] == 1 and counts["aten.index_select"] == 1
    plain = build_program(full_plan, 2, 256, 256, caps=recorded_gpu())
    assert program.launch_count == plain.launch_count + 3  # the flipped copy, its index_select, the decode
    assert heatmaps[-1].shape == (2, 16, 64, 64) and coords.shape == (2, 16, 2) and maxvals.shape == (2, 16)


def test_table_entries_override_the_default_rule(monkeypatch, full_plan):
    conv_key = engine.shape_key("conv", cin=256, cout=16, k=1, s=1, h=64, w=64)
    block_key = engine.shape_key("residual_block", cin=256, mid=128, cout=256, h=64, w=64)
    table = (
        dict(op="conv", shape=conv_key, dtype="float32", batch=1, backend="triton", config={"BLOCK_M": 32},
             reason="test entry"),
        dict(op="residual_block", shape=block_key, dtype="*", batch="*", backend="triton", config={},
             reason="three convs win here"),
        dict(op="max_pool", shape=engine.shape_key("max_pool", c=256, h=64, w=64), dtype="*", batch="*",
             backend="no-such-backend", config={}, reason="cannot run: ignored"),
    )
    monkeypatch.setattr(tactics, "load_table", lambda: table)
    program = build_program(full_plan, 1, 256, 256, caps=recorded_gpu())
    heatmaps = [s for s in program.steps if s.name.endswith(".heatmaps")]
    assert all(s.tactic.reason == "table: test entry" and s.tactic.config["BLOCK_M"] == 32 for s in heatmaps)
    from shg_fast.kernels.conv_bn_relu import conv_config
    rule = conv_config(64 * 64, 256, 0, 16, 1, 1, 4, False)
    assert all(s.tactic.config["BLOCK_N"] == rule["BLOCK_N"] for s in heatmaps)  # keys the entry leaves out: the rule
    res = [s for s in program.steps if s.name.startswith("stack0.res.0")]
    assert [s.name for s in res] == ["stack0.res.0.conv1", "stack0.res.0.conv2", "stack0.res.0.conv3"]
    split = sum(s.launches - 1 for s in program.steps if s.name.startswith("stack") and ".res.0.conv" in s.name)
    # one block per stack ran as three launches instead of one (plus a reduce per conv that splits K)
    assert program.launch_count == 180 + 2 * 8 + split
    assert all(s.tactic.backend == "aten" and not s.tactic.reason.startswith("table") for s in program.steps
               if s.op == "max_pool")


def test_packaged_table_is_valid():
    for entry in tactics.load_table():
        assert {"op", "shape", "dtype", "batch", "backend", "config", "reason"} <= set(entry)
    assert tactics.lookup("conv", "no such shape", torch.float32, 1, "cpu") is None


@pytest.mark.triton
def test_triton_program_in_the_interpreter_matches_the_reference(monkeypatch, poison_empty):
    """The engine's own Triton launches (static buffers, contiguous heatmaps, device permutation)."""
    from shg_fast.ops import triton_backend

    if triton_backend.IMPORT_ERROR or not engine.current_settings().interpreter:
        pytest.skip("needs Triton in the interpreter")
    monkeypatch.setenv("SHG_FAST_BACKEND", "triton")
    ref, fast = make_pair()
    x = torch.rand(1, 3, 64, 64)
    program = fast.fused_plan().program(x, decode=True, flip_pairs=PAIRS)
    assert {s.tactic.backend for s in program.steps} == {"triton", "aten"}
    heatmaps, coords, maxvals = program(x)
    expected = truth(ref, x)
    for out, t in zip(heatmaps, expected):
        assert out.is_contiguous()
        assert_close_to_reference(out, t, "float32")
    flipped = truth(ref, x.flip(-1))[-1]
    want_coords, want_max = decode_heatmaps_reference(expected[-1], flipped, [2, 1, 0])
    torch.testing.assert_close(coords, want_coords, rtol=0, atol=0)
    torch.testing.assert_close(maxvals, want_max, rtol=1e-4, atol=1e-5)


def test_cpu_program_decodes_with_the_flip_test():
    ref, fast = make_pair()
    x = torch.rand(2, 3, 64, 64)
    program = fast.fused_plan().program(x, decode=True, flip_pairs=PAIRS)
    with torch.no_grad():
        heatmaps, coords, maxvals = program(x)
        plain = fast(x)
        flipped = fast(x.flip(-1))[-1]
    for out, expected in zip(heatmaps, plain):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    want_coords, want_max = decode_heatmaps_reference(plain[-1], flipped, [2, 1, 0])
    torch.testing.assert_close(coords, want_coords, rtol=0, atol=0)
    torch.testing.assert_close(maxvals, want_max, rtol=1e-5, atol=1e-6)
    run = cuda_graph(fast, x, decode=True, flip_pairs=PAIRS)  # on CPU: the same program, eagerly
    torch.testing.assert_close(run(x)[1], coords, rtol=0, atol=0)


def test_a_failing_step_is_named_with_its_tactic(monkeypatch):
    _, fast = make_pair()

    def broken(x, block, upsample=None):
        raise RuntimeError("simulated launch failure")

    monkeypatch.setenv("SHG_FAST_BACKEND", "reference")
    monkeypatch.setitem(RESIDUAL_BLOCK.impls, "reference", broken)
    with torch.no_grad(), pytest.raises(StepError, match=r"stem.res0 \(residual_block .*\) failed on tactic "
                                                          r"reference: RuntimeError: simulated launch failure"):
        fast(torch.rand(1, 3, 64, 64))


def test_programs_are_built_once_per_shape_and_settings(monkeypatch):
    _, fast = make_pair()
    plan = fast.fused_plan()
    x = torch.rand(1, 3, 64, 64)
    assert plan.program(x) is plan.program(torch.rand(1, 3, 64, 64))
    assert plan.program(torch.rand(2, 3, 64, 64)) is not plan.program(x)
    monkeypatch.setenv("SHG_FAST_BACKEND", "reference")
    forced = plan.program(x)
    assert forced is not plan.program(torch.rand(2, 3, 64, 64)) and forced.settings.backend == "reference"
    assert {s.tactic.backend for s in forced.steps if s.op in ("conv", "residual_block")} == {"reference"}
    with pytest.raises(ValueError, match="built for"):
        forced(torch.rand(1, 3, 128, 64))


def test_forced_backend_that_cannot_run_fails_at_build(monkeypatch):
    _, fast = make_pair()
    monkeypatch.setenv("SHG_FAST_BACKEND", "cuda")
    with torch.no_grad(), pytest.raises(engine.BackendUnavailableError, match="cuda"):
        fast(torch.rand(1, 3, 64, 64))


def test_state_is_read_only_when_the_generation_moves(monkeypatch):
    ref, fast = make_pair()
    reads = []
    real = model_module.state_key
    monkeypatch.setattr(model_module, "state_key", lambda m: reads.append(1) or real(m))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        fast(x)
        first = len(reads)
        for _ in range(3):
            fast(x)
    assert first <= 1 and len(reads) == first  # O(1): no pass over the tensors while nothing happened
    events = [
        lambda: fast.load_state_dict(ref.state_dict()),
        lambda: fast.hg[0].up1[0].load_state_dict(ref.hg[0].up1[0].state_dict()),  # a submodule alone
        lambda: fast.train().eval(),
        lambda: fast.to(torch.float32),
        fast.invalidate_plan,
    ]
    for event in events:
        before = model_module.state_generation()
        event()
        assert model_module.state_generation() > before
    optimizer = torch.optim.SGD(fast.parameters(), lr=0.1)
    before = model_module.state_generation()
    optimizer.step()
    assert model_module.state_generation() > before


def test_optimizer_step_in_eval_mode_rebuilds_the_plan():
    ref, fast = make_pair()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        fast(x)
    fast.conv1.weight.grad = torch.randn_like(fast.conv1.weight)
    torch.optim.SGD([fast.conv1.weight], lr=0.5).step()
    mirror = reference.StackedHourglass(1, 16, 3)
    mirror.load_state_dict(fast.state_dict())
    with torch.no_grad():
        for out, t in zip(fast(x), truth(mirror.eval(), x)):
            assert_close_to_reference(out, t, "float32")


def test_info_plan_lists_steps_with_tactics():
    from shg_fast.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["info", "--plan", "--plan-device", "recorded-gpu", "--stacks", "2", "--dtype", "float16"]) == 0
    text = out.getvalue()
    assert "46 GPU kernel launches" in text
    assert "whole-block CUDA kernel" in text and "conv_config tiles and split-K" in text
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["info", "--plan", "--plan-device", "cpu", "--stacks", "1", "--size", "64"]) == 0
    assert "stack0.heatmaps" in out.getvalue()


@pytest.mark.gpu
def test_cuda_graph_decodes_with_the_flip_test_and_recaptures_on_load():
    ref, fast = make_pair()
    fast = fast.cuda()
    x = torch.rand(2, 3, 64, 64, device="cuda")
    run = cuda_graph(fast, x, decode=True, flip_pairs=PAIRS)
    for model in (ref, randomize_bn(reference.StackedHourglass(1, 16, 3)).eval()):
        fast.load_state_dict(model.state_dict())  # seen by the replay's O(1) check: recapture
        heatmaps, coords, maxvals = run(x)
        with torch.no_grad():
            plain = fast(x)
            flipped = fast(x.flip(-1))[-1]
        torch.testing.assert_close(heatmaps[-1], plain[-1], rtol=1e-4, atol=1e-5)
        want_coords, want_max = decode_heatmaps_reference(plain[-1], flipped, [2, 1, 0])
        torch.testing.assert_close(coords, want_coords, rtol=0, atol=0)
        torch.testing.assert_close(maxvals, want_max, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_gpu_program_takes_the_default_tactics():
    _, fast = make_pair(2, 32, 5)
    fast = fast.cuda()
    program = fast.fused_plan().program(torch.rand(1, 3, 64, 64, device="cuda"))
    blocks = {s.tactic.backend for s in program.steps if s.op == "residual_block"}
    convs = {s.tactic.backend for s in program.steps if s.op == "conv"}
    from shg_fast import _extension

    assert blocks <= ({"cuda"} if _extension.has_kernel("residual_block", "CUDA") else {"triton"})
    assert convs == {"triton"}
