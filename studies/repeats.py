"""A trial whose recipe already ran reuses that trial's result instead of running it again.

    from studies.repeats import reuse_if_repeated
    values = reuse_if_repeated(trial, recipe.to_dict())   # None: a new recipe, run it

With a few dozen trials over a mostly categorical space, TPE proposes the same recipe more than
once: the sixth session's default run spent 5 of its 24 trials (about 60 s) on recipes that had
already run (``dense+int8(percentile)+per-region+cc`` three times). A recipe, the baseline, the
data and the seed fix the compressed model (same pruning, same fine-tuning draws, same
calibration: the repeats gave identical val Dice), so a repeat learns nothing new; Optuna's
FAQ ("How to ignore duplicated samples") returns the earlier values. Here the repeat copies
the earlier trial's values, constraint and user attributes (its ``trial_dir`` points at the
earlier trial's folder) and records ``repeat_of`` (the earlier trial's number). It still counts
toward ``--trials`` (it is a COMPLETE trial of the study); the report lists each model once.
Only a COMPLETE earlier trial is reused: one still RUNNING in another worker is not waited for.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from compress.recipe import Recipe

REPEAT_ATTR = "repeat_of"
# what a sweep trial stores about its result (`studies.sweep_worker.run_trial`)
RESULT_ATTRS = (
    "metrics",
    "artifact",
    "trial_dir",
    "dice_drop",
    "dice_drop_bound",
    "region_drop_bound",
    "paired_val",
)


def earlier_run(study: optuna.Study, recipe: dict[str, Any]) -> FrozenTrial | None:
    """The first COMPLETE trial of ``study`` that ran ``recipe`` itself (not as a repeat);
    stored recipes are compared with the fields added since they ran at their defaults."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if REPEAT_ATTR not in t.user_attrs and _normal(t.user_attrs.get("recipe")) == recipe:
            return t
    return None


def _normal(stored: Any) -> dict[str, Any] | None:
    """A stored recipe dict with the defaults of fields added since (None if it is not one)."""
    try:
        return Recipe.from_dict(stored).to_dict()
    except (ValueError, TypeError):
        return None


def reuse_if_repeated(trial: optuna.Trial, recipe: dict[str, Any]) -> tuple[float, ...] | None:
    """If ``recipe`` already ran in a COMPLETE trial, copy that trial's result onto ``trial``
    and return its objective values; else None (nothing is written)."""
    earlier = earlier_run(trial.study, recipe)
    if earlier is None:
        return None
    for key in RESULT_ATTRS:
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    trial.set_user_attr(REPEAT_ATTR, earlier.number)
    for key, value in earlier.constraints.items():
        trial.set_constraint(key, value)
    return tuple(float(v) for v in earlier.values)


def is_repeat(trial: FrozenTrial) -> bool:
    """Whether ``trial`` reused an earlier trial's result (`reuse_if_repeated`)."""
    return REPEAT_ATTR in trial.user_attrs
