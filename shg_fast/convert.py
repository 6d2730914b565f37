"""Import checkpoints of the popular PyTorch Stacked Hourglass ports into shg_fast's layout.

All of these ports implement the network of :class:`shg_fast.reference.StackedHourglass`
(pre-activation residuals with biased convs, depth-4 hourglasses, intermediate supervision);
the parameter names differ, and bearpaw's stem (``stem="bearpaw"``, see
:data:`shg_fast.reference.STEMS`). :func:`load_state_dict` renames them, exactly;
:func:`convert_checkpoint` also records the model configuration (stem, input mean), giving the
package's checkpoint format ``{"model": state_dict, "config": {...}}`` that ``predict`` and
``train --init`` read. What each port's code does is recorded in tests/ports.py, which mirrors it.

``princeton-vl`` (github.com/princeton-vl/pytorch_stacked_hourglass)
    ``{'state_dict': ...}`` with keys prefixed ``model.module.``; stem ``pre.{0,1,3,4}``,
    ``hgs.{s}.0.{up1,low1,low2,low3}``, ``features.{s}.{0,1}``, ``outs.{s}``,
    ``merge_features.{s}``, ``merge_preds.{s}``. Its Residual always carries a
    ``skip_layer`` that its forward uses only when in != out; the unused ones are dropped.
    Its ``PoseNet.forward`` takes **NHWC** input ``(N, H, W, 3)`` and returns the stacked
    ``(N, S, K, H/4, W/4)``; ours takes NCHW and returns a list, so feed
    ``x.permute(0, 3, 1, 2)`` and use ``torch.stack(model(x), 1)`` to match it. Input: RGB in
    [0, 1], no mean subtraction (same as ours).
``bearpaw`` (github.com/bearpaw/pytorch-pose)
    ``{'state_dict': ...}`` with keys prefixed ``module.``; ``conv1, bn1, layer1.0, layer2.0,
    layer3.0`` (projections in ``downsample.0``; layer2 is 128→256 and layer3 256→256, the
    ``"bearpaw"`` stem), ``hg.{s}.hg.{d}.{k}.{b}`` (d = 3 outermost;
    k = 0 up1, 1 low1, 2 low3, 3 the innermost low2), ``res.{s}.{b}``, ``fc.{s}.{0 conv, 1 BN}``,
    ``score.{s}``, ``fc_.{s}``, ``score_.{s}``.
``anibali`` (github.com/anibali/pytorch-stacked-hourglass)
    bearpaw's keys without the prefix, as a plain state_dict.

    bearpaw and anibali train on RGB in [0, 1] **minus the MPII mean** :data:`MPII_RGB_MEAN`
    (no division by the standard deviation). Feed ``prepare_input(x, source)`` to match.
``shg_fast``
    our own state_dict (optionally inside ``{'state_dict': ...}``), or one of our checkpoints
    (``{"model": ..., "config": ...}``: a converted file, a training run's ``last.pt``), checked
    and passed through.

BatchNorm ``num_batches_tracked`` buffers are optional in every source (old checkpoints lack
them); a missing one is filled with 0. Anything else missing, unexpected or of the wrong
shape is an error that lists every offending key, and nothing is loaded.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from .reference import STEMS, StackedHourglass

__all__ = [
    "SOURCES",
    "MPII_RGB_MEAN",
    "convert_checkpoint",
    "detect_source",
    "load_checkpoint",
    "load_state_dict",
    "model_config",
    "prepare_input",
    "to_source_layout",
]

#: Checkpoint layouts :func:`load_state_dict` understands (besides ``"auto"``).
SOURCES = ("shg_fast", "princeton-vl", "bearpaw", "anibali")

#: RGB mean of the MPII training images used by bearpaw/pytorch-pose and
#: anibali/pytorch-stacked-hourglass (their ``color_normalize`` subtracts it, nothing else).
MPII_RGB_MEAN = (0.4404, 0.4440, 0.4327)

#: Key prefixes a wrapper (trainer object, DataParallel) adds; stripped when every key has one.
_WRAPPER_PREFIXES = ("model.module.", "module.", "model.")

_HOURGLASS_DEPTH = 4
_NUM_BATCHES = "num_batches_tracked"


@dataclass(frozen=True)
class _Layout:
    """How one implementation names each part of the network: our key → theirs.

    ``None`` from a callable means the layout has no place for that parameter.
    """

    stem_convs: dict[str, str]  # our conv1/bn1 → their module path
    stem_residuals: dict[str, str]  # our r1/r4/r5 → their module path
    residual: dict[str, str]  # a Residual's child module names: ours → theirs (others kept)
    hourglass: Callable[[str, int, str, int], str | None]  # (stack, levels below top, part, b) → path
    res: Callable[[str, int], str | None]  # (stack, b) → path of the residuals after the hourglass
    lin: dict[str, str]  # "conv"/"bn" → path template with {s}
    heads: dict[str, str]  # out/merge_features/merge_preds → path template with {s}


_HEADS = ("out", "merge_features", "merge_preds")

_LAYOUTS = {
    "shg_fast": _Layout(
        stem_convs={"conv1": "conv1", "bn1": "bn1"},
        stem_residuals={"r1": "r1", "r4": "r4", "r5": "r5"},
        residual={},
        hourglass=lambda s, level, part, b: f"hg.{s}.{'low2.' * level}{part}.{b}",
        res=lambda s, b: f"res.{s}.{b}",
        lin={"conv": "lin.{s}.conv", "bn": "lin.{s}.bn"},
        heads={name: name + ".{s}" for name in _HEADS},
    ),
    "princeton-vl": _Layout(
        stem_convs={"conv1": "pre.0.conv", "bn1": "pre.0.bn"},
        stem_residuals={"r1": "pre.1", "r4": "pre.3", "r5": "pre.4"},
        residual={"conv1": "conv1.conv", "conv2": "conv2.conv", "conv3": "conv3.conv", "skip": "skip_layer.conv"},
        hourglass=lambda s, level, part, b: None if b else f"hgs.{s}.0.{'low2.' * level}{part}",
        res=lambda s, b: None if b else f"features.{s}.0",
        lin={"conv": "features.{s}.1.conv", "bn": "features.{s}.1.bn"},
        heads={"out": "outs.{s}.conv", "merge_features": "merge_features.{s}.conv.conv",
               "merge_preds": "merge_preds.{s}.conv.conv"},
    ),
    "bearpaw": _Layout(
        stem_convs={"conv1": "conv1", "bn1": "bn1"},
        stem_residuals={"r1": "layer1.0", "r4": "layer2.0", "r5": "layer3.0"},
        residual={"skip": "downsample.0"},
        hourglass=lambda s, level, part, b: (
            f"hg.{s}.hg.{_HOURGLASS_DEPTH - 1 - level}.{('up1', 'low1', 'low3', 'low2').index(part)}.{b}"),
        res=lambda s, b: f"res.{s}.{b}",
        lin={"conv": "fc.{s}.0", "bn": "fc.{s}.1"},
        heads={"out": "score.{s}", "merge_features": "fc_.{s}", "merge_preds": "score_.{s}"},
    ),
}
_LAYOUTS["anibali"] = _LAYOUTS["bearpaw"]


def _in_residual(layout: _Layout, path: str | None, inner: str) -> str | None:
    """Their name of parameter ``inner`` (e.g. ``conv1.weight``) of the Residual at ``path``."""
    if path is None:
        return None
    child, rest = inner.split(".", 1)
    return f"{path}.{layout.residual.get(child, child)}.{rest}"


def _rename(source: str, key: str) -> str | None:
    """Their name for our state_dict key ``key`` in ``source``'s layout."""
    layout = _LAYOUTS[source]
    if m := re.fullmatch(r"(conv1|bn1)\.(\w+)", key):
        return f"{layout.stem_convs[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"(r1|r4|r5)\.(.+)", key):
        return _in_residual(layout, layout.stem_residuals[m[1]], m[2])
    if m := re.fullmatch(r"hg\.(\d+)\.((?:low2\.)*)(up1|low1|low2|low3)\.(\d+)\.(.+)", key):
        level = len(m[2]) // len("low2.")
        return _in_residual(layout, layout.hourglass(m[1], level, m[3], int(m[4])), m[5])
    if m := re.fullmatch(r"res\.(\d+)\.(\d+)\.(.+)", key):
        return _in_residual(layout, layout.res(m[1], int(m[2])), m[3])
    if m := re.fullmatch(r"lin\.(\d+)\.(conv|bn)\.(.+)", key):
        return f"{layout.lin[m[2]].format(s=m[1])}.{m[3]}"
    if m := re.fullmatch(r"(out|merge_features|merge_preds)\.(\d+)\.(.+)", key):
        return f"{layout.heads[m[1]].format(s=m[2])}.{m[3]}"
    return None


