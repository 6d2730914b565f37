"""Paper-faithful reference Stacked Hourglass network, in pure PyTorch.

Layer for layer as the original Torch7 training code (Newell, Yang, Deng, ECCV 2016):
pre-activation residual modules, a recursive hourglass of depth 4, intermediate
supervision with a heatmap per stack, and the predictions fed back into the next stack.
This module is the ground truth every fused path in shg_fast is compared against.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Residual", "Hourglass", "Lin", "StackedHourglass", "check_input", "STEMS"]

#: Input height and width must be multiples of this (four 2x poolings in the hourglass
#: below a 4x reduction in the stem).
INPUT_MULTIPLE = 64

#: The stems :class:`StackedHourglass` can build: ``(in, out)`` of ``r4`` and ``r5`` for ``f`` features
#: (``r1`` is always Residual(64, 128), before the max-pool). ``"torch7"`` is the original code's
#: (and princeton-vl's); ``"bearpaw"`` is bearpaw/pytorch-pose's (and anibali's), whose ``layer2``
#: is Bottleneck(128 -> 256, mid 128, projection) and ``layer3`` Bottleneck(256 -> 2 * 128, mid 128).
STEMS = {
    "torch7": lambda f: ((128, 128), (128, f)),
    "bearpaw": lambda f: ((128, 256), (256, f)),
}


class Residual(nn.Module):
    """Pre-activation bottleneck residual module of the original code.

    BN(in) → ReLU → conv1x1(in→out/2) → BN → ReLU → conv3x3(out/2→out/2) → BN → ReLU →
    conv1x1(out/2→out), plus the identity when ``in == out``, else a plain conv1x1(in→out)
    on the raw input (no BN on the skip). Every conv has a bias.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"Residual needs an even out_channels, got {out_channels}")
        mid = out_channels // 2
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid, 1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1)
        self.skip = None if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.bn1(x)))
        h = self.conv2(F.relu(self.bn2(h)))
        h = self.conv3(F.relu(self.bn3(h)))
        return h + (x if self.skip is None else self.skip(x))


def _residuals(channels: int, num_modules: int) -> nn.Sequential:
    return nn.Sequential(*[Residual(channels, channels) for _ in range(num_modules)])


class Hourglass(nn.Module):
    """One hourglass level: ``up1(x) + upsample_nearest_2x(low3(low2(low1(maxpool(x)))))``.

    ``low2`` is a Hourglass of depth ``depth - 1``, or ``num_modules`` residuals at depth 1.
    """

    def __init__(self, depth: int, channels: int, num_modules: int = 1):
        super().__init__()
        if depth < 1:
            raise ValueError(f"Hourglass depth must be >= 1, got {depth}")
        self.depth = depth
        self.up1 = _residuals(channels, num_modules)
        self.low1 = _residuals(channels, num_modules)
        if depth > 1:
            self.low2 = Hourglass(depth - 1, channels, num_modules)
        else:
            self.low2 = _residuals(channels, num_modules)
        self.low3 = _residuals(channels, num_modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up1 = self.up1(x)
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2, 2))))
        return up1 + F.interpolate(low, scale_factor=2, mode="nearest")


class Lin(nn.Module):
    """The original's ``lin``: conv1x1 → BN → ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def check_input(x: torch.Tensor, in_channels: int = 3, parameter: torch.Tensor | None = None) -> None:
    """Raise a clear TypeError/ValueError unless ``x`` is a valid network input.

    With ``parameter`` (any weight of the model), also require x on the same device and, outside
    autocast, of the same dtype. Any batch size (0 included) and memory layout is valid.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor input, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point input (N, 3, H, W), got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D input (N, {in_channels}, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"expected {in_channels} input channels (N, {in_channels}, H, W), got shape {tuple(x.shape)}"
        )
    h, w = x.shape[-2:]
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE or h == 0 or w == 0:
        raise ValueError(
            f"input height and width must be positive multiples of {INPUT_MULTIPLE}, got {h}x{w}"
        )
    if parameter is None:
        return
    if x.device != parameter.device:
        raise ValueError(f"input is on {x.device} but the model is on {parameter.device}; move one with .to()")
    if x.dtype != parameter.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"input dtype {x.dtype} differs from the model's {parameter.dtype}; cast one with .to() "
                        "or run under torch.autocast")


