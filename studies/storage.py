"""Optuna storages from a URL, and recovery of trials whose worker process died.

Accepted ``--storage`` values::

    journal:runs/sweep/s/study.journal   a journal file: several processes on one machine (default)
    sqlite:///runs/sweep.db              one SQLite file (one process at a time is safest)
    postgresql://user:pw@host:5432/db    a server: several machines join one study
    mysql+pymysql://user:pw@host/db      idem

A worker killed with SIGKILL leaves its trial ``RUNNING`` forever unless something fails it:

* RDB storages (SQLite, PostgreSQL, MySQL) get Optuna's heartbeat: every running trial records
  a heartbeat every `HEARTBEAT_INTERVAL_S`; any worker that starts a trial (or waits for the
  last running ones, `fail_stale`) fails the trials whose heartbeat is older than
  `GRACE_PERIOD_S` (``optuna.storages.fail_stale_trials``). Both are seconds and can be set
  for every process that opens the storage with the environment variables `HEARTBEAT_ENV` and
  `GRACE_ENV` (integers >= 1, the grace period longer than the interval), e.g. short ones in
  tests: ``UNET_COMPRESS_HEARTBEAT_S=1 UNET_COMPRESS_GRACE_S=4``.
* Optuna 5's ``JournalStorage`` has no heartbeat. Each trial therefore records its worker
  (host, pid, process start time) in the user attribute ``worker``, and `fail_dead_trials`
  fails the running trials of this host whose process is gone; the sweep calls it before it
  starts and before every trial. This works for RDB storages too (immediately, without waiting
  for the grace period), for workers on the same host.

Either way a failed stale trial is queued once more with the same parameters (`retry_once`), so
a recipe is not dropped because its worker was killed. (Optuna's
``RetryHeartbeatStaleTrialCallback(max_retry=1)`` does the same for the heartbeat but copies the
dead trial's user attributes into the retry, the dead worker's identity included, which the
host check would then fail again before the new worker records itself.)

Several workers opening a fresh database at once race to create Optuna's tables; `open_storage`
retries that (`SCHEMA_ATTEMPTS`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

JOURNAL_PREFIX = "journal:"
RDB_BACKENDS = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
SCHEMA_ATTEMPTS = 5  # tries to open an RDB storage whose tables another worker is creating
HEARTBEAT_ENV = "UNET_COMPRESS_HEARTBEAT_S"
GRACE_ENV = "UNET_COMPRESS_GRACE_S"
WORKER_ATTR = "worker"
RETRY_ATTR = "retry_of"


class StorageError(ValueError):
    """A storage URL that cannot be parsed or opened; the message names it."""


def journal_url(path: str | os.PathLike[str]) -> str:
    """The storage URL of a journal file."""
    return JOURNAL_PREFIX + str(path)


def journal_path(url: str) -> Path | None:
    """The file of a ``journal:PATH`` URL, else None."""
    return Path(url[len(JOURNAL_PREFIX) :]) if url.startswith(JOURNAL_PREFIX) else None


def display_url(url: str) -> str:
    """``url`` with any database password masked (for messages and reports)."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # unparsable: show nothing that could be a secret
        return url.split("://", 1)[0] + "://..."


