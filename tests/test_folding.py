import pytest
import torch

from shg_fast.folding import FoldedResidual, bn_scale_shift, fold_bn_into_conv, merge_head
from shg_fast.ops import conv_bn_relu, residual_block
from shg_fast.reference import Residual
from shg_fast.tolerances import max_rel_error

from .helpers import randomize_bn


def test_bn_scale_shift_matches_eval_bn():
    bn = randomize_bn(torch.nn.BatchNorm2d(5)).eval()
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    scale, shift = bn_scale_shift(bn.double())
    torch.testing.assert_close(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), bn(x))


def test_fold_bn_into_conv():
    conv = torch.nn.Conv2d(3, 6, 3, padding=1).double()
    bn = randomize_bn(torch.nn.BatchNorm2d(6)).double().eval()
    w, b = fold_bn_into_conv(conv, bn)
    x = torch.randn(1, 3, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)))


@pytest.mark.parametrize("cin,cout", [(64, 128), (128, 128), (19, 130), (6, 6)])
@pytest.mark.parametrize("with_upsample", [False, True])
def test_residual_block_matches_module(cin, cout, with_upsample):
    module = randomize_bn(Residual(cin, cout)).double().eval()
    block = FoldedResidual.from_module(module)
    x = torch.randn(2, cin, 5, 7, dtype=torch.float64)
    up = torch.randn(2, cout, 3, 4, dtype=torch.float64) if with_upsample else None
    expected = module(x)
    if up is not None:
        expected = expected + up.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :5, :7]
    assert max_rel_error(residual_block(x, block, up), expected) < 1e-12


def test_projection_shares_the_last_gemm():
    block = FoldedResidual.from_module(Residual(4, 8).eval())
    w, b = block.last_gemm()
    assert w.shape == (8, 4 + 4, 1, 1) and b.shape == (8,)
    identity = FoldedResidual.from_module(Residual(8, 8).eval())
    assert identity.last_gemm()[0] is identity.w3


def test_block_to_casts_every_tensor():
    block = FoldedResidual.from_module(Residual(4, 8).eval()).to(torch.float64)
    assert block.w1.dtype == block.ws.dtype == block.in_scale.dtype == torch.float64


def test_residual_block_rejects_mismatches():
    block = FoldedResidual.from_module(Residual(4, 8).eval())
    with pytest.raises(ValueError, match="channels"):
        residual_block(torch.randn(1, 5, 4, 4), block)
    with pytest.raises(ValueError, match="block.to"):
        residual_block(torch.randn(1, 4, 4, 4, dtype=torch.float64), block)
    with pytest.raises(ValueError, match="upsample"):
        residual_block(torch.randn(1, 4, 4, 4), block, torch.randn(1, 8, 4, 4))
    with pytest.raises(TypeError, match="FoldedResidual"):
        residual_block(torch.randn(1, 4, 4, 4), object())


@pytest.mark.parametrize("k,stride", [(1, 1), (3, 1), (7, 2)])
def test_conv_bn_relu_reference_semantics(k, stride):
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    w = torch.randn(5, 3, k, k, dtype=torch.float64)
    b, scale, shift = (torch.randn(n, dtype=torch.float64) for n in (5, 3, 3))
    out = conv_bn_relu(x, w, b, stride=stride, in_scale=scale, in_shift=shift, in_relu=True, out_relu=True)
    pre = torch.relu(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))
    expected = torch.relu(torch.nn.functional.conv2d(pre, w, b, stride=stride, padding=k // 2))
    torch.testing.assert_close(out, expected)
    residual = torch.randn_like(out)
    up = torch.randn(out.shape[0], 5, (out.shape[2] + 1) // 2, (out.shape[3] + 1) // 2, dtype=torch.float64)
    out2 = conv_bn_relu(x, w, b, stride=stride, residual=residual, upsample=up)
    up_full = up.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., : out.shape[2], : out.shape[3]]
    torch.testing.assert_close(out2, torch.nn.functional.conv2d(x, w, b, stride=stride, padding=k // 2) + residual + up_full)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"weight": torch.randn(4, 2, 3, 3)}, "channels"),
        ({"weight": torch.randn(4, 3, 2, 2)}, "odd"),
        ({"bias": torch.randn(3)}, "bias"),
        ({"in_scale": torch.randn(4)}, "in_scale"),
        ({"residual": torch.randn(1, 4, 5, 5)}, "residual"),
        ({"upsample": torch.randn(1, 4, 4, 4)}, "upsample"),
        ({"stride": 3}, "stride"),
    ],
)
def test_conv_bn_relu_rejects_bad_arguments(kwargs, match):
    args = {"x": torch.randn(1, 3, 6, 6), "weight": torch.randn(4, 3, 3, 3)} | kwargs
    with pytest.raises(ValueError, match=match):
        conv_bn_relu(**args)


def test_merge_head_is_one_gemm_for_heatmaps_and_stream_update():
    f, k = 19, 3
    out, mf, mp = (torch.nn.Conv2d(a, b, 1).double() for a, b in ((f, k), (f, f), (k, f)))
    ll = torch.randn(2, f, 5, 7, dtype=torch.float64)
    w, b = merge_head(out, mf, mp)
    assert w.shape == (k + f, f, 1, 1) and b.shape == (k + f,)
    y = torch.nn.functional.conv2d(ll, w, b)
    heatmaps = out(ll)
    assert max_rel_error(y[:, :k], heatmaps) < 1e-12
    assert max_rel_error(y[:, k:], mf(ll) + mp(heatmaps)) < 1e-12
    w_last, b_last = merge_head(out)
    assert torch.equal(w_last, out.weight) and w_last is not out.weight and torch.equal(b_last, out.bias)
    with pytest.raises(ValueError, match="both"):
        merge_head(out, mf)
