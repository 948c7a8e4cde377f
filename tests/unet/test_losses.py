"""BCEDiceLoss against values computed by hand (plain Python math, no torch ops)."""

from __future__ import annotations

import math

import pytest
import torch

from unet.losses import BCEDiceLoss, soft_dice


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _bce(z: float, t: float) -> float:
    p = _sigmoid(z)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _expected(logits, targets, bce_w, dice_w, smooth):
    """logits / targets: nested lists [batch][region][pixels]."""
    flat = [
        (z, t)
        for zb, tb in zip(logits, targets, strict=True)
        for zr, tr in zip(zb, tb, strict=True)
        for z, t in zip(zr, tr, strict=True)
    ]
    bce = sum(_bce(z, t) for z, t in flat) / len(flat)
    dices = []
    for r in range(len(logits[0])):
        pairs = [
            (_sigmoid(z), t)
            for b in range(len(logits))
            for z, t in zip(logits[b][r], targets[b][r], strict=True)
        ]
        inter = sum(p * t for p, t in pairs)
        total = sum(p for p, _ in pairs) + sum(t for _, t in pairs)
        dices.append((2 * inter + smooth) / (total + smooth))
    return bce_w * bce + dice_w * (1 - sum(dices) / len(dices))


# batch of 2, 3 regions, 4 pixels each (a 2x2 image); the second sample has no ET at all
LOGITS = [
    [[0.0, math.log(3.0), -1.0, 2.0], [1.5, -0.5, 0.0, -3.0], [-2.0, -2.0, 0.5, 1.0]],
    [[2.0, -1.0, 0.3, 0.0], [-1.0, 4.0, -4.0, 0.7], [-3.0, -0.2, -1.0, -2.5]],
]
TARGETS = [
    [[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 1, 1]],
    [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 0]],
]


@pytest.mark.parametrize(
    "bce_w, dice_w, smooth",
    [(1.0, 1.0, 1.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (0.5, 2.0, 0.0), (1.0, 1.0, 1e-5)],
)
def test_matches_hand_computation(bce_w, dice_w, smooth):
    logits = torch.tensor(LOGITS).reshape(2, 3, 2, 2)
    target = torch.tensor(TARGETS, dtype=torch.float32).reshape(2, 3, 2, 2)
    loss = BCEDiceLoss(bce_w, dice_w, smooth)(logits, target)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(_expected(LOGITS, TARGETS, bce_w, dice_w, smooth), rel=1e-6)


def test_one_pixel_by_hand():
    """z = ln 3 -> p = 3/4, t = 1: BCE = ln(4/3); Dice = (2*3/4 + 1) / (3/4 + 1 + 1) = 10/11."""
    logits = torch.full((1, 1, 1, 1), math.log(3.0))
    target = torch.ones(1, 1, 1, 1)
    expected = math.log(4 / 3) + (1 - 10 / 11)
    assert BCEDiceLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_batch_dice_pools_over_the_batch():
    """Region Dice is one ratio over all samples, not a mean of per-sample ratios."""
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])  # (2, 1, 2)
    target = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    # pooled: inter 1, sums 1 + 2 -> 2/3 (per-sample mean would be (1 + 0) / 2)
    assert soft_dice(probs, target, smooth=0.0).item() == pytest.approx(2 / 3)


def test_perfect_prediction_gives_near_zero_loss_and_gradients_flow():
    target = (torch.rand(2, 3, 8, 8) > 0.5).float()
    logits = (target * 2 - 1) * 30
    assert BCEDiceLoss()(logits, target).item() < 1e-6
    z = torch.zeros(2, 3, 8, 8, requires_grad=True)
    BCEDiceLoss()(z, target).backward()
    assert z.grad is not None and torch.all(torch.sign(z.grad) == -torch.sign(target * 2 - 1))


def test_low_precision_logits_give_a_float32_loss():
    target = (torch.rand(2, 3, 4, 4) > 0.5).float()
    logits = torch.randn(2, 3, 4, 4)
    loss16 = BCEDiceLoss()(logits.bfloat16(), target)
    assert loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(BCEDiceLoss()(logits.bfloat16().float(), target).item())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bce_weight": -1.0}, "weights must be >= 0"),
        ({"dice_weight": -0.1}, "weights must be >= 0"),
        ({"bce_weight": 0.0, "dice_weight": 0.0}, "cannot both be 0"),
        ({"smooth": -1.0}, "smooth"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BCEDiceLoss(**kwargs)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ"):
        BCEDiceLoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4))
