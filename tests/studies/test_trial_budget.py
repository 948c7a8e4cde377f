"""Exactly N complete trials from racing workers: the slot checks of `studies.trial_budget`."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from studies import trial_budget
from studies.storage import RETRY_ATTR, WORKER_ATTR, journal_url, open_storage, worker_identity
from studies.trial_budget import SURPLUS_ATTR, SlotWaiter, claim_slot, counts, wait_for_slot

X = {"x": FloatDistribution(0, 1)}


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> optuna.Study:
    """A journal study; no waiting between looks at it."""
    monkeypatch.setattr(trial_budget, "POLL_S", 0.0)
    return optuna.create_study(storage=open_storage(journal_url(tmp_path / "s.journal")))


def _complete(study: optuna.Study, n: int) -> None:
    for _ in range(n):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=X, value=1.0))


def _running(study: optuna.Study) -> optuna.Trial:
    trial = study.ask(X)
    trial.set_user_attr(WORKER_ATTR, worker_identity())  # alive: this process
    return trial


@pytest.mark.parametrize(
    ("complete", "running", "target", "surplus"),
    [
        (0, 0, 1, False),
        (2, 0, 3, False),
        (2, 1, 3, True),  # the last slot is held by another running trial
        (3, 0, 3, True),
        (1, 2, 4, False),
    ],
)
def test_claim_slot_counts_the_other_complete_and_running_trials(
    study: optuna.Study, complete: int, running: int, target: int, surplus: bool
) -> None:
    _complete(study, complete)
    for _ in range(running):
        _running(study)
    mine = _running(study)
    if not surplus:
        claim_slot(mine, target)
        return
    with pytest.raises(optuna.TrialPruned, match="surplus"):
        claim_slot(mine, target)
    assert study.get_trials()[mine.number].user_attrs[SURPLUS_ATTR] is True


def test_two_trials_racing_for_the_last_slot_never_both_pass(study: optuna.Study) -> None:
    _complete(study, 2)
    a, b = _running(study), _running(study)  # both RUNNING before either checks
    outcomes = []
    for trial in (a, b):
        try:
            claim_slot(trial, 3)
            outcomes.append("pass")
        except optuna.TrialPruned:
            outcomes.append("surplus")
    assert outcomes == ["surplus", "surplus"]  # each sees the other: neither takes the slot
    for trial in (a, b):
        study.tell(trial, state=TrialState.PRUNED)
    assert wait_for_slot(study, 3) is True  # the slot is free for the next ask
    c = _running(study)
    claim_slot(c, 3)  # alone now: it passes


def test_a_surplus_retry_is_queued_again(study: optuna.Study) -> None:
    _complete(study, 1)
    _running(study)  # holds the last slot
    study.enqueue_trial({"x": 0.25}, user_attrs={RETRY_ATTR: 7})
    retry = study.ask(X)
    assert retry.params == {"x": 0.25}
    with pytest.raises(optuna.TrialPruned):
        claim_slot(retry, 2)
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs[RETRY_ATTR] == 7
    assert waiting.system_attrs["fixed_params"] == {"x": 0.25}


def test_wait_for_slot(study: optuna.Study) -> None:
    assert wait_for_slot(study, 1) is True
    assert wait_for_slot(study, 1, deadline=time.monotonic() - 1) is False  # timed out
    _complete(study, 1)
    assert wait_for_slot(study, 1) is False  # done
    assert counts(study) == (1, 0)


def test_wait_for_slot_frees_a_slot_held_by_a_dead_worker(study: optuna.Study) -> None:
    from tests.studies.test_storage import _dead_identity

    _complete(study, 1)
    dead = study.ask(X)
    dead.set_user_attr(WORKER_ATTR, _dead_identity())
    assert wait_for_slot(study, 2) is True
    assert study.get_trials()[dead.number].state == TrialState.FAIL
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.user_attrs[RETRY_ATTR] == dead.number


def test_slot_waiter_waits_a_random_fraction_after_standing_back(
    study: optuna.Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(trial_budget.time, "sleep", sleeps.append)
    monkeypatch.setattr(trial_budget.random, "uniform", lambda lo, hi: 0.123)
    waiter = SlotWaiter()
    assert waiter.wait(study, 2) is True and sleeps == []  # nothing stood back: no pause
    _complete(study, 1)
    held = _running(study)  # the last slot is held: this worker's trial is surplus
    mine = _running(study)
    with pytest.raises(optuna.TrialPruned):
        claim_slot(mine, 2)
    study.tell(mine, state=TrialState.PRUNED)
    waiter(study, study.get_trials()[mine.number])  # the optimize callback sees the outcome
    assert waiter.stood_back is True
    study.tell(held, state=TrialState.FAIL)  # the slot frees
    assert waiter.wait(study, 2) is True
    assert sleeps == [0.123]  # one random pause before taking the freed slot, then none
    assert waiter.stood_back is False
    assert waiter.wait(study, 2) is True and sleeps == [0.123]
