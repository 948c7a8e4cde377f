"""Dice and HD95 against hand computation and brute force, incl. every empty-mask case."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from unet.metrics import HD95_EMPTY_MM, dice, hd95, region_metrics


def _brute_hd95(a: np.ndarray, b: np.ndarray) -> float:
    """All-pairs surface distances (surface = voxels with a 6/4-neighbour outside the mask)."""

    def surface(m: np.ndarray) -> np.ndarray:
        pts = []
        for idx in np.argwhere(m):
            for axis, step in itertools.product(range(m.ndim), (-1, 1)):
                n = idx.copy()
                n[axis] += step
                if (n < 0).any() or (n >= m.shape).any() or not m[tuple(n)]:
                    pts.append(idx)
                    break
        return np.array(pts, dtype=float)

    sa, sb = surface(a), surface(b)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


DICE_CASES = [
    # (pred, target, expected)
    ([1, 1, 0, 0], [1, 0, 0, 0], 2 * 1 / 3),
    ([1, 1, 1, 1], [1, 1, 1, 1], 1.0),
    ([1, 0, 0, 0], [0, 1, 0, 0], 0.0),
    ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),  # both empty: BraTS says 1
    ([1, 0, 0, 0], [0, 0, 0, 0], 0.0),  # false positive on an empty reference
    ([0, 0, 0, 0], [0, 0, 1, 1], 0.0),  # missed everything
]


@pytest.mark.parametrize(("pred", "target", "expected"), DICE_CASES)
def test_dice_hand_computed(pred: list, target: list, expected: float) -> None:
    assert dice(np.array(pred, bool), np.array(target, bool)) == pytest.approx(expected)


def test_hd95_empty_cases() -> None:
    z = np.zeros((5, 5), bool)
    o = z.copy()
    o[2, 2] = True
    assert hd95(z, z) == 0.0
    assert hd95(o, z) == HD95_EMPTY_MM
    assert hd95(z, o) == HD95_EMPTY_MM
    assert hd95(o, o) == 0.0


def test_hd95_known_shift() -> None:
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 3, axis=1)
    # every surface point of the shifted square is at most 3 away; the 95th percentile of the pooled
    # distances is 3 for a pure 3-voxel shift of a 5x5 square
    assert hd95(a, b) == pytest.approx(_brute_hd95(a, b))
    assert hd95(a, b) == pytest.approx(3.0)


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_brute_force_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (6, 9, 8) if seed % 2 else (12, 11)
    a = rng.random(shape) > 0.7
    b = rng.random(shape) > 0.6
    assert hd95(a, b) == pytest.approx(_brute_hd95(a, b), rel=1e-6)


def test_hd95_respects_spacing() -> None:
    a = np.zeros((10, 10), bool)
    a[2:4, 2:4] = True
    b = np.roll(a, 4, axis=0)
    assert hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(2.0 * hd95(a, b))


def test_region_metrics_means_over_regions() -> None:
    target = np.zeros((3, 4, 4), bool)
    target[0, :2] = True  # WT present, TC/ET empty
    pred = target.copy()
    pred[2, 0, 0] = True  # false-positive ET
    m = region_metrics(pred, target)
    assert m["dice"] == {"WT": 1.0, "TC": 1.0, "ET": 0.0, "mean": pytest.approx(2 / 3)}
    assert m["hd95"]["TC"] == 0.0 and m["hd95"]["ET"] == HD95_EMPTY_MM
    with pytest.raises(ValueError, match="expected two"):
        region_metrics(pred[:2], target[:2])
