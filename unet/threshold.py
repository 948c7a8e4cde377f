"""Binary threshold search on validation probabilities: one global threshold or one per region.

Used by the compression pipeline (``compress.threshold`` re-exports it) and by training, whose
early stopping monitors the val Dice at searched thresholds (`unet.train`).

    from unet.threshold import search_thresholds
    from unet.evaluate import collect_probabilities
    items = collect_probabilities(forward, data, data.split("val"), spatial_dims, divisor)
    result = search_thresholds(items, mode="per-region")
    meta["threshold"] = result.thresholds            # {"WT": t, "TC": t, "ET": t}

Objective: volume-level mean Dice (mean over subjects, and over WT / TC / ET), a voxel counting
as foreground when ``probability > threshold`` (as in `unet.evaluate`), with the BraTS rule
that a subject whose prediction and reference are both empty scores 1. Use validation
probabilities only; the test split is for reporting.

Search: every threshold on a coarse grid, then a bounded refinement around the best grid
point (``scipy.optimize.minimize_scalar(method="bounded")`` within one grid step), and the
better of the two is kept. Per-region search optimises each region on its own (the objective
is a sum over regions) and also considers the global optimum, so it never scores below it.

Speed: each subject and region is read once, into a histogram of ``bins`` = 2048 buckets split
by target (``ceil(p * 2048)``: bucket ``k`` holds ``(k - 1) / 2048 < p <= k / 2048``). Counts
above any bucket edge are cumulative sums, so a Dice at any threshold costs O(subjects), not a
pass over the volumes. Between edges, counts are interpolated linearly (a smooth objective for
the refinement); the chosen thresholds are then snapped to the better neighbouring edge, where
counts are exact: edges ``k / 2048`` are exact binary fractions, so the reported ``val_dice``
is exactly what ``unet.evaluate.evaluate_probabilities`` gives with the same thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from unet.data.canonical import REGIONS
from unet.evaluate import Item  # (subject, probabilities (3, ...), target (3, ...) bool)
from unet.selection import check_rule, one_se_choice

MODES = ("global", "per-region")
DEFAULT_GRID = tuple(float(t) for t in np.linspace(0.05, 0.95, 19))
DEFAULT_BINS = 2048


@dataclass(frozen=True)
class ThresholdResult:
    """Chosen thresholds, their validation Dice, and the Dice-vs-threshold curve on the grid."""

    mode: str
    thresholds: dict[str, float]  # {"WT", "TC", "ET"}
    val_dice: dict[str, float]  # {"WT", "TC", "ET", "mean"}
    curve: dict[str, tuple[list[float], list[float]]]  # region or "mean" -> (thresholds, dice)
    rule: str = "best"  # `unet.selection.RULES`
    anchor: dict[str, float] | None = None  # the one-se rule's anchor (None with "best")
    best: dict[str, float] | None = None  # the argmax thresholds (what "best" would choose)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (curves as ``{"threshold": [...], "dice": [...]}``)."""
        return {
            "mode": self.mode,
            "rule": self.rule,
            "anchor": dict(self.anchor) if self.anchor is not None else None,
            "best": dict(self.best) if self.best is not None else None,
            "thresholds": dict(self.thresholds),
            "val_dice": dict(self.val_dice),
            "curve": {k: {"threshold": t, "dice": d} for k, (t, d) in self.curve.items()},
        }


