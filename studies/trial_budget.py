"""Exactly ``target`` COMPLETE trials, however many workers share the storage.

Workers meet only in the storage and Optuna has no lock there, so "start a trial while fewer
than ``target`` are complete or running" is a race: two workers can see the same last free
slot. The sweep therefore checks twice:

1. before asking for a trial, a worker waits (`wait_for_slot`) while the complete and running
   trials already fill the budget, failing stale trials meanwhile (`studies.storage.fail_stale`),
   so that a slot held by a dead worker is freed;
2. once its trial is RUNNING (visible to every other worker), `claim_slot` counts the complete
   trials and every *other* running trial; if they fill the budget, this trial is surplus and
   ends PRUNED (user attribute ``surplus``) before any work.

A trial that passed step 2 saw every earlier-passing trial still running or complete, so at
most ``target`` trials pass and complete; workers keep going until ``target`` are complete, so
no fewer either. Two workers racing for the last slot may both stand back; each then waits a
random fraction of `POLL_S` before asking again.
"""

from __future__ import annotations

import random
import time

import optuna
from optuna.trial import TrialState

from studies.storage import RETRY_ATTR, fail_stale

POLL_S = 1.0  # seconds between looks at the storage while the budget is full
SURPLUS_ATTR = "surplus"
_stood_back = False  # this process's last trial was surplus: wait a little before the next


def counts(study: optuna.Study) -> tuple[int, int]:
    """(COMPLETE, RUNNING) trial counts of ``study``."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, len(trials) - complete


def wait_for_slot(study: optuna.Study, target: int, deadline: float | None = None) -> bool:
    """Wait until a trial may start: True, or False once ``target`` trials are complete or
    ``deadline`` (``time.monotonic()`` seconds) has passed."""
    global _stood_back
    while True:
        fail_stale(study)
        complete, running = counts(study)
        if complete >= target or (deadline is not None and time.monotonic() >= deadline):
            return False
        if complete + running < target:
            if _stood_back:  # break the symmetry of a race for the last slot
                _stood_back = False
                time.sleep(random.uniform(0.0, POLL_S))
                continue
            return True
        time.sleep(POLL_S)


def claim_slot(trial: optuna.Trial, target: int) -> None:
    """Raise ``optuna.TrialPruned`` if the other complete and running trials fill ``target``.

    A surplus trial that was a queued retry (`studies.storage.retry_once`) is queued again, so
    the retry is not lost if a slot opens later.
    """
    global _stood_back
    study = trial.study
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    taken = sum(t.number != trial.number for t in trials)
    if taken < target:
        return
    _stood_back = True
    trial.set_user_attr(SURPLUS_ATTR, True)
    frozen = study._storage.get_trial(trial._trial_id)
    if RETRY_ATTR in frozen.user_attrs:
        params = frozen.system_attrs.get("fixed_params") or frozen.params
        study.enqueue_trial(params, user_attrs={RETRY_ATTR: frozen.user_attrs[RETRY_ATTR]})
    raise optuna.TrialPruned(f"surplus: {target} trials already complete or running")
