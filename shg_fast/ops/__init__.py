"""The fused operations, one public function each, with pure-PyTorch reference twins.

Each function validates its arguments, picks a backend (``backend=``, ``$SHG_FAST_BACKEND``
or ``auto``; see :mod:`shg_fast.backends`) and runs it.
"""

from . import extension_backend  # noqa: F401  (registers the extension backends of residual_block)
from .conv1x1 import conv1x1, conv1x1_available, conv1x1_reference, conv1x1_weight
from .conv_bn_relu import conv_bn_relu, conv_bn_relu_reference
from .decode_heatmaps import MPII_FLIP_PAIRS, decode_heatmaps, decode_heatmaps_reference, flip_permutation
from .residual_block import residual_block, residual_block_reference
from .upsample_add import upsample_add, upsample_add_reference
from .winograd import winograd_available, winograd_conv3x3, winograd_conv3x3_reference, winograd_weight
from . import triton_backend  # noqa: E402,F401  (registers the triton backend; never raises)

__all__ = [
    "MPII_FLIP_PAIRS",
    "conv1x1",
    "conv1x1_available",
    "conv1x1_reference",
    "conv1x1_weight",
    "conv_bn_relu",
    "conv_bn_relu_reference",
    "decode_heatmaps",
    "decode_heatmaps_reference",
    "flip_permutation",
    "residual_block",
    "residual_block_reference",
    "upsample_add",
    "upsample_add_reference",
    "winograd_available",
    "winograd_conv3x3",
    "winograd_conv3x3_reference",
    "winograd_weight",
]
