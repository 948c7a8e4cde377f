"""Precision refinement: feasible fp32 structural trials queue their int8 twin, once."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from studies.refine import TWIN_ATTR, QueueInt8Twins, int8_twin

PRECISIONS = ("fp32", "fp16", "int8")


def _trial(prune: str, precision: str, feasible: bool = True, **extra: Any):
    params = {"prune": prune, **extra, "precision": precision, "threshold": "global"}
    distributions = {
        "prune": CategoricalDistribution(("none", "unstructured", "structured", "pairs")),
        "precision": CategoricalDistribution(PRECISIONS),
        "threshold": CategoricalDistribution(("global", "per-region")),
        **{k: FloatDistribution(0.0, 0.8, step=0.05) for k in extra},
    }
    return optuna.trial.create_trial(
        values=[0.9, 1e6, 5.0],
        params=params,
        distributions=distributions,
        constraints={"dice_drop": -0.01 if feasible else 0.02},
    )


@pytest.mark.parametrize(
    ("trial", "twin"),
    [
        (_trial("pairs", "fp32", level_ratio_0=0.5), True),
        (_trial("structured", "fp32", structured_ratio=0.5), True),
        (_trial("structured", "fp32", feasible=False, structured_ratio=0.5), False),
        (_trial("structured", "int8", structured_ratio=0.5), False),  # already int8
        (_trial("structured", "fp16", structured_ratio=0.5), False),
        (_trial("unstructured", "fp32", unstructured_ratio=0.5), False),  # int8 gains no speed
        (_trial("none", "fp32"), False),
    ],
)
def test_int8_twin_only_for_feasible_fp32_structural_trials(trial, twin: bool) -> None:
    params = int8_twin(trial, PRECISIONS)
    if not twin:
        assert params is None
        return
    assert params == {**trial.params, "precision": "int8", "calibration": "minmax"}
    assert int8_twin(trial, ("fp32", "fp16")) is None  # int8 not searched on this backend


def test_callback_queues_the_twin_once_and_it_runs_next() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    fp32 = _trial("structured", "fp32", structured_ratio=0.5)
    study.add_trial(fp32)
    done = study.get_trials()[0]
    callback = QueueInt8Twins(PRECISIONS)
    callback(study, done)
    callback(study, done)  # a second call (or an identical trial) queues nothing more
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    twin = {**fp32.params, "precision": "int8", "calibration": "minmax"}
    assert waiting[0].system_attrs["fixed_params"] == twin  # how Optuna stores a queued trial
    assert waiting[0].user_attrs == {TWIN_ATTR: done.number}
    seen = {}

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        seen["params"] = {
            "prune": trial.suggest_categorical("prune", ("none", "structured")),
            "precision": trial.suggest_categorical("precision", PRECISIONS),
            "calibration": trial.suggest_categorical("calibration", ("minmax", "entropy")),
        }
        return 0.9, 2.5e5, 4.0

    study.optimize(objective, n_trials=1)  # the queued twin is what the next trial runs
    assert seen["params"] == {"prune": "structured", "precision": "int8", "calibration": "minmax"}
