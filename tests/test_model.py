"""The drop-in fast model: parity with the reference, state_dict compatibility, plan invalidation."""

import copy

import pytest
import torch

from shg_fast import StackedHourglass, cuda_graph, reference
from shg_fast.model import state_key
from shg_fast.plan import mkldnn_runner_reasons
from shg_fast.tolerances import assert_close_to_reference

from .conftest import devices
from .helpers import randomize_bn

# Small configurations: (num_stacks, num_features, num_joints, num_modules), odd joint counts.
CONFIGS = [(2, 32, 5, 1), (1, 16, 3, 2)]
SMALL = (1, 16, 3, 1)


def make_pair(num_stacks=2, num_features=32, num_joints=5, num_modules=1, device="cpu"):
    """A random reference model (non-trivial BN statistics) and a fast model with its weights.

    The fast model's memory-efficient training is off: training then runs the reference math,
    bitwise (the memory-efficient path, the CPU default, is tested in tests/test_training_ops.py)."""
    ref = randomize_bn(reference.StackedHourglass(num_stacks, num_features, num_joints, num_modules)).to(device)
    fast = StackedHourglass(num_stacks, num_features, num_joints, num_modules, memory_efficient=False).to(device)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def float64_truth(ref: torch.nn.Module, x: torch.Tensor, train: bool = False) -> list[torch.Tensor]:
    """The reference's outputs in float64 on a copy (running statistics of ``ref`` untouched)."""
    ref64 = copy.deepcopy(ref).double().train(train)
    with torch.no_grad():
        return ref64(x.double())


def assert_outputs_close(outs, truth, mode="float32", same_dtype_ref=None):
    assert len(outs) == len(truth)
    for i, (out, t) in enumerate(zip(outs, truth)):
        assert out.shape == t.shape
        assert_close_to_reference(out, t, mode, None if same_dtype_ref is None else same_dtype_ref[i])


def mirror_of(fast):
    """A reference model holding ``fast``'s current state."""
    mirror = reference.StackedHourglass(fast.num_stacks, fast.num_features, fast.num_joints, fast.num_modules)
    mirror.load_state_dict(fast.state_dict())
    return mirror


def build_plan_once(fast, x):
    with torch.no_grad():
        fast.eval()(x)


def assert_plan_matches(fast, ref, x):
    """The fast model in eval mode (fused plan) matches the float64 reference of ``ref``."""
    with torch.no_grad():
        assert_outputs_close(fast.eval()(x), float64_truth(ref.eval(), x))


def test_same_constructor_and_state_dict():
    ref, fast = make_pair(3, 32, 7, 2)
    assert isinstance(fast, reference.StackedHourglass)
    ref_sd, fast_sd = ref.state_dict(), fast.state_dict()
    assert list(ref_sd) == list(fast_sd)
    assert all(ref_sd[k].shape == fast_sd[k].shape for k in ref_sd)
    assert sum(p.numel() for p in StackedHourglass(1).parameters()) == 3_426_448
    with pytest.raises(ValueError, match="num_stacks"):
        StackedHourglass(0)


def test_state_dict_round_trips_both_ways():
    ref, fast = make_pair()
    ref2 = reference.StackedHourglass(2, 32, 5)
    ref2.load_state_dict(fast.state_dict(), strict=True)
    fast2 = StackedHourglass(2, 32, 5)
    fast2.load_state_dict(ref2.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, fast2.state_dict()[k]), k


@pytest.mark.parametrize("config", CONFIGS)
def test_eval_parity(config, poison_empty):
    ref, fast = make_pair(*config)
    x = torch.rand(2, 3, 64, 128)
    assert_plan_matches(fast, ref, x)


def test_eval_parity_channels_last_and_inference_mode():
    ref, fast = make_pair()
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    truth = float64_truth(ref.eval(), x)
    with torch.inference_mode():
        outs = fast.eval()(x)
    assert_outputs_close(outs, truth)
    assert all(o.is_contiguous() for o in outs)


def _train_step(model, x, target):
    outs = model(x)
    loss = sum(((o - target) ** 2).mean() for o in outs)
    loss.backward()
    return outs