def _check_mean(mean) -> tuple[float, float, float] | None:
    if mean is None:
        return None
    try:
        values = tuple(float(v) for v in mean)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"input_mean must be None or three finite numbers (R, G, B), got {mean!r}")
    return values


class StackedHourglass(nn.Module):
    """The Stacked Hourglass network (reference implementation).

    Args:
        num_stacks: number of hourglass stacks (8 in the paper).
        num_features: channels of the residual stream (256).
        num_joints: heatmap channels (16 for MPII).
        num_modules: residual modules per hourglass position (1).
        stem: ``"torch7"`` (the original: Residual(64,128) → maxpool → Residual(128,128) →
            Residual(128,f)) or ``"bearpaw"`` (bearpaw/pytorch-pose and anibali:
            Residual(64,128) → maxpool → Residual(128,256) → Residual(256,f)); see :data:`STEMS`.
        input_mean: ``None``, or an RGB mean that ``forward`` subtracts from its input first
            (weights trained on mean-subtracted images, as bearpaw's and anibali's).

    ``forward(x)`` takes ``(N, 3, H, W)`` with H and W multiples of 64 (RGB in [0, 1]) and
    returns a list of ``num_stacks`` heatmap tensors of shape ``(N, num_joints, H/4, W/4)``;
    the last one is the final prediction.
    """

    def __init__(self, num_stacks: int = 8, num_features: int = 256, num_joints: int = 16,
                 num_modules: int = 1, stem: str = "torch7", input_mean=None):
        super().__init__()
        for name, value in (("num_stacks", num_stacks), ("num_features", num_features),
                            ("num_joints", num_joints), ("num_modules", num_modules)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {sorted(STEMS)}, got {stem!r}")
        self.num_stacks = num_stacks
        self.num_features = num_features
        self.num_joints = num_joints
        self.num_modules = num_modules
        self.stem_kind = stem
        self.input_mean = _check_mean(input_mean)
        # A device copy of the mean (not in the state_dict), so that subtracting it copies nothing from the
        # host: normalize_input runs inside CUDA-graph captures too.
        self.register_buffer("input_mean_tensor", None if self.input_mean is None else
                             torch.tensor(self.input_mean).view(1, 3, 1, 1), persistent=False)
        f = num_features
        r4, r5 = STEMS[stem](f)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.r1 = Residual(64, 128)
        self.r4 = Residual(*r4)
        self.r5 = Residual(*r5)
        self.hg = nn.ModuleList([Hourglass(4, f, num_modules) for _ in range(num_stacks)])
        self.res = nn.ModuleList([_residuals(f, num_modules) for _ in range(num_stacks)])
        self.lin = nn.ModuleList([Lin(f, f) for _ in range(num_stacks)])
        self.out = nn.ModuleList([nn.Conv2d(f, num_joints, 1) for _ in range(num_stacks)])
        self.merge_features = nn.ModuleList([nn.Conv2d(f, f, 1) for _ in range(num_stacks - 1)])
        self.merge_preds = nn.ModuleList([nn.Conv2d(num_joints, f, 1) for _ in range(num_stacks - 1)])

    @property
    def config(self) -> dict:
        """The constructor arguments: ``type(model)(**model.config)`` builds the same network."""
        return {"num_stacks": self.num_stacks, "num_features": self.num_features, "num_joints": self.num_joints,
                "num_modules": self.num_modules, "stem": self.stem_kind,
                "input_mean": None if self.input_mean is None else list(self.input_mean)}

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` minus :attr:`input_mean` per channel (``x`` itself when there is none)."""
        if self.input_mean is None:
            return x
        return x - self.input_mean_tensor.to(x.dtype)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv7x7/2 → BN → ReLU → r1 → maxpool → r4 → r5 (channels as :data:`STEMS` says)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.r1(x), 2, 2)
        return self.r5(self.r4(x))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, parameter=self.conv1.weight)
        inter = self.stem(self.normalize_input(x))
        outputs = []
        for s in range(self.num_stacks):
            ll = self.lin[s](self.res[s](self.hg[s](inter)))
            heatmaps = self.out[s](ll)
            outputs.append(heatmaps)
            if s < self.num_stacks - 1:
                inter = inter + self.merge_features[s](ll) + self.merge_preds[s](heatmaps)
        return outputs
