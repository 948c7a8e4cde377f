"""`unet.components`: small connected-component removal, and its use in `unet.evaluate`."""

from __future__ import annotations

import numpy as np
import pytest

from unet.components import as_min_components, component_sizes, remove_small_components
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
