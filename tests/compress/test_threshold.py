"""Threshold search: known optima, per-region >= global, exact agreement with unet.evaluate."""

from __future__ import annotations

import numpy as np
import pytest

from compress.threshold import DiceCounts, search_thresholds
from unet.evaluate import evaluate_probabilities
from unet.metrics import dice

OPTIMA = {"WT": 0.37, "TC": 0.62, "ET": 0.50}


def _separated(optimum: float, shape: tuple[int, ...], rng: np.random.Generator, fg: float):
    """Probabilities whose Dice peaks (at 1) only just around ``optimum``.

    Background voxels lie in [0, optimum - 0.002], foreground ones in [optimum + 0.002, 1],
    both crowded near the optimum, so Dice falls off on either side of it.
    """
    target = rng.random(shape) < fg
    gap = 0.002
    u = rng.random(shape) ** 3  # mass near 0: close to the optimum after the mapping below
    probs = np.where(
        target, optimum + gap + u * (1 - optimum - gap), optimum - gap - u * (optimum - gap)
    )
    return probs.astype(np.float32), target


def _constructed_items(subjects: int = 4, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    items = []
    for s in range(subjects):
        shape = (6, 20, 20)
        pairs = [_separated(OPTIMA[r], shape, rng, fg=0.1 + 0.05 * s) for r in OPTIMA]
        probs = np.stack([p for p, _ in pairs])
        target = np.stack([t for _, t in pairs])
        items.append((f"s{s}", probs, target))
    # a subject without ET, and ET probabilities below every candidate: Dice 1 by the BraTS rule
    probs, target = items[0][1].copy(), items[0][2].copy()
    target[2] = False
    probs[2] = np.minimum(probs[2], 0.2)
    items.append(("empty-et", probs, target))
    return items


def _random_items(seed: int, subjects: int = 3) -> list:
    rng = np.random.default_rng(seed)
    items = []
    for s in range(subjects):
        target = rng.random((3, 5, 16, 16)) < rng.uniform(0.05, 0.4)
        noise = rng.normal(0, rng.uniform(0.1, 0.4), target.shape)
        probs = np.clip(0.35 + 0.3 * target + noise, 0, 1).astype(np.float32)
        items.append((f"r{s}", probs, target))
    return items


def test_per_region_finds_known_optima() -> None:
    result = search_thresholds(_constructed_items(), mode="per-region")
    for region, optimum in OPTIMA.items():
        # 0.37 and 0.62 are not on the default grid: only the refinement gets within 0.01
        assert abs(result.thresholds[region] - optimum) <= 0.01, region
        assert result.val_dice[region] == pytest.approx(1.0)
    assert result.val_dice["mean"] == pytest.approx(1.0)
    assert result.mode == "per-region"


def test_global_is_a_compromise_and_per_region_wins() -> None:
    items = _constructed_items()
    glob = search_thresholds(items, mode="global")
    per = search_thresholds(items, mode="per-region")
    assert len(set(glob.thresholds.values())) == 1
    assert OPTIMA["WT"] - 0.01 <= glob.thresholds["WT"] <= OPTIMA["TC"] + 0.01
    assert per.val_dice["mean"] > glob.val_dice["mean"]


@pytest.mark.parametrize("seed", range(5))
def test_per_region_never_below_global_and_matches_evaluate(seed: int) -> None:
    items = _random_items(seed)
    for mode in ("global", "per-region"):
        result = search_thresholds(items, mode=mode)
        exact = evaluate_probabilities(items, result.thresholds, hd95=False)["mean"]["dice"]
        for key in ("WT", "TC", "ET", "mean"):
            assert result.val_dice[key] == pytest.approx(exact[key], abs=1e-12), (mode, key)
    glob = search_thresholds(items, mode="global")
    per = search_thresholds(items, mode="per-region")
    assert per.val_dice["mean"] >= glob.val_dice["mean"]


def test_refinement_beats_or_equals_the_grid() -> None:
    items = _random_items(7)
    grid = np.linspace(0.05, 0.95, 19)
    result = search_thresholds(items, mode="global", grid=grid)
    grid_best = max(
        evaluate_probabilities(items, float(t), hd95=False)["mean"]["dice"]["mean"] for t in grid
    )
    assert result.val_dice["mean"] >= grid_best - 1e-3  # grid points lie between bucket edges


def test_curve_is_exact_on_bucket_edges() -> None:
    items = _random_items(3)
    grid = [k / 16 for k in range(1, 16)]  # binary fractions: bucket edges, so counts are exact
    result = search_thresholds(items, mode="per-region", grid=grid)
    assert set(result.curve) == {"WT", "TC", "ET", "mean"}
    for key, (thresholds, values) in result.curve.items():
        assert thresholds == grid and len(values) == len(grid)
        for t, v in zip(thresholds, values, strict=True):
            exact = evaluate_probabilities(items, t, hd95=False)["mean"]["dice"][key]
            assert v == pytest.approx(exact, abs=1e-12)
    as_json = result.to_dict()
    assert as_json["curve"]["WT"]["threshold"] == grid


def test_counts_match_brute_force_dice() -> None:
    items = _random_items(11, subjects=2)
    counts = DiceCounts(items)
    for k in (0, 100, 717, 1024, 2047, 2048):
        t = k / counts.bins
        got = counts.dice(t, [0, 1, 2])
        for s, (_, probs, target) in enumerate(items):
            for r in range(3):
                assert got[s, r] == pytest.approx(dice(probs[r] > t, target[r]), abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "per-subject"}, "mode must be one of"),
        ({"grid": [0.0, 0.5]}, r"grid thresholds must lie in \(0, 1\)"),
        ({"grid": []}, "grid must be a non-empty"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        search_thresholds(_random_items(0, subjects=1), **kwargs)


def test_bad_items() -> None:
    probs = np.full((3, 4, 4), 0.5, dtype=np.float32)
    target = np.zeros((3, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="no .* items"):
        search_thresholds([])
    with pytest.raises(ValueError, match="subject bad: probabilities"):
        search_thresholds([("bad", probs[:2], target[:2])])
    nan = probs.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"subject nan: probabilities must lie in \[0, 1\]"):
        search_thresholds([("nan", nan, target)])
    with pytest.raises(ValueError, match="subject big"):
        search_thresholds([("big", probs + 1.0, target)])