class DiceCounts:
    """Per subject and region, cumulative counts of predicted and true-positive voxels per edge.

    ``predicted[s, r, k]`` is the number of voxels with ``p > k / bins``, ``hits[s, r, k]`` the
    number of those that are in the target, ``truth[s, r]`` the target size.
    """

    def __init__(self, items: Sequence[Item], bins: int = DEFAULT_BINS) -> None:
        if not items:
            raise ValueError("search_thresholds: no (subject, probs, target) items given")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = bins
        n = len(items)
        self.predicted = np.zeros((n, len(REGIONS), bins + 1), dtype=np.int64)
        self.hits = np.zeros_like(self.predicted)
        self.truth = np.zeros((n, len(REGIONS)), dtype=np.int64)
        for s, (sid, probs, target) in enumerate(items):
            if probs.shape != target.shape or probs.shape[0] != len(REGIONS):
                raise ValueError(
                    f"subject {sid}: probabilities {probs.shape} and target {target.shape} "
                    f"must both be (3, ...)"
                )
            for r in range(len(REGIONS)):
                self._add(s, r, sid, probs[r], target[r])

    def _add(self, s: int, r: int, sid: str, p: np.ndarray, t: np.ndarray) -> None:
        p = np.asarray(p, dtype=np.float32).ravel()
        if not (np.all(p >= 0.0) and np.all(p <= 1.0)):  # NaN fails both
            raise ValueError(f"subject {sid}: probabilities must lie in [0, 1] (NaN-free)")
        # bucket = ceil(p * bins) in 0..bins; scaling by a power of two is exact in float32
        bucket = np.ceil(p * np.float32(self.bins)).astype(np.int64)
        counts = np.bincount(
            bucket * 2 + np.asarray(t, dtype=bool).ravel(), minlength=2 * (self.bins + 1)
        ).reshape(self.bins + 1, 2)
        # voxels above edge k are those in buckets k + 1 .. bins: reversed cumulative sum
        above = np.cumsum(counts[::-1], axis=0)[::-1]
        self.predicted[s, r, :-1] = above[1:].sum(axis=1)
        self.hits[s, r, :-1] = above[1:, 1]
        self.truth[s, r] = counts[:, 1].sum()

    def dice(self, threshold: float, regions: Sequence[int]) -> np.ndarray:
        """Dice per subject (rows) and region (columns) at ``threshold`` (interpolated off-edge)."""
        pos = min(max(threshold, 0.0), 1.0) * self.bins
        lo = min(int(np.floor(pos)), self.bins - 1)
        w = pos - lo
        idx = list(regions)
        pred = (1 - w) * self.predicted[:, idx, lo] + w * self.predicted[:, idx, lo + 1]
        hits = (1 - w) * self.hits[:, idx, lo] + w * self.hits[:, idx, lo + 1]
        total = pred + self.truth[:, idx]
        safe = np.where(total > 0, total, 1.0)
        return np.where(total > 0, 2.0 * hits / safe, 1.0)

    def mean_dice(self, threshold: float, regions: Sequence[int]) -> float:
        """Mean over subjects and ``regions`` of the Dice at ``threshold``."""
        return float(self.dice(threshold, regions).mean())

    def edges_around(self, threshold: float) -> list[float]:
        """The bucket edges (exact thresholds) at or next to ``threshold``."""
        pos = min(max(threshold, 0.0), 1.0) * self.bins
        ks = {int(np.floor(pos)), int(np.ceil(pos))}
        return [k / self.bins for k in sorted(ks) if 0 <= k <= self.bins]


def _check_grid(grid: Sequence[float]) -> np.ndarray:
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError("search_thresholds: grid must be a non-empty 1D sequence")
    if not (np.all(g > 0.0) and np.all(g < 1.0)):
        raise ValueError("search_thresholds: grid thresholds must lie in (0, 1)")
    return np.unique(g)


def _maximise(
    objective: Callable[[float], float],
    grid: np.ndarray,
    snap: Callable[[float], list[float]],
    extra: Sequence[float] = (),
) -> float:
    """Best threshold: grid, bounded refinement around the best grid point, snapped to edges."""
    scores = [objective(t) for t in grid]
    best = int(np.argmax(scores))
    candidates = [float(grid[best])]
    if grid.size > 1:
        step = float(np.min(np.diff(grid)))
        lo = max(float(grid[best]) - step, 0.0)
        hi = min(float(grid[best]) + step, 1.0)
        refined = minimize_scalar(lambda t: -objective(t), bounds=(lo, hi), method="bounded")
        candidates.append(float(refined.x))
    exact = [e for c in candidates for e in snap(c)] + list(extra)
    # argmax keeps the first of equal scores: the grid point's edges come first
    return exact[int(np.argmax([objective(e) for e in exact]))]


