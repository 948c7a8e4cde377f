"""Segmentation metrics per subject volume: Dice and HD95 for the BraTS regions WT, TC, ET.

BraTS convention for empty masks (used by the challenge's own evaluation):

* prediction and reference both empty: Dice 1, HD95 0;
* exactly one of them empty: Dice 0, HD95 = ``HD95_EMPTY_MM`` (373.13 mm, the diagonal of the
  BraTS 240 x 240 x 155 mm volume, the value the BraTS evaluation assigns).

HD95 (millimetres, given the voxel ``spacing``; 1 mm isotropic by default) comes in two
definitions, named by ``method``:

* ``"max-directed"`` (the default, `HD95_METHOD`): the larger of the two directed 95th
  percentiles, ``max(P95(d(pred -> ref)), P95(d(ref -> pred)))``, as the BraTS evaluation and
  MONAI's ``compute_hausdorff_distance(percentile=95)`` compute it;
* ``"pooled"``: the 95th percentile of both directions' distances pooled (MedPy's ``hd95``).
  A small satellite false positive far from the tumour barely moves the pooled percentile but
  can dominate the prediction's directed one, so the two can differ by tens of millimetres.

Surface voxels are the mask minus its erosion (face connectivity); distances are Euclidean
distance transforms (``scipy.ndimage.distance_transform_edt``) with anisotropic ``spacing``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from unet.data.canonical import REGIONS

HD95_EMPTY_MM = 373.13
HD95_METHODS = ("max-directed", "pooled")
HD95_METHOD = "max-directed"  # the default: BraTS / MONAI


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient of two binary masks; 1.0 when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"dice: shapes differ, {pred.shape} vs {target.shape}")
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, target).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(
        mask, structure=ndimage.generate_binary_structure(mask.ndim, 1)
    )


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every surface voxel of ``a`` to the surface of ``b``, and back.

    Both masks must be non-empty. Works on the bounding box of ``a | b`` (plus a margin) to
    keep the distance transforms small.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    spacing = tuple(float(s) for s in (spacing or (1.0,) * a.ndim))
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, a.shape)
    box = tuple(slice(int(l_), int(h_)) for l_, h_ in zip(lo, hi, strict=True))
    a, b = a[box], b[box]
    sa, sb = _surface(a), _surface(b)
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return dist_to_b[sa], dist_to_a[sb]


def hd95(
    pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | None = None,
    method: str = HD95_METHOD,
) -> float:
    """95th-percentile Hausdorff distance (mm), BraTS empty-mask convention.

    ``method``: ``"max-directed"`` (BraTS / MONAI, default) or ``"pooled"`` (MedPy); see the
    module docstring.
    """
    if method not in HD95_METHODS:
        raise ValueError(f"hd95: method must be one of {HD95_METHODS}, got {method!r}")
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"hd95: shapes differ, {pred.shape} vs {target.shape}")
    p_any, t_any = bool(pred.any()), bool(target.any())
    if not p_any and not t_any:
        return 0.0
    if not p_any or not t_any:
        return HD95_EMPTY_MM
    d_pt, d_tp = surface_distances(pred, target, spacing)
    if method == "pooled":
        return float(np.percentile(np.concatenate([d_pt, d_tp]), 95))
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def region_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    with_hd95: bool = True,
    hd95_method: str = HD95_METHOD,
) -> dict[str, dict[str, float]]:
    """Dice (and HD95 by ``hd95_method``) per region for bool maps of shape (3, ...) in the
    order WT, TC, ET.

    Returns ``{"dice": {"WT", "TC", "ET", "mean"}, "hd95": {...}}`` (``hd95`` only if asked).
    """
    if pred.shape != target.shape or pred.shape[0] != len(REGIONS):
        raise ValueError(
            f"region_metrics: expected two (3, ...) maps, got {pred.shape}, {target.shape}"
        )
    out: dict[str, dict[str, float]] = {"dice": {}}
    if with_hd95:
        out["hd95"] = {}
    for i, r in enumerate(REGIONS):
        out["dice"][r] = dice(pred[i], target[i])
        if with_hd95:
            out["hd95"][r] = hd95(pred[i], target[i], method=hd95_method)
    for values in out.values():
        values["mean"] = float(np.mean([values[r] for r in REGIONS]))
    return out
