"""Optuna multi-objective search over compression recipes: val Dice vs size vs CPU latency.

    python -m studies.prune_sweep                       # the embedded default, see below
    python -m studies.prune_sweep --data runs/phantom.h5 --baseline runs/unet2d-small.pt \\
        --trials 60 --workers 2 --out runs/sweep
    python -m studies.prune_sweep --storage postgresql://optuna:PW@db-host/optuna \\
        --study-name big-sweep --data ... --baseline ...          # on every machine: one study

Each trial samples a `compress.recipe.Recipe` (pruning method and ratio(s), fine-tune steps,
precision and int8 calibration, threshold mode), runs `compress.apply.compress_checkpoint` into
its own folder ``<out>/<study>/trials/<number>/`` (``model.onnx``, ``checkpoint.pt``,
``recipe.json``, ``metrics.json``) and returns three objectives, all on the **validation**
split: mean Dice (maximise), deployable artifact size in bytes (minimise) and latency at batch
1 in ms on the deployment target (minimise). The test split is read only afterwards, by the
report (`studies.report`), for the Pareto models chosen on validation.

Latency objective: ``--latency-backend`` ``ort_cpu | ov_cpu | torch_cuda | ort_cuda`` (default:
the fastest CPU runtime installed, ``ov_cpu`` when openvino imports, else ``ort_cpu``; a backend
that cannot run here is one ``error:`` line before any work). Every trial's artifact is built
for that backend's runtime (``Recipe.runtime``: ONNX for ORT, an OpenVINO IR with NNCF int8 for
OpenVINO, the checkpoint for torch), so the objective is the deployed latency. Each worker
opens the baseline's fp32 session on that backend once and keeps it for the whole study
(`worker_references`); each trial is timed against it in alternating rounds
(`compress.timing.paired_latency`) and its objective is the baseline's median, measured once
when the study was prepared, divided by the paired speed-up: machine load during a trial moves
both sides of every round and cancels in the ratio. The trial's own medians stay in its metrics
for information.

**No arguments** = the embedded default (`studies.defaults`): the default phantom is generated
and the default ``unet2d-small`` baseline trained, both cached under ``<out>/cache/`` keyed by
their settings; a journal file ``<out>/<study>/study.journal`` holds the study; then the
report (``report.md``, ``pareto.csv``, ``pareto.json``) and figures (``figures/``) are written.

Search space (define-by-run; a parameter exists only where it applies): ``prune`` none /
unstructured (ratio 0.30-0.95 in steps of 0.05, capped at the largest ratio that deletes no
layer of the baseline, `unstructured_limit`) / structured (ratio 0.10-0.80, steps of 0.05) /
pairs (one ratio per U-Net level in {0, 0.25, 0.5, 0.75}); ``round_to`` {1, R} for structured
and pairs, R from ``--round-to`` (default ``auto``: this CPU's SIMD width, `compress.simd`: 16
with AVX-512, 8 with AVX2); ``finetune_steps`` from ``--finetune-steps`` (default 0 / 25 / 75,
after pruning only); ``precision`` per runtime (`RUNTIME_PRECISIONS`): ORT fp32 / fp16 / int8
(bf16 is not searched there: ORT's CPU provider has no bf16 convolutions), OpenVINO fp32 /
fp16 / bf16 / int8, torch fp32 / fp16 / bf16; ``calibration`` minmax / entropy / percentile for
int8 (ORT's calibrators; NNCF uses its own min-max); ``threshold`` global / per-region.

Sampler: ``TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed + worker)``.
The budget is a few dozen trials, far below what NSGA-II needs (its population of 50 would
still be the random first generation after 24 trials); TPE models the good and bad regions
from the first ~10 random trials on and then proposes recipes near the non-dominated ones
(multi-objective TPE ranks trials by non-domination and hypervolume contribution).
``multivariate`` models the strong interactions (ratio x fine-tune steps x precision decide Dice
and size together); ``group`` splits the conditional search space (the ratio exists only for
some pruning methods, the calibration only for int8) into the sub-spaces that actually occur
instead of falling back to independent sampling; ``constant_liar`` keeps parallel workers from
proposing the same recipe while a trial is running. Each worker seeds its sampler with
``seed + worker index``; with one worker the recipe sequence is reproducible up to the point
where the sampler starts to use the measured (noisy) latencies.

Baseline: the reference for every ratio, the constraint and the report is the baseline itself
put through the identity recipe (`BASELINE_RECIPE`: dense fp32 ONNX, thresholds searched per
region on val, like every trial's), written to ``<out>/<study>/baseline/``. Its measurements as
trained (stored threshold) are kept in the study attribute ``baseline_as_trained``.

Constraint: ``trial.set_constraint("dice_drop", bound - --max-dice-drop)`` where ``bound`` is the
worst plausible val mean-Dice loss: minus the lower end of the paired 95% bootstrap CI of (trial
- baseline) over the val subjects (`unet.stats.paired_comparison`, stored on the trial as
``paired_val``). A trial whose loss may exceed ``--max-dice-drop`` (default 0.05) stays in the
study but is infeasible: it is kept out of the Pareto set (a broken model is otherwise "optimal"
for size) and TPE treats it as a bad region. Non-inferiority at the 1-point margin is judged
later, on the test split, by the report.

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

import argparse
import hashlib
import math
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from compress.recipe import Recipe
from compress.runners import LATENCY_BACKENDS, RUNTIMES
from studies import defaults
from studies.pareto import CONSTRAINT, DIRECTIONS, OBJECTIVES
from studies.storage import (
    WORKER_ATTR,
    StorageError,
    display_url,
    fail_dead_trials,
    journal_url,
    open_storage,
    worker_identity,
)
from studies.sweep_latency import (
    RUNTIME_PRECISIONS,
    objective_values,
    resolve_latency_flags,
    worker_references,
)
from studies.trial_budget import SURPLUS_ATTR, claim_slot, wait_for_slot
from unet.killpoints import killpoint

PRUNE_METHODS = ("none", "unstructured", "structured", "pairs")
UNSTRUCTURED_RATIOS = (0.3, 0.95, 0.05)  # low, high, step: fraction of conv weights zeroed
STRUCTURED_RATIOS = (0.1, 0.8, 0.05)  # fraction of channels removed
LEVEL_RATIOS = (0.0, 0.75, 0.25)  # per U-Net level, pairs only
ROUND_TO = (1, 8)
FINETUNE_STEPS = (0, 25, 75)  # short: the default run must fit 24 trials in 15 minutes
PRECISIONS = ("fp32", "fp16", "int8")  # bf16 has no ONNX Runtime CPU path: not searched
CALIBRATIONS = ("minmax", "entropy", "percentile")
THRESHOLD_MODES = ("global", "per-region")
# Recovery after pruning (compress.recovery), searched only where it applies:
PRUNE_ROUNDS = (1, 2, 4)  # gradual pruning rounds, when there are fine-tune steps to split
DISTILL_WEIGHTS = (0.0, 1.0, 3.0)  # distillation from the baseline, when fine-tuning
# group regularisation before structured / pairs pruning: off, or as many steps as the longest
# fine-tune; computed once per strength and cached for the study
REGULARIZE_STRENGTHS = (1e-3, 1e-2)
N_STARTUP_TRIALS = 10
# The reference every trial is compared with: the baseline itself (dense, fp32 ONNX) with its
# thresholds searched on val per region, as every trial's are; a baseline left at its training
# threshold (0.5) would make any recipe look better than it is.
BASELINE_RECIPE = Recipe(threshold="per-region")


@dataclass(frozen=True)
class SweepSpec:
    """Everything a worker needs (primitives; pickled to spawned worker processes)."""

    storage: str
    study_name: str
    study_dir: str
    data: str
    baseline: str
    trials: int
    timeout_s: float | None = None
    threads: int = 2
    device: str = "cpu"
    seed: int = 0
    latency_runs: int = 20
    max_dice_drop: float = 0.05
    finetune_steps: tuple[int, ...] = FINETUNE_STEPS
    latency_backend: str = "ort_cpu"
    round_to: int = ROUND_TO[-1]

    @property
    def runtime(self) -> str:
        """The runtime every trial's artifact is built for (`compress.recipe.RUNTIMES`)."""
        return RUNTIMES[self.latency_backend]

    @property
    def backends(self) -> tuple[str, ...]:
        """Where each artifact is timed: the objective's backend first, then the runtime's
        usual ones (`compress.deploy.latency_backends`)."""
        from compress.deploy import latency_backends

        others = latency_backends(self.runtime, self.device)
        return tuple(dict.fromkeys((self.latency_backend, *others)))

    @property
    def baseline_recipe(self) -> Recipe:
        """`BASELINE_RECIPE` deployed on this sweep's runtime (dense fp32)."""
        return replace(BASELINE_RECIPE, runtime=self.runtime)


