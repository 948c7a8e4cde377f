"""`compress.components`: the minimum component size chosen on validation predictions."""

from __future__ import annotations

import numpy as np
import pytest

from compress.components import search_min_components, size_caps, smallest_tumours
from unet.data.canonical import REGIONS, CanonicalDataset, regions_from_label
from unet.evaluate import evaluate_probabilities

SHAPE = (3, 8, 24, 24)


def _subject(tumour: bool, blob: int, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """A subject with (optionally) a 4x4x4 tumour predicted exactly in every region, plus a
    false-positive blob of ``blob`` voxels in a row far from it (WT only)."""
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.0, 0.3, SHAPE).astype(np.float32)
    target = np.zeros(SHAPE, dtype=bool)
    if tumour:
        target[:, 1:5, 2:6, 2:6] = True
        probs[:, 1:5, 2:6, 2:6] = 0.9
    probs[0, 6, 20, 2 : 2 + blob] = 0.8
    return (f"s{seed}", probs, target)


def test_chooses_a_size_between_the_false_positives_and_the_tumours() -> None:
    items = [_subject(tumour=i % 3 != 0, blob=3 + i % 4, seed=i) for i in range(12)]
    found = search_min_components(items, 0.5, grid=(0, 2, 8, 32, 128))
    assert found.min_component == {"WT": 8, "TC": 0, "ET": 0}  # 8 > blobs (<= 6), < 64
    assert found.val_dice["WT"] == pytest.approx(1.0)
    # the reported val Dice is exactly what the evaluation gives with those sizes
    evaluated = evaluate_probabilities(items, 0.5, hd95=False, min_component=found.min_component)
    assert found.val_dice == pytest.approx(evaluated["mean"]["dice"])
    sizes, dice = found.curve["WT"]
    assert sizes == [0, 2, 8, 32, 128]
    assert dice[0] < dice[2] and dice[4] < dice[2]  # removing the tumours (64 voxels) hurts


def test_keeps_everything_when_removal_does_not_help() -> None:
    items = [_subject(tumour=True, blob=0, seed=i) for i in range(4)]
    found = search_min_components(items, {"WT": 0.5, "TC": 0.5, "ET": 0.5})
    assert found.min_component == {"WT": 0, "TC": 0, "ET": 0}  # ties go to the smallest size


def _scattered(tumour: bool, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """A subject whose tumour (every region) is four 2-voxel components, predicted exactly;
    without a tumour, 2 false ET voxels: removing components would cost every tumour, a
    presence rule between 2 and 8 voxels costs none."""
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.0, 0.3, SHAPE).astype(np.float32)
    target = np.zeros(SHAPE, dtype=bool)
    if tumour:
        for k in range(4):
            target[:, 1 + 2 * k, 2 + 5 * k, 2:4] = True
        probs[target] = 0.9
    else:
        probs[2, 6, 20, 2:4] = 0.8
    return (f"s{seed}", probs, target)


def test_presence_rule_is_chosen_where_component_removal_would_cost_tumours() -> None:
    items = [_scattered(tumour=i % 3 != 0, seed=i) for i in range(12)]
    grid = (0, 2, 8, 32, 128)
    found = search_min_components(items, 0.5, grid=grid)
    assert found.min_component == {"WT": 0, "TC": 0, "ET": 0}  # 8 would clear every tumour
    assert found.min_volume == {"WT": 0, "TC": 0, "ET": 8}  # 2 false voxels < 8 <= 8 true
    assert found.val_dice == pytest.approx(dict.fromkeys((*REGIONS, "mean"), 1.0))
    assert found.volume_curve["ET"] == (
        [0, 2, 8, 32, 128],
        pytest.approx([8 / 12] * 2 + [1.0] + [4 / 12] * 2),
    )
    evaluated = evaluate_probabilities(
        items, 0.5, hd95=False, min_component=found.min_component, min_volume=found.min_volume
    )
    assert found.val_dice == pytest.approx(evaluated["mean"]["dice"])
    stored = found.to_dict()
    assert stored["min_volume"] == found.min_volume
    assert stored["volume_curve"]["ET"]["min_volume"] == list(grid)
    # the training caps bound the volumes as they bound the sizes
    capped = search_min_components(items, 0.5, grid=grid, caps={"WT": 100, "TC": 100, "ET": 4})
    assert capped.min_volume["ET"] == 0 and capped.volume_curve["ET"][0] == [0, 2]


def test_one_se_keeps_the_anchor_volume_unless_val_shows_more() -> None:
    """One tumour-free subject in 12: the presence rule gains on one subject only, within one
    standard error, so one-se keeps whichever volume it is anchored at; `best` takes the gain."""
    items = [_scattered(tumour=i != 0, seed=i) for i in range(12)]
    grid = (0, 2, 8, 32, 128)
    assert search_min_components(items, 0.5, grid=grid).min_volume["ET"] == 8
    for anchor_et in (0, 8):
        anchor = {"WT": 0, "TC": 0, "ET": anchor_et}
        found = search_min_components(items, 0.5, grid=grid, rule="one-se", volume_anchor=anchor)
        assert found.min_volume == anchor and found.volume_anchor == anchor
    unanchored = search_min_components(items, 0.5, grid=grid, rule="one-se")
    assert unanchored.min_volume == unanchored.volume_anchor == {"WT": 0, "TC": 0, "ET": 0}


@pytest.mark.parametrize("grid", [(), (-1, 4), (2.5,)])
def test_bad_grid(grid: tuple) -> None:
    with pytest.raises(ValueError, match="whole voxel counts >= 0"):
        search_min_components([_subject(True, 2, 0)], 0.5, grid=grid)


def test_no_items() -> None:
    with pytest.raises(ValueError, match="no \\(subject, probs, target\\) items"):
        search_min_components([], 0.5)


def test_caps_bound_the_sizes_tried_per_region() -> None:
    """With WT capped below the false-positive blobs, removal can no longer clear them."""
    items = [_subject(tumour=i % 3 != 0, blob=3 + i % 4, seed=i) for i in range(12)]
    caps = {"WT": 4, "TC": 0, "ET": 100}
    found = search_min_components(items, 0.5, grid=(0, 2, 8, 32, 128), caps=caps)
    assert found.curve["WT"][0] == [0, 2] and found.curve["TC"][0] == [0]
    assert found.curve["ET"][0] == [0, 2, 8, 32]
    assert found.min_component["WT"] in (0, 2) and found.val_dice["WT"] < 1.0
    assert found.to_dict()["caps"] == caps


def test_size_caps_are_half_the_smallest_training_tumour(blob_data) -> None:
    data = CanonicalDataset(blob_data)
    smallest = {r: min(int(regions_from_label(data.label(s))[i].sum()) for s in data.split("train"))
                for i, r in enumerate(REGIONS)}  # fmt: skip
    assert size_caps(data, "train") == {r: n // 2 for r, n in smallest.items()}
    assert size_caps(data, "train", fraction=1.0) == smallest
    before = smallest_tumours.cache_info()
    size_caps(CanonicalDataset(blob_data), "train")  # a second trial: no second label scan
    assert smallest_tumours.cache_info().hits == before.hits + 1
    assert smallest_tumours.cache_info().misses == before.misses
    with pytest.raises(ValueError, match="fraction must be in"):
        size_caps(data, "train", fraction=0.0)
