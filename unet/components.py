"""Small connected-component removal: the post-processing step after binarisation.

A predicted region map often carries a few isolated false-positive voxels: on a tumour-free
subject a single stray blob scores Dice 0 by the BraTS rule. This step removes, per region,
every connected component smaller than ``min_component[region]`` voxels (0 keeps everything).
The sizes are chosen on the validation split (`compress.components.search_min_components`)
and stored in a checkpoint's ``meta["min_component"]``; `unet.evaluate` and `unet.predict`
apply them after the threshold(s)::

    from unet.components import remove_small_components
    regions = remove_small_components(binarize(probs, meta["threshold"]), meta["min_component"])

Connectivity is by faces (`scipy.ndimage.label`'s default structure: 6 neighbours in 3D),
over the whole volume, also for 2D models whose slices are predicted and stacked. Units:
voxels of the data set's grid.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from unet.data.canonical import REGIONS

KEEP_ALL = dict.fromkeys(REGIONS, 0)


def as_min_components(spec: Mapping[str, int] | None) -> dict[str, int]:
    """Normalise a ``{"WT", "TC", "ET"} -> voxels`` spec (None -> keep everything); checked."""
    if spec is None:
        return dict(KEEP_ALL)
    missing = [r for r in REGIONS if r not in spec]
    if missing:
        raise ValueError(f"min_component misses region(s) {missing}")
    out = {}
    for r in REGIONS:
        v = spec[r]
        if isinstance(v, bool) or not float(v).is_integer() or v < 0:
            raise ValueError(f"min_component[{r!r}] must be a whole number of voxels >= 0, got {v}")
        out[r] = int(v)
    return out


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
