"""The inference engine: programs, tactics, launch counts, O(1) staleness, errors that name their step."""

import collections
import contextlib
import copy
import dataclasses
import io

import pytest
import torch

from shg_fast import StackedHourglass, cuda_graph, engine, reference, tactics
from shg_fast import model as model_module
from shg_fast.engine import StepError, build_program, recorded_gpu
from shg_fast.ops import decode_heatmaps_reference
from shg_fast.ops.residual_block import RESIDUAL_BLOCK
from shg_fast.tolerances import assert_close_to_reference

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


@pytest.fixture(scope="module")
def half_plan(full_plan):
    """The same plan in float16: by the default rule every block of it runs on the whole-block CUDA kernel at
    batch 1 and 2 (exact float32 blocks go to the Triton convs)."""
    return full_plan.to(torch.float16)


def _expected_launches(plan, program) -> dict[str, int]:
    """Launches per forward read off the plan's structure: blocks (one launch on the CUDA block kernel, three
    Triton convs otherwise), convs, and one split-K reduce per conv step whose configuration splits K; no
    max-pool (each is read as the block after it loads)."""
    stacks = len(plan.stacks)
    blocks = plan.info()["residual_blocks"]
    cuda_blocks = sum(1 for s in program.steps if s.op == "residual_block" and s.tactic.backend == "cuda")
    convs = 1 + stacks + stacks + (stacks - 1)  # stem, lin, heatmaps, merge (all stacks but the last)
    reduces = sum(1 for s in program.steps if s.tactic.backend == "triton" and s.tactic.config.get("SPLIT_K", 1) > 1)
    counts = {"triton.conv_split_k_reduce": reduces} if reduces else {}
    counts |= {"cuda.residual_block": cuda_blocks} if cuda_blocks else {}
    return counts | {"triton.conv_bn_relu": convs + 3 * (blocks - cuda_blocks)}


def _pools(plan) -> int:
    """Max-pools of the network: the stem's and one per hourglass level."""
    return 1 + plan.info()["upsample_add_epilogues"]


@pytest.mark.parametrize("dtype,cuda_kernels,launches", [
    (torch.float32, True, 466), (torch.float32, False, 466), (torch.float16, True, 139), (torch.float16, False, 369),
    (torch.bfloat16, True, 139)],
    ids=["float32-exact-cuda-block", "float32-triton-only", "float16-cuda-block", "float16-triton-only",
         "bfloat16-cuda-block"])
def test_recorded_gpu_launch_counts(full_plan, dtype, cuda_kernels, launches):
    """Exact float32 (TF32 off) blocks go to the Triton convs by the default rule; 16-bit ones at batch 1 to the
    whole-block CUDA kernel (its predicted time is lower for every block shape of the network)."""
    plan = full_plan.to(dtype)
    program = build_program(plan, 1, 256, 256, caps=recorded_gpu(cuda_kernels=cuda_kernels))
    expected = _expected_launches(plan, program)
    assert program.launch_count == sum(expected.values())
    assert program.launch_count == launches  # the figures docs/models.md quotes (goal: <= 140 with the CUDA block)
    with torch.no_grad():
        heatmaps = program(torch.empty(1, 3, 256, 256, device="meta", dtype=dtype))
    assert collections.Counter(program.launches) == expected  # exactly the launches the steps declare
    assert len(heatmaps) == 8 and all(h.shape == (1, 16, 64, 64) and h.is_contiguous() for h in heatmaps)
    heatmap_steps = [s for s in program.steps if s.name.endswith(".heatmaps")]
    # the conv (and its split-K reduce) writes them: no copy after them
    assert len(heatmap_steps) == 8
    assert all(s.launches == 1 + (s.tactic.config["SPLIT_K"] > 1) for s in heatmap_steps)


def test_recorded_gpu_program_with_flip_decode(half_plan):
    program = build_program(half_plan, 2, 256, 256, caps=recorded_gpu(), decode=True, flip_pairs=((0, 5),))
    with torch.no_grad():
        heatmaps, coords, maxvals = program(torch.empty(2, 3, 256, 256, device="meta", dtype=torch.float16))
    counts = collections.Counter(program.launches)
    assert counts["triton.decode_heatmaps"] == 1 and counts["aten.copy_"] == 1 and counts["aten.index_select"] == 1
    plain = build_program(half_plan, 2, 256, 256, caps=recorded_gpu())
    assert program.launch_count == plain.launch_count + 3  # the flipped copy, its index_select, the decode
    assert heatmaps[-1].shape == (2, 16, 64, 64) and coords.shape == (2, 16, 2) and maxvals.shape == (2, 16)


