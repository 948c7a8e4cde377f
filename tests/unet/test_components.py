"""`unet.components`: small connected-component removal and the region-presence rule, and
their use in `unet.evaluate`."""

from __future__ import annotations

import numpy as np
import pytest

from unet.components import (
    as_min_components,
    component_sizes,
    drop_small_regions,
    postprocess,
    remove_small_components,
    stored_postprocessing,
)
from unet.evaluate import binarize, evaluate_probabilities


def _volume() -> np.ndarray:
    """(3, 8, 16, 16) bool: WT has a 27-voxel cube and a 2-voxel blob; TC the cube only;
    ET a single voxel diagonal-touching the cube's corner (not face-connected)."""
    regions = np.zeros((3, 8, 16, 16), dtype=bool)
    regions[0, 1:4, 1:4, 1:4] = True
    regions[0, 6, 10, 10:12] = True
    regions[1, 1:4, 1:4, 1:4] = True
    regions[2, 4, 4, 4] = True
    return regions


def test_removes_only_components_below_the_size_per_region() -> None:
    regions = _volume()
    out = remove_small_components(regions, {"WT": 3, "TC": 28, "ET": 0})
    assert out[0].sum() == 27 and not out[0, 6].any()  # the blob goes, the cube stays
    assert out[1].sum() == 0  # 27 < 28: the cube goes in TC only
    assert out[2].sum() == 1  # 0 keeps everything
    assert regions[0].sum() == 29  # the input is not modified


def test_sizes_equal_to_the_minimum_are_kept_and_connectivity_is_by_faces() -> None:
    regions = _volume()
    assert remove_small_components(regions, {"WT": 2, "TC": 27, "ET": 1}).sum() == 29 + 27 + 1
    cube_and_corner = regions[0] | regions[2]  # touches the cube at a corner only
    assert sorted(component_sizes(cube_and_corner)[0].tolist()) == [1, 2, 27]


def test_no_removal_returns_the_same_maps() -> None:
    regions = _volume()
    assert remove_small_components(regions, None) is regions
    assert remove_small_components(regions, {"WT": 0, "TC": 0, "ET": 0}) is regions


def test_component_hits_count_target_voxels_per_component() -> None:
    mask = _volume()[0]
    target = np.zeros_like(mask)
    target[2, 2, 2] = target[2, 2, 3] = target[6, 10, 10] = True
    sizes, hits = component_sizes(mask, target)
    assert dict(zip(sizes.tolist(), hits.tolist(), strict=True)) == {27: 2, 2: 1}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"WT": 1, "TC": 1}, "misses region"),
        ({"WT": -1, "TC": 0, "ET": 0}, "whole number of voxels >= 0"),
        ({"WT": 2.5, "TC": 0, "ET": 0}, "whole number of voxels >= 0"),
        ({"WT": True, "TC": 0, "ET": 0}, "whole number of voxels >= 0"),
    ],
)
def test_bad_specs_name_the_problem(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_min_components(spec)


def test_evaluation_applies_the_removal_after_the_threshold() -> None:
    """A tumour-free subject whose only prediction is a 2-voxel blob scores WT Dice 0 without
    removal and 1 with it (the BraTS rule for two empty masks)."""
    probs = np.zeros((3, 8, 16, 16), dtype=np.float32)
    probs[0, 6, 10, 10:12] = 0.9
    target = np.zeros(probs.shape, dtype=bool)
    items = [("s0", probs, target)]
    kept = evaluate_probabilities(items, 0.5, hd95=False)
    removed = evaluate_probabilities(
        items, 0.5, hd95=False, min_component={"WT": 3, "TC": 0, "ET": 0}
    )
    assert kept["per_subject"][0]["dice"]["WT"] == 0.0
    assert removed["per_subject"][0]["dice"]["WT"] == 1.0
    assert removed["min_component"] == {"WT": 3, "TC": 0, "ET": 0}
    assert kept["min_component"] == {"WT": 0, "TC": 0, "ET": 0}
    assert not binarize(probs, 0.5, {"WT": 3, "TC": 0, "ET": 0}).any()


NONE = {"WT": 0, "TC": 0, "ET": 0}


def test_presence_rule_empties_only_regions_below_their_volume() -> None:
    regions = _volume()  # WT 29 voxels (cube + blob), TC 27, ET 1
    out = drop_small_regions(regions, {"WT": 30, "TC": 27, "ET": 0})
    assert not out[0].any()  # 29 < 30: WT declared absent
    assert out[1].sum() == 27 and out[2].sum() == 1  # a volume equal to the minimum stays
    assert regions[0].sum() == 29  # the input is not modified
    assert drop_small_regions(regions, None) is regions
    assert drop_small_regions(regions, NONE) is regions


def test_components_are_removed_before_presence_is_judged() -> None:
    """WT is 29 voxels: it passes a 28-voxel presence rule alone, but not once its 2-voxel blob
    has been removed (27 left)."""
    regions = _volume()
    volume = {"WT": 28, "TC": 0, "ET": 0}
    assert postprocess(regions, min_volume=volume)[0].sum() == 29
    both = postprocess(regions, {"WT": 3, "TC": 0, "ET": 0}, volume)
    assert not both[0].any() and both[1].sum() == 27 and both[2].sum() == 1
    assert postprocess(regions) is regions


def test_stored_postprocessing_reads_meta_older_checkpoints_and_keep() -> None:
    meta = {"min_component": {"WT": 3, "TC": 0, "ET": 0}, "min_volume": {"WT": 0, "TC": 8, "ET": 8}}
    assert stored_postprocessing({**meta, "threshold": 0.5}) == meta
    assert stored_postprocessing({}) == {"min_component": NONE, "min_volume": NONE}
    assert stored_postprocessing(meta, keep=True) == {"min_component": NONE, "min_volume": NONE}
    with pytest.raises(ValueError, match=r"min_volume\['ET'\] must be a whole number"):
        stored_postprocessing({"min_volume": {"WT": 0, "TC": 0, "ET": -1}})
    with pytest.raises(ValueError, match="min_volume misses region"):
        stored_postprocessing({"min_volume": {"WT": 0}})


def test_evaluation_applies_the_presence_rule_where_removal_would_cost_tumour() -> None:
    """A tumour-free subject with 2 false ET voxels and a subject whose true ET is three
    1-voxel components: removing components below 2 voxels clears the true ET and keeps the
    false one; a 3-voxel presence rule clears only the false one."""
    shape = (3, 8, 16, 16)
    free, tumour = np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)
    free[2, 6, 10, 10:12] = 0.9
    tumour[:, 2, 2, 2] = tumour[:, 5, 5, 5] = tumour[:, 5, 9, 9] = 0.9
    items = [("free", free, np.zeros(shape, dtype=bool)), ("tumour", tumour, tumour > 0.5)]
    plain = evaluate_probabilities(items, 0.5, hd95=False)
    ruled = evaluate_probabilities(items, 0.5, hd95=False, min_volume={**NONE, "ET": 2 + 1})
    removed = evaluate_probabilities(items, 0.5, hd95=False, min_component={**NONE, "ET": 2})
    et = [[s["dice"]["ET"] for s in r["per_subject"]] for r in (plain, ruled, removed)]
    assert et == [[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert ruled["min_volume"] == {**NONE, "ET": 3} and plain["min_volume"] == NONE
    assert not binarize(free, 0.5, None, {**NONE, "ET": 3}).any()
