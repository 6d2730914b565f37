import pytest
import torch

from shg_fast.reference import Hourglass, Lin, Residual, StackedHourglass


@pytest.mark.parametrize("stacks,count", [(8, 25_434_112), (2, 6_570_400), (1, 3_426_448)])
def test_parameter_count(stacks, count):
    model = StackedHourglass(num_stacks=stacks)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("n,h,w", [(1, 64, 64), (2, 64, 128)])
def test_output_shapes(n, h, w):
    model = StackedHourglass(num_stacks=2, num_features=32, num_joints=5).eval()
    with torch.no_grad():
        out = model(torch.rand(n, 3, h, w))
    assert isinstance(out, list) and len(out) == 2
    for hm in out:
        assert hm.shape == (n, 5, h // 4, w // 4)
        assert torch.isfinite(hm).all()
    assert not torch.equal(out[0], out[1])


def biases_before_batchnorm(model) -> set[str]:
    """The biases of convs whose output only feeds a BatchNorm (the stem's conv, each Residual's conv1
    and conv2, each Lin's conv): training-mode BN removes any per-channel constant, so their gradient
    is 0 in exact arithmetic, and in float32 rounding noise that some summation orders make exactly 0."""
    names = {"conv1.bias"}
    for name, module in model.named_modules():
        if isinstance(module, Residual):
            names |= {f"{name}.conv1.bias", f"{name}.conv2.bias"}
        elif isinstance(module, Lin):
            names.add(f"{name}.conv.bias")
    return names


def test_gradients_reach_every_parameter():
    """Every parameter gets a gradient: non-zero, but for the biases ahead of a BN, which get zero up to rounding."""
    model = StackedHourglass(num_stacks=2, num_features=16, num_joints=3).train()
    out = model(torch.rand(2, 3, 128, 128))
    sum(o.square().mean() for o in out).backward()
    params = dict(model.named_parameters())
    before_bn = biases_before_batchnorm(model)
    assert before_bn <= set(params) and len(before_bn) == 1 + 2 * sum(isinstance(m, Residual) for m in model.modules()) + 2
    missing = [name for name, p in params.items()
               if p.grad is None or (name not in before_bn and not p.grad.abs().sum() > 0)]
    assert missing == []
    for name in before_bn:  # zero up to rounding, next to the same conv's weight gradient
        weight_grad = params[name.removesuffix("bias") + "weight"].grad
        assert params[name].grad.abs().max() <= 1e-4 * weight_grad.abs().max(), name


def test_residual_skip_kinds():
    assert Residual(8, 8).skip is None
    assert Residual(8, 16).skip is not None
    x = torch.randn(2, 8, 6, 6)
    assert Residual(8, 16)(x).shape == (2, 16, 6, 6)


def test_hourglass_matches_manual_composition():
    hg = Hourglass(1, 4).eval()
    x = torch.randn(1, 4, 8, 8)
    low = hg.low3(hg.low2(hg.low1(torch.nn.functional.max_pool2d(x, 2))))
    expected = hg.up1(x) + low.repeat_interleave(2, -1).repeat_interleave(2, -2)
    torch.testing.assert_close(hg(x), expected)


@pytest.mark.parametrize(
    "x,exc,match",
    [
        (torch.rand(3, 64, 64), ValueError, "4-D"),
        (torch.rand(1, 1, 64, 64), ValueError, "3 input channels"),
        (torch.rand(1, 3, 64, 96), ValueError, "multiples of 64"),
        (torch.rand(1, 3, 0, 64), ValueError, "multiples of 64"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "floating-point"),
        ("image", TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(x, exc, match):
    model = StackedHourglass(num_stacks=1, num_features=8, num_joints=2)
    with pytest.raises(exc, match=match):
        model(x)


@pytest.mark.parametrize("kwargs", [{"num_stacks": 0}, {"num_features": -4}, {"num_joints": 1.5}])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        StackedHourglass(**kwargs)
