"""The drop-in fast Stacked Hourglass: the reference model's modules, a fused plan in eval mode.

:class:`StackedHourglass` subclasses :class:`shg_fast.reference.StackedHourglass`: same
constructor, same submodules, so the same ``state_dict`` (strict loads both ways) and the same
training behaviour (BatchNorm on batch statistics, exact gradients, autocast, DDP,
SyncBatchNorm, torch.compile). When no gradient is needed in eval mode it runs a
:class:`~shg_fast.plan.FusedPlan` folded from the current weights.

How the plan knows it is current, in O(1) per call: a process-wide counter,
:func:`state_generation`, is bumped by every event that can change a model's weights, buffers,
structure or mode as the plan sees them:

* registering or replacing a submodule, parameter or buffer (PyTorch's global registration hooks);
* any step of a ``torch.optim`` optimizer (the global optimizer step hook);

(these two process-wide hooks are installed when the first fast model is built, or the first
:func:`state_key` is taken; importing shg_fast installs none)
* ``load_state_dict`` on the model or any of its submodules (a hook on each module);
* ``train()``/``eval()`` and ``.to()``/``.half()``/``.cuda()``... on the model;
* :meth:`StackedHourglass.invalidate_plan`.

A call whose counter is unchanged since the last one reuses the plan without looking at any
tensor. When the counter moved, the model re-reads its state once (:func:`state_key`: training
flags, tensor versions and storages) and rebuilds the plan only if that changed.

Not seen (the plan, and a :func:`shg_fast.cuda_graph` capture, would be stale; call
:meth:`~StackedHourglass.invalidate_plan` after them): in-place writes outside ``load_state_dict``
and optimizer steps (``with torch.no_grad(): p.mul_(2)``, writes through ``state_dict()``
tensors or through ``.data``), and ``train()``/``eval()``/``.to()`` called on a submodule alone.
"""

from __future__ import annotations

import copy
import itertools
import operator
import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch import nn
from torch.nn import functional as F

from . import reference, training_ops
from .plan import FusedPlan, build_plan

