"""Pruning, one import for all of it (the implementations live in small modules).

* unstructured global L1 over all conv weights: `compress.prune_unstructured`
* structured global channel pruning with Torch-Pruning: `compress.prune_structured`
* encoder-decoder pair (per-level) and per-block pruning: `compress.pairs`

    from compress.prune import prune_structured, prune_unstructured, pruning_summary
    small = prune_structured(model, 0.5, round_to=8)
    print(pruning_summary(model, small))
"""

from compress.pairs import prune_block, prune_pairs
from compress.prune_structured import prune_channels, prune_structured, pruning_summary
from compress.prune_unstructured import (
    apply_masks,
    conv_sparsity,
    prune_unstructured,
    sparsity_masks,
)

__all__ = [
    "apply_masks",
    "conv_sparsity",
    "prune_block",
    "prune_channels",
    "prune_pairs",
    "prune_structured",
    "prune_unstructured",
    "pruning_summary",
    "sparsity_masks",
]