#: Per source: a key whose first dimension is num_joints and second num_features (stack 0's
#: heatmap conv), the pattern whose group 1 counts stacks, and the pattern whose group 1
#: counts residual modules per position (None: the layout only has one).
_CONFIG_KEYS = {
    "shg_fast": ("out.0.weight", r"hg\.(\d+)\.", r"res\.0\.(\d+)\."),
    "princeton-vl": ("outs.0.conv.weight", r"hgs\.(\d+)\.", None),
    "bearpaw": ("score.0.weight", r"hg\.(\d+)\.", r"res\.0\.(\d+)\."),
    "anibali": ("score.0.weight", r"hg\.(\d+)\.", r"res\.0\.(\d+)\."),
}

#: Keys that identify each layout in auto-detection (after wrapper prefixes are stripped).
_SIGNATURES = {
    "princeton-vl": ("pre.0.conv.weight", "hgs.0.0.up1.bn1.weight"),
    "bearpaw": ("layer1.0.conv1.weight", "hg.0.hg.3.0.0.bn1.weight"),
    "shg_fast": ("r1.conv1.weight", "hg.0.up1.0.bn1.weight"),
}


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line, without terminal colour codes, at most 300 characters."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def load_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` a checkpoint file on the CPU with ``weights_only=True``.

    Raises FileNotFoundError for a missing file and ValueError, in one line, for a file that
    is truncated or corrupt, or that holds arbitrary pickled objects (never unpickled here).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged files
        why = _one_line(exc)
        if "Unsupported global" in str(exc):  # a readable pickle of non-tensor objects
            raise ValueError(
                f"checkpoint {path!r} holds objects other than tensors, which torch.load(weights_only=True) "
                "refuses; if you trust the file, torch.load(path, weights_only=False) it yourself and pass the "
                f"result: {why}"
            ) from None
        raise ValueError(f"cannot read checkpoint {path!r} (truncated or corrupt?): {why}") from None