def assert_same_training_step(fast, ref, x, target):
    """Train-mode outputs, gradients and BN running statistics of ``fast`` equal ``ref``'s exactly.

    Training runs the reference math, so the fp32 results are bitwise equal. (A float64 truth
    is no yardstick here: BN on batch statistics over the few values of the 1x1/2x2 innermost
    maps of a small test model is ill-conditioned, and fp32 rounding is amplified ~100x.)
    """
    expected = _train_step(ref.train(), x, target)
    outs = _train_step(fast.train(), x, target)
    for out, exp in zip(outs, expected, strict=True):
        torch.testing.assert_close(out, exp, rtol=0, atol=0)
    grads = dict(fast.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=0, atol=0, msg=name)
    buffers = dict(fast.named_buffers())
    for name, b in ref.named_buffers():
        torch.testing.assert_close(buffers[name], b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("channels_last", [False, True])
def test_train_parity_outputs_gradients_and_statistics(channels_last):
    ref, fast = make_pair(*SMALL)
    x = torch.rand(2, 3, 64, 64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert_same_training_step(fast, ref, x, torch.rand(2, 3, 16, 16))


def test_eval_mode_with_gradients_is_exact():
    """Eval mode while gradients are needed runs the reference math (frozen BN fine-tuning)."""
    ref, fast = make_pair(*CONFIGS[1])
    x = torch.rand(1, 3, 64, 64)
    target = torch.rand(1, 3, 16, 16)
    _train_step(ref.eval(), x, target)
    _train_step(fast.eval(), x, target)
    grads = dict(fast.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=0, atol=0)


def test_plan_is_cached_while_nothing_changes():
    _, fast = make_pair()
    fast.eval()
    assert fast.fused_plan() is fast.fused_plan()
    with torch.no_grad():
        fast(torch.rand(1, 3, 64, 64))
    plan = fast.fused_plan()
    with torch.no_grad():
        fast(torch.rand(1, 3, 64, 64))
    assert fast.fused_plan() is plan


def test_plan_rebuilt_after_load_state_dict():
    _, fast = make_pair()
    x = torch.rand(1, 3, 64, 64)
    build_plan_once(fast, x)
    ref2 = randomize_bn(reference.StackedHourglass(2, 32, 5))
    fast.load_state_dict(ref2.state_dict())
    assert_plan_matches(fast, ref2, x)


def test_plan_rebuilt_after_optimizer_step_and_train_eval():
    ref, fast = make_pair()
    x = torch.rand(2, 3, 64, 64)
    build_plan_once(fast, x)
    optimizer = torch.optim.SGD(fast.parameters(), lr=1e-3)
    _train_step(fast.train(), x, torch.rand(2, 5, 16, 16))  # also updates the BN running statistics
    optimizer.step()
    mirror = mirror_of(fast)
    assert not torch.equal(mirror.conv1.weight, ref.conv1.weight)
    assert not torch.equal(mirror.bn1.running_mean, ref.bn1.running_mean)
    assert_plan_matches(fast, mirror, x)


def test_plan_follows_replaced_modules_and_partial_train_mode():
    ref, fast = make_pair()
    x = torch.rand(2, 3, 64, 64)
    build_plan_once(fast, x)
    fast.out[1] = torch.nn.Conv2d(32, 5, 1)
    fast.lin[0].bn.weight = torch.nn.Parameter(torch.rand(32) + 0.5)
    mirror = mirror_of(fast)
    assert_plan_matches(fast, mirror, x)
    fast.bn1.train()
    fast.invalidate_plan()  # train() on a submodule alone is not seen by the O(1) check
    mirror.eval().bn1.train()
    with torch.no_grad():
        for out, expected in zip(fast(x), mirror(x), strict=True):
            torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_plan_rebuilt_after_in_place_buffer_update_and_invalidate_plan():
    """In-place writes outside load_state_dict and optimizer steps need invalidate_plan() (O(1) check)."""
    _, fast = make_pair()
    x = torch.rand(1, 3, 64, 64)
    build_plan_once(fast, x)
    with torch.no_grad():
        fast.hg[0].low2.low2.low2.low2[0].bn2.running_var.mul_(3.0)
    fast.invalidate_plan()
    mirror = mirror_of(fast)
    assert_plan_matches(fast, mirror, x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_plan_rebuilt_after_cast(dtype):
    ref, fast = make_pair()
    x = torch.rand(1, 3, 64, 64)
    build_plan_once(fast, x)
    fast.to(dtype)
    with torch.no_grad():
        outs = fast(x.to(dtype))
        same_dtype = copy.deepcopy(ref).to(dtype).eval()(x.to(dtype))
    assert all(o.dtype == dtype for o in outs)
    mode = "float64" if dtype == torch.float64 else "bfloat16"
    truth = float64_truth(ref.eval(), x)
    if dtype == torch.float64:
        assert_outputs_close(outs, truth, mode)
    else:
        assert_outputs_close(outs, truth, mode, same_dtype)


def test_inference_tensor_parameters():
    """A model built under inference_mode runs its plan; loads are seen, other in-place writes need invalidate_plan()."""
    with torch.inference_mode():
        ref, fast = make_pair()
        x = torch.rand(1, 3, 64, 64)
        fast.eval()(x)
        ref2 = randomize_bn(reference.StackedHourglass(2, 32, 5))
        fast.load_state_dict(ref2.state_dict())
        outs = fast(x)
        fast.out[1].bias.add_(1.0)
        fast.invalidate_plan()
        mirror = reference.StackedHourglass(2, 32, 5)
        mirror.load_state_dict(fast.state_dict())
        outs_after = fast(x)
    with torch.no_grad():
        assert_outputs_close(outs, float64_truth(ref2.eval(), x.clone()))
        assert_outputs_close(outs_after, float64_truth(mirror.eval(), x.clone()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("train", [False, True])
def test_autocast(train, dtype):
    ref, fast = make_pair(*SMALL)
    x = torch.rand(2, 3, 64, 64)
    truth = float64_truth(ref, x, train=train)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        outs = fast.train(train)(x)
        same_dtype = copy.deepcopy(ref).train(train)(x)
    assert_outputs_close(outs, truth, str(dtype).removeprefix("torch."), same_dtype)


def test_sync_batchnorm_conversion():
    ref, fast = make_pair(*SMALL)
    fast = torch.nn.SyncBatchNorm.convert_sync_batchnorm(fast)
    assert isinstance(fast.bn1, torch.nn.SyncBatchNorm)
    x = torch.rand(2, 3, 64, 64)
    assert_plan_matches(fast, ref, x)
    assert_same_training_step(fast, ref, x, torch.rand(2, 3, 16, 16))


def test_rejects_bad_input_like_the_reference():
    _, fast = make_pair(1, 16, 3)
    fast.eval()
    for bad, error in [(torch.rand(1, 3, 60, 64), ValueError), (torch.rand(1, 4, 64, 64), ValueError),
                       (torch.zeros(1, 3, 64, 64, dtype=torch.int64), TypeError), ("image", TypeError)]:
        with pytest.raises(error):
            fast(bad)
    with pytest.raises(TypeError, match="dtype"):
        with torch.no_grad():
            fast(torch.rand(1, 3, 64, 64, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="eval"):
        fast.train().fused_plan()


def test_plan_info_describes_the_fusion():
    _, fast = make_pair(2, 32, 5, 1)
    info = fast.eval().plan_info()
    # 3 stem blocks; per stack 4 levels x 3 blocks + 1 innermost + 1 after the hourglass.
    assert info["residual_blocks"] == 3 + 2 * (4 * 3 + 1 + 1)
    assert info["upsample_add_epilogues"] == 2 * 4
    assert info["merged_heads"] == 1
    assert info["dtype"] == "torch.float32" and info["device"] == "cpu"
    assert info["runner"] == ("ops" if mkldnn_runner_reasons() else "mkldnn")


def test_torch_compile_training_matches_eager():
    """A compiled training step (dynamo + AOTAutograd; aot_eager skips C++ codegen to stay fast)."""
    ref, fast = make_pair(*SMALL)
    x = torch.rand(2, 3, 64, 64)
    target = torch.rand(2, 3, 16, 16)
    expected = _train_step(ref.train(), x, target)
    outs = _train_step(torch.compile(fast.train(), backend="aot_eager"), x, target)
    assert_outputs_close(outs, expected)
    grads = dict(fast.named_parameters())
    for name, p in ref.named_parameters():
        assert_close_to_reference(grads[name].grad, p.grad, "float32")


@pytest.mark.parametrize("device", devices())
def test_cuda_graph_callable(device):
    ref, fast = make_pair(device=device)
    x = torch.rand(2, 3, 64, 64, device=device)
    run = cuda_graph(fast.eval(), x)
    for _ in range(2):
        x2 = torch.rand_like(x)
        assert_outputs_close(run(x2), float64_truth(ref.eval(), x2))
    with torch.no_grad():
        fast.out[1].bias.add_(1.0)
    fast.invalidate_plan()  # an in-place write outside load_state_dict/optimizer steps
    mirror = copy.deepcopy(ref)
    mirror.load_state_dict(fast.state_dict())
    assert_outputs_close(run(x), float64_truth(mirror.eval(), x))
    with pytest.raises(ValueError, match="captured for"):
        run(torch.rand(1, 3, 64, 64, device=device))
    with pytest.raises(ValueError, match="captured for"):
        run(x.double())
    with pytest.raises(ValueError, match="eval"):
        cuda_graph(fast.train(), x)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["float32", "tf32", "bfloat16"])
def test_gpu_eval_parity(mode):
    ref, fast = make_pair(*CONFIGS[0], device="cuda")
    x = torch.rand(2, 3, 64, 128, device="cuda")
    truth = float64_truth(ref.eval(), x)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        with torch.no_grad():
            if mode == "bfloat16":
                outs = copy.deepcopy(fast).bfloat16().eval()(x.bfloat16())
                same_dtype = copy.deepcopy(ref).bfloat16().eval()(x.bfloat16())
                assert_outputs_close(outs, truth, mode, same_dtype)
            else:
                assert_outputs_close(fast.eval()(x), truth, mode)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.gpu
def test_gpu_train_parity():
    ref, fast = make_pair(*CONFIGS[0], device="cuda")
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        x = torch.rand(2, 3, 64, 64, device="cuda")
        target = torch.rand(2, 5, 16, 16, device="cuda")
        ref64 = copy.deepcopy(ref).double()
        assert_outputs_close(_train_step(fast.train(), x, target), _train_step(ref64.train(), x.double(), target.double()))
        grads = dict(fast.named_parameters())
        for name, p in ref64.named_parameters():
            assert_close_to_reference(grads[name].grad, p.grad, "float32")
    finally:
        torch.backends.cudnn.allow_tf32 = old


def test_cpu_runner_handles_new_input_sizes_and_forced_backend(monkeypatch):
    """The float32 CPU plan prepacks weights for the first input size; other sizes stay correct,
    and a forced backend runs the public ops instead (same results)."""
    ref, fast = make_pair(*CONFIGS[0])
    fast.eval()
    for shape in [(1, 3, 64, 64), (2, 3, 128, 64)]:
        assert_plan_matches(fast, ref, torch.rand(shape))
    monkeypatch.setenv("SHG_FAST_BACKEND", "reference")
    assert fast.plan_info()["runner"] == "ops"
    assert_plan_matches(fast, ref, torch.rand(1, 3, 64, 64))


def test_cpu_prologue_with_negative_and_zero_bn_scales():
    """The CPU runner's clamp prologue covers every sign of the block-input BN scale."""
    ref, _ = make_pair(*SMALL)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, reference.Residual):
                m.bn1.weight[0::3] *= -1.0
                m.bn1.weight[1::3] = 0.0
    fast = StackedHourglass(*SMALL)
    fast.load_state_dict(ref.state_dict())
    assert_plan_matches(fast, ref, torch.rand(2, 3, 64, 64))


def test_cpu_runner_uses_winograd_for_3x3_convs_unless_disabled(monkeypatch):
    """float32 CPU plans run their 3x3 convs (maps of 8x8 and up) by Winograd; SHG_FAST_WINOGRAD=0 turns it off.

    Both ways match the float64 reference; the weight transform is done once per plan.
    """
    from shg_fast import ops
    from shg_fast.plan import WINOGRAD_MIN_SIDE

    if mkldnn_runner_reasons() or not ops.winograd_available():
        pytest.skip("the float32 CPU runner or the Winograd kernel is not available")
    calls, transforms = [], []
    conv, transform = ops.winograd_conv3x3, ops.winograd_weight
    monkeypatch.setattr(ops, "winograd_conv3x3", lambda x, *a, **k: calls.append(x.shape[-2:]) or conv(x, *a, **k))
    monkeypatch.setattr(ops, "winograd_weight", lambda w: transforms.append(w.shape) or transform(w))
    ref, fast = make_pair(*CONFIGS[0])
    x = torch.rand(1, 3, 128, 128)
    assert fast.eval().plan_info()["winograd_3x3"]
    assert_plan_matches(fast, ref, x)
    assert calls and all(min(hw) >= WINOGRAD_MIN_SIDE for hw in calls)
    first_calls = len(calls)
    assert len(transforms) == first_calls  # every block has its own 3x3 weight
    assert_plan_matches(fast, ref, x)
    assert len(calls) == 2 * first_calls and len(transforms) == first_calls  # transformed once per plan

    monkeypatch.setenv("SHG_FAST_WINOGRAD", "0")
    assert not fast.plan_info()["winograd_3x3"]
    assert_plan_matches(fast, ref, x)
    assert len(calls) == 2 * first_calls


def test_cpu_runner_uses_conv1x1_for_1x1_convs_unless_disabled(monkeypatch):
    """float32 CPU plans run every 1x1 conv on shg_fast::conv1x1, each block's clamp prologue fused into
    its conv1; SHG_FAST_CONV1X1=0 runs them on oneDNN. Both ways match the float64 reference.
    """
    from shg_fast import cpu_runner, ops

    if mkldnn_runner_reasons() or not ops.conv1x1_available():
        pytest.skip("the float32 CPU runner or the conv1x1 kernel is not available")
    calls, packs = [], []
    conv, pack = cpu_runner.conv1x1, cpu_runner.conv1x1_weight
    monkeypatch.setattr(cpu_runner, "conv1x1", lambda x, *a, **k: calls.append(k.get("clamp") is not None) or conv(x, *a, **k))
    monkeypatch.setattr(cpu_runner, "conv1x1_weight", lambda w: packs.append(w.shape) or pack(w))
    ref, fast = make_pair(*CONFIGS[0])
    x = torch.rand(1, 3, 64, 64)
    assert fast.eval().plan_info()["conv1x1"]
    assert_plan_matches(fast, ref, x)
    blocks = fast.plan_info()["residual_blocks"]
    assert sum(calls) == blocks  # one fused clamp per block, in its conv1
    first_calls = len(calls)
    assert len(packs) == first_calls  # every 1x1 conv has its own weights, packed once per plan
    assert_plan_matches(fast, ref, x)
    assert len(calls) == 2 * first_calls and len(packs) == first_calls

    monkeypatch.setenv("SHG_FAST_CONV1X1", "0")
    assert not fast.plan_info()["conv1x1"]
    assert_plan_matches(fast, ref, x)
    assert len(calls) == 2 * first_calls


def test_updates_through_data_need_invalidate_plan():
    """``p.data`` has its own version counter, so only invalidate_plan() shows such updates."""
    _, fast = make_pair()
    x = torch.rand(1, 3, 64, 64)
    build_plan_once(fast, x)
    key = state_key(fast)
    fast.out[1].bias.data.add_(1.0)
    fast.hg[0].low2.low2.low2.low2[0].bn2.running_var.data.mul_(3.0)
    fast.invalidate_plan()
    assert state_key(fast) != key
    assert_plan_matches(fast, mirror_of(fast), x)


def test_state_key_follows_registered_parameters_and_buffers():
    _, fast = make_pair(*SMALL)
    key = state_key(fast)
    fast.bn1.register_buffer("extra", torch.zeros(1))
    assert state_key(fast) != key
    key = state_key(fast)
    fast.bn1.weight = torch.nn.Parameter(fast.bn1.weight.detach().clone())
    assert state_key(fast) != key