def _one_se(
    counts: DiceCounts,
    regions: Sequence[int],
    best: float,
    grid: np.ndarray,
    anchor: Sequence[float],
) -> float:
    """The threshold nearest ``anchor`` (mean distance over ``regions``) whose per-subject Dice
    is within one standard error of ``best``'s (`unet.selection`); candidates: the anchor's and
    the grid's edges and ``best``."""
    candidates = [e for a in anchor for e in counts.edges_around(a)]
    candidates += [e for g in grid for e in counts.edges_around(float(g))] + [best]
    candidates = list(dict.fromkeys(candidates))  # unique, anchor edges first
    rows = np.stack([counts.dice(c, regions).mean(axis=1) for c in candidates])
    distance = [float(np.mean([abs(c - a) for a in anchor])) for c in candidates]
    return candidates[one_se_choice(rows, distance)]


def search_thresholds(
    items: Sequence[Item],
    mode: str = "global",
    grid: Sequence[float] = DEFAULT_GRID,
    *,
    bins: int = DEFAULT_BINS,
    rule: str = "best",
    anchor: float | Mapping[str, float] | None = None,
) -> ThresholdResult:
    """Thresholds maximising validation mean Dice, ``global`` (one for all) or ``per-region``.

    ``items`` are ``(subject, probabilities (3, ...) float32, target (3, ...) bool)`` triples,
    e.g. from `unet.evaluate.collect_probabilities` on the validation split.
    ``rule="one-se"``: per region (or for all, ``global``), the threshold nearest ``anchor``
    (e.g. the reference model's thresholds; None: 0.5) among those whose per-subject val Dice
    is within one standard error of the best one's (`unet.selection`).
    """
    if mode not in MODES:
        raise ValueError(f"search_thresholds: mode must be one of {MODES}, got {mode!r}")
    check_rule(rule)
    g = _check_grid(grid)
    counts = DiceCounts(items, bins)
    all_regions = range(len(REGIONS))
    anchors = _anchor_thresholds(anchor)

    def objective(regions: Sequence[int]) -> Callable[[float], float]:
        return lambda t: counts.mean_dice(t, regions)

    best_global = _maximise(objective(all_regions), g, counts.edges_around)
    if mode == "global":
        best = dict.fromkeys(REGIONS, best_global)
    else:
        best = {
            r: _maximise(objective([i]), g, counts.edges_around, extra=[best_global])
            for i, r in enumerate(REGIONS)
        }
    if rule == "best":
        thresholds = best
    elif mode == "global":
        chosen = _one_se(counts, all_regions, best_global, g, [anchors[r] for r in REGIONS])
        thresholds = dict.fromkeys(REGIONS, chosen)
    else:
        thresholds = {
            r: _one_se(counts, [i], best[r], g, [anchors[r]]) for i, r in enumerate(REGIONS)
        }
    per_region = {r: counts.mean_dice(thresholds[r], [i]) for i, r in enumerate(REGIONS)}
    val_dice = {**per_region, "mean": float(np.mean(list(per_region.values())))}
    if mode == "per-region" and rule == "best":
        global_score = counts.mean_dice(best_global, all_regions)
        assert val_dice["mean"] >= global_score - 1e-12, "per-region search scored below global"
    curve = {
        r: ([float(t) for t in g], [counts.mean_dice(t, [i]) for t in g])
        for i, r in enumerate(REGIONS)
    }
    curve["mean"] = ([float(t) for t in g], [counts.mean_dice(t, all_regions) for t in g])
    return ThresholdResult(
        mode=mode,
        thresholds=thresholds,
        val_dice=val_dice,
        curve=curve,
        rule=rule,
        anchor=anchors if rule == "one-se" else None,
        best=dict(best),
    )


def _anchor_thresholds(anchor: float | Mapping[str, float] | None) -> dict[str, float]:
    """Per-region anchor thresholds in [0, 1] (None: 0.5 everywhere)."""
    if anchor is None:
        anchor = 0.5
    values = dict(anchor) if isinstance(anchor, Mapping) else dict.fromkeys(REGIONS, anchor)
    if set(values) != set(REGIONS) or not all(0.0 <= float(v) <= 1.0 for v in values.values()):
        raise ValueError(
            f"threshold anchor must be in [0, 1] for each of {REGIONS}, got {anchor!r}"
        )
    return {r: float(values[r]) for r in REGIONS}