# ------------------------------------------------------------------ search space


def unstructured_limit(model: torch.nn.Module) -> float:
    """The largest unstructured ratio on the search grid that deletes no layer of ``model``.

    One global magnitude threshold zeroes a whole layer once it reaches that layer's largest
    weight; the first layer to go is the one whose largest weight is smallest. Below the
    fraction of weights under that value, every layer keeps a weight
    (`compress.prune_unstructured` refuses ratios past it).
    """
    from compress.prune_unstructured import conv_modules

    weights = [m.weight.detach().abs().flatten() for m in conv_modules(model).values()]
    first_to_go = min(float(w.max()) for w in weights)
    safe = float((torch.cat(weights) < first_to_go).double().mean())
    lo, hi, step = UNSTRUCTURED_RATIOS
    grid_top = lo + step * math.floor((min(safe, hi) - lo) / step + 1e-9)
    return round(max(step, min(hi, grid_top)), 4)


def suggest_recipe(
    trial: optuna.Trial,
    levels: int,
    finetune_steps: Sequence[int] = FINETUNE_STEPS,
    unstructured_max: float = UNSTRUCTURED_RATIOS[1],
    *,
    round_to_choices: Sequence[int] = ROUND_TO,
    precisions: Sequence[str] = PRECISIONS,
) -> Recipe:
    """Sample one recipe (define-by-run: parameters exist only where they apply).

    ``levels``: the baseline's U-Net levels (one pair ratio each); ``finetune_steps``: the
    fine-tune step counts to choose from after pruning; ``unstructured_max``: the largest
    unstructured ratio (`unstructured_limit` of the baseline); ``round_to_choices`` and
    ``precisions``: the values searched (the sweep's, from the machine and the runtime).
    Recovery: ``regularize_steps`` (0 or the longest fine-tune) and ``regularize_strength`` for
    structured / pairs pruning; ``prune_rounds`` and ``distill_weight`` when a pruned model is
    fine-tuned.
    """
    method = trial.suggest_categorical("prune", PRUNE_METHODS)
    ratio, level_ratios, round_to, finetune = 0.0, (), 1, 0
    rounds, distill, reg_steps, reg_strength = 1, 0.0, 0, Recipe().regularize_strength
    if method == "unstructured":
        lo, _, step = UNSTRUCTURED_RATIOS
        lo = min(lo, unstructured_max)
        ratio = trial.suggest_float("unstructured_ratio", lo, unstructured_max, step=step)
    elif method == "structured":
        lo, hi, step = STRUCTURED_RATIOS
        ratio = trial.suggest_float("structured_ratio", lo, hi, step=step)
    elif method == "pairs":
        lo, hi, step = LEVEL_RATIOS
        level_ratios = tuple(
            trial.suggest_float(f"level_ratio_{i}", lo, hi, step=step) for i in range(levels)
        )
    if method in ("structured", "pairs"):
        round_to = trial.suggest_categorical("round_to", tuple(round_to_choices))
        longest = max(finetune_steps, default=0)
        if longest:
            reg_steps = trial.suggest_categorical("regularize_steps", (0, longest))
        if reg_steps:
            reg_strength = trial.suggest_categorical("regularize_strength", REGULARIZE_STRENGTHS)
    if method != "none":
        finetune = trial.suggest_categorical("finetune_steps", tuple(finetune_steps))
    if finetune:
        rounds = trial.suggest_categorical("prune_rounds", PRUNE_ROUNDS)
        distill = trial.suggest_categorical("distill_weight", DISTILL_WEIGHTS)
    precision = trial.suggest_categorical("precision", tuple(precisions))
    calibration = (
        trial.suggest_categorical("calibration", CALIBRATIONS) if precision == "int8" else "minmax"
    )
    threshold = trial.suggest_categorical("threshold", THRESHOLD_MODES)
    return Recipe(
        prune=method,
        ratio=round(ratio, 4),
        level_ratios=tuple(round(r, 4) for r in level_ratios),
        round_to=round_to,
        finetune_steps=finetune,
        precision=precision,
        calibration=calibration,
        threshold=threshold,
        prune_rounds=rounds,
        distill_weight=distill,
        regularize_steps=reg_steps,
        regularize_strength=reg_strength,
    )