@pytest.mark.parametrize("cuda_kernels", [True, False], ids=["cuda-block", "triton-only"])
def test_recorded_gpu_program_fuses_every_max_pool(half_plan, cuda_kernels):
    program = build_program(half_plan, 1, 256, 256, caps=recorded_gpu(cuda_kernels=cuda_kernels))
    assert not [s for s in program.steps if s.op == "max_pool"]
    pooled = {s.name: s for s in program.steps if s.shape.endswith(" pool")}
    if cuda_kernels:  # the block after each pool reads the pool's input
        assert len(pooled) == _pools(half_plan) and {s.op for s in pooled.values()} == {"residual_block"}
        assert {"stem.res1", "stack0.hg1.low1.0", "stack7.hg4.low1.0"} <= set(pooled)
        assert pooled["stack0.hg1.low1.0"].shape == "cin=256 mid=128 cout=256 h=32 w=32 pool"
    else:  # its conv1 reads x pooled, and its conv3 the skip (identity in the epilogue, or a projection along K)
        assert len(pooled) == 2 * _pools(half_plan)
        names = {"stem.res1.conv1", "stem.res1.conv3", "stack0.hg1.low1.0.conv1", "stack0.hg1.low1.0.conv3"}
        assert names <= set(pooled)


def test_cpu_program_keeps_separate_max_pools():
    ref, fast = make_pair(2)
    x = torch.rand(1, 3, 64, 64)
    plan = fast.fused_plan()
    program = plan.program(x)
    pools = [s for s in program.steps if s.op == "max_pool"]
    assert len(pools) == _pools(plan) and all(s.tactic.backend == "aten" for s in pools)
    with torch.no_grad():
        for out, t in zip(program(x), truth(ref, x)):
            assert_close_to_reference(out, t, "float32")


def test_recorded_gpu_decodes_the_flip_test_on_the_cuda_kernel_without_triton(half_plan):
    """The CUDA decode takes its permutation by value (a kernel parameter): a program may use it for the flip test."""
    caps = dataclasses.replace(recorded_gpu(), triton_reason="Triton is not installed (test)")
    program = build_program(half_plan, 2, 256, 256, caps=caps, decode=True, flip_pairs=((0, 5),))
    (decode,) = [s for s in program.steps if s.op == "decode"]
    assert decode.tactic.backend == "cuda" and decode.launches == 1 and "by value" in decode.tactic.reason
    with torch.no_grad():
        heatmaps, coords, maxvals = program(torch.empty(2, 3, 256, 256, device="meta", dtype=torch.float16))
    assert collections.Counter(program.launches)["cuda.decode_heatmaps"] == 1
    assert coords.shape == (2, 16, 2) and maxvals.shape == (2, 16) and heatmaps[-1].shape == (2, 16, 64, 64)


def test_split_k_default_weighs_the_reduce_launch(full_plan):
    assert tactics.split_k_default(18, 2) == 1  # 16-bit 3x3 with 128 channels: 9 steps saved, less than a launch
    assert tactics.split_k_default(72, 8) == 8  # its float32 twin: 63 steps saved
    assert tactics.split_k_default(72, 2) == 2 and tactics.split_k_default(72, 1) == 1  # never above conv_config's
    assert tactics.split_k_default(2 * tactics.REDUCE_LAUNCH_STEPS, 2) == 1  # a tie keeps one launch
    assert tactics.split_k_default(2 * tactics.REDUCE_LAUNCH_STEPS + 2, 2) == 2
    convs = {dtype: [s for s in build_program(full_plan.to(dtype), 1, 256, 256, caps=recorded_gpu(cuda_kernels=False))
                     .steps if s.name.endswith(".conv2")] for dtype in (torch.float16, torch.float32)}
    assert all(s.tactic.config["SPLIT_K"] == 1 and s.launches == 1 for s in convs[torch.float16])
    small = [s for s in convs[torch.float32] if "h=4 " in s.shape]
    assert small and all(s.tactic.config["SPLIT_K"] == 8 and s.launches == 2 for s in small)


def test_table_entries_override_the_default_rule(monkeypatch, half_plan):
    conv_key = engine.shape_key("conv", cin=256, cout=16, k=1, s=1, h=64, w=64)
    block_key = engine.shape_key("residual_block", cin=256, mid=128, cout=256, h=64, w=64)
    table = (
        dict(op="conv", shape=conv_key, dtype="float16", batch=1, backend="triton", config={"BLOCK_M": 32},
             reason="test entry"),
        dict(op="residual_block", shape=block_key, dtype="*", batch="*", backend="triton", config={},
             reason="three convs win here"),
        dict(op="max_pool", shape=engine.shape_key("max_pool", c=256, h=64, w=64), dtype="*", batch="*",
             backend="no-such-backend", config={}, reason="cannot run: ignored"),
    )
    monkeypatch.setattr(tactics, "load_table", lambda: table)
    program = build_program(half_plan, 1, 256, 256, caps=recorded_gpu())
    heatmaps = [s for s in program.steps if s.name.endswith(".heatmaps")]
    assert all(s.tactic.reason == "table: test entry" and s.tactic.config["BLOCK_M"] == 32 for s in heatmaps)
    from shg_fast.kernels.conv_bn_relu import conv_config
    rule = conv_config(64 * 64, 256, 0, 16, 1, 1, 2, False)
    assert all(s.tactic.config["BLOCK_N"] == rule["BLOCK_N"] for s in heatmaps)  # keys the entry leaves out: the rule
    res = [s for s in program.steps if s.name.startswith("stack0.res.0")]
    assert [s.name for s in res] == ["stack0.res.0.conv1", "stack0.res.0.conv2", "stack0.res.0.conv3"]
    split = sum(s.launches - 1 for s in program.steps if s.name.startswith("stack") and ".res.0.conv" in s.name)
    # one block per stack ran as three launches instead of one (plus a reduce per conv that splits K)
    assert program.launch_count == 139 + 2 * 8 + split
    assert not [s for s in program.steps if s.op == "max_pool"]  # every pool fused: the entry has no step to take


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


