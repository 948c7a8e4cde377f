"""Binary threshold search on validation probabilities (the compression pipeline's stage).

The implementation lives in `unet.threshold` (training monitors it too, and ``unet`` never
imports ``compress``); this module is its name on the compression side::

    from compress.threshold import search_thresholds
    result = search_thresholds(items, mode="per-region")   # items: unet.evaluate.collect_probabilities
"""

from __future__ import annotations

from unet.threshold import (
    DEFAULT_BINS,
    DEFAULT_GRID,
    MODES,
    DiceCounts,
    ThresholdResult,
    search_thresholds,
)

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_GRID",
    "MODES",
    "DiceCounts",
    "ThresholdResult",
    "search_thresholds",
]
