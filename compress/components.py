"""Choose the post-processing (`unet.components`) on validation predictions.

    from compress.components import search_min_components
    found = search_min_components(items, thresholds)      # items: val (subject, probs, target)
    meta["min_component"] = found.min_component          # {"WT": voxels, "TC": ..., "ET": ...}
    meta["min_volume"] = found.min_volume                # the region-presence rule, same units

After the threshold(s) are fixed, each region's connected components are listed once per
subject with their size and the number of target voxels they cover; the Dice at any minimum
size is then a sum over the kept components, so every size of the grid costs O(components).
Each region takes the size on ``grid`` (voxels) with the best val mean Dice, the smallest size
among equals (0 = keep everything, so removal is chosen only where it helps on val).

The region-presence rule's ``min_volume`` is then chosen the same way, per region, given the
chosen minimum component size: what is left of the region in a subject counts as one
component of its total volume, emptied when below the size tried. On the grid, sizes at or
below the chosen ``min_component`` change nothing (every kept component is at least that
large), so 0 is chosen unless a larger size helps on val.

The grid is capped per region by `size_caps`: half the smallest tumour (the region's voxel count
in a subject that has it) of the **training** labels. A validation split of a few dozen subjects
may hold no small tumour at all, and then val cannot see the cost of a large minimum size (it
measured: val's smallest WT was 1070 voxels, test's 120, and val chose 256); the training
labels bound what a plausible tumour is without touching the test split. Use the training and
validation splits only: the test split is for reporting.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unet.components import KEEP_ALL, as_min_components, as_min_volumes, component_sizes
from unet.data.canonical import REGIONS, CanonicalDataset, regions_from_label
from unet.evaluate import Item, as_thresholds
from unet.selection import check_rule, one_se_choice

DEFAULT_SIZE_GRID = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# what `search_min_components` chooses, in order (a study records it: `studies.sweep_setup`)
SEARCHED = ("min_component", "min_volume")
CAP_FRACTION = 0.5  # of the smallest training tumour, per region


def size_caps(
    data: CanonicalDataset, split: str = "train", fraction: float = CAP_FRACTION
) -> dict[str, int]:
    """Per region, ``fraction`` of the smallest non-empty region (voxels) over ``split``'s labels
    (0 where no subject has the region): the largest minimum component size worth trying.

    The label scan is done once per data file content (keyed by its fingerprint), not once per
    call: every trial of a sweep asks for the same caps."""
    if not 0 < fraction <= 1:
        raise ValueError(f"size_caps: fraction must be in (0, 1], got {fraction}")
    smallest = smallest_tumours(str(data.path), data.fingerprint, split)
    return {r: int(fraction * n) for r, n in zip(REGIONS, smallest, strict=True)}


@functools.lru_cache(maxsize=8)
def smallest_tumours(path: str, fingerprint: str, split: str) -> tuple[int, ...]:
    """Per region (WT, TC, ET), the smallest non-empty region in voxels over ``split`` of the
    data file at ``path`` (0 where no subject has it); ``fingerprint`` keys the cache."""
    data = CanonicalDataset(path)
    smallest = [0] * len(REGIONS)
    for sid in data.split(split):
        counts = regions_from_label(data.label(sid)).reshape(len(REGIONS), -1).sum(axis=1)
        pairs = zip(smallest, counts.tolist(), strict=True)
        smallest = [n if n and (not m or n < m) else m for m, n in pairs]
    return tuple(int(n) for n in smallest)


Curve = dict[str, tuple[list[int], list[float]]]  # region -> (sizes tried, val mean Dice)


@dataclass(frozen=True)
class ComponentResult:
    """Chosen minimum component sizes and region volumes (voxels), their val Dice, and the val
    Dice per grid size of both searches."""

    min_component: dict[str, int]
    val_dice: dict[str, float]  # {"WT", "TC", "ET", "mean"} at the chosen sizes and volumes
    curve: Curve  # the min_component search
    caps: dict[str, int] | None = None  # the largest size tried per region (None: no cap)
    rule: str = "best"  # `unet.selection.RULES`
    anchor: dict[str, int] | None = None  # the one-se rule's anchor (None with "best")
    min_volume: dict[str, int] = field(default_factory=lambda: dict(KEEP_ALL))
    volume_curve: Curve = field(default_factory=dict)  # the min_volume search
    volume_anchor: dict[str, int] | None = None  # the one-se rule's anchor (None with "best")

    def to_dict(self) -> dict[str, Any]:
        def curve(c: Curve, key: str) -> dict[str, Any]:
            return {r: {key: s, "dice": d} for r, (s, d) in c.items()}

        anchors = {"anchor": self.anchor, "volume_anchor": self.volume_anchor}
        return {
            "min_component": dict(self.min_component),
            "min_volume": dict(self.min_volume),
            "rule": self.rule,
            **{k: dict(v) if v is not None else None for k, v in anchors.items()},
            "caps": dict(self.caps) if self.caps is not None else None,
            "val_dice": dict(self.val_dice),
            "curve": curve(self.curve, "min_size"),
            "volume_curve": curve(self.volume_curve, "min_volume"),
        }


def _check_grid(grid: Sequence[int]) -> list[int]:
    sizes = sorted({int(g) for g in grid})
    if not sizes or any(g < 0 for g in grid) or any(float(g) != int(g) for g in grid):
        raise ValueError(f"min-component grid must be whole voxel counts >= 0, got {list(grid)}")
    return sizes


def _region_dice(parts: Sequence[tuple[np.ndarray, np.ndarray, int]], min_size: int) -> np.ndarray:
    """Val Dice per subject of one region when components below ``min_size`` voxels are removed."""
    scores = []
    for sizes, hits, truth in parts:
        kept = sizes >= min_size
        predicted, tp = int(sizes[kept].sum()), int(hits[kept].sum())
        total = predicted + truth
        scores.append(2.0 * tp / total if total else 1.0)
    return np.asarray(scores, dtype=np.float64)


def search_min_components(
    items: Sequence[Item],
    threshold: float | Mapping[str, float] | None,
    grid: Sequence[int] = DEFAULT_SIZE_GRID,
    caps: Mapping[str, int] | None = None,
    *,
    rule: str = "best",
    anchor: Mapping[str, int] | None = None,
    volume_anchor: Mapping[str, int] | None = None,
) -> ComponentResult:
    """Per region, the minimum component size on ``grid`` (at most ``caps[region]`` voxels,
    e.g. `size_caps` of the training split; None: the whole grid) maximising val mean Dice at
    ``threshold``, then the minimum region volume on the same capped grid given that size (see
    the module docstring). ``rule="one-se"``: the size (volume) nearest ``anchor``
    (``volume_anchor``; e.g. the reference model's, None: 0 = keep all; distance in
    log2(1 + size), the anchor itself a candidate when within the cap) among those whose
    per-subject val Dice is within one standard error of the best one's (`unet.selection`)."""
    if not items:
        raise ValueError("search_min_components: no (subject, probs, target) items given")
    check_rule(rule)
    anchors, volume_anchors = as_min_components(anchor), as_min_volumes(volume_anchor)
    full_grid = _check_grid(grid)
    t = as_thresholds(dict(threshold) if isinstance(threshold, Mapping) else threshold)
    chosen: dict[str, int] = {}
    volumes: dict[str, int] = {}
    val: dict[str, float] = {}
    curve: Curve = {}
    volume_curve: Curve = {}
    for i, r in enumerate(REGIONS):
        sizes_grid = [g for g in full_grid if caps is None or g <= caps[r]] or [0]
        cap = None if caps is None else caps[r]
        parts = []
        for _sid, probs, target in items:
            sizes, hits = component_sizes(probs[i] > np.float32(t[r]), target[i])
            parts.append((sizes, hits, int(np.count_nonzero(target[i]))))
        chosen[r], _, curve[r] = _choose(parts, sizes_grid, rule, anchors[r], cap)
        # what is left after the removal, as one component per subject (the presence rule)
        left = [_kept_total(sizes, hits, truth, chosen[r]) for sizes, hits, truth in parts]
        volumes[r], val[r], volume_curve[r] = _choose(
            left, sizes_grid, rule, volume_anchors[r], cap
        )
    val["mean"] = float(np.mean([val[r] for r in REGIONS]))
    one_se = rule == "one-se"
    return ComponentResult(
        min_component=chosen,
        rule=rule,
        anchor=anchors if one_se else None,
        val_dice=val,
        curve=curve,
        caps=dict(caps) if caps is not None else None,
        min_volume=volumes,
        volume_curve=volume_curve,
        volume_anchor=volume_anchors if one_se else None,
    )