__all__ = ["StackedHourglass", "state_generation", "state_key"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# Bumped whenever any module registers a submodule, parameter or buffer (attribute assignment,
# add_module, register_buffer, ModuleList edits), so a cached list of a model's tensors is re-read
# after its structure changes.
_structure_generation = 0
# Bumped by every event of the module docstring's list; see state_generation().
_generation = 0
_tracked: "weakref.WeakKeyDictionary[nn.Module, _Tracked]" = weakref.WeakKeyDictionary()
_load_hooked: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_VERSION = operator.attrgetter("_version")
_DATA_PTR = operator.methodcaller("data_ptr")


def _bump(*_args, **_kwargs) -> None:
    """Record that some model's state may have changed (every hook of the module docstring calls this)."""
    global _generation
    _generation += 1


def _on_registration(module, name, value):
    global _structure_generation
    _structure_generation += 1
    _bump()


def state_generation() -> int:
    """The process-wide counter of state-changing events (module docstring); O(1) to read."""
    return _generation


_hooks_installed = False


def _install_hooks() -> None:
    """Install the process-wide registration and optimizer-step hooks that bump the counters, once.

    Called by the first fast model's constructor and the first :func:`state_key` (the two users of
    the counters), so that merely importing shg_fast changes nothing in the process.
    """
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    torch.nn.modules.module.register_module_module_registration_hook(_on_registration)
    torch.nn.modules.module.register_module_parameter_registration_hook(_on_registration)
    torch.nn.modules.module.register_module_buffer_registration_hook(_on_registration)
    register_optimizer_step_post_hook(_bump)


class _Tracked:
    """A module tree flattened once per structure generation: its modules and tensors."""

    def __init__(self, module: nn.Module):
        self.generation = _structure_generation
        self.modules = list(module.modules())
        self.tensors = [t for mod in self.modules for t in itertools.chain(mod._parameters.values(),
                                                                           mod._buffers.values()) if t is not None]
        self.ids = tuple(map(id, self.tensors))
        for mod in self.modules:  # loads into any submodule bump the generation
            if mod not in _load_hooked:
                _load_hooked.add(mod)
                mod.register_load_state_dict_pre_hook(_bump)


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
    _install_hooks()
    tracked = _tracked_of(module)
    try:
        versions = tuple(map(_VERSION, tracked.tensors))
    except RuntimeError:  # inference tensors have no version counter
        return None
    epoch = module.__dict__.get("_plan_epoch", 0)
    return module.training, epoch, tracked.ids, versions, tuple(map(_DATA_PTR, tracked.tensors))


class _PlanCache:
    """Fused plans per compute dtype, valid for one :func:`state_key`; never copied or pickled.

    ``generation`` is the :func:`state_generation` at which ``key`` and ``training`` were last
    read from the model: while the counter has not moved, neither needs reading again.
    """

    def __init__(self):
        self.key: tuple | None = None
        self.generation = -1
        self.training = False  # some submodule is in training mode
        self.plans: dict[torch.dtype, FusedPlan] = {}

    def __deepcopy__(self, memo) -> "_PlanCache":
        return _PlanCache()

    def __getstate__(self) -> dict:
        return _PlanCache().__dict__


class StackedHourglass(reference.StackedHourglass):
    """Stacked Hourglass network with a fused eval-mode plan; a drop-in for the reference model.

    Arguments as :class:`shg_fast.reference.StackedHourglass`. ``forward(x)`` takes ``(N, 3, H, W)``,
    H and W multiples of 64, and returns a list of ``num_stacks`` heatmap tensors
    ``(N, num_joints, H/4, W/4)``, as the reference does.

    * Training mode (of any submodule), or eval mode while a gradient is needed (grad mode on and
      a parameter or ``x`` requiring grad): the reference computation, so gradients equal the
      reference's; except that training mode on CPU inputs runs memory-efficient training by
      default (next point).
    * Memory-efficient training (``memory_efficient``, keyword only, an attribute that can be
      switched; not part of :attr:`config` or the state_dict): training mode runs
      :mod:`shg_fast.training_ops`: the same outputs, gradients and running statistics up to
      rounding, with about half the activations saved for backward (BN+ReLU recomputed in
      backward, max-pool without indices). ``None`` (the default) turns it on for CPU inputs,
      where it was measured no slower than the reference, and off for CUDA inputs, whose Triton
      training kernels no GPU has run yet; ``True``/``False`` force it on/off everywhere. Blocks
      whose modules it does not cover (SyncBatchNorm, eval-mode BN, replaced modules) run their
      own forward; forward hooks on the BN/conv modules of covered blocks are not called.
    * Eval mode without gradients (``torch.no_grad``/``torch.inference_mode``, or frozen
      parameters): the fused plan (:meth:`fused_plan`) in the parameters' dtype, or in the
      autocast dtype when autocast is on for ``x``'s device, run as the
      :class:`~shg_fast.engine.Program` built for ``x``'s shape. Heatmaps come back contiguous.

    The plan is known current in O(1) per call; see the module docstring for what that sees and
    what needs :meth:`invalidate_plan`.
    """

    def __init__(self, num_stacks: int = 8, num_features: int = 256, num_joints: int = 16,
                 num_modules: int = 1, stem: str = "torch7", input_mean=None, *,
                 memory_efficient: bool | None = None):
        _install_hooks()
        super().__init__(num_stacks, num_features, num_joints, num_modules, stem, input_mean)
        self._plans = _PlanCache()
        self.memory_efficient = memory_efficient

    @property
    def memory_efficient(self) -> bool | None:
        """Memory-efficient training: True, False, or None (on for CPU inputs, off for CUDA ones)."""
        return self._memory_efficient

    @memory_efficient.setter
    def memory_efficient(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"memory_efficient must be True, False or None, got {value!r}")
        self._memory_efficient = value

    def uses_memory_efficient_training(self, x: torch.Tensor) -> bool:
        """Whether a training-mode forward on ``x`` runs the memory-efficient path (see ``memory_efficient``)."""
        if self._memory_efficient is None:
            return x.device.type == "cpu"
        return self._memory_efficient

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        reference.check_input(x)
        cache = self._refresh()
        if cache.training or self._needs_grad(x):
            if self.training and self.uses_memory_efficient_training(x):
                return self._memory_efficient_forward(x)
            return super().forward(x)
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):
                return self._plan(dtype)(self.normalize_input(x.to(dtype)))
        dtype = self.conv1.weight.dtype
        if x.dtype != dtype:
            raise TypeError(f"input dtype {x.dtype} differs from the model's parameters ({dtype})")
        return self._plan(dtype)(self.normalize_input(x))

    def _memory_efficient_forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The reference computation with fewer tensors saved for backward (:mod:`shg_fast.training_ops`).

        Each block whose modules allow it (:func:`~shg_fast.training_ops.block_reasons`) runs the
        memory-efficient ops; any other block (SyncBatchNorm, eval-mode BN, replaced modules) its
        own forward. Each ``lin`` BN+ReLU feeds the heatmap conv and the next stack's
        ``merge_features`` conv as one conv with the two weights concatenated.
        """
        reference.check_input(x, parameter=self.conv1.weight)
        inter = F.relu(self.bn1(self.conv1(self.normalize_input(x))))
        inter = training_ops.max_pool_2x2(training_ops.residual(self.r1, inter))
        inter = training_ops.residual(self.r5, training_ops.residual(self.r4, inter))
        outputs = []
        for s in range(self.num_stacks):
            stream = training_ops.sequence(self.res[s], training_ops.hourglass(self.hg[s], inter))
            last = s == self.num_stacks - 1
            convs = [self.out[s]] if last else [self.out[s], self.merge_features[s]]
            lin = self.lin[s]
            if type(lin) is not reference.Lin or training_ops.bn_reasons(lin.bn) \
                    or any(map(training_ops.conv_reasons, convs)):
                ll = lin(stream)
                heatmaps, merged = convs[0](ll), None if last else convs[1](ll)
            else:
                weight = torch.cat([c.weight for c in convs]) if len(convs) > 1 else convs[0].weight
                bias = torch.cat([c.bias for c in convs]) if len(convs) > 1 else convs[0].bias
                z = training_ops.bn_relu_conv(lin.conv(stream), lin.bn, weight, bias, 0)
                j = self.num_joints
                heatmaps, merged = (z, None) if last else (z[:, :j].clone(memory_format=torch.preserve_format),
                                                           z[:, j:])
            outputs.append(heatmaps)
            if not last:
                inter = inter + merged + self.merge_preds[s](heatmaps)
        return outputs

    def _needs_grad(self, x: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(p.requires_grad for p in self.parameters())

    def _refresh(self) -> _PlanCache:
        """The plan cache, its state re-read from the model only when :func:`state_generation` moved."""
        cache = self._plans
        if cache.generation != _generation:
            generation = _generation
            key = state_key(self)
            if key is None or key != cache.key:
                cache.key, cache.plans = key, {}
            cache.training = any(m.training for m in _modules_of(self))
            cache.generation = generation
        return cache

    def train(self, mode: bool = True) -> "StackedHourglass":
        _bump()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        result = super()._apply(fn, recurse)
        _bump()
        return result

    def fused_plan(self, dtype: torch.dtype | None = None) -> FusedPlan:
        """The eval-mode :class:`~shg_fast.plan.FusedPlan` of the current weights, in ``dtype``.

        Built on first use and cached; rebuilt when the model's state changed (module docstring:
        what is seen in O(1), and :meth:`invalidate_plan` for the rest). ``dtype`` defaults to the
        parameters' dtype. Folding is done in at least float32. Raises RuntimeError in training
        mode (BN then uses batch statistics, which cannot be folded).
        """
        if self.training:
            raise RuntimeError("fused_plan() needs eval mode: call model.eval() first")
        self._refresh()
        return self._plan(self.conv1.weight.dtype if dtype is None else dtype)

    def _plan(self, dtype: torch.dtype) -> FusedPlan:
        plans = self._plans.plans
        plan = plans.get(dtype)
        if plan is None:
            param_dtype = self.conv1.weight.dtype
            if param_dtype not in plans:
                plans[param_dtype] = self._fold()
            plan = plans[dtype] = plans[param_dtype].to(dtype)
        return plan

    def invalidate_plan(self) -> None:
        """Forget the fused plans (and make :func:`shg_fast.cuda_graph` callables recapture).

        Needed after the changes the O(1) check does not see (module docstring): in-place writes
        outside ``load_state_dict`` and optimizer steps, and ``train()``/``eval()``/``.to()`` on a
        submodule alone.
        """
        self._plan_epoch = self.__dict__.get("_plan_epoch", 0) + 1
        self._plans = _PlanCache()
        _bump()

    def _fold(self) -> FusedPlan:
        dtype = self.conv1.weight.dtype
        if dtype not in _LOW_PRECISION:
            return build_plan(self)
        source = copy.deepcopy(self).float()
        return build_plan(source).to(dtype)

    def plan_info(self, example: torch.Tensor | None = None) -> dict:
        """A summary of the current fused plan (:meth:`shg_fast.plan.FusedPlan.info`).

        With ``example`` (an input), also ``"steps"``: the program for its shape, one dict per
        step with its tactic and the reason (:meth:`shg_fast.engine.Program.info`).
        """
        plan = self.fused_plan()
        info = plan.info()
        if example is not None:
            info["steps"] = plan.program(example).info()
        return info
