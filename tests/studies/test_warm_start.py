"""Warm-start recipes: inside the search space, and only where they apply."""

from __future__ import annotations

import warnings

import optuna
import pytest

from compress.recipe import Recipe
from studies.search_space import FINETUNE_STEPS, PRECISIONS, suggest_recipe
from studies.warm_start import WARM_START_RATIOS, warm_start_params


def test_warm_start_params_are_points_of_the_search_space() -> None:
    params = warm_start_params(FINETUNE_STEPS, (1, 8), PRECISIONS)
    assert [p["structured_ratio"] for p in params] == list(WARM_START_RATIOS)
    for p in params:
        trial = optuna.trial.FixedTrial(p)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # FixedTrial warns on a value off its distribution
            recipe = suggest_recipe(trial, levels=4)
        assert set(trial.params) == set(p)  # every parameter is one the recipe reads
        assert recipe == Recipe(
            prune="structured",
            ratio=p["structured_ratio"],
            round_to=8,
            finetune_steps=150,
            prune_rounds=4,
            distill_weight=3.0,
            regularize_steps=150,
            regularize_strength=1e-3,
            precision="int8",
            calibration="minmax",
            threshold="per-region",
            components="search",
        )


@pytest.mark.parametrize(
    ("finetune", "precisions"), [((0,), PRECISIONS), ((0, 50), ("fp32", "fp16"))]
)
def test_no_warm_start_without_fine_tuning_or_int8(
    finetune: tuple[int, ...], precisions: tuple[str, ...]
) -> None:
    assert warm_start_params(finetune, (1, 8), precisions) == []


def test_warm_start_follows_the_grid_and_round_to() -> None:
    (p, _) = warm_start_params((0, 25, 75), (1, 16), PRECISIONS)
    assert p["finetune_steps"] == p["regularize_steps"] == 75 and p["round_to"] == 16
