"""Two-process DistributedDataParallel (gloo, CPU) gives the gradients of one process on the whole batch.

The claim is made exact for both BatchNorm modes:

* eval-mode BN (frozen statistics, a common fine-tuning set-up): every sample is independent,
  so DDP's average of the per-rank mean losses' gradients equals the gradient of the mean loss
  over the whole batch in one process;
* train-mode BN (batch statistics per rank, as plain BatchNorm under DDP does): the one-process
  twin computes each rank's half of the batch in its own forward pass, and the gradient of the
  average of the two halves' losses must equal DDP's.

SyncBatchNorm cannot train on CPU tensors (PyTorch supports it on GPUs only); its conversion
is covered in tests/test_model.py.
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shg_fast import StackedHourglass
from shg_fast.tolerances import assert_close_to_reference

from .helpers import randomize_bn

WORLD = 2
CONFIG = (1, 16, 3, 1)


def _loss(model, x, target):
    return sum(((o - target) ** 2).mean() for o in model(x))


def _grads(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _worker(rank, init_file, state, x, target, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = StackedHourglass(*CONFIG)
        model.load_state_dict(state)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        results = {}
        for mode in ("eval", "train"):
            model.train(mode == "train")
            model.zero_grad()
            _loss(ddp, x.chunk(WORLD)[rank], target.chunk(WORLD)[rank]).backward()
            results[mode] = _grads(model)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process(tmp_path):
    model = randomize_bn(StackedHourglass(*CONFIG))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2 * WORLD, 3, 64, 64)
    target = torch.rand(2 * WORLD, CONFIG[2], 16, 16)
    mp.spawn(_worker, args=(str(tmp_path / "init"), state, x, target, str(tmp_path)), nprocs=WORLD)

    # The twin runs on the workers' one thread: this small network's float32 training gradients are
    # ill-conditioned (BN over 2 values per channel on the 1x1 innermost maps), so the rounding of
    # oneDNN's thread-count-dependent convolutions alone would move them by more than the tolerance.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = {}
        model.eval().zero_grad()
        _loss(model, x, target).backward()
        expected["eval"] = _grads(model)
        model.load_state_dict(state)
        model.train().zero_grad()
        halves = [_loss(model, xs, ts) for xs, ts in zip(x.chunk(WORLD), target.chunk(WORLD))]
        (sum(halves) / WORLD).backward()
        expected["train"] = _grads(model)
    finally:
        torch.set_num_threads(threads)

    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for mode in ("eval", "train"):
            assert results[mode].keys() == expected[mode].keys()
            # All gradients as one vector: biases ahead of a train-mode BN have a zero gradient up to
            # rounding, meaningless on its own scale.
            flat = torch.cat([results[mode][name].flatten() for name in expected[mode]])
            assert_close_to_reference(flat, torch.cat([g.flatten() for g in expected[mode].values()]), "float32")
