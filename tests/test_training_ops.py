"""Memory-efficient training (``StackedHourglass(memory_efficient=True)``) against the reference model."""

import copy
import statistics

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from shg_fast import StackedHourglass, reference, training_ops
from shg_fast.ops import bn_train
from shg_fast.cli import main
from shg_fast import train as train_module
from shg_fast.tolerances import (LOW_PRECISION_FACTOR, MEMORY_EFFICIENT_SAVED_RATIO, TOLERANCES,
                              WELL_CONDITIONED_BN_BIAS, assert_close_to_reference, randomize_batchnorm, tolerance)
from shg_fast.train import default_args, train
from tests.data_.test_mpii import PHOTOS, write_annotations

SMALL = (2, 32, 5, 1)  # num_stacks, num_features, num_joints (odd), num_modules


def make_pair(config=SMALL, dtype=torch.float32, stem="torch7", seed=0, bn_bias=(-0.5, 0.5)):
    torch.manual_seed(seed)  # the same weights whatever ran before: the 1x1 inner maps make BN ill-conditioned
    ref = randomize_batchnorm(reference.StackedHourglass(*config, stem=stem), seed=seed, bias=bn_bias).to(dtype)
    fast = StackedHourglass(*config, stem=stem, memory_efficient=True).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref.train(), fast.train()


