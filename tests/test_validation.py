"""Every public entry: clear errors for bad input; odd layouts, empty batches and NaN/Inf work."""

import pathlib
import re

import pytest
import torch

from shg_fast.folding import FoldedResidual
from shg_fast.ops import conv_bn_relu, conv_bn_relu_reference, decode_heatmaps, residual_block, upsample_add
from shg_fast.ops.conv_bn_relu import CONV_BN_RELU
from shg_fast.ops.decode_heatmaps import DECODE_HEATMAPS
from shg_fast.ops.residual_block import RESIDUAL_BLOCK, residual_block_reference
from shg_fast.ops.upsample_add import UPSAMPLE_ADD
from shg_fast.reference import Residual, StackedHourglass
from shg_fast.tolerances import assert_close_to_reference

from .helpers import backends_of, randomize_bn

REPO = pathlib.Path(__file__).resolve().parents[1]


def _block(cin=6, cout=8):
    return FoldedResidual.from_module(randomize_bn(Residual(cin, cout)).eval())


def _meta(t):
    return t.to("meta")


DEVICE_MISMATCHES = {
    "upsample_add": lambda: upsample_add(_meta(torch.randn(1, 2, 2, 2)), torch.randn(1, 2, 4, 4)),
    "decode_heatmaps": lambda: decode_heatmaps(torch.randn(1, 2, 4, 4), _meta(torch.randn(1, 2, 4, 4))),
    "conv_bn_relu": lambda: conv_bn_relu(torch.randn(1, 2, 4, 4), _meta(torch.randn(3, 2, 1, 1))),
    "residual_block": lambda: residual_block(_meta(torch.randn(1, 6, 4, 4)), _block()),
    "model": lambda: StackedHourglass(1, 8, 2)(_meta(torch.randn(1, 3, 64, 64))),
}


@pytest.mark.parametrize("entry", list(DEVICE_MISMATCHES))
def test_device_mismatch_is_a_clear_error(entry):
    with pytest.raises(ValueError, match=r"(one device|cpu|meta)"):
        DEVICE_MISMATCHES[entry]()


BAD_CALLS = [
    (lambda: conv_bn_relu(torch.randn(1, 2, 4, 4), torch.randn(3, 2, 1, 1, dtype=torch.float64)), TypeError,
     "every tensor must have x's dtype"),
    (lambda: conv_bn_relu(torch.randn(1, 2, 4), torch.randn(3, 2, 1, 1)), ValueError, "must be 4-D"),
    (lambda: conv_bn_relu(torch.randn(1, 2, 4, 4).int(), torch.randn(3, 2, 1, 1).int()), TypeError, "dtype must be"),
    (lambda: conv_bn_relu(torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3), padding=2), ValueError, "padding must be"),
    (lambda: conv_bn_relu(torch.randn(1, 2, 2, 2), torch.randn(3, 2, 7, 7), padding=0), ValueError, "smaller than"),
    (lambda: residual_block(torch.randn(1, 5, 4, 4), _block()), ValueError, "block expects 6"),
    (lambda: residual_block(torch.randn(1, 6, 4, 4).double(), _block()), ValueError, "use block.to"),
    (lambda: decode_heatmaps(torch.randn(2, 4, 4)), ValueError, "4-D"),
    (lambda: upsample_add(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 4, 4)), ValueError, r"\(1, 2, 2, 2\)"),
    (lambda: StackedHourglass(1, 8, 2)(torch.randn(1, 3, 64, 64, dtype=torch.float64)), TypeError,
     "differs from the model's"),
    (lambda: StackedHourglass(1, 8, 2)(torch.randn(1, 3, 64, 48)), ValueError, "multiples of 64"),
]