def check_storage_url(url: str) -> None:
    """Raise `StorageError` for a malformed URL or a missing database driver (no connection)."""
    if url.startswith(JOURNAL_PREFIX):
        if not url[len(JOURNAL_PREFIX) :].strip():
            raise StorageError(f"storage {url!r}: journal: needs a file path (journal:PATH)")
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = display_url(url)
    if "://" not in url:
        raise StorageError(
            f"storage {shown!r} is not a storage URL; expected journal:PATH, sqlite:///FILE, "
            "postgresql://USER:PW@HOST/DB or mysql://USER:PW@HOST/DB"
        )
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(f"storage {shown!r}: malformed database URL") from None
    if parsed.get_backend_name() not in RDB_BACKENDS:
        raise StorageError(
            f"storage {shown!r}: unknown scheme {parsed.drivername!r}; expected journal:PATH or "
            f"a database URL ({', '.join(RDB_BACKENDS)})"
        )
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError) as exc:
        raise StorageError(
            f"storage {shown!r}: database driver not installed ({exc}); for PostgreSQL: "
            "pip install 'psycopg[binary]'"
        ) from None


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: the defaults or `HEARTBEAT_ENV` /
    `GRACE_ENV`; `StorageError` naming the variable if a value is not an integer >= 1 or the
    grace period is not longer than the interval."""
    values = {}
    for env, default in ((HEARTBEAT_ENV, HEARTBEAT_INTERVAL_S), (GRACE_ENV, GRACE_PERIOD_S)):
        raw = os.environ.get(env, "").strip()
        if not raw:
            values[env] = default
            continue
        try:
            values[env] = int(raw)
        except ValueError:
            raise StorageError(f"{env}={raw!r}: expected whole seconds >= 1") from None
        if values[env] < 1:
            raise StorageError(f"{env}={raw!r}: expected whole seconds >= 1")
    interval, grace = values[HEARTBEAT_ENV], values[GRACE_ENV]
    if grace <= interval:
        raise StorageError(
            f"{GRACE_ENV}={grace} must be longer than the heartbeat interval "
            f"{HEARTBEAT_ENV}={interval} (a live trial would look stale)"
        )
    return interval, grace


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring); `StorageError` if unusable."""
    check_storage_url(url)
    path = journal_path(url)
    if path is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise StorageError(f"storage {url!r}: cannot open journal file ({exc})") from None
    import time
    import warnings

    from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

    interval, grace = heartbeat_settings()
    attempt = 0
    while True:
        with warnings.catch_warnings():  # heartbeat arguments are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=interval,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=retry_once,
                )
            except (IntegrityError, ProgrammingError) as exc:
                # workers that open a fresh database at once race to create Optuna's tables
                # (PostgreSQL: duplicate key in pg_type); the loser finds them on a retry
                attempt += 1
                if attempt >= SCHEMA_ATTEMPTS:
                    raise StorageError(
                        f"storage {display_url(url)!r}: cannot create or open Optuna's tables "
                        f"({_first_line(exc)})"
                    ) from None
            except (SQLAlchemyError, OSError) as exc:
                raise StorageError(
                    f"storage {display_url(url)!r}: cannot connect ({_first_line(exc)})"
                ) from None
        time.sleep(0.2 * attempt)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell reused pids apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def worker_identity() -> dict[str, Any]:
    """``{"host", "pid", "start"}`` of this process (stored on each trial it runs)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid)}


def worker_alive(identity: dict[str, Any]) -> bool | None:
    """Whether the worker process is still running; None if it ran on another host."""
    if identity.get("host") != socket.gethostname():
        return None
    pid = int(identity["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = identity.get("start")
    return start is None or _process_start(pid) in (None, start)


def retry_once(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed stale trial's parameters again, unless it was itself a retry.

    Signature of an Optuna heartbeat-stale-trial callback.
    """
    if RETRY_ATTR in trial.user_attrs or not trial.params:
        return
    study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials that are stale: dead on this host (`fail_dead_trials`) or, on a
    storage with a heartbeat, silent for longer than the grace period (Optuna's
    ``fail_stale_trials``, which queues them again through `retry_once`). Returns the numbers
    failed here by the host check (Optuna does not report its own)."""
    import warnings

    failed = fail_dead_trials(study)
    with warnings.catch_warnings():  # fail_stale_trials is flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op without a heartbeat
    return failed


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker process on this host is gone; return their numbers.

    Each gets the user attribute ``error`` and is queued once more (`retry_once`). Safe to run
    from several workers at once: a trial that another process already finished is skipped.
    """
    failed = []
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        identity = trial.user_attrs.get(WORKER_ATTR)
        if not identity or worker_alive(identity) is not False:
            continue
        try:
            storage.set_trial_user_attr(
                trial._trial_id,
                "error",
                f"worker process {identity['pid']} on {identity['host']} died during the trial",
            )
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        retry_once(study, storage.get_trial(trial._trial_id))
    return failed