def train_step(model, x, target, amp=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        outs = model(x)
    loss = sum(((o.to(target.dtype) - target) ** 2).mean() for o in outs)
    loss.backward()
    return outs


def inputs(dtype=torch.float32, batch=2, res=64, joints=5, channels_last=False, seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, res, res, generator=gen).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.rand(batch, joints, res // 4, res // 4, generator=gen).to(dtype)


def grad_errors(model, truth):
    """Per parameter: max |grad - truth grad|, scaled by max |truth grad| of the module's weight and itself
    (biases of convs that feed a BN have a zero gradient in exact arithmetic)."""
    grads, modules = dict(model.named_parameters()), dict(truth.named_modules())
    errors = {}
    for name, p in truth.named_parameters():
        scale = max(p.grad.abs().max().item(), modules[name.rsplit(".", 1)[0]].weight.grad.abs().max().item())
        errors[name] = (grads[name].grad.double() - p.grad.double()).abs().max().item() / scale
    return errors


@pytest.mark.parametrize("stem", ["torch7", "bearpaw"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_float64_step_equals_the_reference(stem, channels_last):
    """In float64 rounding is negligible: outputs, every gradient and every buffer as the reference's."""
    ref, fast = make_pair(dtype=torch.float64, stem=stem)
    # 128x128 inputs: the innermost maps are 2x2, so BN sees 16 values per channel. At 64x64 (1x1 maps,
    # 4 values) BN is so ill-conditioned that summation order alone moves gradients by ~1e-10.
    x, target = inputs(torch.float64, batch=4, res=128, channels_last=channels_last)
    expected, outs = train_step(ref, x, target), train_step(fast, x, target)
    for out, exp in zip(outs, expected, strict=True):
        assert out.shape == exp.shape and out.dtype == exp.dtype
        assert_close_to_reference(out, exp, "float64")
    assert max(grad_errors(fast, ref).values()) <= tolerance("float64")
    buffers = dict(fast.named_buffers())
    for name, b in ref.named_buffers():
        assert_close_to_reference(buffers[name], b, "float64")
    assert int(fast.hg[0].up1[0].bn1.num_batches_tracked) == 1


def normwise_grad_error(model, truth) -> float:
    """``||grad - truth grad|| / ||truth grad||`` over all parameters at once (float64)."""
    grads = dict(model.named_parameters())
    diff = sum(((grads[n].grad.double() - p.grad.double()) ** 2).sum() for n, p in truth.named_parameters())
    return (diff / sum((p.grad.double() ** 2).sum() for p in truth.parameters())).sqrt().item()


# float32 training problems: 1 stack (half the depth over which rounding grows), BN over 8 values per
# channel at the innermost 2x2 maps, BN shifts that keep ReLU inputs off their kink (see the testing module).
FLOAT32_PROBLEM = dict(config=(1, 16, 5, 1), batch=2, res=128, seeds=range(9))


def test_float32_step_is_as_close_to_float64_as_the_reference():
    """float32 gradients and running statistics against float64, as close as the reference's own float32 run.

    Over nine well-conditioned problems, judged by the median: float32 rounding still flips a ReLU or
    max-pool decision in about one problem in ten (in either model: that problem's error jumps 10-1000x),
    while a defect raises the error in every problem. Measured on the 2-vCPU AMD EPYC (threads 1-3,
    oneDNN AVX2 and SSE41): median error 5e-7..8e-7 for both models; planted into the memory-efficient
    path, a recomputation from bfloat16-rounded x gives 5e-4 and invstd off by 1e-4 gives 1e-4.
    """
    config, batch, res = FLOAT32_PROBLEM["config"], FLOAT32_PROBLEM["batch"], FLOAT32_PROBLEM["res"]
    ref_errors, fast_errors = [], []
    for seed in FLOAT32_PROBLEM["seeds"]:
        ref, fast = make_pair(config, seed=seed, bn_bias=WELL_CONDITIONED_BN_BIAS)
        ref64 = copy.deepcopy(ref).double()
        x, target = inputs(batch=batch, res=res, joints=config[2], seed=1000 + seed)
        train_step(ref64, x.double(), target.double())
        train_step(ref, x, target)
        train_step(fast, x, target)
        ref_errors.append(normwise_grad_error(ref, ref64))
        fast_errors.append(normwise_grad_error(fast, ref64))
        buffers, truth = dict(fast.named_buffers()), dict(ref64.named_buffers())
        for name, b in ref.named_buffers():
            if b.is_floating_point():
                assert_close_to_reference(buffers[name], truth[name], "float32")
            else:
                assert torch.equal(buffers[name], b)
    fast_median, ref_median = statistics.median(fast_errors), statistics.median(ref_errors)
    assert fast_median <= tolerance("float32_train", ref_median), (fast_errors, ref_errors)


def test_running_statistics_bitwise_on_cpu_with_momentum_none():
    """The CPU path updates running statistics with ATen's own kernel: on the same BN input (the first
    block's, after the reference stem) bit-identical to nn.BatchNorm2d, with cumulative momentum too."""
    ref, fast = make_pair((1, 16, 3, 1))
    ref.r1.bn1.momentum = fast.r1.bn1.momentum = None
    x, target = inputs(joints=3)
    for _ in range(2):
        train_step(ref, x, target)
        train_step(fast, x, target)
    buffers = dict(fast.named_buffers())
    for name, b in ref.named_buffers():
        if name.startswith("r1.bn1") or name.endswith("num_batches_tracked"):
            assert torch.equal(buffers[name], b), name
        else:
            assert_close_to_reference(buffers[name], b, "float32")
    assert int(fast.r1.bn1.num_batches_tracked) == 2


def test_saves_at_most_the_ratio_of_the_reference():
    ref, fast = make_pair((2, 64, 16, 1))
    x, _ = inputs(batch=2, res=128)
    ref_bytes, _ = training_ops.saved_tensor_bytes(ref, x, exclude=list(ref.parameters()))
    fast_bytes, _ = training_ops.saved_tensor_bytes(fast, x, exclude=list(fast.parameters()))
    assert fast_bytes <= MEMORY_EFFICIENT_SAVED_RATIO * ref_bytes, fast_bytes / ref_bytes


def test_default_is_on_for_cpu_only_and_state_dict_identical_both_ways():
    ref, fast = make_pair()
    default = StackedHourglass(*SMALL)
    assert default.memory_efficient is None
    assert default.uses_memory_efficient_training(torch.empty(1, 3, 64, 64))
    assert not default.uses_memory_efficient_training(torch.empty(1, 3, 64, 64, device="meta"))
    default.memory_efficient = False
    assert not default.uses_memory_efficient_training(torch.empty(1, 3, 64, 64))
    default.load_state_dict(ref.state_dict())
    x, _ = inputs()
    saved_off, _ = training_ops.saved_tensor_bytes(default.train(), x)
    default.memory_efficient = None
    saved_auto, _ = training_ops.saved_tensor_bytes(default, x)
    assert saved_auto < 0.8 * saved_off  # the default path on the CPU is the memory-efficient one
    assert list(fast.state_dict()) == list(ref.state_dict())
    reference.StackedHourglass(*SMALL).load_state_dict(fast.state_dict(), strict=True)
    StackedHourglass(*SMALL, memory_efficient=True).load_state_dict(ref.state_dict(), strict=True)
    with pytest.raises(TypeError, match="memory_efficient"):
        StackedHourglass(*SMALL, memory_efficient="yes")
    with pytest.raises(TypeError, match="memory_efficient"):
        default.memory_efficient = 1


def test_eval_mode_is_unchanged():
    ref, fast = make_pair()
    x, _ = inputs()
    with torch.no_grad():
        expected, outs = ref.eval()(x), fast.eval()(x)
    for out, exp in zip(outs, expected, strict=True):
        assert_close_to_reference(out, exp, "float32")


def test_sync_batchnorm_blocks_fall_back_to_their_own_forward(monkeypatch):
    """convert_sync_batchnorm: every block then runs the reference forward, so SyncBatchNorm runs (and syncs)."""
    ref, fast = make_pair()
    fast = nn.SyncBatchNorm.convert_sync_batchnorm(fast)
    calls = []
    original = nn.SyncBatchNorm.forward
    monkeypatch.setattr(nn.SyncBatchNorm, "forward", lambda self, x: calls.append(1) or original(self, x))
    used = []
    monkeypatch.setattr(training_ops.BNReLUConv, "apply", lambda *a: used.append(1))
    x, target = inputs()
    expected, outs = train_step(ref, x, target), train_step(fast, x, target)
    assert not used and len(calls) == sum(isinstance(m, nn.SyncBatchNorm) for m in fast.modules())
    for out, exp in zip(outs, expected, strict=True):
        torch.testing.assert_close(out, exp, rtol=0, atol=0)


def test_block_reasons_name_what_blocks_the_fast_path():
    block = reference.Residual(8, 8).train()
    assert training_ops.block_reasons(block) == []
    block.bn2.eval()
    assert any("eval" in r for r in training_ops.block_reasons(block))
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(reference.Residual(8, 8))
    assert any("SyncBatchNorm" in r for r in training_ops.block_reasons(sync))
    assert any("parameters in torch.bfloat16" in r for r in training_ops.block_reasons(reference.Residual(8, 8).bfloat16()))


def test_autocast_bfloat16_matches_the_reference_error():
    """Under autocast bf16 the outputs are as far from float64 as the reference's autocast run (BN in float32)."""
    ref, fast = make_pair()
    x, target = inputs()
    truth = copy.deepcopy(ref).double()
    with torch.no_grad():
        exact = truth(x.double())
    expected, outs = train_step(ref, x, target, amp=torch.bfloat16), train_step(fast, x, target, amp=torch.bfloat16)
    for out, exp, t in zip(outs, expected, exact, strict=True):
        assert out.dtype == exp.dtype == torch.bfloat16
        assert_close_to_reference(out, t, "bfloat16", exp)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fast.parameters())


def test_torch_compile_training_matches_eager():
    ref, fast = make_pair((1, 16, 3, 1))
    x, target = inputs(joints=3)
    expected = train_step(copy.deepcopy(fast), x, target)
    eager = copy.deepcopy(fast)
    train_step(eager, x, target)
    outs = train_step(torch.compile(fast, backend="aot_eager"), x, target)
    for out, exp in zip(outs, expected, strict=True):
        assert_close_to_reference(out, exp, "float32")
    grads = dict(fast.named_parameters())
    errors = grad_errors(fast, eager)
    assert max(errors.values()) <= tolerance("float32"), max(errors, key=errors.get)
    assert all(grads[n].grad is not None for n, _ in eager.named_parameters())


def test_max_pool_and_bn_relu_conv_gradients_in_float64():
    """The two autograd functions against torch.autograd.gradcheck (float64, odd shapes)."""
    x = torch.randn(2, 3, 6, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(training_ops.max_pool_2x2, (x,))
    bn = nn.BatchNorm2d(5).double().train()
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    conv = nn.Conv2d(5, 7, 3, padding=1).double()
    xs = torch.randn(3, 5, 5, 3, dtype=torch.float64, requires_grad=True)

    def f(inp, w, b, cw, cb):
        bn.weight.data, bn.bias.data = w.detach(), b.detach()
        saved = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
        mean, invstd = training_ops._batch_statistics(bn, inp)
        bn.running_mean.copy_(saved[0]), bn.running_var.copy_(saved[1]), bn.num_batches_tracked.copy_(saved[2])
        return training_ops.BNReLUConv.apply(inp, mean, invstd, w, b, cw, cb, 1, torch.float64,
                                             bn_train.training_backend(inp, torch.float64))

    params = (bn.weight.detach().clone().requires_grad_(), bn.bias.detach().clone().requires_grad_(),
              conv.weight.detach().clone().requires_grad_(), conv.bias.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(f, (xs, *params))


def test_training_run_on_mpii_photos_tracks_the_reference_loss_curve(tmp_path, monkeypatch):
    """``train(..., memory_efficient=True)``: four RMSprop steps on MPII sample photos (annotations drawn
    at random, as tests/pose/test_train.py does) against the reference's losses, step by step.

    Both models start from the same weights with BNs shifted off the ReLU's kink
    (WELL_CONDITIONED_BN_BIAS): with BN's default zero shift, float32 rounding flips ReLUs of the
    1x1 innermost maps (BN over two values) and RMSprop's first updates (about lr * 10 * sign(grad))
    turn that into losses apart by up to 0.7% on some CPUs. The first two losses (before and after one
    update) agree within the train_loss tolerance; the whole curve may be at most LOW_PRECISION_FACTOR
    times as far from the reference as the reference started from weights 1 ulp off.
    """
    names = sorted(p.name for p in PHOTOS.glob("*.jpg"))[:4]
    sizes = [cv2.imread(str(PHOTOS / n)).shape[:2] for n in names]
    write_annotations(tmp_path / "ann.h5", names, sizes, np.random.default_rng(1))
    common = dict(stacks=2, features=16, res=64, batch_size=2, quiet=True, data="mpii", annot=str(tmp_path / "ann.h5"),
                  images=str(PHOTOS), epochs=2, val_every=0)
    build = train_module.build_model

    def well_conditioned(kind, ulps=0, **cfg):
        model = randomize_batchnorm(build(kind, **cfg), seed=0, bias=WELL_CONDITIONED_BN_BIAS)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + ulps * 2**-23)
        return model

    monkeypatch.setattr(train_module, "build_model", well_conditioned)
    ref = torch.tensor(train(default_args(**common, model="reference", out=str(tmp_path / "ref")))["loss"])
    fast = torch.tensor(train(default_args(**common, model="fast", memory_efficient=True,
                                           out=str(tmp_path / "fast")))["loss"])
    monkeypatch.setattr(train_module, "build_model", lambda kind, **cfg: well_conditioned(kind, ulps=1, **cfg))
    nudged = torch.tensor(train(default_args(**common, model="reference", out=str(tmp_path / "nudged")))["loss"])
    assert len(ref) == len(fast) == len(nudged) == 4
    torch.testing.assert_close(fast[:2], ref[:2], rtol=TOLERANCES["train_loss"], atol=0)
    drift, rounding_drift = (fast / ref - 1).abs().max().item(), (nudged / ref - 1).abs().max().item()
    assert drift <= max(TOLERANCES["train_loss"], LOW_PRECISION_FACTOR * rounding_drift), (drift, rounding_drift)
    with pytest.raises(ValueError, match="needs --model fast"):
        train(default_args(**common, model="reference", memory_efficient=True, out=str(tmp_path / "bad")))


def test_cli_refuses_memory_efficient_reference(capsys, tmp_path):
    code = main(["train", "--model", "reference", "--memory-efficient", "--stacks", "1", "--features", "16", "--res",
                 "64", "--batch-size", "2", "--train-size", "2", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--memory-efficient needs --model fast" in err
    assert not (tmp_path / "run").exists()


def _ddp_worker(rank, init_file, state, x, target, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = StackedHourglass(1, 16, 3, 1, memory_efficient=True)
        model.load_state_dict(state)
        ddp = torch.nn.parallel.DistributedDataParallel(model.train())
        sum(((o - target.chunk(2)[rank]) ** 2).mean() for o in ddp(x.chunk(2)[rank])).backward()
        torch.save({n: p.grad for n, p in model.named_parameters()}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one_process(tmp_path):
    """DDP (gloo, CPU) over the memory-efficient model: each rank's gradients equal one process's gradient
    of the two halves' mean loss (train-mode BN: statistics per rank, as plain BatchNorm under DDP)."""
    ref, model = make_pair((1, 16, 3, 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, target = inputs(batch=4, joints=3)
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path / "init"), state, x, target, str(tmp_path)), nprocs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same conv rounding (BN over 2 values amplifies it)
    try:
        halves = [sum(((o - t) ** 2).mean() for o in model(xs)) for xs, t in zip(x.chunk(2), target.chunk(2))]
        (sum(halves) / 2).backward()
    finally:
        torch.set_num_threads(threads)
    expected = torch.cat([p.grad.flatten() for p in model.parameters()])
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert_close_to_reference(torch.cat([grads[n].flatten() for n, _ in model.named_parameters()]), expected,
                                  "float32")


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("backend", ["triton", "cpu", "aten"])
def test_kernel_path_of_a_block_matches_float64(monkeypatch, momentum, backend):
    """Each path of a block: "triton" is the CUDA branch (Triton statistics, recomputation and backward)
    run in the interpreter on CPU tensors, "cpu" the C++ kernels, "aten" ATen's composite ops. One
    Residual's output, gradients and running statistics against float64 nn modules."""
    if backend == "cpu" and bn_train.cpu_reasons(torch.empty(1, 1, 1, 1)):
        pytest.skip("; ".join(bn_train.cpu_reasons(torch.empty(1, 1, 1, 1))))
    monkeypatch.setattr(training_ops, "training_backend", lambda x, dtype: backend)
    monkeypatch.setattr(training_ops, "_triton_statistics", lambda x: backend == "triton")
    block = randomize_batchnorm(reference.Residual(37, 38), seed=2).train()  # odd channels, projection skip
    for bn in (block.bn1, block.bn2, block.bn3):
        bn.momentum = momentum
    truth = copy.deepcopy(block).double()
    gen = torch.Generator().manual_seed(5)
    x, grad = torch.randn(3, 37, 5, 7, generator=gen) * 2 + 1, torch.randn(3, 38, 5, 7, generator=gen)
    x64, xs = x.double().requires_grad_(), x.clone().requires_grad_()
    out64, out = truth(x64), training_ops.residual(block, xs)
    out64.backward(grad.double())
    out.backward(grad)
    assert_close_to_reference(out, out64, "float32")
    assert_close_to_reference(xs.grad, x64.grad, "float32")
    grads = dict(block.named_parameters())
    for name, p in truth.named_parameters():
        if name not in ("conv1.bias", "conv2.bias"):  # biases ahead of a BN: zero gradient up to rounding
            assert_close_to_reference(grads[name].grad, p.grad, "float32")
    buffers = dict(block.named_buffers())
    for name, b in truth.named_buffers():
        assert_close_to_reference(buffers[name], b, "float32")
