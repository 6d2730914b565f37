import pytest
import torch

from shg_fast.reference import Hourglass, Residual, StackedHourglass


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


def test_gradients_reach_every_parameter():
    model = StackedHourglass(num_stacks=2, num_features=16, num_joints=3).train()
    out = model(torch.rand(2, 3, 64, 64))
    sum(o.square().mean() for o in out).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


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
