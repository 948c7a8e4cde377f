"""Pair sensitivity analysis: prune one conv pair alone and measure the val Dice it costs.

A *conv pair* is the convs of one double-conv block (``encoders.<i>`` or ``decoders.<i>``, see
`compress.pairs`). For every pair and every amount, only that block's output channels are
pruned (structured, ranked inside the block), the rest of the network is untouched, and the
pruned model is evaluated on the validation split (volume-level mean Dice over WT/TC/ET, no
HD95). The drop is ``baseline - pruned`` (positive = Dice lost)::

    from compress.sensitivity import pair_sensitivity
    rows = pair_sensitivity(model, data, [0.25, 0.5, 0.75])
    # [{"pair": "encoders.0", "amount": 0.25, "params": ..., "val_dice_mean": ..., "dice_drop": ...}, ...]

``python -m studies.pair_sensitivity`` runs it on a checkpoint and draws the heat-map.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from compress.channel_selection import check_fraction
from compress.pairs import blocks, prune_block
from unet.data.canonical import CanonicalDataset
from unet.evaluate import evaluate_model
from unet.models import UNet, count_params


def val_dice_mean(
    model: UNet,
    data: CanonicalDataset,
    threshold: float | dict[str, float] | None = None,
    patch_size: Sequence[int] | None = None,
) -> float:
    """Volume-level mean Dice (mean over subjects of the WT/TC/ET mean) on the val split."""
    result = evaluate_model(model, data, "val", threshold, hd95=False, patch_size=patch_size)
    return float(result["mean"]["dice"]["mean"])


def pair_sensitivity(
    model: UNet,
    data: CanonicalDataset | str | Path,
    amounts: Sequence[float],
    *,
    threshold: float | dict[str, float] | None = None,
    patch_size: Sequence[int] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per (pair, amount): ``pair, amount, params, val_dice_mean, dice_drop``.

    ``amounts`` in [0, 1) (``ValueError`` naming the bad one); 0 is allowed and gives the
    unpruned model, i.e. a drop of exactly 0. ``threshold`` / ``patch_size`` go to
    `unet.evaluate.evaluate_model` (default threshold 0.5 per region).
    """
    if not isinstance(model, UNet):
        raise TypeError(f"pair_sensitivity needs a unet.UNet, got {type(model).__name__}")
    amounts = [check_fraction(a, f"amounts[{i}]") for i, a in enumerate(amounts)]
    if not amounts:
        raise ValueError("amounts is empty: give at least one pruning amount")
    if not isinstance(data, CanonicalDataset):
        data = CanonicalDataset(data)
    baseline = val_dice_mean(model, data, threshold, patch_size)
    jobs = [(pair, a) for pair in blocks(model.config) for a in amounts]
    rows = []
    for pair, amount in tqdm(jobs, desc="pair sensitivity", disable=None if progress else True):
        pruned = prune_block(model, pair, amount)
        dice = val_dice_mean(pruned, data, threshold, patch_size)
        rows.append(
            {
                "pair": pair,
                "amount": amount,
                "params": count_params(pruned),
                "val_dice_mean": dice,
                "dice_drop": baseline - dice,
            }
        )
    return rows