def _kept_total(
    sizes: np.ndarray, hits: np.ndarray, truth: int, min_size: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """One subject's region after removing components below ``min_size`` as one component of
    the presence rule: (its voxels, the target voxels it covers) as one-element arrays, and
    the ``truth`` voxel count."""
    kept = sizes >= min_size
    return np.array([sizes[kept].sum()]), np.array([hits[kept].sum()]), truth


def _choose(
    parts: Sequence[tuple[np.ndarray, np.ndarray, int]],
    sizes_grid: Sequence[int],
    rule: str,
    anchor: int,
    cap: int | None,
) -> tuple[int, float, tuple[list[int], list[float]]]:
    """One region's size on ``sizes_grid`` by ``rule``, its val mean Dice, and the curve."""
    rows = [_region_dice(parts, m) for m in sizes_grid]
    scores = [float(row.mean()) for row in rows]
    curve = (list(sizes_grid), scores)
    if rule == "best":
        best = int(np.argmax(scores))  # the first (smallest) size among equals
        return sizes_grid[best], scores[best], curve
    return (*_one_se_size(parts, sizes_grid, rows, anchor, cap), curve)


def _one_se_size(
    parts: Sequence[tuple[np.ndarray, np.ndarray, int]],
    sizes_grid: Sequence[int],
    rows: Sequence[np.ndarray],
    anchor: int,
    cap: int | None,
) -> tuple[int, float]:
    """`search_min_components`'s one-se choice for one region and its val mean Dice (the
    anchor added as a candidate when it is not on the grid and within ``cap``)."""
    sizes, rows = list(sizes_grid), list(rows)
    if anchor not in sizes and (cap is None or anchor <= cap):
        sizes.append(anchor)
        rows.append(_region_dice(parts, anchor))
    distance = [abs(np.log2(1 + s) - np.log2(1 + anchor)) for s in sizes]
    k = one_se_choice(np.stack(rows), distance)
    return sizes[k], float(rows[k].mean())
