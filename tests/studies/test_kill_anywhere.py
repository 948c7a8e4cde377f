"""SIGKILL at every named kill point (`unet.killpoints`), three times each: the command dies
exactly there (no timers, so no flakes on a loaded machine), every file it left under a final
name is complete, and the same command run again finishes without losing finished work."""

from __future__ import annotations

import csv
import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import optuna
import pytest
from optuna.trial import TrialState

from studies.storage import RETRY_ATTR, journal_url, open_storage
from unet.checkpoint import read_checkpoint
from unet.killpoints import KILL_AT_ENV, POINTS

pytestmark = pytest.mark.slow
REPEATS = 3
ARTIFACTS = ("model.onnx", "checkpoint.pt", "recipe.json", "metrics.json")


@dataclass
class Run:
    """One scenario's paths: its output folder and the shared inputs."""

    out: Path
    data: Path
    baseline: Path
    study: Path  # journal file of a finished sweep (for the report)
    before: dict[int, list[float]] = field(default_factory=dict)  # trial values at the kill


def _sweep_argv(run: Run, trials: int) -> list[str]:
    return [
        "--data", str(run.data), "--baseline", str(run.baseline), "--threads", "1",
        "--study-name", "s", "--out", str(run.out), "--trials", str(trials), "--seed", "6",
        "--finetune-steps", "0", "--max-dice-drop", "1", "--max-region-drop", "1", "--no-report",
    ]  # fmt: skip


def _apply_argv(run: Run, precision: str) -> list[str]:
    return [
        "--checkpoint", str(run.baseline), "--data", str(run.data), "--out", str(run.out),
        "--precision", precision, "--calibration-samples", "4", "--threads", "1",
    ]  # fmt: skip


def assert_complete_files(folder: Path) -> list[Path]:
    """Every file under a final (non-hidden, non-temporary) name parses completely; returns them.

    Temporary names (``.name.XXXX.tmp`` of `unet.io.atomic_path`, ``unet-compress-*`` work
    folders) may be left behind by a kill; nothing ever reads them.
    """
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(p.startswith((".", "unet-compress-")) for p in rel.parts):
            continue
        found.append(path)
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            assert all(json.loads(line) for line in path.read_text().splitlines())
        elif path.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        elif path.suffix == ".pt":
            read_checkpoint(path)
        elif path.suffix == ".csv":
            assert list(csv.DictReader(path.open()))
        elif path.suffix == ".md":
            assert path.read_text().strip()
    return found


# ------------------------------------------------------------------ the scenarios


def _train_argv(run: Run) -> list[str]:
    return [
        "--data", str(run.data), "--out", str(run.out / "m.pt"), "--model", "unet2d-tiny",
        "--steps", "6", "--batch-size", "4", "--val-every", "2", "--resume", "--no-progress",
    ]  # fmt: skip


def _train_killed(run: Run) -> None:
    last = read_checkpoint(run.out / "m.last.pt")  # validated at step 4, killed starting step 5
    assert last["meta"]["step"] == 4 and (run.out / "m.pt").is_file()


def _train_done(run: Run) -> None:
    assert read_checkpoint(run.out / "m.last.pt")["meta"]["step"] == 6
    log = [json.loads(line) for line in (run.out / "m.jsonl").read_text().splitlines()]
    vals = [r["step"] for r in log if r["kind"] == "val"]
    assert vals == [2, 4, 6]  # no step logged twice across the kill


def _nothing_yet(run: Run) -> None:
    assert not [a for a in ARTIFACTS if (run.out / a).exists()]


def _apply_done(precision: str) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        assert {p.name for p in assert_complete_files(run.out)} == set(ARTIFACTS)
        result = json.loads((run.out / "metrics.json").read_text())
        assert result["recipe"]["precision"] == precision

    return check


def _report_killed(run: Run) -> None:
    assert (run.out / "report.md").is_file()  # written before the kill point, whole
    assert not (run.out / "pareto.csv").exists() and not (run.out / "pareto.json").exists()


