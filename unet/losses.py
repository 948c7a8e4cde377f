"""`BCEDiceLoss`: binary cross-entropy on logits plus soft Dice, for the three BraTS regions.

For logits ``z`` and targets ``t`` of shape ``(N, R, *spatial)`` (R regions, WT/TC/ET)::

    p       = sigmoid(z)
    bce     = mean over every element of BCE-with-logits(z, t)
    dice_r  = (2 * sum(p_r * t_r) + smooth) / (sum(p_r) + sum(t_r) + smooth)
    loss    = bce_weight * bce + dice_weight * (1 - mean_r dice_r)

The Dice sums run over the whole batch and all voxels of region ``r`` ("batch Dice"), so a
slice without tumour does not give a degenerate per-sample Dice. Everything is computed in
float32, also under autocast.

    >>> loss = BCEDiceLoss()(model(images), targets)   # doctest: +SKIP
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-region batch soft Dice, shape ``(R,)``, of ``(N, R, *spatial)`` probabilities."""
    dims = [0, *range(2, probs.ndim)]
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return (2.0 * intersection + smooth) / (total + smooth)


class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE-with-logits + dice_weight * (1 - mean soft Dice)``; a scalar.

    Args:
        bce_weight: weight of the mean binary cross-entropy (>= 0).
        dice_weight: weight of the Dice term (>= 0); not both weights may be 0.
        smooth: additive smoothing of the Dice ratio (>= 0); keeps regions that are empty in
            both prediction and target from dividing by zero (Dice -> 1 there).
    """

    def __init__(
        self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0
    ) -> None:
        super().__init__()
        if bce_weight < 0 or dice_weight < 0:
            raise ValueError(
                f"BCEDiceLoss weights must be >= 0, got bce_weight={bce_weight}, dice_weight={dice_weight}"
            )
        if bce_weight == 0 and dice_weight == 0:
            raise ValueError("BCEDiceLoss: bce_weight and dice_weight cannot both be 0")
        if smooth < 0:
            raise ValueError(f"BCEDiceLoss smooth must be >= 0, got {smooth}")
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(
                f"BCEDiceLoss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ"
            )
        logits, target = logits.float(), target.float()
        loss = logits.new_zeros(())
        if self.bce_weight:
            loss = loss + self.bce_weight * F.binary_cross_entropy_with_logits(logits, target)
        if self.dice_weight:
            dice = soft_dice(torch.sigmoid(logits), target, self.smooth)
            loss = loss + self.dice_weight * (1.0 - dice.mean())
        return loss

    def extra_repr(self) -> str:
        return f"bce_weight={self.bce_weight}, dice_weight={self.dice_weight}, smooth={self.smooth}"
