"""Whole-volume inference: 2D slice stacking, 3D sliding windows, padding, evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unet import zoo
from unet.data.canonical import CanonicalDataset, regions_from_label
from unet.evaluate import as_thresholds, evaluate_model, evaluate_probabilities
from unet.inference import (
    BACKGROUND_LOGIT,
    foreground_box,
    predict_logits,
    predict_volume,
    sigmoid,
    torch_forward,
)


def _identity_forward(batch: np.ndarray) -> np.ndarray:
    """Logits = first three input channels: lets tests see exactly which voxels went where."""
    return batch[:, :3].copy()


@pytest.mark.parametrize(
    ("dims", "shape", "patch"),
    [
        (2, (5, 13, 7), None),
        (3, (9, 13, 7), None),
        (3, (20, 18, 11), (8, 8, 8)),
        (3, (6, 6, 6), (16, 16, 16)),
    ],
)
def test_predict_logits_reassembles_volume(dims: int, shape: tuple, patch: tuple | None) -> None:
    image = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
    logits = predict_logits(
        _identity_forward, image, dims, divisor=4, patch_size=patch, batch_size=3
    )
    assert logits.shape == (3, *shape)
    np.testing.assert_allclose(logits, image[:3], atol=1e-6)


def test_forward_sees_divisible_shapes() -> None:
    seen = []

    def spy(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return batch[:, :3]

    predict_logits(spy, np.ones((4, 3, 10, 6), np.float32), 2, divisor=8)
    assert seen and all(s[2] % 8 == 0 and s[3] % 8 == 0 for s in seen)


@pytest.mark.parametrize(("dims", "patch"), [(2, None), (3, None), (3, (8, 8, 8))])
def test_only_the_foreground_box_is_predicted(dims: int, patch: tuple | None) -> None:
    image = np.zeros((4, 12, 20, 18), np.float32)
    brain = np.random.default_rng(2).normal(size=(4, 5, 9, 7)).astype(np.float32) + 5.0
    image[:, 3:8, 6:15, 2:9] = brain
    seen: list[tuple[int, ...]] = []

    def spy(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return batch[:, :3].copy()

    assert foreground_box(image) == (slice(3, 8), slice(6, 15), slice(2, 9))
    logits = predict_logits(spy, image, dims, divisor=4, patch_size=patch, batch_size=2)
    inside = np.zeros(image.shape[1:], bool)
    inside[3:8, 6:15, 2:9] = True
    np.testing.assert_allclose(logits[:, inside], image[:3][:, inside], atol=1e-6)
    assert np.all(logits[:, ~inside] == BACKGROUND_LOGIT)
    if dims == 2:  # 5 slices of the box, padded to 12 x 8, never the whole 20 x 18 slice
        assert sum(s[0] for s in seen) == 5 and {s[2:] for s in seen} == {(12, 8)}
    else:  # never more than the box (rounded up to the divisor, or the patch)
        assert all(s[2] <= 8 and s[3] <= 12 and s[4] <= 8 for s in seen)
    full = predict_logits(spy, image, dims, divisor=4, patch_size=patch, crop_foreground=False)
    np.testing.assert_allclose(full, image[:3], atol=1e-6)  # every voxel through the forward


def test_an_all_zero_volume_is_background_without_a_forward() -> None:
    def never(batch: np.ndarray) -> np.ndarray:
        raise AssertionError("forward called on an empty volume")

    image = np.zeros((4, 3, 8, 8), np.float32)
    assert foreground_box(image) is None
    probs = predict_volume(never, image, 2, divisor=4)
    assert probs.shape == (3, 3, 8, 8) and float(probs.max()) < 1e-12


def test_torch_forward_matches_module_and_2d_equals_per_slice() -> None:
    model = zoo.create("unet2d-tiny").eval()
    image = np.random.default_rng(1).normal(size=(4, 3, 16, 16)).astype(np.float32)
    probs = predict_volume(torch_forward(model), image, 2, divisor=4)
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(np.moveaxis(image, 1, 0)))).numpy()
    np.testing.assert_allclose(probs, np.moveaxis(ref, 0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="CUDA only"):
        torch_forward(model, "cpu", amp="fp16")


def test_sigmoid_stable() -> None:
    assert sigmoid(np.array([-1000.0, 0.0, 1000.0])).tolist() == [0.0, 0.5, 1.0]


def test_evaluate_probabilities_uses_per_region_thresholds() -> None:
    target = np.zeros((3, 2, 4, 4), bool)
    target[:, :, :2] = True
    probs = np.where(target, 0.6, 0.3).astype(np.float32)
    probs[2] = np.where(target[2], 0.35, 0.2)  # ET is under-confident
    r = evaluate_probabilities([("a", probs, target)], threshold=0.5, hd95=False)
    assert r["mean"]["dice"]["ET"] == 0.0 and r["mean"]["dice"]["WT"] == 1.0
    r = evaluate_probabilities(
        [("a", probs, target)], threshold={"WT": 0.5, "TC": 0.5, "ET": 0.3}, hd95=False
    )
    assert r["mean"]["dice"]["mean"] == 1.0
    with pytest.raises(ValueError, match="misses region"):
        as_thresholds({"WT": 0.5})


def test_evaluate_model_perfect_forward_scores_one(blob_data: Path) -> None:
    data = CanonicalDataset(blob_data)

    def oracle_for(sids: list[str]):
        volumes = iter([regions_from_label(data.label(s)) for s in sids])

        def forward(batch: np.ndarray) -> np.ndarray:  # one whole 3D volume per call
            return np.where(next(volumes), 20.0, -20.0)[None].astype(np.float32)

        return forward

    val = data.split("val")
    r = evaluate_model(oracle_for(val), data, val, spatial_dims=3, divisor=1, patch_size=None)
    # patch_size None on 3D means DEFAULT_PATCH_3D windows; the blob volumes are smaller than one window
    assert r["mean"]["dice"]["mean"] == 1.0 and r["mean"]["hd95"]["mean"] == 0.0
    assert [s["subject"] for s in r["per_subject"]] == val
