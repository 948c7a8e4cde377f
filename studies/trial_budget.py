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
random fraction of `POLL_S` before asking again (`SlotWaiter`, one per worker, remembers that its
last trial stood back).
"""

from __future__ import annotations

import random
import time

import optuna
from optuna.trial import TrialState

from studies.storage import RETRY_ATTR, fail_stale

POLL_S = 1.0  # seconds between looks at the storage while the budget is full
SURPLUS_ATTR = "surplus"


def counts(study: optuna.Study) -> tuple[int, int]:
    """(COMPLETE, RUNNING) trial counts of ``study``."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, len(trials) - complete


def wait_for_slot(
    study: optuna.Study, target: int, deadline: float | None = None, *, stood_back: bool = False
) -> bool:
    """Wait until a trial may start: True, or False once ``target`` trials are complete or
    ``deadline`` (``time.monotonic()`` seconds) has passed. ``stood_back``: the caller's last
    trial was surplus, so a free slot is first given a random fraction of `POLL_S` to be taken
    by the worker it raced with."""
    while True:
        fail_stale(study)
        complete, running = counts(study)
        if complete >= target or (deadline is not None and time.monotonic() >= deadline):
            return False
        if complete + running < target:
            if stood_back:  # break the symmetry of a race for the last slot
                stood_back = False
                time.sleep(random.uniform(0.0, POLL_S))
                continue
            return True
        time.sleep(POLL_S)


class SlotWaiter:
    """One worker's `wait_for_slot`, remembering whether its last trial stood back (surplus).

    Pass it to ``study.optimize(callbacks=[...])`` so that it sees each finished trial::

        waiter = SlotWaiter()
        while waiter.wait(study, target):
            study.optimize(objective, n_trials=1, callbacks=[waiter])
    """

    def __init__(self) -> None:
        self.stood_back = False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.stood_back = bool(trial.user_attrs.get(SURPLUS_ATTR, False))

    def wait(self, study: optuna.Study, target: int, deadline: float | None = None) -> bool:
        """`wait_for_slot` with this worker's last outcome; True when a trial may start."""
        stood_back, self.stood_back = self.stood_back, False
        return wait_for_slot(study, target, deadline, stood_back=stood_back)


def claim_slot(trial: optuna.Trial, target: int) -> None:
    """Raise ``optuna.TrialPruned`` if the other complete and running trials fill ``target``.

    A surplus trial that was a queued retry (`studies.storage.retry_once`) is queued again, so
    the retry is not lost if a slot opens later.
    """
    study = trial.study
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    taken = sum(t.number != trial.number for t in trials)
    if taken < target:
        return
    trial.set_user_attr(SURPLUS_ATTR, True)
    frozen = study._storage.get_trial(trial._trial_id)
    if RETRY_ATTR in frozen.user_attrs:
        params = frozen.system_attrs.get("fixed_params") or frozen.params
        study.enqueue_trial(params, user_attrs={RETRY_ATTR: frozen.user_attrs[RETRY_ATTR]})
    raise optuna.TrialPruned(f"surplus: {target} trials already complete or running")
