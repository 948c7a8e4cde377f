"""Storage URLs, and failing the trials of dead workers (the journal storage has no heartbeat)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studies.storage import (
    RETRY_ATTR,
    WORKER_ATTR,
    StorageError,
    check_storage_url,
    display_url,
    fail_dead_trials,
    journal_url,
    open_storage,
    worker_alive,
    worker_identity,
)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("journal:runs/x.journal", None),
        ("sqlite:///runs/x.db", None),
        ("journal:", "needs a file path"),
        ("runs/x.journal", "not a storage URL"),
        ("postgresql:/no-host", "not a storage URL"),
        ("postgresql://u:pw@host:port/db", "malformed"),
        ("://host/db", "malformed"),
        ("nosuch://host/db", "unknown scheme"),
        ("http://example.org/db", "unknown scheme"),
    ],
)
def test_check_storage_url(url: str, problem: str | None) -> None:
    if problem is None:
        check_storage_url(url)
    else:
        with pytest.raises(StorageError, match=problem):
            check_storage_url(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://optuna:secret@db:5432/optuna", "postgresql://optuna:***@db:5432/optuna"),
        ("postgresql://u:secret@host:port/db", "postgresql://..."),
        ("journal:runs/s.journal", "journal:runs/s.journal"),
    ],
)
def test_display_url_hides_passwords(url: str, shown: str) -> None:
    assert display_url(url) == shown
    if "://" in url:  # errors never show the password either
        with pytest.raises(StorageError) as exc:
            check_storage_url(url.replace("postgresql", "nosuch"))
        assert "secret" not in str(exc.value)


def test_open_storage_kinds(tmp_path: Path) -> None:
    journal = open_storage(journal_url(tmp_path / "sub" / "s.journal"))
    assert isinstance(journal, optuna.storages.JournalStorage)
    rdb = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert isinstance(rdb, optuna.storages.RDBStorage)
    assert rdb.get_heartbeat_interval() is not None  # RDB: Optuna's heartbeat is on


def _dead_identity() -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {**worker_identity(), "pid": int(proc.stdout), "start": None}


def test_worker_alive() -> None:
    assert worker_alive(worker_identity()) is True
    assert worker_alive(_dead_identity()) is False
    assert worker_alive({**worker_identity(), "host": "elsewhere"}) is None
    # a live pid whose start time differs is a reused pid: the worker is gone
    assert worker_alive({**worker_identity(), "start": "1"}) is False


def test_fail_dead_trials_fails_and_retries_once(tmp_path: Path) -> None:
    storage = open_storage(journal_url(tmp_path / "s.journal"))
    study = optuna.create_study(storage=storage, study_name="s")
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    dead.set_user_attr(WORKER_ATTR, _dead_identity())
    alive = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive.set_user_attr(WORKER_ATTR, worker_identity())
    unknown = study.ask()  # no worker recorded yet: left alone

    assert fail_dead_trials(study) == [dead.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dead.number] == TrialState.FAIL
    assert states[alive.number] == states[unknown.number] == TrialState.RUNNING
    failed = study.get_trials()[dead.number]
    assert "died" in failed.user_attrs["error"]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].user_attrs[RETRY_ATTR] == dead.number
    # the retry runs the same parameters
    retried = study.ask()
    retried.suggest_float("x", 0, 1)
    assert retried.params == failed.params
    # a retry that dies too is not queued again
    retried.set_user_attr(WORKER_ATTR, _dead_identity())
    assert fail_dead_trials(study) == [retried.number]
    assert not study.get_trials(states=(TrialState.WAITING,))