def make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """The seeded multi-objective TPE sampler (see the module docstring for why)."""
    with warnings.catch_warnings():  # ``group`` is flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            n_startup_trials=N_STARTUP_TRIALS,
            multivariate=True,
            group=True,
            constant_liar=True,
            seed=seed,
        )


# ------------------------------------------------------------------ one trial


def run_trial(
    trial: optuna.Trial, spec: SweepSpec, references: dict[str, Any] | None = None
) -> tuple[float, float, float]:
    """The objective: compress the baseline with a sampled recipe, measure it on val.

    ``references``: the baseline's timed calls (`worker_references`); built per trial if None.
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
    killpoint("sweep.trial")
    try:
        result = compress_checkpoint(
            spec.baseline,
            spec.data,
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
        )
    except Exception as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise
    metrics = result["compressed"]
    backend = spec.latency_backend
    reference_ms = info["baseline_metrics"]["latency_ms"][backend]["median"]
    values = objective_values(metrics, backend, reference_ms)
    metrics["latency_objective_ms"] = values[2]
    trial.set_user_attr("metrics", metrics)  # the threshold curve stays in the folder
    trial.set_user_attr("artifact", result.get("artifact", "model.onnx"))
    trial.set_constraint(CONSTRAINT, constraint_value(trial, result, info, spec.max_dice_drop))
    return values


def constraint_value(
    trial: optuna.Trial, result: dict[str, Any], info: dict[str, Any], max_dice_drop: float
) -> float:
    """The ``dice_drop`` constraint (feasible when <= 0): the worst plausible val mean-Dice loss,
    i.e. minus the lower bound of the paired 95% CI of (trial - baseline) over the val subjects,
    minus ``max_dice_drop``. Stores ``dice_drop`` (point loss), ``dice_drop_bound`` and
    ``paired_val`` (the whole comparison) on the trial."""
    metrics = result["compressed"]
    drop = float(info["baseline_metrics"]["val_dice"]["mean"]) - float(metrics["val_dice"]["mean"])
    paired = result.get("paired_val")
    bound = -float(paired["ci95"]["mean"][0]) if paired else drop
    trial.set_user_attr("dice_drop", drop)
    trial.set_user_attr("dice_drop_bound", bound)
    trial.set_user_attr("paired_val", paired)
    return bound - max_dice_drop


def trial_summary(trial: FrozenTrial) -> str:
    """One line per finished trial: recipe, size, latency, Dice (or the error)."""
    label = trial.user_attrs.get("label", "?")
    if trial.state != TrialState.COMPLETE:
        error = trial.user_attrs.get("error") or trial.system_attrs.get("fail_reason", "")
        error = (str(error).strip().splitlines() or [""])[0][:200]
        return f"trial {trial.number:>3} {trial.state.name}  {label}  {error}".rstrip()
    dice, size, latency = trial.values
    mark = "" if all(v <= 0 for v in trial.constraints.values()) else "  (infeasible)"
    speedups = {
        k: v for k, v in trial.user_attrs.get("metrics", {}).items() if k.startswith("speedup_")
    }
    paired = " ".join(f"{k.removeprefix('speedup_')} {v:.2f}x" for k, v in speedups.items())
    return (
        f"trial {trial.number:>3}  {label:<44} size {size / 1e6:7.3f} MB  "
        f"{latency:7.2f} ms  val Dice {dice:.4f}{'  ' + paired if paired else ''}{mark}"
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
    while not failures.stopped and wait_for_slot(study, spec.trials, deadline):
        study.optimize(
            lambda trial: run_trial(trial, spec, references),
            n_trials=1,
            callbacks=[failures, _Report(bar)],
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


# ------------------------------------------------------------------ setup


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_study_name(model: str, data: str | None, baseline: str | None) -> str:
    """``<model or baseline stem>-<data stem or "phantom">``, e.g. ``unet2d-small-phantom``."""
    first = Path(baseline).stem if baseline else model
    return f"{first}-{Path(data).stem if data else 'phantom'}"


def prepare_study(
    storage: optuna.storages.BaseStorage,
    spec: SweepSpec,
    *,
    model: str,
    progress: bool = True,
) -> optuna.Study:
    """Create or load the study; record the sweep settings and the baseline's measurements.

    A stored study made with another data file or baseline is refused (``ValueError``).
    """
    from compress.pipeline import compress_checkpoint
    from studies.machine import machine_info
    from unet.checkpoint import load_checkpoint
    from unet.data.canonical import CanonicalDataset

    baseline, _ = load_checkpoint(spec.baseline)
    study = optuna.create_study(
        storage=storage,
        study_name=spec.study_name,
        directions=list(DIRECTIONS),
        load_if_exists=True,
    )
    data = CanonicalDataset(spec.data)
    info = {
        "data": str(Path(spec.data).resolve()),
        "data_fingerprint": data.fingerprint,
        "baseline": str(Path(spec.baseline).resolve()),
        "baseline_sha256": _sha256(Path(spec.baseline)),
        "model": model,
        "levels": baseline.config.levels,
        "unstructured_max": unstructured_limit(baseline),
        "study_dir": str(Path(spec.study_dir).resolve()),
        "baseline_dir": str((Path(spec.study_dir) / "baseline").resolve()),
        "baseline_recipe": spec.baseline_recipe.to_dict(),
        "seed": spec.seed,
        "threads": spec.threads,
        "device": spec.device,
        "latency_runs": spec.latency_runs,
        "max_dice_drop": spec.max_dice_drop,
        "finetune_steps": list(spec.finetune_steps),
        "objectives": list(OBJECTIVES),
        "latency_backend": spec.latency_backend,
        "round_to_choices": sorted({1, spec.round_to}),
        "precisions": list(RUNTIME_PRECISIONS[spec.runtime]),
    }
    stored = study.user_attrs.get("sweep")
    if stored is not None:
        old_defaults = {"latency_backend": "ort_cpu", "round_to_choices": list(ROUND_TO)}
        for key, what in (
            ("data_fingerprint", "data"),
            ("baseline_sha256", "baseline"),
            ("finetune_steps", "finetune_steps"),
            ("latency_backend", "latency_backend"),
            ("round_to_choices", "round_to_choices"),
        ):
            if stored.get(key, old_defaults.get(key)) != info[key]:
                raise ValueError(
                    f"study {spec.study_name!r} in this storage was run with another {what} "
                    f"({stored.get(what, old_defaults.get(key))}); pick another --study-name "
                    "or --storage"
                )
        if stored.get("threads") != spec.threads:
            print(
                f"warning: study was measured with {stored.get('threads')} thread(s), "
                f"now {spec.threads}: latencies are not comparable",
                file=sys.stderr,
            )
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(OBJECTIVES))
        study.set_user_attr("sweep", info)
        study.set_user_attr("machine", machine_info(spec.threads))
    if "baseline_metrics" not in study.user_attrs:
        if progress:
            print("measuring the baseline (threshold searched on val) ...", file=sys.stderr)
        t0 = time.perf_counter()
        result = compress_checkpoint(
            spec.baseline,
            spec.data,
            spec.baseline_recipe,
            Path(spec.study_dir) / "baseline",
            threads=spec.threads,
            latency_runs=spec.latency_runs,
            device=spec.device,
            seed=spec.seed,
            backends=spec.backends,
        )
        study.set_user_attr("baseline_measure_s", time.perf_counter() - t0)
        study.set_user_attr("baseline_metrics", result["compressed"])
        study.set_user_attr("baseline_as_trained", result["baseline"])
    dead = fail_dead_trials(study)
    if dead and progress:
        print(f"failed {len(dead)} trial(s) left running by a dead worker: {dead}", file=sys.stderr)
    return study


def time_estimate(
    study: optuna.Study, spec: SweepSpec, workers: int, train_samples_per_s: float | None
) -> str:
    """One line: the expected time of the remaining trials, from what was measured so far.

    A trial costs about what measuring the baseline cost (export, val prediction, threshold
    search, latency: ``baseline_measure_s``) plus its fine-tuning (the mean of the searched
    step counts at the baseline's training speed, ``train_samples_per_s``, when known).
    """
    remaining = max(0, spec.trials - count_trials(study))
    measure_s = float(study.user_attrs.get("baseline_measure_s") or 0.0)
    steps = sum(spec.finetune_steps) / max(1, len(spec.finetune_steps))
    finetune_s = steps * 16 / train_samples_per_s if train_samples_per_s else None
    per_trial = measure_s + (finetune_s or 0.0)
    total_min = per_trial * remaining / workers / 60
    finetune = f"{finetune_s:.0f} s" if finetune_s is not None else "not estimated"
    return (
        f"time estimate: ~{per_trial:.0f} s per trial (evaluation and measurement "
        f"{measure_s:.0f} s, mean fine-tune {finetune}) -> ~{total_min:.0f} min for {remaining} "
        f"trial(s) on {workers} worker(s)"
    )


# ------------------------------------------------------------------ CLI


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except None: those options say their default in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m studies.prune_sweep",
        description="Optuna search of compression recipes (val Dice, size, deployed latency); "
        "then a held-out report and figures. No arguments: the embedded default.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--data", default=None, help="canonical HDF5 file (default: the cached default phantom)"
    )
    p.add_argument(
        "--model", default=defaults.DEFAULT_MODEL, help="zoo model to train when no --baseline"
    )
    p.add_argument(
        "--baseline", default=None, help="trained checkpoint to compress (default: train --model)"
    )
    p.add_argument(
        "--trials", type=int, default=defaults.DEFAULT_TRIALS, help="COMPLETE trials to reach"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds after which no new trial starts (per worker; default: none)",
    )
    p.add_argument(
        "--study-name",
        default=None,
        help="study name (default: <model or baseline stem>-<data stem>)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage: journal:PATH, sqlite:///FILE, postgresql://USER:PW@HOST/DB ... "
        "(default: journal:<out>/<study>/study.journal)",
    )
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="device for training, fine-tuning"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per worker for PyTorch and ONNX Runtime (default: CPU cores // workers)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler, fine-tune and training seed")
    p.add_argument("--out", default=defaults.DEFAULT_OUT, help="output folder")
    p.add_argument("--latency-runs", type=int, default=20, help="timed runs per latency")
    p.add_argument(
        "--finetune-steps",
        type=int,
        nargs="+",
        default=list(FINETUNE_STEPS),
        help="fine-tune step counts the search chooses from after pruning",
    )
    p.add_argument(
        "--max-dice-drop",
        type=float,
        default=0.05,
        help="a trial is infeasible when the lower end of the paired 95%% CI of its val "
        "mean-Dice delta vs the baseline is below minus this",
    )
    p.add_argument(
        "--latency-backend",
        choices=LATENCY_BACKENDS,
        default="ort_cpu",
        help="deployment target of the latency objective; each trial's artifact is built for "
        "its runtime (ov_cpu: OpenVINO, opt-in: OpenVINO and PyTorch training in one process "
        "crashed in this project's test suite, see README)",
    )
    p.add_argument(
        "--round-to",
        default="auto",
        help="structured/pair widths are searched unrounded or rounded to this multiple; "
        "'auto': this CPU's SIMD width (compress.simd: 16 with AVX-512, 8 with AVX2)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the report and figures")
    return p


def _check_writable(parser: argparse.ArgumentParser, out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        parser.error(f"--out {out}: not a writable folder ({exc.strerror or exc})")


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every argument checked before any work starts (parser.error: one line, exit 2)."""
    from compress.measure import MIN_RUNS
    from unet import zoo
    from unet.checkpoint import CheckpointError, load_checkpoint
    from unet.data.canonical import CanonicalDataset, DataError

    if args.trials < 1:
        parser.error(f"--trials must be >= 1, got {args.trials}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.timeout is not None and not args.timeout > 0:
        parser.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.latency_runs < MIN_RUNS:
        parser.error(f"--latency-runs must be >= {MIN_RUNS}, got {args.latency_runs}")
    if min(args.finetune_steps) < 0 or len(set(args.finetune_steps)) != len(args.finetune_steps):
        parser.error(f"--finetune-steps must be distinct counts >= 0, got {args.finetune_steps}")
    if not 0 < args.max_dice_drop <= 1:
        parser.error(f"--max-dice-drop must be in (0, 1], got {args.max_dice_drop}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    resolve_latency_flags(parser, args)
    if args.baseline is None and args.model not in zoo.names():
        parser.error(f"--model {args.model!r}: unknown zoo model; known: {', '.join(zoo.names())}")
    if args.data is not None:
        try:
            data = CanonicalDataset(args.data)
        except DataError as exc:
            parser.error(f"--data {exc}")
        for split in ("train", "val", "test"):
            if not data.split(split):
                parser.error(f"--data {args.data}: no labelled subjects in the {split} split")
    if args.baseline is not None:
        if not Path(args.baseline).is_file():
            parser.error(f"--baseline {args.baseline}: no such checkpoint file")
        try:
            load_checkpoint(args.baseline)
        except CheckpointError as exc:
            parser.error(f"--baseline {exc}")
    _check_writable(parser, Path(args.out))
    if args.storage is not None:
        try:
            open_storage(args.storage)  # parses the URL and connects
        except StorageError as exc:
            parser.error(f"--storage: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    threads = args.threads or max(1, (os.cpu_count() or 2) // args.workers)
    torch.set_num_threads(threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    data = Path(args.data) if args.data else defaults.ensure_phantom(out / "cache")
    if args.baseline:
        baseline, model_name = Path(args.baseline), Path(args.baseline).stem
    else:
        baseline = defaults.ensure_baseline(
            out / "cache", args.model, data, device=args.device, seed=args.seed
        )
        model_name = args.model
    study_name = args.study_name or default_study_name(args.model, args.data, args.baseline)
    study_dir = out / study_name
    spec = SweepSpec(
        storage=args.storage or journal_url(study_dir / "study.journal"),
        study_name=study_name,
        study_dir=str(study_dir),
        data=str(data),
        baseline=str(baseline),
        trials=args.trials,
        timeout_s=args.timeout,
        threads=threads,
        device=args.device,
        seed=args.seed,
        latency_runs=args.latency_runs,
        max_dice_drop=args.max_dice_drop,
        finetune_steps=tuple(args.finetune_steps),
        latency_backend=args.latency_backend,
        round_to=args.round_to,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = open_storage(spec.storage)
        prepare_study(storage, spec, model=model_name)
    except (StorageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"study {study_name!r} in {display_url(spec.storage)}: target {spec.trials} complete trials, "
        f"{args.workers} worker(s) x {threads} thread(s); latency on {spec.latency_backend} "
        f"({spec.runtime} artifacts), round_to {sorted({1, spec.round_to})}; "
        f"{time.perf_counter() - t0:.0f} s so far",
        file=sys.stderr,
    )
    study = optuna.load_study(study_name=study_name, storage=storage)
    speed = None if args.baseline else defaults.training_speed(baseline)
    print(time_estimate(study, spec, args.workers, speed), file=sys.stderr)
    run_workers(spec, args.workers)
    study = optuna.load_study(study_name=study_name, storage=storage)
    complete, failed = count_trials(study), count_trials(study, TrialState.FAIL)
    print(
        f"{complete} complete, {failed} failed trial(s); {time.perf_counter() - t0:.0f} s so far",
        file=sys.stderr,
    )
    if not args.no_report and complete:
        from studies.figures import write_figures
        from studies.report import write_report

        paths = write_report(study, study_dir, threads=threads, device=args.device)
        paths += write_figures(study, study_dir / "figures", threads=threads)
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