def test_cpu_program_reuses_its_buffers_but_returns_new_heatmaps():
    """The CPU runner writes blocks and convs into the program's buffers, reused from call to call: a second
    call must neither change the heatmaps the first returned nor differ from a freshly built program."""
    from shg_fast.plan import mkldnn_runner_reasons

    if mkldnn_runner_reasons():
        pytest.skip("; ".join(mkldnn_runner_reasons()))
    ref, fast = make_pair(2, num_modules=2)
    plan = fast.fused_plan()
    x1, x2 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    program = plan.program(x1)
    assert any(s.op == "residual_block" for s in program.steps)
    with torch.no_grad():
        first = program(x1)
        kept = [t.clone() for t in first]
        second = program(x2)
        again = program(x1)
        fresh = build_program(plan, 2, 64, 64)(x2)
    for a, b in zip(first, kept):
        assert torch.equal(a, b)
    for a, b in zip(again, kept):
        assert torch.equal(a, b)
    for a, b in zip(second, fresh):
        assert torch.equal(a, b)
    for out, t in zip(second, truth(ref, x2)):
        assert_close_to_reference(out, t, "float32")


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
    assert "37 GPU kernel launches" in text  # 46 before the 9 max-pools were fused
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


class _FakeStream:
    """A CPU stand-in for a CUDA stream: its waits are appended to ``log`` (a recorded program's launch list)."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def wait_stream(self, other: "_FakeStream") -> None:
        self.log.append(f"{self.name} waits for {other.name}")


def test_a_gpu_program_called_on_another_stream_waits_for_the_last_call(monkeypatch):
    """The program's buffers are shared between calls: a call on stream B after one on stream A must queue
    behind A's kernels (stand-in streams; the launches are those of a recorded GPU program)."""
    _, fast = make_pair()
    program = build_program(fast.fused_plan(), 1, 64, 64, caps=recorded_gpu())
    # a recorded program has no CUDA device; order its calls as build_program orders a real GPU program's
    program._stream_order = engine.StreamOrder(torch.device("cuda", 0))
    log = program.launches
    streams = {name: _FakeStream(name, log) for name in "AB"}
    current = ["A"]
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams[current[0]])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    x = torch.empty(1, 3, 64, 64, device="meta")
    marks = []
    with torch.no_grad():
        for name in "ABBA":
            current[0] = name
            marks.append(len(log))
            program(x)
    n = program.launch_count
    assert marks == [0, n, 2 * n + 1, 3 * n + 1]
    assert log[n] == "B waits for A" and log[3 * n + 1] == "A waits for B"  # before that call's first launch
    assert [e for e in log if "waits" in e] == ["B waits for A", "A waits for B"]  # one stream: no waits


def test_cuda_graph_keeps_the_program_it_captured_past_the_plan_cache(monkeypatch):
    """The graph replays into its program's buffers and prepacked weights: once the plan's cache drops that
    program (more than MAX_PROGRAMS shapes built), the graph runner must still hold it (stand-in capture)."""
    import gc
    import importlib
    import weakref

    from shg_fast.plan import MAX_PROGRAMS

    graph_module = importlib.import_module("shg_fast.cuda_graph")
    stream = _FakeStream("side", [])
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    _, fast = make_pair()
    x = torch.rand(1, 3, 64, 64)
    runner = graph_module._GraphRunner(fast, x, graph_module._forward(fast, True, False, None), 1, True, True,
                                       lambda x: None)
    plan = fast.fused_plan()
    captured = weakref.ref(plan.program(fast.normalize_input(x)))  # the cached program the capture ran
    for batch in range(2, MAX_PROGRAMS + 2):
        plan.program(torch.empty(batch, 3, 64, 64))
    gc.collect()
    assert all(p is not captured() for p in plan._programs.values())  # evicted from the cache ...
    assert captured() is not None and runner.program is captured()  # ... but alive while the graph is


@pytest.mark.gpu
def test_gpu_program_on_two_streams_matches_one_stream():
    """The same model called on two CUDA streams back to back: each call's heatmaps are those of one stream."""
    _, fast = make_pair(2, 32, 5)
    fast = fast.cuda()
    xs = [torch.rand(4, 3, 128, 128, device="cuda") for _ in range(4)]
    with torch.no_grad():
        want = [fast(x)[-1].clone() for x in xs]
        streams = [torch.cuda.Stream(), torch.cuda.Stream()]
        for s in streams:
            s.wait_stream(torch.cuda.current_stream())
        got = []
        for i, x in enumerate(xs):
            with torch.cuda.stream(streams[i % 2]):
                got.append(fast(x)[-1])
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
