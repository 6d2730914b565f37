"""Training: intermediate supervision (MSE on every stack), RMSprop at 2.5e-4 as in the paper.

:func:`train` runs a whole job from an argparse-style namespace (see :func:`add_arguments`):
synthetic stick figures or MPII (.h5 + image folder), optional AMP, DistributedDataParallel when
launched by ``torchrun``, a tqdm progress bar, validation PCKh every ``--val-every`` epochs.

Checkpoints: ``OUT/last.pt`` (model, model and run config, optimizer, epoch, step within the
epoch, history) is written atomically at every epoch end and every ``--save-every`` steps.
``--resume OUT/last.pt`` continues that run exactly where it stopped (same data order, same
losses as an uninterrupted run), taking the run's options from the checkpoint; ``--init CKPT``
starts a new run (new optimizer, step 0) from the weights of any checkpoint ``shg-fast convert``
reads. The same seed gives the same data order and initial weights for ``--model fast`` and
``--model reference``, so their loss curves can be compared step by step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from . import _atomic
from .checkpoints import DEFAULT_CONFIG, MODEL_KINDS, build_model, load_checkpoint, save_checkpoint
from .reference import STEMS
from .pose.decode import predict_joints
from .pose.pckh import pck

__all__ = ["add_arguments", "default_args", "stacked_mse", "train", "evaluate_pckh", "make_datasets"]

#: The paper's learning rate.
PAPER_LR = 2.5e-4

#: Options stored in a run's checkpoint config (option → config key). ``--resume`` takes them from
#: the checkpoint; giving one with another value is an error, except for those in _FREE_ON_RESUME.
#: ``--init`` takes the model's (_MODEL_OPTIONS) from its checkpoint, with the same rule.
_RUN_OPTIONS = {"stacks": "num_stacks", "features": "num_features", "modules": "num_modules", "stem": "stem",
                "res": "res", "sigma": "sigma", "data": "data", "train_size": "train_size",
                "val_size": "val_size", "batch_size": "batch_size", "lr": "lr", "seed": "seed", "amp": "amp",
                "model": "model_kind", "epochs": "epochs", "max_steps": "max_steps"}
_MODEL_OPTIONS = ("stacks", "features", "modules", "stem")
_FREE_ON_RESUME = ("model", "epochs", "max_steps", "train_size", "val_size")  # a later phase may change these


class _Given(argparse.Action):
    """Store the value and remember that the option was given (``args.given``), so a checkpoint's
    value can be told from a default."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.given = getattr(namespace, "given", set()) | {self.dest}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the training options to ``parser`` (shared by ``shg-fast train`` and the example)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=MODEL_KINDS, default="fast", action=_Given,
                   help="model implementation (default fast)")
    g.add_argument("--stacks", type=int, default=DEFAULT_CONFIG["num_stacks"], action=_Given, help="hourglass stacks")
    g.add_argument("--features", type=int, default=DEFAULT_CONFIG["num_features"], action=_Given, help="channels")
    g.add_argument("--modules", type=int, default=DEFAULT_CONFIG["num_modules"], action=_Given,
                   help="residuals per position")
    g.add_argument("--stem", choices=tuple(STEMS), default=DEFAULT_CONFIG["stem"], action=_Given,
                   help="torch7 (the paper's, default) or bearpaw (bearpaw/anibali's wider stem)")
    g.add_argument("--memory-efficient", action=argparse.BooleanOptionalAction, default=None,
                   help="with --model fast: save fewer activations for backward (BN+ReLU recomputed, max-pool "
                        "without indices); same gradients up to rounding. Default: on for CPU training, off on "
                        "CUDA (its kernels are not yet measured on a GPU)")
    g = parser.add_argument_group("data")
    g.add_argument("--data", choices=("synthetic", "mpii"), default="synthetic", action=_Given)
    g.add_argument("--annot", help="MPII training annotations (.h5), with --data mpii")
    g.add_argument("--images", help="MPII image folder, with --data mpii")
    g.add_argument("--image-list", help="image file name per annotation row (default: the .h5's imgname)")
    g.add_argument("--val-annot", help="MPII validation annotations (.h5), with --data mpii")
    g.add_argument("--val-image-list", help="image file name per validation row")
    g.add_argument("--res", type=int, default=256, action=_Given, help="input side, a multiple of 64 (default 256)")
    g.add_argument("--sigma", default="1", action=_Given, help="target sigma in heatmap pixels, or 'torch7'")
    g.add_argument("--train-size", type=int, default=4096, action=_Given,
                   help="synthetic training samples per epoch")
    g.add_argument("--val-size", type=int, default=256, action=_Given, help="synthetic validation samples")
    g.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=1, action=_Given)
    g.add_argument("--batch-size", type=int, default=8, action=_Given)
    g.add_argument("--lr", type=float, default=PAPER_LR, action=_Given, help="RMSprop learning rate (paper: 2.5e-4)")
    g.add_argument("--max-steps", type=int, default=0, action=_Given,
                   help="stop after this many steps in total (0: no limit)")
    g.add_argument("--amp", action=_Given, nargs=0, const=True, default=False,
                   help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    g.add_argument("--seed", type=int, default=0, action=_Given)
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g = parser.add_argument_group("bookkeeping")
    g.add_argument("--out", default="runs/train", help="folder for checkpoints and history.json")
    g.add_argument("--resume", metavar="RUN/last.pt",
                   help="continue that run where it stopped: weights, optimizer, epoch, step and history, and its "
                        "options (giving one with another value is an error; --model, --epochs, --max-steps, --train-size "
                        "and --val-size may change)")
    g.add_argument("--init", metavar="CKPT",
                   help="start from these weights (any checkpoint 'shg-fast convert' reads); model options come "
                        "from it, the optimizer and step count start afresh")
    g.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also write OUT/last.pt every N steps (0: at epoch ends only); written atomically")
    g.add_argument("--val-every", type=int, default=1, help="validate every N epochs (0: never)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def default_args(**overrides) -> argparse.Namespace:
    """The default training options as a namespace, with ``overrides`` applied."""
    args = add_arguments(argparse.ArgumentParser()).parse_args([])
    unknown = set(overrides) - set(vars(args))
    if unknown:
        raise ValueError(f"unknown training options {sorted(unknown)}")
    for key, value in overrides.items():
        setattr(args, key, value)
    args.given = set(overrides)
    return args


def stacked_mse(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Intermediate supervision: the sum over stacks of the MSE to the same target."""
    return sum(nn.functional.mse_loss(out.float(), target) for out in outputs)


def _sigma(value):
    return value if value == "torch7" else float(value)


def make_datasets(args) -> tuple[Dataset, Dataset | None]:
    """The training and validation datasets chosen by ``args``."""
    sigma = _sigma(args.sigma)
    if args.data == "synthetic":
        from .data.synthetic import SyntheticPoses

        train_set = SyntheticPoses(args.train_size, args.res, sigma=sigma, seed=args.seed, augment=True)
        val_set = SyntheticPoses(args.val_size, args.res, sigma=sigma, seed=args.seed + 1_000_003)
        return train_set, val_set
    from .data.mpii import MPIIDataset

    if not args.annot or not args.images:
        raise ValueError("--data mpii needs --annot (.h5) and --images (folder)")
    train_set = MPIIDataset(args.annot, args.images, args.image_list, res=args.res, sigma=sigma, augment=True)
    val_set = None
    if args.val_annot:
        val_set = MPIIDataset(args.val_annot, args.images, args.val_image_list, res=args.res, sigma=sigma)
    return train_set, val_set


@torch.no_grad()
def evaluate_pckh(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                  threshold: float = 0.5) -> dict:
    """PCKh of ``model`` on ``dataset`` in image coordinates (full decode path, no flip)."""
    was_training = model.training
    model.eval()
    preds, gts, norms, masks = [], [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        coords, _, _ = predict_joints(model, batch["input"].to(device), batch["center"].numpy(),
                                      batch["scale"].numpy(), batch["rot"].numpy(),
                                      convention=dataset.convention)
        preds.append(coords)
        gts.append(batch["joints"].numpy())
        norms.append(batch["normalize"].numpy())
        masks.append(batch["visible"].numpy())
    model.train(was_training)
    return pck(np.concatenate(preds), np.concatenate(gts), np.concatenate(norms), threshold,
               annotated=np.concatenate(masks))


def _distributed() -> tuple[bool, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1, int(os.environ.get("RANK", "0")), world


def _start_from_checkpoint(args: argparse.Namespace) -> dict | None:
    """Read ``--resume`` or ``--init`` and set the options they decide on ``args``.

    Returns the checkpoint (for --init: in the package's format, converted if need be), or None.
    Raises ValueError, in one line, for a checkpoint that cannot serve, or an option given with
    a value that conflicts with it.
    """
    if args.resume and getattr(args, "init", None):
        raise ValueError("give --resume (continue a run) or --init (new run from weights), not both")
    given = getattr(args, "given", set())
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        missing = [k for k in ("optimizer", "epoch", "history") if k not in ckpt]
        if missing:
            raise ValueError(f"{args.resume} holds no {', '.join(missing)} (weights only), so no run can continue "
                             f"from it; use --init {args.resume} to start a new run from its weights")
        options, flag = [o for o in _RUN_OPTIONS if o not in _FREE_ON_RESUME or o not in given], "--resume"
    elif getattr(args, "init", None):
        from .convert import convert_checkpoint

        ckpt = convert_checkpoint(args.init)
        options, flag = list(_MODEL_OPTIONS), "--init"
    else:
        return None
    config = ckpt["config"]
    for option in options:
        key = _RUN_OPTIONS[option]
        if key not in config:  # an older checkpoint: the option keeps its value
            continue
        if option in given and option not in _FREE_ON_RESUME and getattr(args, option) != config[key]:
            raise ValueError(f"--{option.replace('_', '-')} {getattr(args, option)} conflicts with {flag} "
                             f"checkpoint's {config[key]} ({key}); leave the option out to use the checkpoint's")
        setattr(args, option, config[key])
    if config.get("num_joints", DEFAULT_CONFIG["num_joints"]) != DEFAULT_CONFIG["num_joints"]:
        raise ValueError(f"{flag} checkpoint predicts {config['num_joints']} joints; training data has "
                         f"{DEFAULT_CONFIG['num_joints']}")
    args.input_mean = config.get("input_mean")
    return ckpt


def _save(path: Path, model: nn.Module, config: dict, optimizer, epoch: int, epoch_step: int, history: dict) -> None:
    """OUT/last.pt (atomically) and OUT/history.json."""
    save_checkpoint(path / "last.pt", model, config, optimizer=optimizer.state_dict(), epoch=epoch,
                    epoch_step=epoch_step, history=history)
    with _atomic.atomic_path(path / "history.json") as tmp:
        Path(tmp).write_text(json.dumps(history, indent=1))


def train(args: argparse.Namespace) -> dict:
    """Run a training job; returns the history (losses per step, validation per epoch)."""
    if args.save_every < 0:
        raise ValueError(f"--save-every must be >= 0, got {args.save_every}")
    ckpt = _start_from_checkpoint(args)
    ddp, rank, world = _distributed()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if ddp:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    main = rank == 0
    train_set, val_set = make_datasets(args)
    torch.manual_seed(args.seed)
    model_cfg = {"num_stacks": args.stacks, "num_features": args.features, "num_modules": args.modules,
                 "stem": args.stem, "input_mean": getattr(args, "input_mean", None)}
    memory_efficient = getattr(args, "memory_efficient", None)
    if memory_efficient and args.model != "fast":
        raise ValueError(f"--memory-efficient needs --model fast, got --model {args.model}")
    model = build_model(args.model, **model_cfg).to(device)
    if args.model == "fast":
        model.memory_efficient = memory_efficient
    optimizer = torch.optim.RMSprop(model.parameters(), lr=args.lr)
    history = {"loss": [], "val": [], "epoch_time_s": []}
    start_epoch, skip_steps = 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if args.resume:
            optimizer.load_state_dict(ckpt["optimizer"])
            start_epoch, history = ckpt["epoch"], ckpt["history"]
            skip_steps = ckpt.get("epoch_step", 0)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if ddp else model
    sampler = DistributedSampler(train_set, world, rank, seed=args.seed) if ddp else None
    gen = torch.Generator()
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)
    config = {**model_cfg, "num_joints": DEFAULT_CONFIG["num_joints"],
              **{_RUN_OPTIONS[o]: getattr(args, o) for o in _RUN_OPTIONS if o not in _MODEL_OPTIONS}}
    step = len(history["loss"])
    out = Path(args.out)
    for epoch in range(start_epoch, args.epochs):
        if args.max_steps and step >= args.max_steps:
            break
        for epoch_aware in (sampler, train_set):
            if hasattr(epoch_aware, "set_epoch"):
                epoch_aware.set_epoch(epoch)
        # The epoch's order is a function of (seed, epoch); a resumed epoch skips the batches done.
        order = list(sampler) if sampler is not None else \
            torch.randperm(len(train_set), generator=gen.manual_seed(args.seed + epoch)).tolist()
        epoch_step, skip_steps = skip_steps, 0
        loader = DataLoader(train_set, batch_size=args.batch_size, sampler=order[epoch_step * args.batch_size:],
                            num_workers=args.workers, drop_last=True)
        tic = time.perf_counter()
        net.train()
        bar = _progress(loader, epoch, args, disable=args.quiet or not main)
        for batch in bar:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                outputs = net(batch["input"].to(device))
            loss = stacked_mse(outputs, batch["target"].to(device))
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training diverged: the loss is {loss.item()} at step {step + 1} (epoch "
                                         f"{epoch + 1}); try a lower --lr than {args.lr:g}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            history["loss"].append(loss.item())
            step += 1
            epoch_step += 1
            bar.set_postfix(loss=f"{loss.item():.3e}")
            if main and args.save_every and step % args.save_every == 0:
                _save(out, model, config, optimizer, epoch, epoch_step, history)
            if args.max_steps and step >= args.max_steps:
                break
        history["epoch_time_s"].append(time.perf_counter() - tic)
        finished = epoch_step >= len(order) // args.batch_size  # else stopped by --max-steps mid-epoch
        stopping = bool(args.max_steps) and step >= args.max_steps
        if main and (finished or stopping) and val_set is not None and args.val_every \
                and (epoch + 1) % args.val_every == 0:
            result = evaluate_pckh(model, val_set, args.batch_size, device)
            history["val"].append({"epoch": epoch + 1, "step": step, **result})
            bar.write(f"epoch {epoch + 1}: step {step}, loss {history['loss'][-1]:.3e}, "
                      f"val PCKh@0.5 {result['total_all16']:.2f} (all joints)")
        if main:
            _save(out, model, config, optimizer, epoch + finished, 0 if finished else epoch_step, history)
    if ddp:
        torch.distributed.destroy_process_group()
    return history


def _progress(loader, epoch: int, args, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=disable, dynamic_ncols=True)
