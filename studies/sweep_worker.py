"""The sweep's workers: one trial (compress, measure, constrain) and the loop around it.

    from studies.sweep_worker import run_workers
    run_workers(spec, workers=2)      # until the study holds spec.trials COMPLETE trials

Constraint (``dice_drop``, feasible when <= 0): the non-inferiority rule of the test report,
applied on val. From the paired 95% bootstrap CIs of (trial - baseline) over the val subjects
(`unet.stats.paired_comparison`, stored on the trial as ``paired_val``), the worst plausible
loss of the mean Dice (minus the mean's lower bound, ``dice_drop_bound``) must stay within
``--max-dice-drop`` (default 0.01) and the worst plausible loss of every region (WT, TC, ET;
``region_drop_bound`` = minus the lowest region lower bound) within ``--max-region-drop``
(default 0.03); the constraint is the larger of the two excesses. A trial that trades one region
for another, or whose val CI is wide, stays in the study but is infeasible: it is kept out of
the Pareto set and TPE treats it as a bad region. A looser mean-only rule (0.05) let a model
into the Pareto set that was already not non-inferior on val (TC -0.04, ET -0.01 at the lower
bounds) and then failed on test. Non-inferiority itself is judged on the test split, by the
report.

Workers: ``--workers N`` starts N processes that run the same loop on the same storage; they
meet only in the storage. They stop when the study holds exactly ``--trials`` COMPLETE trials:
a worker starts a trial only while the complete and running ones leave room, and a trial that
lost the race for the last slot ends PRUNED before any work (`studies.trial_budget`).
Re-running the same command resumes: finished trials count toward ``--trials``; trials left
RUNNING by a killed worker are failed and queued once more (`studies.storage`; a worker
waiting for the last slots fails them too). A trial that raises is recorded FAILED with its
error in the user attribute ``error`` and the study goes on.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from compress.teacher_cache import TeacherCache
from studies.pareto import CONSTRAINT, is_feasible
from studies.refine import QueueInt8Twins
from studies.repeats import REPEAT_ATTR, reuse_if_repeated
from studies.search_space import PRECISIONS, ROUND_TO, make_sampler, suggest_recipe
from studies.storage import WORKER_ATTR, fail_dead_trials, open_storage, worker_identity
from studies.sweep_latency import objective_values, worker_references
from studies.sweep_spec import SweepSpec
from studies.trial_budget import SURPLUS_ATTR, SlotWaiter, claim_slot
from unet.data.canonical import REGIONS, CanonicalDataset
from unet.killpoints import killpoint

# per worker: the default phantom's train and val volumes (~1 GB) fit; larger data sets keep
# what fits and read the rest from the file
DATA_CACHE_MB = 2048
# teacher logits of the distilled fine-tunes, per worker: ~0.8 MB per batch of 16 2D crops at
# 64x64, so every batch of the default search space fits
TEACHER_CACHE_MB = 1024


def run_trial(
    trial: optuna.Trial,
    spec: SweepSpec,
    references: dict[str, Any] | None = None,
    data: CanonicalDataset | None = None,
    teacher_cache: TeacherCache | None = None,
) -> tuple[float, float, float]:
    """The objective: compress the baseline with a sampled recipe, measure it on val.

    ``references``: the baseline's timed calls (`worker_references`); built per trial if None.
    ``data``: the worker's open data set (its volume cache is shared by the worker's trials);
    ``spec.data`` is opened if None. ``teacher_cache``: the worker's distillation teacher
    logits (`compress.teacher_cache`), shared by its trials; None computes them per trial.
    """
    from compress.pipeline import compress_checkpoint

    trial.set_user_attr(WORKER_ATTR, worker_identity())
    fail_dead_trials(trial.study)
    claim_slot(trial, spec.trials)
    info = trial.study.user_attrs
    sweep = info["sweep"]
    recipe = suggest_recipe(
        trial,
        int(sweep["levels"]),
        spec.finetune_steps,
        float(sweep["unstructured_max"]),
        round_to_choices=sweep.get("round_to_choices", ROUND_TO),
        precisions=sweep.get("precisions", PRECISIONS),
    )
    recipe = replace(recipe, runtime=spec.runtime)
    trial_dir = Path(spec.study_dir) / "trials" / str(trial.number)
    trial.set_user_attr("recipe", recipe.to_dict())
    trial.set_user_attr("label", recipe.label)
    trial.set_user_attr("trial_dir", str(trial_dir))
    repeated = reuse_if_repeated(trial, recipe.to_dict())
    if repeated is not None:  # the same recipe ran before: the same model (`studies.repeats`)
        return repeated  # type: ignore[return-value]
    killpoint("sweep.trial")
    try:
        result = compress_checkpoint(
            spec.baseline,
            spec.data if data is None else data,
            recipe,
            trial_dir,
            threads=spec.threads,
            latency_runs=spec.latency_runs,
            device=spec.device,
            baseline_metrics=info["baseline_metrics"],
            seed=spec.seed,
            cache_dir=Path(spec.study_dir) / "cache",  # regularised baselines, once per study
            backends=spec.backends,
            references=references,
            teacher_cache=teacher_cache,
        )
    except Exception as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise
    metrics = result["compressed"]
    backend = spec.latency_backend
    reference_ms = info["baseline_metrics"]["latency_ms"][backend]["median"]
    values = objective_values(
        metrics,
        backend,
        reference_ms,
        paired=result.get("paired_val"),
        reference_dice=float(info["baseline_metrics"]["val_dice"]["mean"]),
    )
    metrics["latency_objective_ms"] = values[2]
    trial.set_user_attr("metrics", metrics)  # the threshold curve stays in the folder
    trial.set_user_attr("artifact", result.get("artifact", "model.onnx"))
    trial.set_constraint(
        CONSTRAINT,
        constraint_value(trial, result, info, spec.max_dice_drop, spec.max_region_drop),
    )
    return values


def constraint_value(
    trial: optuna.Trial,
    result: dict[str, Any],
    info: dict[str, Any],
    max_dice_drop: float,
    max_region_drop: float,
) -> float:
    """The ``dice_drop`` constraint (feasible when <= 0; see the module docstring):
    ``max(dice_drop_bound - max_dice_drop, region_drop_bound - max_region_drop)``, the bounds
    being minus the lower ends of the paired 95% CIs of the val Dice deltas (mean; lowest
    region). Stores ``dice_drop`` (point loss of the mean), both bounds and ``paired_val`` (the
    whole comparison) on the trial. Without per-subject rows (a baseline measured by an older
    version) the point losses stand in for the bounds."""
    metrics = result["compressed"]
    base = info["baseline_metrics"]["val_dice"]
    drop = float(base["mean"]) - float(metrics["val_dice"]["mean"])
    paired = result.get("paired_val")
    if paired:
        bound = -float(paired["ci95"]["mean"][0])
        region_bound = max(-float(paired["ci95"][r][0]) for r in REGIONS)
    else:
        bound = drop
        region_bound = max(float(base[r]) - float(metrics["val_dice"][r]) for r in REGIONS)
    trial.set_user_attr("dice_drop", drop)
    trial.set_user_attr("dice_drop_bound", bound)
    trial.set_user_attr("region_drop_bound", region_bound)
    trial.set_user_attr("paired_val", paired)
    return max(bound - max_dice_drop, region_bound - max_region_drop)


def trial_summary(trial: FrozenTrial) -> str:
    """One line per finished trial: recipe, size, latency, Dice (or the error)."""
    label = trial.user_attrs.get("label", "?")
    if trial.state != TrialState.COMPLETE:
        error = trial.user_attrs.get("error") or trial.system_attrs.get("fail_reason", "")
        error = (str(error).strip().splitlines() or [""])[0][:200]
        return f"trial {trial.number:>3} {trial.state.name}  {label}  {error}".rstrip()
    lower, size, latency = trial.values
    dice = float(trial.user_attrs.get("metrics", {}).get("val_dice", {}).get("mean", float("nan")))
    mark = "" if is_feasible(trial) else "  (infeasible)"
    if REPEAT_ATTR in trial.user_attrs:
        mark += f"  (repeats trial {trial.user_attrs[REPEAT_ATTR]}: result reused)"
    speedups = {
        k: v for k, v in trial.user_attrs.get("metrics", {}).items() if k.startswith("speedup_")
    }
    paired = " ".join(f"{k.removeprefix('speedup_')} {v:.2f}x" for k, v in speedups.items())
    return (
        f"trial {trial.number:>3}  {label:<44} size {size / 1e6:7.3f} MB  "
        f"{latency:7.2f} ms  val Dice {dice:.4f} (lo {lower:+.4f})"
        f"{'  ' + paired if paired else ''}{mark}"
    )


def count_trials(study: optuna.Study, state: TrialState = TrialState.COMPLETE) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


class _StopOnFailures:
    """Stop this worker after ``limit`` failed trials of its own (a recipe bug, not bad luck)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failed = 0
        self.stopped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.failed += 1
            if self.failed >= self.limit:
                print(f"stopping this worker after {self.failed} failed trials", file=sys.stderr)
                self.stopped = True


