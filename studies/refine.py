"""Precision refinement: a feasible fp32 structural trial queues its int8 twin.

    study.optimize(objective, callbacks=[QueueInt8Twins(precisions)])

Quantization costs little Dice on these models (dense int8 against the fp32 baseline of the
fifth session's default run, paired over 25 val subjects: mean -0.005 [-0.008, -0.003], every
region's lower bound above -0.017) and multiplies what structural pruning buys (4x smaller artifact,
1.3-1.5x faster in ONNX Runtime on AVX2), but with a few dozen trials TPE samples the precision
of a good pruned recipe only once: the fifth session's default run kept a non-inferior
pair-pruned model in fp32 (3.8x smaller, 1.79x faster) and never tried it in int8. So after a
COMPLETE, feasible trial that pruned structurally (``structured`` or ``pairs``) in fp32, the
same parameters with ``precision="int8"`` (min-max calibration) are queued
(``study.enqueue_trial(..., skip_if_exists=True)``: once, and not if that recipe already ran).
The twin re-runs the same pruning and fine-tuning (same seeds, so the same weights) and costs
one trial of the budget; it carries the user attribute ``int8_twin_of`` (the fp32 trial's
number).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from studies.pareto import is_feasible

TWIN_ATTR = "int8_twin_of"
STRUCTURAL = ("structured", "pairs")


def int8_twin(trial: FrozenTrial, precisions: Sequence[str]) -> dict[str, Any] | None:
    """The parameters of ``trial``'s int8 twin, or None when it gets none."""
    params = trial.params
    if (
        trial.state != TrialState.COMPLETE
        or "int8" not in precisions
        or params.get("prune") not in STRUCTURAL
        or params.get("precision") != "fp32"
        or not is_feasible(trial)
    ):
        return None
    return {**params, "precision": "int8", "calibration": "minmax"}


class QueueInt8Twins:
    """Optuna callback: queue the int8 twin (`int8_twin`) of each finished trial that has one."""

    def __init__(self, precisions: Sequence[str]) -> None:
        self.precisions = tuple(precisions)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        params = int8_twin(trial, self.precisions)
        if params is not None:
            study.enqueue_trial(params, user_attrs={TWIN_ATTR: trial.number}, skip_if_exists=True)
