"""A sweep on a real PostgreSQL server (`tests.postgres`, started for the session): several
commands with several workers each make exactly N trials; a SIGKILLed worker's trial is failed
by Optuna's heartbeat and run once more; the report and figures read the study back.

Skipped with a one-line reason where the server binaries are missing, except under CI.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from studies.storage import (
    GRACE_ENV,
    HEARTBEAT_ENV,
    RETRY_ATTR,
    WORKER_ATTR,
    open_storage,
)
from studies.trial_budget import SURPLUS_ATTR
from unet.killpoints import KILL_AT_ENV

pytestmark = pytest.mark.slow
TRIALS = 4
# Sampler seeds whose first recipes (seed + worker index, random startup phase) avoid int8
# entropy calibration, ~9 s a trial even for the tiny model: keeps these tests short.
SEEDS = (6, 8)


def _argv(
    data: Path, baseline: Path, url: str, name: str, out: Path, trials: int, seed: int = SEEDS[0]
) -> list[str]:
    return [
        "--data", str(data), "--baseline", str(baseline), "--threads", "1",
        "--storage", url, "--study-name", name, "--out", str(out), "--trials", str(trials),
        "--finetune-steps", "0", "--max-dice-drop", "1", "--max-region-drop", "1", "--no-report", "--seed", str(seed),
    ]  # fmt: skip


def _sweep(argv: list[str], log: Path, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "studies.prune_sweep", *argv]
    with log.open("w") as f:  # a file, not a pipe: two commands run at once and must not block
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env})


def _load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _by_state(study: optuna.Study) -> dict[TrialState, list[optuna.trial.FrozenTrial]]:
    out: dict[TrialState, list] = {s: [] for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state].append(t)
    return out


@pytest.fixture(scope="module")
def pg_sweep(
    postgres_url: str,
    blob_data: Path,
    tiny_baseline: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Two `studies.prune_sweep` commands with ``--workers 2`` each on one PostgreSQL study
    (one shared --out, as on a shared disk), run to the end."""
    root = tmp_path_factory.mktemp("pg-sweep")
    name = f"two-commands-{uuid.uuid4().hex[:8]}"
    procs = []
    logs = [root / f"command{i}.log" for i in range(2)]
    for seed, log in zip(SEEDS, logs, strict=True):  # one seed per machine, or they propose alike
        argv = _argv(blob_data, tiny_baseline, postgres_url, name, root / "out", TRIALS, seed)
        procs.append(_sweep([*argv, "--workers", "2"], log))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return {
        "url": postgres_url,
        "name": name,
        "root": root,
        "codes": codes,
        "logs": [log.read_text() for log in logs],
    }


def test_two_commands_of_two_workers_make_exactly_n_trials(pg_sweep: dict[str, Any]) -> None:
    assert pg_sweep["codes"] == [0, 0], "\n".join(log[-2000:] for log in pg_sweep["logs"])
    for log in pg_sweep["logs"]:
        assert "Traceback" not in log and "error" not in log.lower(), log[-2000:]
    trials = _by_state(_load(pg_sweep["url"], pg_sweep["name"]))
    complete = trials[TrialState.COMPLETE]
    assert len(complete) == TRIALS
    assert not trials[TrialState.FAIL] and not trials[TrialState.RUNNING]
    assert all(t.user_attrs.get(SURPLUS_ATTR) for t in trials[TrialState.PRUNED])
    dirs = [t.user_attrs["trial_dir"] for t in complete]
    assert len(set(dirs)) == len(dirs)
    for t in complete:  # each folder holds its own trial's result, written by one worker
        result = json.loads((Path(t.user_attrs["trial_dir"]) / "metrics.json").read_text())
        assert result["recipe"] == t.user_attrs["recipe"]
        assert t.values[1] == result["compressed"]["size_bytes"]
    assert len({t.user_attrs[WORKER_ATTR]["pid"] for t in complete}) >= 2


def test_report_and_figures_read_the_study_from_the_database(
    pg_sweep: dict[str, Any], tmp_path: Path
) -> None:
    from studies import figures, report

    url, name = pg_sweep["url"], pg_sweep["name"]
    assert report.main(["--study", name, "--storage", url, "--out", str(tmp_path / "r")]) == 0
    rows = list(csv.DictReader((tmp_path / "r" / "pareto.csv").open()))
    study = _load(url, name)
    pareto = {str(t.number) for t in study.best_trials}
    assert rows[0]["trial"] == "baseline" and {r["trial"] for r in rows[1:]} <= pareto
    assert all(0 <= float(r["test_dice_mean"]) <= 1 for r in rows)
    payload = json.loads((tmp_path / "r" / "pareto.json").read_text())
    assert payload["study"] == name and len(payload["pareto"]) == len(rows) - 1
    assert figures.main(["--study", name, "--storage", url, "--out", str(tmp_path / "f")]) == 0
    for stem in ("pareto_front", "pruning_curves", "threshold_curves", "overlay"):
        assert (tmp_path / "f" / f"{stem}.png").stat().st_size > 1000


def test_sigkilled_worker_trial_is_failed_by_the_heartbeat_and_run_once_more(
    postgres_url: str,
    blob_data: Path,
    tiny_baseline: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker dies (SIGKILL) inside its 2nd trial. Its trial is made to look like one from
    another machine, where the host check (`studies.storage.fail_dead_trials`) cannot tell, so
    only Optuna's heartbeat can rescue it: the next command fails it once its heartbeat is
    older than the grace period, queues its parameters once, and finishes the study."""
    from studies.prune_sweep import main

    beat = {HEARTBEAT_ENV: "1", GRACE_ENV: "3"}
    for key, value in beat.items():
        monkeypatch.setenv(key, value)
    name = f"heartbeat-{uuid.uuid4().hex[:8]}"
    argv = _argv(blob_data, tiny_baseline, postgres_url, name, tmp_path / "out", 3)
    victim = _sweep(argv, tmp_path / "killed.log", **beat, **{KILL_AT_ENV: "sweep.trial:2"})
    assert victim.wait(timeout=600) == -9, (tmp_path / "killed.log").read_text()[-2000:]

    study = _load(postgres_url, name)
    trials = _by_state(study)
    (done,) = trials[TrialState.COMPLETE]
    (stale,) = trials[TrialState.RUNNING]
    identity = {**stale.user_attrs[WORKER_ATTR], "host": "another-machine"}
    study._storage.set_trial_user_attr(stale._trial_id, WORKER_ATTR, identity)

    assert main(argv) == 0
    trials = _by_state(_load(postgres_url, name))
    assert len(trials[TrialState.COMPLETE]) == 3 and not trials[TrialState.RUNNING]
    killed = next(t for t in trials[TrialState.FAIL] if t.number == stale.number)
    assert "error" not in killed.user_attrs  # failed by the heartbeat, not by the host check
    again = [t for t in trials[TrialState.COMPLETE] if t.user_attrs.get(RETRY_ATTR) == stale.number]
    assert len(again) == 1 and again[0].params == killed.params
    kept = next(t for t in trials[TrialState.COMPLETE] if t.number == done.number)
    assert kept.values == done.values and kept.datetime_complete == done.datetime_complete
