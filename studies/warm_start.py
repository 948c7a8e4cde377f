"""Warm start: a new study's first trials are the recovery recipes that held on val.

    enqueue_warm_start(study, warm_start_params((0, 50, 150), (1, 8), ("fp32", "int8")))

With a budget of a few dozen trials, TPE's random start rarely lands on the combination that
makes a structurally pruned model both small and accurate: a structured ratio near 0.5, every
recovery method at once (group regularisation, gradual pruning, distillation, the longest
fine-tune), int8 with min-max calibration and per-region thresholds. The sixth session's
default runs spent their 24 trials on unstructured, dense and lightly pruned recipes; the one
structured-0.5 recipe they sampled used entropy calibration and was not non-inferior on val.
The same recipe with min-max calibration was non-inferior on val (paired over the 25 val
subjects, every region's lower bound above -0.02; a val-only check, no test split read).

So a new study queues `WARM_START_RATIOS` of that recipe (``study.enqueue_trial``, user
attribute ``warm_start``) before any sampled trial: 0.5 (~13x smaller in int8) and 0.35 (~9x).
They count toward ``--trials`` and are ordinary trials afterwards (TPE models them like the
rest). Off with ``python -m studies.prune_sweep --no-warm-start``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna

WARM_START_ATTR = "warm_start"
WARM_START_RATIOS = (0.5, 0.35)  # structured: fraction of channels removed


def warm_start_params(
    finetune_steps: Sequence[int], round_to_choices: Sequence[int], precisions: Sequence[str]
) -> list[dict[str, Any]]:
    """Optuna parameters (`studies.search_space.suggest_recipe` names) of the warm-start
    trials, for the study's fine-tune grid, ``round_to`` choices and searched precisions;
    none without fine-tuning or int8 (the recipe needs both)."""
    longest = max(finetune_steps, default=0)
    if not longest or "int8" not in precisions:
        return []
    return [
        {
            "prune": "structured",
            "structured_ratio": ratio,
            "round_to": max(round_to_choices),
            "regularize_steps": longest,
            "regularize_strength": 1e-3,
            "finetune_steps": longest,
            "prune_rounds": 4,
            "distill_weight": 3.0,
            "precision": "int8",
            "calibration": "minmax",
            "threshold": "per-region",
        }
        for ratio in WARM_START_RATIOS
    ]


def enqueue_warm_start(study: optuna.Study, params: Sequence[dict[str, Any]]) -> None:
    """Queue each parameter set once (``skip_if_exists``: not again on a resumed study)."""
    for p in params:
        study.enqueue_trial(dict(p), user_attrs={WARM_START_ATTR: True}, skip_if_exists=True)