def _is_package_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` is one of shg_fast's own checkpoints: ``{"model": state_dict, "config": dict, ...}``."""
    return isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and isinstance(obj.get("config"), Mapping)


def _extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict, a module, a ``{'state_dict': ...}`` training checkpoint, or
    one of ours (``{"model": ..., "config": ...}``)."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if _is_package_checkpoint(obj):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"not a state_dict: entries that are not (name, tensor): {', '.join(sorted(bad)[:10])}")
    if not obj:
        raise ValueError("the state_dict is empty")
    return dict(obj)


def _strip_wrapper_prefix(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}, prefix
    return state, ""


def detect_source(checkpoint: Any) -> str:
    """The layout (one of :data:`SOURCES`) of a loaded checkpoint or state_dict, from its key names.

    bearpaw and anibali share their keys; a ``module.`` prefix says bearpaw.
    Raises ValueError when no layout matches.
    """
    state, prefix = _strip_wrapper_prefix(_extract_state_dict(checkpoint))
    for source, signature in _SIGNATURES.items():
        if any(key in state for key in signature):
            return "anibali" if source == "bearpaw" and not prefix else source
    raise ValueError(
        "cannot tell which implementation this checkpoint comes from: none of the keys "
        + ", ".join(repr(k) for sig in _SIGNATURES.values() for k in sig)
        + f" is present (first keys: {', '.join(list(state)[:5])}); pass source= one of {SOURCES}"
    )


#: The only stem each port's code builds (ours builds both).
_SOURCE_STEMS = {"princeton-vl": "torch7", "bearpaw": "bearpaw", "anibali": "bearpaw"}


def _stem(state: dict[str, torch.Tensor], source: str) -> str:
    """The stem of the network: fixed by a port's code; for ours, told by r4's output width."""
    if source in _SOURCE_STEMS:
        return _SOURCE_STEMS[source]
    r4_out = state.get("r4.conv3.weight")
    widths = {name: make(0)[0][1] for name, make in STEMS.items()}  # r4's out channels per stem
    return next((name for name, width in widths.items() if r4_out is not None and r4_out.shape[0] == width),
                "torch7")


def _infer_config(state: dict[str, torch.Tensor], source: str) -> dict:
    head, stack_pattern, module_pattern = _CONFIG_KEYS[source]
    if head not in state or state[head].dim() != 4:
        raise ValueError(f"{source} checkpoint has no 4-D {head!r}, needed to size the model")
    stacks = {int(m.group(1)) for k in state if (m := re.match(stack_pattern, k))}
    modules = {int(m.group(1)) for k in state if module_pattern and (m := re.match(module_pattern, k))}
    return {
        "num_stacks": max(stacks) + 1,
        "num_features": state[head].shape[1],
        "num_joints": state[head].shape[0],
        "num_modules": max(modules) + 1 if modules else 1,
        "stem": _stem(state, source),
    }


def _expected_layout(config: dict) -> dict[str, torch.Size]:
    """Our state_dict's keys and shapes for ``config``, without allocating any memory."""
    with torch.device("meta"):
        model = StackedHourglass(**config)
    return {k: v.shape for k, v in model.state_dict().items()}


def _ignorable(key: str, source: str) -> bool:
    """Keys a source carries that our model has no use for: princeton-vl's unused skip convs."""
    return source == "princeton-vl" and ".skip_layer.conv." in key


def to_source_layout(state_dict: Mapping[str, torch.Tensor], source: str) -> "OrderedDict[str, torch.Tensor]":
    """Rename OUR state_dict's keys into ``source``'s layout (no wrapper prefix, no extra keys).

    The inverse of :func:`load_state_dict` up to the parts a source has and we lack (e.g.
    princeton-vl's unused skip convs). Useful for tests and for exporting.
    """
    if source not in _LAYOUTS:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    stem, needed = model_config(state_dict)["stem"], _SOURCE_STEMS.get(source)
    if needed is not None and stem != needed:
        raise ValueError(f"the {source} network has the {needed!r} stem; this state_dict has the {stem!r} one")
    renamed = OrderedDict()
    for key, value in state_dict.items():
        target = _rename(source, key)
        if target is None:
            raise ValueError(f"{source} layout has no place for {key!r} (num_modules must be 1 for princeton-vl)")
        renamed[target] = value
    return renamed


def load_state_dict(obj_or_path: Any, source: str = "auto") -> "OrderedDict[str, torch.Tensor]":
    """A state_dict for :class:`shg_fast.reference.StackedHourglass` (and the fast model).

    Args:
        obj_or_path: a path to a checkpoint file, a loaded checkpoint (a state_dict or a
            ``{'state_dict': ...}`` dict), or a module.
        source: ``"auto"`` (detect from key names) or one of :data:`SOURCES`.

    Returns an OrderedDict with exactly our model's keys, shapes checked; build the model with
    ``StackedHourglass(**model_config(sd))`` and ``load_state_dict(sd, strict=True)``. See the
    module docstring for the input conventions each source's weights expect.

    Raises ValueError (listing every missing, unexpected or mis-shaped key) when the
    checkpoint does not fit, and loads nothing.
    """
    if source != "auto" and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected 'auto' or one of {SOURCES}")
    if isinstance(obj_or_path, (str, os.PathLike)):
        obj_or_path = load_checkpoint(obj_or_path)
    if source == "auto":
        source = detect_source(obj_or_path)
    state, _ = _strip_wrapper_prefix(_extract_state_dict(obj_or_path))
    config = _infer_config(state, source)
    expected = _expected_layout(config)
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    missing, misshaped, used = [], [], set()
    for key, shape in expected.items():
        theirs = _rename(source, key)
        if theirs is None or theirs not in state:
            if key.endswith(_NUM_BATCHES):
                converted[key] = torch.tensor(0, dtype=torch.long)
            else:
                missing.append(theirs or key)
            continue
        used.add(theirs)
        if state[theirs].shape != shape:
            misshaped.append(f"{theirs} {tuple(state[theirs].shape)} (expected {tuple(shape)})")
        converted[key] = state[theirs]
    unexpected = sorted(k for k in state if k not in used and not _ignorable(k, source))
    problems = [f"{label} ({len(keys)}): {', '.join(keys)}"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("wrong shapes", misshaped)) if keys]
    if problems:
        described = ", ".join(f"{k}={v}" for k, v in config.items())
        raise ValueError(f"checkpoint does not fit a {source} StackedHourglass({described}): " + "; ".join(problems))
    return converted


def model_config(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """``num_stacks, num_features, num_joints, num_modules, stem`` of one of OUR state_dicts."""
    return _infer_config(dict(state_dict), "shg_fast")


#: The input side the ports train and test at (their ``inp_res`` / ``input_res``).
PORTS_INPUT_RES = 256


def convert_checkpoint(obj_or_path: Any, source: str = "auto") -> dict:
    """One checkpoint of any :data:`SOURCES` as shg_fast's format, ready for ``torch.save``.

    Returns ``{"model": state_dict, "config": config, "source": source}`` (only tensors, strings,
    numbers, lists and dicts, so ``torch.load(weights_only=True)`` reads it). ``config`` holds the
    model's constructor arguments (see :func:`model_config`; ``input_mean`` is
    :data:`MPII_RGB_MEAN` for bearpaw and anibali weights, whose training input was
    mean-subtracted) and ``res``, the input side. Our own checkpoints keep their config (a
    training run's options included) and drop any optimizer state. Errors as :func:`load_state_dict`.
    """
    if isinstance(obj_or_path, (str, os.PathLike)):
        obj_or_path = load_checkpoint(obj_or_path)
    if source == "auto":
        source = detect_source(obj_or_path)
    state_dict = load_state_dict(obj_or_path, source=source)
    inferred = model_config(state_dict)
    config: dict = {"res": PORTS_INPUT_RES, **inferred,
                    "input_mean": list(MPII_RGB_MEAN) if source in ("bearpaw", "anibali") else None}
    if source == "shg_fast" and _is_package_checkpoint(obj_or_path):
        stored = dict(obj_or_path["config"])
        clash = [f"{k}={stored[k]!r} (weights say {v!r})" for k, v in inferred.items()
                 if k in stored and stored[k] != v]
        if clash:
            raise ValueError(f"the checkpoint's config does not match its weights: {', '.join(clash)}")
        config = {**config, **stored, **inferred}
    return {"model": state_dict, "config": config, "source": source}


def prepare_input(images: torch.Tensor, source: str) -> torch.Tensor:
    """Turn ``(N, 3, H, W)`` RGB in [0, 1] into what weights from ``source`` were trained on.

    bearpaw and anibali: minus :data:`MPII_RGB_MEAN` per channel. princeton-vl and shg_fast:
    unchanged (princeton-vl's own forward wants NHWC, but that is its API, not its weights').
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {getattr(images, 'shape', images)}")
    if source in ("bearpaw", "anibali"):
        mean = torch.tensor(MPII_RGB_MEAN, dtype=images.dtype, device=images.device)
        return images - mean.view(1, 3, 1, 1)
    return images