@pytest.mark.parametrize("call, exc, match", BAD_CALLS)
def test_bad_arguments_say_what_was_expected(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _layouts(t):
    """The same values as contiguous, channels_last and non-contiguous (strided) tensors."""
    wide = torch.cat([t, torch.full_like(t, float("nan"))], dim=1)  # the NaN half is never read
    return {
        "contiguous": t,
        "channels_last": t.to(memory_format=torch.channels_last),
        "strided": wide[:, : t.shape[1]],
    }


@pytest.mark.parametrize("backend", backends_of(CONV_BN_RELU))
def test_conv_bn_relu_any_layout_empty_and_nan(backend):
    x, w, b = torch.randn(2, 3, 5, 7), torch.randn(4, 3, 3, 3), torch.randn(4)
    scale, shift = torch.rand(3) + 0.5, torch.randn(3)
    kw = dict(in_scale=scale, in_shift=shift, in_relu=True, out_relu=True)
    truth = conv_bn_relu_reference(x.double(), w.double(), b.double(), in_scale=scale.double(),
                                   in_shift=shift.double(), in_relu=True, out_relu=True)
    for name, xl in _layouts(x).items():
        assert_close_to_reference(conv_bn_relu(xl, w, b, backend=backend, **kw), truth, "float32")
    assert conv_bn_relu(x[:0], w, b, backend=backend, **kw).shape == (0, 4, 5, 7)
    x[0, 1, 2, 3] = float("nan")
    x[1, 0, 0, 0] = float("inf")
    out = conv_bn_relu(x, w, b, backend=backend)
    assert torch.isnan(out[0, :, 1:4, 2:5]).all() and torch.isfinite(out[0, :, :, :1]).all()
    assert not torch.isfinite(out[1, :, :2, :2]).all()


@pytest.mark.parametrize("backend", backends_of(RESIDUAL_BLOCK))
def test_residual_block_any_layout_empty_and_nan(backend):
    block, x, up = _block(), torch.randn(2, 6, 5, 7), torch.randn(2, 8, 3, 4)
    truth = residual_block_reference(x.double(), block.to(torch.float64), up.double())
    for name, xl in _layouts(x).items():
        assert_close_to_reference(residual_block(xl, block, _layouts(up)[name], backend=backend), truth, "float32")
    assert residual_block(x[:0], block, up[:0], backend=backend).shape == (0, 8, 5, 7)
    x[0, 0, 0, 0] = float("nan")
    out = residual_block(x, block, backend=backend)
    assert torch.isnan(out[0, :, :2, :2]).all() and torch.isfinite(out[1]).all()


@pytest.mark.parametrize("backend", sorted(set(backends_of(UPSAMPLE_ADD)) & set(backends_of(DECODE_HEATMAPS))))
def test_upsample_add_and_decode_any_layout(backend):
    low, skip = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 5, 7)
    truth = upsample_add(low, skip, backend="reference")
    hm = torch.randn(2, 3, 5, 7)
    coords, maxvals = decode_heatmaps(hm, backend="reference")
    for name in ("channels_last", "strided"):
        assert torch.equal(upsample_add(_layouts(low)[name], _layouts(skip)[name], backend=backend), truth)
        got = decode_heatmaps(_layouts(hm)[name], backend=backend)
        assert torch.equal(got[0], coords) and torch.equal(got[1], maxvals)


def test_model_any_layout_empty_batch_and_nan(one_thread):
    model = randomize_bn(StackedHourglass(1, 8, 3)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        truth = model(x)
        for name, xl in _layouts(x).items():
            for a, b in zip(model(xl), truth):
                assert_close_to_reference(a, b, "float32")
        assert [o.shape for o in model(x[:0])] == [(0, 3, 16, 16)]
        x[0, :, 30, 30] = float("nan")
        out = model(x)
    assert torch.isnan(out[-1][0]).any() and torch.isfinite(out[-1][1]).all()


def test_model_runs_under_autocast_with_mixed_dtypes(one_thread):
    model = StackedHourglass(1, 8, 2).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(1, 3, 64, 64))
    assert out[0].dtype == torch.bfloat16 and torch.isfinite(out[0]).all()


# A declaration of a 32-bit (or narrower) integer variable in a kernel source.
NARROW_INDEX = re.compile(r"\b(int|unsigned|int32_t|uint32_t|short|long)\s+(?!main\b)\w+\s*[=;,)\[]")


def test_cpu_kernels_index_with_64_bit_integers():
    """Cheap proof for tensors past 2^31 elements: the C++ kernels declare no narrow index type.

    Actually allocating such tensors needs > 8 GB (see the gpu-marked test below); every index,
    count and offset in csrc/cpu is int64_t, which this scan enforces.
    """
    sources = sorted((REPO / "csrc" / "cpu").glob("*.cpp"))
    assert sources, "no C++ kernel sources found"
    offenders = [f"{path.name}:{i}: {line.strip()}" for path in sources
                 for i, line in enumerate(path.read_text().splitlines(), 1)
                 if NARROW_INDEX.search(line.split("//")[0])]
    assert offenders == []
    assert NARROW_INDEX.search("for (int i = 0; i < n; ++i)")  # the scan does catch a narrow index


@pytest.mark.gpu
def test_upsample_add_past_2_to_the_31_elements_on_gpu():
    skip = torch.randn(1, 1, 2 ** 16 + 2, 2 ** 15 + 3, device="cuda", dtype=torch.float16)
    low = torch.randn(1, 1, 2 ** 15 + 1, 2 ** 14 + 2, device="cuda", dtype=torch.float16)
    assert skip.numel() > 2 ** 31
    out = upsample_add(low, skip)
    for y, x in ((0, 0), (-1, -1), (-2, -3), (2 ** 16, 2 ** 15)):
        expected = skip[0, 0, y, x] + low[0, 0, (y % skip.shape[2]) // 2, (x % skip.shape[3]) // 2]
        assert out[0, 0, y, x] == expected
