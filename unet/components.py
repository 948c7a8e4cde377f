"""Post-processing after binarisation: small-component removal and the region-presence rule.

A predicted region map often carries a few isolated false-positive voxels: on a tumour-free
subject a single stray blob scores Dice 0 by the BraTS rule. Two steps, per region, in order:

1. ``min_component[region]``: every connected component smaller than that many voxels is
   removed (0 keeps everything);
2. ``min_volume[region]``: if what is left of the region in the whole volume is smaller than
   that many voxels, the region is declared absent (emptied; 0 keeps everything). It catches
   what step 1 cannot without losing true tumour: a few false voxels on a subject that has no
   such region, when true regions elsewhere have small components too.

Both are chosen on the validation split (`compress.components.search_min_components`) and
stored in a checkpoint's ``meta["min_component"]`` / ``meta["min_volume"]``; `unet.evaluate`
and `unet.predict` apply them after the threshold(s)::

    from unet.components import postprocess, stored_postprocessing
    regions = postprocess(binarize(probs, meta["threshold"]), **stored_postprocessing(meta))

Connectivity is by faces (`scipy.ndimage.label`'s default structure: 6 neighbours in 3D),
over the whole volume, also for 2D models whose slices are predicted and stacked. Units:
voxels of the data set's grid. Each region is processed on its own, so emptying TC can leave
an ET inside no TC (as component removal can); the BraTS metrics score regions separately.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from unet.data.canonical import REGIONS

KEEP_ALL = dict.fromkeys(REGIONS, 0)


def as_min_components(
    spec: Mapping[str, int] | None, name: str = "min_component"
) -> dict[str, int]:
    """Normalise a ``{"WT", "TC", "ET"} -> voxels`` spec (None -> keep everything); checked,
    errors naming the spec ``name`` (``min_component`` or ``min_volume``)."""
    if spec is None:
        return dict(KEEP_ALL)
    missing = [r for r in REGIONS if r not in spec]
    if missing:
        raise ValueError(f"{name} misses region(s) {missing}")
    out = {}
    for r in REGIONS:
        v = spec[r]
        if isinstance(v, bool) or not float(v).is_integer() or v < 0:
            raise ValueError(f"{name}[{r!r}] must be a whole number of voxels >= 0, got {v}")
        out[r] = int(v)
    return out


def as_min_volumes(spec: Mapping[str, int] | None) -> dict[str, int]:
    """`as_min_components` for the region-presence rule's ``min_volume`` spec."""
    return as_min_components(spec, "min_volume")


def stored_postprocessing(meta: Mapping[str, Any], keep: bool = False) -> dict[str, dict[str, int]]:
    """``{"min_component": ..., "min_volume": ...}`` as stored in a checkpoint's ``meta`` (absent
    keys, e.g. older checkpoints: nothing removed), ready to splat into `postprocess`,
    `unet.evaluate.binarize` or `unet.evaluate.evaluate_model`; ``keep``: remove nothing."""
    if keep:
        return {"min_component": dict(KEEP_ALL), "min_volume": dict(KEEP_ALL)}
    return {
        "min_component": as_min_components(meta.get("min_component")),
        "min_volume": as_min_volumes(meta.get("min_volume")),
    }


def component_sizes(mask: np.ndarray, target: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Sizes (voxels) of the connected components of ``mask``, in label order; with ``target``
    also the number of target voxels inside each component (for Dice at any size cut)."""
    labels, n = ndimage.label(mask)
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=n + 1)[1:]
    if target is None:
        return (sizes,)
    hits = np.bincount(flat, weights=np.asarray(target, dtype=bool).ravel(), minlength=n + 1)[1:]
    return sizes, hits.astype(np.int64)


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its connected components smaller than ``min_size`` voxels."""
    if min_size <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask)
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_size
    keep[0] = False
    return keep[labels]


def remove_small_components(
    regions: np.ndarray, min_component: Mapping[str, int] | None
) -> np.ndarray:
    """Bool region maps (3, ...) with each region's components below its size removed."""
    sizes = as_min_components(min_component)
    if not any(sizes.values()):
        return regions
    return np.stack([remove_small(regions[i], sizes[r]) for i, r in enumerate(REGIONS)])


def drop_small_regions(regions: np.ndarray, min_volume: Mapping[str, int] | None) -> np.ndarray:
    """Bool region maps (3, ...) with every region whose total volume is below its
    ``min_volume`` (voxels) emptied: the region-presence rule (``regions`` itself, not a copy,
    when nothing is emptied)."""
    volumes = as_min_volumes(min_volume)
    counts = regions.reshape(len(REGIONS), -1).sum(axis=1)
    absent = [i for i, r in enumerate(REGIONS) if 0 < counts[i] < volumes[r]]
    if not absent:
        return regions
    out = regions.copy()
    out[absent] = False
    return out


def postprocess(
    regions: np.ndarray,
    min_component: Mapping[str, int] | None = None,
    min_volume: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Both steps of the module docstring: small components removed, then absent regions
    emptied (None: that step does nothing; ``regions`` itself when nothing changes)."""
    return drop_small_regions(remove_small_components(regions, min_component), min_volume)