def _report_done(run: Run) -> None:
    rows = list(csv.DictReader((run.out / "pareto.csv").open()))
    payload = json.loads((run.out / "pareto.json").read_text())
    assert rows[0]["trial"] == "baseline" and len(payload["pareto"]) == len(rows) - 1


def _study(run: Run) -> optuna.Study:
    return optuna.load_study(
        study_name="s", storage=open_storage(journal_url(run.out / "s" / "study.journal"))
    )


def _sweep_killed(run: Run) -> None:
    study = _study(run)
    (done,) = study.get_trials(states=(TrialState.COMPLETE,))
    (running,) = study.get_trials(states=(TrialState.RUNNING,))  # left behind by the kill
    assert running.params and running.number != done.number
    run.before = {done.number: done.values}


def _sweep_done(run: Run) -> None:
    study = _study(run)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2 and not study.get_trials(states=(TrialState.RUNNING,))
    assert {t.number: t.values for t in complete if t.number in run.before} == run.before
    (killed,) = study.get_trials(states=(TrialState.FAIL,))
    assert "died" in killed.user_attrs["error"]
    (retry,) = [t for t in complete if t.user_attrs.get(RETRY_ATTR) == killed.number]
    assert retry.params == killed.params


@dataclass(frozen=True)
class Scenario:
    module: str
    argv: Callable[[Run], list[str]]
    kill_at: str
    after_kill: Callable[[Run], None]
    after_rerun: Callable[[Run], None]


SCENARIOS = {
    "train.step": Scenario("unet.train", _train_argv, "train.step:5", _train_killed, _train_done),
    "quantize.calibrate": Scenario(
        "compress.apply",
        lambda run: _apply_argv(run, "int8"),
        "quantize.calibrate:2",
        _nothing_yet,
        _apply_done("int8"),
    ),
    "export.onnx": Scenario(  # the 1st export is the baseline's (measured), the 2nd the model
        "compress.apply",
        lambda run: _apply_argv(run, "fp32"),
        "export.onnx:2",
        _nothing_yet,
        _apply_done("fp32"),
    ),
    "report.write": Scenario(
        "studies.report",
        lambda run: ["--study", "s", "--storage", journal_url(run.study), "--out", str(run.out)],
        "report.write",
        _report_killed,
        _report_done,
    ),
    "sweep.trial": Scenario(
        "studies.prune_sweep",
        lambda run: _sweep_argv(run, 2),
        "sweep.trial:2",
        _sweep_killed,
        _sweep_done,
    ),
}


def test_every_kill_point_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(POINTS)


@pytest.fixture(scope="module")
def finished_study(
    blob_data: Path, tiny_baseline: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The journal file of a finished 2-trial sweep on the tiny data (for the report)."""
    from studies.prune_sweep import main

    run = Run(tmp_path_factory.mktemp("finished"), blob_data, tiny_baseline, Path())
    assert main(_sweep_argv(run, 2)) == 0
    return run.out / "s" / "study.journal"


@pytest.mark.parametrize("repeat", range(REPEATS))
@pytest.mark.parametrize("point", POINTS)
def test_kill_at_point_then_rerun_finishes(
    point: str,
    repeat: int,
    blob_data: Path,
    tiny_baseline: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    scenario = SCENARIOS[point]
    study = request.getfixturevalue("finished_study") if point == "report.write" else Path()
    run = Run(tmp_path / "out", blob_data, tiny_baseline, study)
    run.out.mkdir()
    argv = scenario.argv(run)
    killed = subprocess.run(
        [sys.executable, "-m", scenario.module, *argv],
        env={**os.environ, KILL_AT_ENV: scenario.kill_at},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert_complete_files(run.out)
    scenario.after_kill(run)

    # the same command again, in this process (no kill point set here)
    assert KILL_AT_ENV not in os.environ
    assert importlib.import_module(scenario.module).main(argv) == 0
    assert_complete_files(run.out)
    scenario.after_rerun(run)