class _Report:
    """Print the one-line summary of each finished trial; advance the progress bar."""

    def __init__(self, bar: tqdm | None) -> None:
        self.bar = bar

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(SURPLUS_ATTR):
            return
        line = trial_summary(trial)
        if self.bar is None:
            print(line, flush=True)
            return
        self.bar.write(line)
        self.bar.n = min(count_trials(study), self.bar.total)
        self.bar.refresh()


def run_worker(spec: SweepSpec, index: int = 0, bar: tqdm | None = None) -> int:
    """One worker's loop until the study holds exactly ``spec.trials`` COMPLETE trials (one
    trial per ``study.optimize`` call, each only while the budget has room:
    `studies.trial_budget`), ``spec.timeout_s`` has passed, or too many of its trials failed.

    Returns the number of trials this worker ran.
    """
    torch.set_num_threads(spec.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=spec.study_name,
        storage=open_storage(spec.storage),
        sampler=make_sampler(spec.seed + index),
    )
    failures = _StopOnFailures(max(3, spec.trials))
    deadline = None if spec.timeout_s is None else time.monotonic() + spec.timeout_s
    before = len(study.get_trials(deepcopy=False))
    # the baseline's sessions on the sweep's backends, kept open for the whole study
    references = worker_references(spec.baseline, spec.data, spec.backends, spec.threads)
    # one open data set per worker: every trial's fine-tune, calibration and validation read
    # the same volumes, so they stay in memory after the first trial (CanonicalDataset cache)
    data = CanonicalDataset(spec.data, cache_mb=DATA_CACHE_MB)
    # the fine-tunes of all trials draw the same batches (same seed): the teacher's logits of
    # each batch are computed once per worker
    teacher_cache = TeacherCache(TEACHER_CACHE_MB)
    twins = QueueInt8Twins(study.user_attrs["sweep"].get("precisions", PRECISIONS))
    slots = SlotWaiter()
    while not failures.stopped and slots.wait(study, spec.trials, deadline):
        study.optimize(
            lambda trial: run_trial(trial, spec, references, data, teacher_cache),
            n_trials=1,
            callbacks=[failures, _Report(bar), twins, slots],
            catch=(Exception,),
            gc_after_trial=True,
            show_progress_bar=False,
        )
    return len(study.get_trials(deepcopy=False)) - before


