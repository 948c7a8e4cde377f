"""Dice and HD95 against hand computation and brute force, incl. every empty-mask case."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial import cKDTree

from unet.metrics import HD95_EMPTY_MM, HD95_METHODS, dice, hd95, region_metrics


def _surface_points(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Surface voxels (a face neighbour outside the mask or off the array) in mm."""
    pts = []
    for idx in np.argwhere(mask):
        for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
            n = idx.copy()
            n[axis] += step
            if (n < 0).any() or (n >= mask.shape).any() or not mask[tuple(n)]:
                pts.append(idx)
                break
    return np.array(pts, dtype=float) * np.array(spacing)


def _brute_hd95(
    a: np.ndarray,
    b: np.ndarray,
    spacing: tuple[float, ...] | None = None,
    method: str = "max-directed",
) -> float:
    """Independent reference: nearest surface neighbours by KD-tree over voxel coordinates in mm."""
    spacing = spacing or (1.0,) * a.ndim
    sa, sb = _surface_points(a, spacing), _surface_points(b, spacing)
    d_ab = cKDTree(sb).query(sa)[0]
    d_ba = cKDTree(sa).query(sb)[0]
    if method == "pooled":
        return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


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


@pytest.mark.parametrize("method", HD95_METHODS)
def test_hd95_empty_cases(method: str) -> None:
    z = np.zeros((5, 5), bool)
    o = z.copy()
    o[2, 2] = True
    assert hd95(z, z, method=method) == 0.0
    assert hd95(o, z, method=method) == HD95_EMPTY_MM == 373.13
    assert hd95(z, o, method=method) == HD95_EMPTY_MM
    assert hd95(o, o, method=method) == 0.0


@pytest.mark.parametrize("method", HD95_METHODS)
def test_hd95_known_shift(method: str) -> None:
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 3, axis=1)
    # a pure 3-voxel shift of a 5x5 square: the 95th percentile is 3 either way
    assert hd95(a, b, method=method) == pytest.approx(_brute_hd95(a, b, method=method))
    assert hd95(a, b, method=method) == pytest.approx(3.0)


@pytest.mark.parametrize("method", HD95_METHODS)
@pytest.mark.parametrize(
    ("shape", "spacing"),
    [
        ((12, 11), None),
        ((14, 13), (1.0, 2.5)),
        ((6, 9, 8), None),
        ((7, 10, 9), (3.0, 0.9, 1.2)),
        ((5, 12, 11), (2.2, 1.0, 0.7)),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_hd95_matches_kdtree_brute_force_on_random_masks(
    seed: int, shape: tuple[int, ...], spacing: tuple[float, ...] | None, method: str
) -> None:
    rng = np.random.default_rng(seed)
    a = rng.random(shape) > 0.7
    b = rng.random(shape) > 0.6
    expected = _brute_hd95(a, b, spacing, method)
    assert hd95(a, b, spacing=spacing, method=method) == pytest.approx(expected, abs=1e-6)


def test_hd95_satellite_false_positive_separates_the_definitions() -> None:
    """A 10x10 tumour predicted perfectly plus a 3-voxel satellite 30 voxels away: 3 of the
    prediction's 39 surface voxels (8 %) are far, but only 3 of 75 pooled distances (4 %)."""
    target = np.zeros((24, 60), bool)
    target[5:15, 5:15] = True
    pred = target.copy()
    pred[9:12, 45] = True
    spacing = (1.0, 1.5)
    directed = hd95(pred, target, spacing=spacing)  # the default: BraTS / MONAI
    pooled = hd95(pred, target, spacing=spacing, method="pooled")
    assert directed == pytest.approx(_brute_hd95(pred, target, spacing), abs=1e-6)
    assert pooled == pytest.approx(_brute_hd95(pred, target, spacing, "pooled"), abs=1e-6)
    assert pooled < 5.0 < 40.0 < directed  # the satellite sits 30 voxels x 1.5 mm = 45 mm out
    assert hd95(target, pred, spacing=spacing) == directed  # symmetric by construction


def test_hd95_rejects_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        hd95(np.ones((3, 3), bool), np.ones((3, 3), bool), method="medpy")


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
