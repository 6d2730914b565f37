"""PCKh for MPII-style annotations, and the PCK curve.

A joint counts when it is annotated (ground-truth ``x > 0`` in 1-based MPII coordinates, or the
``annotated`` mask given); it is correct when ``|pred - gt| / normalize <= threshold``
(``normalize`` = 0.6 x the head-box diagonal in MPII). Figures are percentages.
"""

from __future__ import annotations

import os

import numpy as np

from .joints import MPII_JOINTS, PCKH_JOINTS

__all__ = ["pck", "pck_curve", "load_annotations", "load_predictions", "evaluate_files",
           "save_pck_curve", "format_table", "read_h5"]

ANNOTATION_KEYS = ("part", "normalize")


def _prepare(preds, gt, normalize, annotated):
    p, g = np.asarray(preds, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    norm = np.asarray(normalize, dtype=np.float64)
    if g.ndim != 3 or g.shape[2] != 2:
        raise ValueError(f"ground truth must have shape (N, K, 2), got {g.shape}")
    if p.shape != g.shape:
        raise ValueError(f"predictions must have shape {g.shape} like the annotations, got {p.shape}")
    if norm.shape != (g.shape[0],):
        raise ValueError(f"normalize must have shape ({g.shape[0]},), got {norm.shape}")
    mask = g[..., 0] > 0 if annotated is None else np.asarray(annotated, dtype=bool)
    if mask.shape != g.shape[:2]:
        raise ValueError(f"annotated must have shape {g.shape[:2]}, got {mask.shape}")
    _check_normalize(norm, mask)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.linalg.norm(p - g, axis=-1) / norm[:, None]
    return dist, mask


def _check_normalize(norm: np.ndarray, mask: np.ndarray) -> None:
    """ValueError unless ``norm`` is positive and finite for every person (row) with an annotated joint.

    A zero head size would silently count every joint of that person as wrong.
    """
    bad = np.flatnonzero(mask.any(axis=1) & ~(np.isfinite(norm) & (norm > 0)))
    if bad.size:
        raise ValueError(f"normalize (the head size) must be positive and finite for every person with annotated "
                         f"joints; {bad.size} of {norm.size} are not (first: row {bad[0]} = {norm[bad[0]]:g})")


def _summary(correct: np.ndarray, mask: np.ndarray, names) -> dict:
    """Totals from per-(sample, joint) ``correct`` and ``mask`` (..., N, K) arrays."""
    counts = mask.sum(-2)
    hits = (correct & mask).sum(-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_joint = 100.0 * hits / counts
    sel = list(PCKH_JOINTS) if len(names) == len(MPII_JOINTS) else list(range(len(names)))
    return {
        "total_weighted": 100.0 * hits[..., sel].sum(-1) / counts[..., sel].sum(-1),
        "total_unweighted": np.nanmean(per_joint[..., sel], axis=-1),
        "total_all16": 100.0 * hits.sum(-1) / counts.sum(-1),
        "per_joint": per_joint,
        "counts": counts,
    }


def pck(preds, gt, normalize, threshold: float = 0.5, annotated=None, names=MPII_JOINTS) -> dict:
    """PCKh at ``threshold`` of ``preds`` vs ``gt`` (both ``(N, K, 2)``, same coordinate system).

    Returns a dict: ``total_weighted`` (the 14 joints without pelvis and thorax, weighted by
    joint count), ``total_unweighted`` (mean of those 14 per-joint figures), ``total_all16``
    (every joint), ``per_joint`` (name → figure), ``counts`` (name → annotated joints),
    ``threshold``, ``num_samples``. For K other than 16 the totals cover all K joints.
    """
    dist, mask = _prepare(preds, gt, normalize, annotated)
    if len(names) != dist.shape[1]:
        names = tuple(f"joint{k}" for k in range(dist.shape[1]))
    s = _summary(dist <= threshold, mask, names)
    return {
        "threshold": float(threshold),
        "num_samples": int(dist.shape[0]),
        "total_weighted": float(s["total_weighted"]),
        "total_unweighted": float(s["total_unweighted"]),
        "total_all16": float(s["total_all16"]),
        "per_joint": {name: float(v) for name, v in zip(names, s["per_joint"])},
        "counts": {name: int(v) for name, v in zip(names, s["counts"])},
    }


def pck_curve(preds, gt, normalize, thresholds=None, annotated=None) -> dict:
    """PCKh over ``thresholds`` (default 0 to 0.5 in steps of 0.01): arrays of shape (T,) / (T, K)."""
    thr = np.linspace(0, 0.5, 51) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    dist, mask = _prepare(preds, gt, normalize, annotated)
    names = MPII_JOINTS if dist.shape[1] == len(MPII_JOINTS) else tuple(range(dist.shape[1]))
    s = _summary(dist[None] <= thr[:, None, None], np.broadcast_to(mask, (len(thr),) + mask.shape), names)
    return {"thresholds": thr, **s}


def save_pck_curve(path: str | os.PathLike, curve: dict, title: str = "PCKh") -> None:
    """Plot :func:`pck_curve`'s totals (and each joint, thin) against the threshold as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    thr = curve["thresholds"]
    for k in range(curve["per_joint"].shape[1]):
        ax.plot(thr, curve["per_joint"][:, k], color="0.8", linewidth=0.7)
    ax.plot(thr, curve["total_weighted"], label="14 joints, weighted", linewidth=2)
    ax.plot(thr, curve["total_all16"], label="all joints", linewidth=1.5, linestyle="--")
    ax.set_xlabel("threshold (fraction of the head size)")
    ax.set_ylabel("detection rate, %")
    ax.set_xlim(0, thr.max())
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def read_h5(path: str | os.PathLike, keys) -> dict:
    """The datasets ``keys`` of an .h5 as arrays; FileNotFoundError / ValueError (missing key, not HDF5)."""
    import h5py

    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            if missing:
                raise ValueError(f"{path}: missing dataset(s) {missing}; has {sorted(f.keys())}")
            return {k: np.asarray(f[k][()]) for k in keys}
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 file ({exc})") from exc


def load_annotations(path: str | os.PathLike) -> dict:
    """``part`` (N, 16, 2) 1-based and ``normalize`` (N,) from an MPII-style .h5; ValueError on a bad layout."""
    ann = read_h5(path, ANNOTATION_KEYS)
    part, norm = ann["part"].astype(np.float64), ann["normalize"].astype(np.float64).reshape(-1)
    if part.ndim != 3 or part.shape[1:] != (len(MPII_JOINTS), 2):
        raise ValueError(f"{path}: 'part' must have shape (N, 16, 2), got {part.shape}")
    if norm.shape != (part.shape[0],):
        raise ValueError(f"{path}: 'normalize' must have shape ({part.shape[0]},), got {ann['normalize'].shape}")
    try:
        _check_normalize(norm, part[..., 0] > 0)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return {"part": part, "normalize": norm}


def load_predictions(path: str | os.PathLike, num_samples: int | None = None) -> np.ndarray:
    """``preds`` (N, 16, 2) from an .h5; ValueError unless it has that shape (and N = num_samples)."""
    preds = read_h5(path, ("preds",))["preds"].astype(np.float64)
    expected = (num_samples if num_samples is not None else "N", len(MPII_JOINTS), 2)
    if preds.ndim != 3 or preds.shape[1:] != expected[1:] or (
            num_samples is not None and preds.shape[0] != num_samples):
        raise ValueError(f"{path}: 'preds' must have shape {expected}, got {preds.shape}")
    return preds


def evaluate_files(preds_path, annot_path, threshold: float = 0.5) -> dict:
    """PCKh (as :func:`pck`) of the predictions in ``preds_path`` against ``annot_path``."""
    ann = load_annotations(annot_path)
    preds = load_predictions(preds_path, ann["part"].shape[0])
    return pck(preds, ann["part"], ann["normalize"], threshold)


def format_table(result: dict) -> str:
    """A plain-text table of a :func:`pck` result."""
    lines = [f"PCKh@{result['threshold']:g} over {result['num_samples']} people", "",
             f"{'joint':<8}{'PCKh':>8}{'count':>8}"]
    for name, value in result["per_joint"].items():
        lines.append(f"{name:<8}{value:>8.2f}{result['counts'][name]:>8d}")
    lines += ["",
              f"total (14 joints, weighted)    {result['total_weighted']:.2f}",
              f"total (14 joints, unweighted)  {result['total_unweighted']:.2f}",
              f"total (all joints)             {result['total_all16']:.2f}"]
    return "\n".join(lines)