def _quiet() -> None:
    """Silence warnings that are expected in a sweep (experimental Optuna options; fp16
    checkpoints, whose latency `compress.apply` does not time on the CPU)."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings(
        "ignore", message="cast_module: fp16 on the CPU", category=RuntimeWarning
    )


def _worker_process(spec: SweepSpec, index: int) -> None:
    _quiet()
    run_worker(spec, index)


def run_workers(spec: SweepSpec, workers: int) -> None:
    """Run ``workers`` optimize loops (in this process for 1) with one progress bar."""
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec.storage))
    done = count_trials(study)
    if done >= spec.trials:
        print(f"study {spec.study_name!r} already has {done} complete trials", file=sys.stderr)
        return
    with tqdm(total=spec.trials, initial=done, desc="trials", unit="trial", disable=None) as bar:
        if workers == 1:
            with warnings.catch_warnings():
                _quiet()
                run_worker(spec, 0, bar)
            return
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_process, args=(spec, i)) for i in range(workers)]
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            bar.n = min(count_trials(study), spec.trials)
            bar.refresh()
        for p in procs:
            p.join()
        bar.n = min(count_trials(study), spec.trials)
        bar.refresh()
    bad = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        codes = ", ".join(f"worker {i}: exit {procs[i].exitcode}" for i in bad)
        print(f"warning: {codes}; rerun the command to finish the study", file=sys.stderr)
