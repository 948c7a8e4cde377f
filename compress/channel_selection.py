"""Which channels structured pruning removes: one global ranking, rounding, a floor per layer.

Pure bookkeeping, no Torch-Pruning: `compress.prune_structured` measures the importance of
every prunable channel group with Torch-Pruning and asks `select_channels` which channels to
drop. The rules (the exact meaning of a structured pruning ``ratio``):

* A *unit* is what is removed at once: one output channel of a convolution, or, behind a
  ``GroupNorm(g)``, one position in every one of the ``g`` groups (``g`` channels, so each
  group loses the same number of channels and the width stays divisible by ``g``).
* All units of a *scope* (the whole network for global pruning; one U-Net level, or one block,
  for pair pruning) are ranked together by importance. The lowest-ranked units are removed
  until the removed *channels* are as close as possible to ``ratio`` x the scope's channels,
  **after** rounding and the floor below (so the achieved ratio, not only the threshold,
  follows the request).
* Rounding: a layer's kept units are rounded to the nearest multiple of ``multiple`` (from
  ``round_to``), and a layer never keeps fewer than one multiple (at least one unit, i.e. at
  least one channel, or one channel per GroupNorm group): a ratio can never delete a layer,
  it saturates instead. A layer narrower than one multiple is left as it is.

Kept widths are monotone in ``ratio``: a larger ratio never widens any layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def check_fraction(value: float, name: str) -> float:
    """``value`` as a float in [0, 1); ``ValueError`` naming ``name`` otherwise."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_round_to(round_to: int | None) -> int:
    """``round_to`` as an int >= 1 (None means 1); ``ValueError`` otherwise."""
    if round_to is None:
        return 1
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise ValueError(f"round_to must be None or an integer >= 1, got {round_to!r}")
    return int(round_to)


@dataclass(frozen=True)
class ChannelGroup:
    """The output channels of one convolution (and everything Torch-Pruning couples to them).

    ``importance`` has one entry per unit (higher = more important); ``unit_size`` channels go
    per unit (``g`` behind a ``GroupNorm(g)``, else 1); kept units are rounded to a multiple of
    ``multiple``.
    """

    name: str
    importance: np.ndarray
    unit_size: int = 1
    multiple: int = 1

    @property
    def units(self) -> int:
        return len(self.importance)

    @property
    def channels(self) -> int:
        return self.units * self.unit_size

    def channel_indices(self, units: Sequence[int]) -> list[int]:
        """Channel indices of ``units``: unit ``j`` is channel ``j + t * units`` for every group ``t``."""
        return sorted(int(j) + t * self.units for j in units for t in range(self.unit_size))


def units_multiple(round_to: int, unit_size: int) -> int:
    """Kept-unit multiple giving widths divisible by both ``round_to`` and ``unit_size``."""
    return math.lcm(round_to, unit_size) // unit_size


def _rounded_keep(raw_keep: np.ndarray, units: np.ndarray, multiple: np.ndarray) -> np.ndarray:
    keep = np.floor(raw_keep / multiple + 0.5).astype(np.int64) * multiple
    keep = np.minimum(np.maximum(keep, multiple), units)
    return np.where(raw_keep == units, units, keep)  # nothing selected: layer untouched


def select_keep(groups: Sequence[ChannelGroup], ratio: float) -> list[int]:
    """Units to keep per group (same order) for one scope ranked globally at ``ratio``."""
    ratio = check_fraction(ratio, "ratio")
    if not groups:
        return []
    units = np.array([g.units for g in groups], dtype=np.int64)
    unit_size = np.array([g.unit_size for g in groups], dtype=np.int64)
    multiple = np.array([g.multiple for g in groups], dtype=np.int64)
    owner = np.repeat(np.arange(len(groups)), units)
    order = np.argsort(np.concatenate([g.importance for g in groups]), kind="stable")
    target = ratio * float((units * unit_size).sum())

    def keep_at(n: int) -> np.ndarray:
        raw = units - np.bincount(owner[order[:n]], minlength=len(groups))
        return _rounded_keep(raw, units, multiple)

    def removed_at(n: int) -> float:
        return float(((units - keep_at(n)) * unit_size).sum())

    # removed_at is non-decreasing in n: find the first prefix reaching the target ...
    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        if removed_at(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    # ... and take it or the prefix just before, whichever lands closer (ties: remove less).
    best = lo
    if lo > 0 and abs(removed_at(lo - 1) - target) <= abs(removed_at(lo) - target):
        best = lo - 1
    return [int(k) for k in keep_at(best)]


def select_channels(groups: Sequence[ChannelGroup], ratio: float) -> dict[str, list[int]]:
    """``{group name: channel indices to remove}`` (groups losing nothing are omitted)."""
    removal: dict[str, list[int]] = {}
    for group, keep in zip(groups, select_keep(groups, ratio), strict=True):
        if keep < group.units:
            drop = np.argsort(group.importance, kind="stable")[: group.units - keep]
            removal[group.name] = group.channel_indices(drop.tolist())
    return removal
