"""The Python mirrors of the CUDA block kernel's shared memory and tiling against the C launchers.

Needs an extension built with CUDA (no GPU: both launchers are host arithmetic), as CI builds it.
"""

import ctypes

import pytest
import torch

from shg_fast import _extension
from shg_fast.ops.extension_backend import TILE_SIZES, cuda_launch_smem, cuda_smem_bytes, cuda_tiling

from .cuda_launcher import DTYPE_TAGS, block_args, library
from .test_residual_block_cpu import make_block

pytestmark = pytest.mark.skipif(not _extension.has_kernel("residual_block", "CUDA"),
                                reason="extension built without CUDA kernels")

H200_SMS, H200_SMEM = 132, 232448
SHAPES = [(256, 256), (128, 256), (128, 128), (64, 128), (19, 38), (48, 96), (16, 16)]


@pytest.fixture(scope="module")
def lib():
    found = library()
    assert found is not None, "the CUDA build does not export shg_residual_block_smem_bytes (symbol visibility?)"
    return found


@pytest.mark.parametrize("dtype", list(DTYPE_TAGS), ids=str)
@pytest.mark.parametrize("cin,cout", SHAPES)
@pytest.mark.parametrize("tf32", [False, True])
def test_smem_mirror_matches_the_launcher(lib, dtype, cin, cout, tf32):
    block = make_block(cin, cout, dtype)
    args = block_args(block, 1, 8, 8, allow_tf32=tf32)
    need = lib.shg_residual_block_smem_bytes(ctypes.byref(args), DTYPE_TAGS[dtype])
    assert need == cuda_smem_bytes(torch.empty(0, dtype=dtype), block, TILE_SIZES[-1], allow_tf32=tf32)


LAUNCHES = [(1, 128), (1, 64), (1, 32), (1, 16), (1, 8), (1, 4), (64, 4), (64, 64), (2, 5), (3, 17), (1, 1)]
LIMITS = [(H200_SMEM, True), (H200_SMEM, False), (60000, True)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cin,cout", SHAPES)
@pytest.mark.parametrize("batch,size", LAUNCHES)
@pytest.mark.parametrize("smem_limit,clusters", LIMITS)
def test_tiling_mirror_matches_the_launcher(lib, dtype, cin, cout, batch, size, smem_limit, clusters):
    """Tile and cluster sizes, shared memory per CTA and resident weights (the CTA's whole weight share loaded up
    front) of the launch, on both sides."""
    block = make_block(cin, cout, dtype)
    tf32 = dtype == torch.float32
    args = block_args(block, batch, size, size + 1, allow_tf32=tf32)
    tile, cluster, resident = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(-1)
    lib.shg_residual_block_tiling(ctypes.byref(args), DTYPE_TAGS[dtype], H200_SMS, smem_limit, int(clusters),
                                  ctypes.byref(tile), ctypes.byref(cluster))
    expect = cuda_tiling(dtype, block, batch, size, size + 1, H200_SMS, smem_limit, clusters, allow_tf32=tf32)
    assert (tile.value, cluster.value) == expect
    smem = lib.shg_residual_block_launch_smem(ctypes.byref(args), DTYPE_TAGS[dtype], H200_SMS, smem_limit,
                                              int(clusters), ctypes.byref(resident))
    expect = cuda_launch_smem(dtype, block, batch, size, size + 1, H200_SMS, smem_limit, clusters, allow_tf32=tf32)
    assert (smem, bool(resident.value)) == expect
    assert resident.value in (0, 1) and smem <= smem_limit


def test_small_maps_at_batch_1_hold_their_weights():
    """The rule's intent on an H200: batch-1 hourglass blocks on 32x32..4x4 maps load their whole weight share up
    front; batch 64 on a 64x64 map (many waves) streams it."""
    block = make_block(256, 256, torch.bfloat16)
    for size in (32, 16, 8, 4):
        assert cuda_launch_smem(torch.bfloat16, block, 1, size, size, H200_SMS, H200_SMEM)[1], size
    assert not cuda_launch_smem(torch.bfloat16, block, 64, 64, 64, H200_SMS, H200_SMEM)[1]
