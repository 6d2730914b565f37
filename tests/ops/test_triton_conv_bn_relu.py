"""The triton fused conv and residual block against their float64 references.

On a CPU machine they run in the Triton interpreter in float32; TF32 and 16-bit cases carry
the ``gpu`` marker.
"""

import pytest
import torch

from shg_fast.folding import FoldedResidual
from shg_fast.ops import conv_bn_relu, conv_bn_relu_reference, residual_block, residual_block_reference
from shg_fast.reference import Residual
from shg_fast.tolerances import assert_close_to_reference

from ..helpers import randomize_bn

conv_config = pytest.importorskip("shg_fast.kernels.conv_bn_relu").conv_config

# (device, mode): mode is a TOLERANCES key; "tf32" runs float32 with TF32 products allowed.
MODES = [
    ("cpu", "float32"),
    pytest.param("cuda", "float32", marks=pytest.mark.gpu),
    pytest.param("cuda", "tf32", marks=pytest.mark.gpu),
    pytest.param("cuda", "float16", marks=pytest.mark.gpu),
    pytest.param("cuda", "bfloat16", marks=pytest.mark.gpu),
]
DTYPE = {"float32": torch.float32, "tf32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# (N, C_in, H, W, C_out, kernel, stride): 1x1 and 3x3 same padding, and the stem's 7x7 stride 2.
SHAPES = [
    (2, 3, 5, 7, 19, 3, 1),
    (1, 19, 5, 7, 130, 1, 1),
    (1, 130, 4, 6, 19, 3, 1),
    (1, 3, 11, 9, 16, 7, 2),
]
# Prologue/epilogue combinations: (in_scale, in_shift, in_relu, bias, out_relu, residual, upsample).
FLAGS = {
    "plain": (False, False, False, False, False, False, False),
    "bias": (False, False, False, True, False, False, False),
    "scale": (True, False, False, True, False, False, False),
    "shift_relu": (False, True, True, True, False, False, False),
    "bn_relu_in_out": (True, True, True, True, True, False, False),
    "residual": (False, False, False, True, False, True, False),
    "upsample": (False, False, False, True, True, False, True),
    "all": (True, True, True, True, True, True, True),
}


@pytest.fixture
def mode_setup():
    """Allow TF32 for the "tf32" mode only (restored afterwards).

    Set and restored by hand: torch.backends.cuda.matmul resolves ``allow_tf32`` through
    ``__getattr__``, which some pytest versions' monkeypatch cannot see (it then deletes it).
    """
    before = torch.backends.cuda.matmul.allow_tf32

    def setup(mode):
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"

    yield setup
    torch.backends.cuda.matmul.allow_tf32 = before


def conv_inputs(shape, flags, device, dtype, channels_last):
    """Random inputs of a conv_bn_relu call: (x, weight, bias, kwargs)."""
    n, c_in, h, w, c_out, k, stride = shape
    has_scale, has_shift, in_relu, has_bias, out_relu, has_res, has_up = flags
    oh, ow = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1

    def rand(*size):
        return torch.randn(*size, device=device).to(dtype)

    x = rand(n, c_in, h, w)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = rand(c_out, c_in, k, k) / (c_in * k * k) ** 0.5
    kwargs = dict(
        stride=stride,
        in_scale=(torch.rand(c_in, device=device) + 0.5).to(dtype) if has_scale else None,
        in_shift=rand(c_in) if has_shift else None,
        in_relu=in_relu, out_relu=out_relu,
        residual=rand(n, c_out, oh, ow) if has_res else None,
        upsample=rand(n, c_out, (oh + 1) // 2, (ow + 1) // 2) if has_up else None,
    )
    return x, weight, rand(c_out) if has_bias else None, kwargs


def cast(value, dtype):
    return value.to(dtype) if isinstance(value, torch.Tensor) else value


def assert_matches(out, mode, reference, *args, **kwargs):
    """Compare ``out`` with ``reference`` run in float64 (and in out's dtype for 16-bit modes)."""
    truth = reference(*(cast(a, torch.float64) for a in args), **{k: cast(v, torch.float64) for k, v in kwargs.items()})
    same = reference(*args, **kwargs) if mode in ("float16", "bfloat16") else None
    assert out.dtype == args[0].dtype and not torch.isnan(out).any()
    assert_close_to_reference(out, truth, mode, same)


# Every combination on the 3x3 shape; the others with none and all of them (the interpreter is slow).
CONV_CASES = [(SHAPES[0], name) for name in FLAGS] + [(shape, name) for shape in SHAPES[1:] for name in ("plain", "all")]


@pytest.mark.parametrize("device,mode", MODES)
@pytest.mark.parametrize("shape,flags", [(s, FLAGS[f]) for s, f in CONV_CASES],
                         ids=["x".join(map(str, s)) + "-" + f for s, f in CONV_CASES])
def test_conv_matches_reference(device, mode, shape, flags, mode_setup, poison_empty):
    mode_setup(mode)
    x, weight, bias, kwargs = conv_inputs(shape, flags, device, DTYPE[mode], channels_last=True)
    out = conv_bn_relu(x, weight, bias, backend="triton", **kwargs)
    assert_matches(out, mode, conv_bn_relu_reference, x, weight, bias, **kwargs)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("k,stride,padding", [(5, 2, 1), (3, 2, 0), (1, 2, 0)])
def test_conv_generic_kernel_stride_padding(k, stride, padding, poison_empty):
    x = torch.randn(2, 5, 9, 8).to(memory_format=torch.channels_last)
    weight, bias = torch.randn(7, 5, k, k), torch.randn(7)
    kwargs = dict(stride=stride, padding=padding, in_shift=torch.randn(5), in_relu=True, out_relu=True)
    out = conv_bn_relu(x, weight, bias, backend="triton", **kwargs)
    assert_matches(out, "float32", conv_bn_relu_reference, x, weight, bias, **kwargs)


def test_conv_float16_in_the_interpreter(poison_empty):
    x, weight, bias, kwargs = conv_inputs(SHAPES[0], FLAGS["all"], "cpu", torch.float16, channels_last=True)
    out = conv_bn_relu(x, weight, bias, backend="triton", **kwargs)
    assert_matches(out, "float16", conv_bn_relu_reference, x, weight, bias, **kwargs)


@pytest.mark.parametrize("device,mode", MODES[:2])
def test_conv_nchw_and_strided_inputs(device, mode, poison_empty):
    x, weight, bias, kwargs = conv_inputs(SHAPES[0], FLAGS["all"], device, torch.float32, channels_last=False)
    x = torch.randn(2, 3, 5, 14, device=device)[..., ::2]  # non-dense input
    weight = torch.randn(3, 3, 19, 3, device=device).permute(2, 0, 1, 3)  # permuted weight
    out = conv_bn_relu(x, weight, bias, backend="triton", **kwargs)
    assert_matches(out, mode, conv_bn_relu_reference, x, weight, bias, **kwargs)
    assert out.is_contiguous()


@pytest.mark.parametrize("device,mode", MODES)
@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("upsample", [False, True])
def test_second_input_is_concatenated_along_k(device, mode, prologue, upsample, mode_setup, poison_empty):
    """x2 adds C2 channels to the GEMM without the prologue: conv(cat([relu(bn(x)), x2]))."""
    mode_setup(mode)
    dtype = DTYPE[mode]
    n, c1, c2, c_out, h, w = 2, 19, 3, 130, 5, 7
    x = torch.randn(n, c1, h, w, device=device).to(dtype).to(memory_format=torch.channels_last)
    x2 = torch.randn(n, c2, h, w, device=device).to(dtype).to(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c1 + c2, 1, 1, device=device).to(dtype) / 5
    bias = torch.randn(c_out, device=device).to(dtype)
    scale = (torch.rand(c1, device=device) + 0.5).to(dtype) if prologue else None
    shift = torch.randn(c1, device=device).to(dtype) if prologue else None
    up = torch.randn(n, c_out, 3, 4, device=device).to(dtype) if upsample else None
    out = torch.ops.shg_fast.conv_bn_relu_triton(x, weight, bias, x2, scale, shift, None, up, 1, 0, prologue,
                                                  False, mode == "tf32")

    def reference(x, x2, weight, bias, scale, shift, up):
        h = conv_bn_relu_reference(x, torch.eye(c1, dtype=x.dtype, device=device)[:, :, None, None],
                                   in_scale=scale, in_shift=shift, in_relu=prologue)
        return conv_bn_relu_reference(torch.cat([h, x2], dim=1), weight, bias, upsample=up)

    assert_matches(out, mode, reference, x, x2, weight, bias, scale, shift, up)


@pytest.mark.parametrize("device,mode", MODES)
@pytest.mark.parametrize("channels", [(130, 130), (19, 130), (3, 38)], ids=lambda c: f"{c[0]}to{c[1]}")
@pytest.mark.parametrize("with_upsample", [False, True])
def test_residual_block_matches_reference(device, mode, channels, with_upsample, mode_setup, poison_empty):
    mode_setup(mode)
    dtype = DTYPE[mode]
    cin, cout = channels
    module = randomize_bn(Residual(cin, cout)).eval()
    block = FoldedResidual.from_module(module).to(device=device, dtype=dtype)
    x = torch.randn(2, cin, 5, 7, device=device).to(dtype).to(memory_format=torch.channels_last)
    up = torch.randn(2, cout, 3, 4, device=device).to(dtype) if with_upsample else None
    out = residual_block(x, block, up, backend="triton")
    block64 = FoldedResidual.from_module(module).to(device=device, dtype=torch.float64)
    truth = residual_block_reference(x.double(), block64, None if up is None else up.double())
    same = residual_block_reference(x, block, up) if mode in ("float16", "bfloat16") else None
    assert out.dtype == dtype and not torch.isnan(out).any()
    assert_close_to_reference(out, truth, mode, same)


def test_checks_give_reasons():
    x, weight = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 1, 1, dtype=torch.float64)
    with pytest.raises(Exception, match="does not support x dtype torch.float64"):
        conv_bn_relu(x, weight, backend="triton")
    with pytest.raises(Exception, match="x's dtype"):
        conv_bn_relu(x.float(), weight.half(), backend="triton")
    with pytest.raises(Exception, match="padding"):
        conv_bn_relu(x.float(), weight.float(), padding=-1, backend="triton")
    block = FoldedResidual.from_module(Residual(3, 4).eval()).to(torch.float64)
    with pytest.raises(Exception, match="does not support x dtype torch.float64"):
        residual_block(x, block, backend="triton")
    with pytest.raises(Exception, match="forward-only"):
        conv_bn_relu(x.float().requires_grad_(), weight.float(), backend="triton")
    with pytest.raises(Exception, match="forward-only"):
        residual_block(x.float().requires_grad_(), block.to(torch.float32), backend="triton")
    with torch.no_grad():
        assert conv_bn_relu(x.float().requires_grad_(), weight.float(), backend="triton").shape == (1, 2, 4, 4)


SPLIT_SHAPES = [SHAPES[2], SHAPES[3], (1, 40, 6, 5, 24, 3, 1)]


@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=["x".join(map(str, s)) for s in SPLIT_SHAPES])
def test_split_k_matches_whole_k_and_is_deterministic(shape, monkeypatch, poison_empty):
    """Split-K (chosen here: few output tiles) against one K range per tile (forced by reporting 1 SM)."""
    from shg_fast.ops import triton_backend

    x, weight, bias, kwargs = conv_inputs(shape, FLAGS["all"], "cpu", torch.float32, channels_last=True)
    n, c_in, h, w, c_out, k, stride = shape
    oh, ow = out_size = ((h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1)
    assert conv_config(n * oh * ow, c_in, 0, c_out, k, k, 4, False)["SPLIT_K"] > 1
    split = conv_bn_relu(x, weight, bias, backend="triton", **kwargs)
    assert torch.equal(conv_bn_relu(x, weight, bias, backend="triton", **kwargs), split)
    monkeypatch.setattr(triton_backend, "_sm_count", lambda device: 1)
    assert conv_config(n * oh * ow, c_in, 0, c_out, k, k, 4, False, sms=1)["SPLIT_K"] == 1
    whole = conv_bn_relu(x, weight, bias, backend="triton", **kwargs)
    assert split.shape[-2:] == out_size
    assert_matches(split, "float32", conv_bn_relu_reference, x, weight, bias, **kwargs)
    assert_matches(whole, "float32", conv_bn_relu_reference, x, weight, bias, **kwargs)


@pytest.mark.parametrize("element_size,tf32", [(4, False), (4, True), (2, False)], ids=["fp32", "tf32", "16bit"])
def test_conv_config_rules(element_size, tf32):
    """Tensor-core tiles are warpgroup-shaped; split-K only when tiles leave SMs idle; shares >= 4 steps."""
    for m, c1, c2, c_out, k in [(64 * 4096, 256, 0, 128, 1), (16, 128, 0, 128, 3), (64, 128, 0, 128, 3),
                                (16384, 3, 0, 64, 7), (1024, 128, 128, 256, 1)]:
        cfg = conv_config(m, c1, c2, c_out, k, k, element_size, tf32)
        if element_size == 2 or tf32:
            assert cfg["BLOCK_M"] in (64, 128) and cfg["BLOCK_M"] * 16 <= 128 * cfg["num_warps"] * 16
        tiles = -(-m // cfg["BLOCK_M"]) * -(-c_out // cfg["BLOCK_N"])
        steps = (-(-k * k * c1 // cfg["BLOCK_K"]) if cfg["PACK_TAPS"] else
                 k * k * (-(-c1 // cfg["BLOCK_K"]) + (-(-c2 // cfg["BLOCK_K"]) if c2 else 0)))
        split = cfg["SPLIT_K"]
        assert split == 1 or (tiles * split <= 132 and steps >= split * 4), (m, c1, cfg)
        assert cfg["PACK_TAPS"] == (k > 1 and c1 < 16)
    assert conv_config(16, 128, 0, 128, 3, 3, element_size, tf32)["SPLIT_K"] > 1  # a 4x4 map at batch 1
    assert conv_config(64 * 4096, 256, 0, 128, 1, 1, element_size, tf32)["SPLIT_K"] == 1
    # A pooled input halves BLOCK_K (the pipeline stages a window's four loads; see compiled-code.json).
    plain = conv_config(64 * 1024, 256, 0, 128, 1, 1, element_size, tf32)
    pooled = conv_config(64 * 1024, 256, 0, 128, 1, 1, element_size, tf32, pooled=True)
    assert pooled["BLOCK_K"] == max(16, plain["BLOCK_K"] // 2)
    assert {k: v for k, v in pooled.items() if k not in ("BLOCK_K", "SPLIT_K")} == \
        {k: v for k, v in plain.items() if k not in ("BLOCK_K", "SPLIT_K")}
