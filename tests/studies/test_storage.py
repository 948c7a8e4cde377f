"""Storage URLs, and failing the trials of dead workers (the journal storage has no heartbeat)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studies.storage import (
    GRACE_ENV,
    GRACE_PERIOD_S,
    HEARTBEAT_ENV,
    HEARTBEAT_INTERVAL_S,
    RETRY_ATTR,
    WORKER_ATTR,
    StorageError,
    check_storage_url,
    display_url,
    fail_dead_trials,
    heartbeat_settings,
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


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S)),
        ({HEARTBEAT_ENV: "1", GRACE_ENV: "4"}, (1, 4)),
        ({HEARTBEAT_ENV: " 2 "}, (2, GRACE_PERIOD_S)),
        ({HEARTBEAT_ENV: "0"}, f"{HEARTBEAT_ENV}='0': expected whole seconds >= 1"),
        ({HEARTBEAT_ENV: "1.5"}, f"{HEARTBEAT_ENV}='1.5': expected whole seconds >= 1"),
        ({GRACE_ENV: "soon"}, f"{GRACE_ENV}='soon': expected whole seconds >= 1"),
        ({GRACE_ENV: "-3"}, f"{GRACE_ENV}='-3': expected whole seconds >= 1"),
        ({HEARTBEAT_ENV: "5", GRACE_ENV: "5"}, "must be longer than the heartbeat interval"),
    ],
)
def test_heartbeat_settings_from_the_environment(
    env: dict[str, str], expected: tuple[int, int] | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in (HEARTBEAT_ENV, GRACE_ENV):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if isinstance(expected, tuple):
        assert heartbeat_settings() == expected
    else:
        with pytest.raises(StorageError, match=re.escape(expected)):
            heartbeat_settings()


def test_rdb_storage_uses_the_heartbeat_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HEARTBEAT_ENV, "2")
    monkeypatch.setenv(GRACE_ENV, "7")
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert storage.get_heartbeat_interval() == 2 and storage.grace_period == 7


def test_sweep_refuses_a_bad_heartbeat_setting_before_any_work(
    blob_data: Path,
    untrained_ckpt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from studies.prune_sweep import main

    monkeypatch.setenv(HEARTBEAT_ENV, "often")
    argv = ["--data", str(blob_data), "--baseline", str(untrained_ckpt),
            "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        f"error: --storage: {HEARTBEAT_ENV}='often': expected whole seconds >= 1"
    )
    assert not (tmp_path / "s.db").exists() and not any((tmp_path / "out").iterdir())
