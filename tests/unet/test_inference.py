"""Whole-volume inference: 2D slice stacking, 3D sliding windows, padding, evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unet import zoo
from unet.data.canonical import CanonicalDataset, regions_from_label
from unet.evaluate import as_thresholds, evaluate_model, evaluate_probabilities
from unet.inference import predict_logits, predict_volume, sigmoid, torch_forward


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

    predict_logits(spy, np.zeros((4, 3, 10, 6), np.float32), 2, divisor=8)
    assert all(s[2] % 8 == 0 and s[3] % 8 == 0 for s in seen)


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
