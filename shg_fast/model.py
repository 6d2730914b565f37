"""The drop-in fast Stacked Hourglass: the reference model's modules, a fused plan in eval mode.

:class:`StackedHourglass` subclasses :class:`shg_fast.reference.StackedHourglass`: same
constructor, same submodules, so the same ``state_dict`` (strict loads both ways) and the same
training behaviour (BatchNorm on batch statistics, exact gradients, autocast, DDP,
SyncBatchNorm, torch.compile). When no gradient is needed in eval mode it runs a
:class:`~shg_fast.plan.FusedPlan` folded from the current weights, rebuilt whenever a
parameter or buffer changes.
"""

from __future__ import annotations

import copy
import itertools
import operator
import warnings
import weakref

import torch
from torch import nn

from . import reference
from .plan import FusedPlan, build_plan

__all__ = ["StackedHourglass", "state_key"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# Bumped whenever any module registers a submodule, parameter or buffer (attribute assignment,
# add_module, register_buffer, ModuleList edits), so a cached list of a model's tensors is re-read
# after its structure changes.
_structure_generation = 0
_tracked: "weakref.WeakKeyDictionary[nn.Module, _Tracked]" = weakref.WeakKeyDictionary()
_VERSION = operator.attrgetter("_version")
_DATA_PTR = operator.methodcaller("data_ptr")


def _on_registration(module, name, value):
    global _structure_generation
    _structure_generation += 1


torch.nn.modules.module.register_module_module_registration_hook(_on_registration)
torch.nn.modules.module.register_module_parameter_registration_hook(_on_registration)
torch.nn.modules.module.register_module_buffer_registration_hook(_on_registration)


class _Tracked:
    """A module tree flattened once per structure generation: its modules and tensors."""

    def __init__(self, module: nn.Module):
        self.generation = _structure_generation
        self.modules = list(module.modules())
        self.tensors = [t for mod in self.modules for t in itertools.chain(mod._parameters.values(),
                                                                           mod._buffers.values()) if t is not None]
        self.ids = tuple(map(id, self.tensors))


def _tracked_of(module: nn.Module) -> _Tracked:
    tracked = _tracked.get(module)
    if tracked is None or tracked.generation != _structure_generation:
        tracked = _tracked[module] = _Tracked(module)
    return tracked


def _modules_of(module: nn.Module) -> list[nn.Module]:
    return _tracked_of(module).modules


def state_key(module: nn.Module) -> tuple | None:
    """A cheap fingerprint of ``module``'s training flag, parameters and buffers.

    It changes on ``train()/eval()``, on any in-place update (``load_state_dict``, an optimizer
    step, updates through ``state_dict()`` or ``detach()``: each bumps the tensor's ``_version``),
    on ``.to()/.half()`` and ``.data`` assignment (new storage) and on replaced parameters,
    buffers or submodules (new objects). It does not see in-place updates through ``.data``
    (``p.data.mul_(...)``: autograd gives ``.data`` its own version counter); after those, call
    :meth:`StackedHourglass.invalidate_plan`, which changes the key too. ``None`` when a tensor is
    an inference tensor (created under ``torch.inference_mode``), whose in-place updates cannot
    be tracked.
    """
    tracked = _tracked_of(module)
    try:
        versions = tuple(map(_VERSION, tracked.tensors))
    except RuntimeError:  # inference tensors have no version counter
        return None
    epoch = module.__dict__.get("_plan_epoch", 0)
    return module.training, epoch, tracked.ids, versions, tuple(map(_DATA_PTR, tracked.tensors))


class _PlanCache:
    """Fused plans per compute dtype, valid for one :func:`state_key`; never copied or pickled."""

    def __init__(self):
        self.key: tuple | None = None
        self.plans: dict[torch.dtype, FusedPlan] = {}
        self.warned_untracked = False

    def __deepcopy__(self, memo) -> "_PlanCache":
        return _PlanCache()

    def __getstate__(self) -> dict:
        return {"key": None, "plans": {}}


class StackedHourglass(reference.StackedHourglass):
    """Stacked Hourglass network with a fused eval-mode plan; a drop-in for the reference model.

    Arguments as :class:`shg_fast.reference.StackedHourglass`. ``forward(x)`` takes ``(N, 3, H, W)``, H and W multiples of 64, and returns a list of
    ``num_stacks`` heatmap tensors ``(N, num_joints, H/4, W/4)``, as the reference does.

    * Training mode (of any submodule), or eval mode while a gradient is needed (grad mode on and
      a parameter or ``x`` requiring grad): the reference computation, so gradients equal the
      reference's.
    * Eval mode without gradients (``torch.no_grad``/``torch.inference_mode``, or frozen
      parameters): the fused plan (:meth:`fused_plan`) in the parameters' dtype, or in the
      autocast dtype when autocast is on for ``x``'s device. Heatmaps come back contiguous.
    """

    def __init__(self, num_stacks: int = 8, num_features: int = 256, num_joints: int = 16,
                 num_modules: int = 1, stem: str = "torch7", input_mean=None):
        super().__init__(num_stacks, num_features, num_joints, num_modules, stem, input_mean)
        self._plans = _PlanCache()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        reference.check_input(x)
        if any(m.training for m in _modules_of(self)) or self._needs_grad(x):
            return super().forward(x)
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):
                return self.fused_plan(dtype)(self.normalize_input(x.to(dtype)))
        dtype = self.conv1.weight.dtype
        if x.dtype != dtype:
            raise TypeError(f"input dtype {x.dtype} differs from the model's parameters ({dtype})")
        return self.fused_plan(dtype)(self.normalize_input(x))

    def _needs_grad(self, x: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    def fused_plan(self, dtype: torch.dtype | None = None) -> FusedPlan:
        """The eval-mode :class:`~shg_fast.plan.FusedPlan` of the current weights, in ``dtype``.

        Built on first use and cached; rebuilt whenever :func:`state_key` changes (weights or
        buffers updated, moved or cast; train/eval switched), so it is never stale, except after
        in-place updates through ``.data``: call :meth:`invalidate_plan` after those. ``dtype``
        defaults to the parameters' dtype. Folding is done in at least float32. Raises
        RuntimeError in training mode (BN then uses batch statistics, which cannot be folded).
        """
        if self.training:
            raise RuntimeError("fused_plan() needs eval mode: call model.eval() first")
        param_dtype = self.conv1.weight.dtype
        dtype = param_dtype if dtype is None else dtype
        key = state_key(self)
        cache = self._plans
        if key is None and not cache.warned_untracked:
            cache.warned_untracked = True
            warnings.warn(
                "shg_fast.StackedHourglass: parameters or buffers are inference tensors (created under "
                "torch.inference_mode), whose updates cannot be tracked, so the fused plan is rebuilt on "
                "every call; build or load the model outside inference_mode for full speed",
                RuntimeWarning, stacklevel=3)
        if key is None or key != cache.key:
            cache.key, cache.plans = key, {}
        if dtype not in cache.plans:
            if param_dtype not in cache.plans:
                cache.plans[param_dtype] = self._fold()
            cache.plans[dtype] = cache.plans[param_dtype].to(dtype)
        return cache.plans[dtype]

    def invalidate_plan(self) -> None:
        """Forget the fused plans (and make :func:`shg_fast.cuda_graph` callables recapture).

        Only needed after in-place updates through ``.data`` (``p.data.copy_(w)``), which autograd
        does not count; every other change of weights or buffers is detected by itself.
        """
        self._plan_epoch = self.__dict__.get("_plan_epoch", 0) + 1
        self._plans = _PlanCache()

    def _fold(self) -> FusedPlan:
        dtype = self.conv1.weight.dtype
        if dtype not in _LOW_PRECISION:
            return build_plan(self)
        source = copy.deepcopy(self).float()
        return build_plan(source).to(dtype)

    def plan_info(self) -> dict:
        """A summary of the current fused plan (see :meth:`shg_fast.plan.FusedPlan.info`)."""
        return self.fused_plan().info()
