"""The one-standard-error rule (`unet.selection`) and its use by the threshold and component
searches: a choice moves off its anchor only for a validation gain larger than its noise."""

from __future__ import annotations

import numpy as np
import pytest

from compress.components import search_min_components
from compress.threshold import search_thresholds
from unet.evaluate import evaluate_probabilities
from unet.selection import one_se_choice, within_one_se


def test_one_flip_is_within_a_consistent_loss_is_not() -> None:
    best = np.ones(8)
    flip = best.copy()
    flip[3] = 0.0  # one subject flips from 1 to 0: mean shortfall 0.125, se 0.125
    steady = best - 0.02  # every subject 0.02 lower: mean shortfall 0.02, se 0
    rows = np.stack([best, flip, steady])
    assert within_one_se(rows).tolist() == [True, True, False]


def test_choice_is_the_anchor_when_within_else_the_nearest_within() -> None:
    best = np.array([0.9, 0.8, 1.0, 0.7])
    near_best = best - np.array([0.0, 0.0, 0.2, 0.0])  # within: one subject
    far = best - 0.1  # outside: consistent
    rows = np.stack([best, near_best, far])
    assert one_se_choice(rows, distance=[2.0, 1.0, 0.0]) == 1  # anchor (row 2) is outside
    assert one_se_choice(rows, distance=[2.0, 0.0, 1.0]) == 1  # anchor row 1 is within
    assert one_se_choice(rows, distance=[0.0, 1.0, 2.0]) == 0
    # equal distance: the higher mean
    assert one_se_choice(rows, distance=[1.0, 1.0, 0.5]) == 0


@pytest.mark.parametrize(
    ("rows", "distance", "match"),
    [(np.zeros((0, 3)), [], "candidates, subjects"), (np.zeros((2, 3)), [0.0], "one value per")],
)
def test_bad_shapes(rows: np.ndarray, distance: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        one_se_choice(rows, distance)


def _subjects(n: int, flip_at: int | None, seed: int = 0) -> list:
    """``n`` subjects whose WT/TC/ET probabilities separate the target at 0.5 exactly, except
    that subject ``flip_at`` has no tumour and a faint 0.4-0.6 blob: a threshold above 0.6 clears
    it (Dice 0 -> 1 for that one subject) and costs the others one voxel each (their foreground
    lies in [0.6, 1) but for one voxel at 0.52)."""
    rng = np.random.default_rng(seed)
    items = []
    for s in range(n):
        target = np.zeros((3, 4, 16, 16), dtype=bool)
        probs = rng.uniform(0.0, 0.45, target.shape).astype(np.float32)
        if s == flip_at:
            probs[:, 1, 2:5, 2:5] = 0.55
        else:
            target[:, 1:3, 4:12, 4:12] = True
            probs[target] = rng.uniform(0.6, 1.0, int(target.sum())).astype(np.float32)
            probs[:, 1, 4, 4] = 0.52  # a foreground voxel a threshold above 0.52 loses
        items.append((f"s{s}", probs, target))
    return items


def test_threshold_one_se_keeps_the_anchor_against_a_single_flip() -> None:
    items = _subjects(12, flip_at=5)
    best = search_thresholds(items, mode="per-region")
    assert all(t > 0.55 for t in best.thresholds.values())  # argmax clears the one blob
    anchored = search_thresholds(items, mode="per-region", rule="one-se", anchor=0.5)
    assert anchored.thresholds == dict.fromkeys(("WT", "TC", "ET"), 0.5)
    assert anchored.best == best.thresholds and anchored.rule == "one-se"
    assert anchored.to_dict()["anchor"] == dict.fromkeys(("WT", "TC", "ET"), 0.5)
    exact = evaluate_probabilities(items, anchored.thresholds, hd95=False)["mean"]["dice"]
    assert anchored.val_dice == pytest.approx(exact)


def test_threshold_one_se_leaves_an_anchor_that_loses_everywhere() -> None:
    items = _subjects(12, flip_at=None)
    anchored = search_thresholds(items, mode="global", rule="one-se", anchor=0.9)
    best = search_thresholds(items, mode="global")
    # 0.9 drops most foreground of every subject: the choice comes down near the best
    assert set(anchored.thresholds.values()) == {anchored.thresholds["WT"]}
    assert anchored.thresholds["WT"] < 0.55
    assert anchored.val_dice["mean"] > best.val_dice["mean"] - 0.01


def test_component_one_se_keeps_the_anchor_against_a_single_flip() -> None:
    items = _subjects(12, flip_at=5)
    best = search_min_components(items, 0.5, grid=(0, 4, 16, 64))
    assert best.min_component["WT"] == 16  # clears the 9-voxel blob, keeps the tumours
    anchored = search_min_components(items, 0.5, grid=(0, 4, 16, 64), rule="one-se", anchor=None)
    assert anchored.min_component == {"WT": 0, "TC": 0, "ET": 0}
    assert anchored.to_dict()["rule"] == "one-se"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rule": "median"}, "selection rule must be one of"),
        ({"rule": "one-se", "anchor": 1.5}, "anchor must be in"),
        ({"rule": "one-se", "anchor": {"WT": 0.5}}, "anchor must be in"),
    ],
)
def test_threshold_bad_rule_or_anchor(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        search_thresholds(_subjects(3, None), mode="per-region", **kwargs)
