"""Pair sensitivity on a briefly trained tiny model and tiny data."""

from __future__ import annotations

import pytest
import torch

from compress.pairs import blocks
from compress.sensitivity import pair_sensitivity, val_dice_mean
from unet import zoo
from unet.models import count_params
from unet.train_loop import fit


@pytest.fixture(scope="module")
def trained(blob_data):
    """unet2d-tiny after 40 steps on the blob data (val mean Dice ~0.6, far from 0 and 1)."""
    torch.manual_seed(0)
    model = zoo.create("unet2d-tiny")
    return fit(model, blob_data, steps=40, batch_size=8, lr=1e-2, seed=0).eval()


def test_rows_for_every_pair_and_amount(trained, blob_data):
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    baseline = val_dice_mean(trained, blob_data)
    assert 0.2 < baseline < 0.95, baseline
    amounts = [0.0, 0.5]
    rows = pair_sensitivity(trained, blob_data, amounts)

    pairs = blocks(trained.config)
    assert [(r["pair"], r["amount"]) for r in rows] == [(p, a) for p in pairs for a in amounts]
    assert set(rows[0]) == {"pair", "amount", "params", "val_dice_mean", "dice_drop"}
    for r in rows:
        assert r["val_dice_mean"] + r["dice_drop"] == pytest.approx(baseline, abs=1e-12)
        if r["amount"] == 0.0:
            assert r["dice_drop"] == 0.0 and r["params"] == count_params(trained)
        else:
            assert r["params"] < count_params(trained)
    assert any(abs(r["dice_drop"]) > 1e-4 for r in rows if r["amount"] > 0)
    # the analysis never modifies the model it studies
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())


@pytest.mark.parametrize(
    ("amounts", "match"),
    [([0.5, 1.0], r"amounts\[1\] must be in \[0, 1\)"), ([], "amounts is empty")],
)
def test_bad_amounts(blob_data, amounts, match):
    with pytest.raises(ValueError, match=match):
        pair_sensitivity(zoo.create("unet2d-tiny"), blob_data, amounts)
