"""Optuna multi-objective search over compression recipes: val Dice vs size vs latency.

    python -m studies.prune_sweep                       # the embedded default, see below
    python -m studies.prune_sweep --data runs/phantom.h5 --baseline runs/unet2d-small.pt \\
        --trials 60 --workers 2 --out runs/sweep
    python -m studies.prune_sweep --storage postgresql://optuna:PW@db-host/optuna \\
        --study-name big-sweep --data ... --baseline ...          # on every machine: one study

Each trial samples a `compress.recipe.Recipe` (pruning method and ratio(s), fine-tune steps,
precision and int8 calibration, threshold mode), runs `compress.apply.compress_checkpoint` into
its own folder ``<out>/<study>/trials/<number>/`` (``model.onnx``, ``checkpoint.pt``,
``recipe.json``, ``metrics.json``) and returns three objectives, all on the **validation**
split: the lower end of the paired 95% CI of the mean-Dice change vs the baseline
(maximise; `studies.pareto.dice_objective`), deployable artifact size in bytes (minimise) and
latency at batch 1 in ms on the deployment target (minimise); a trial is feasible when it is
non-inferior on val (`studies.sweep_worker`). A new study first runs the warm-start recipes
(`studies.warm_start`). The test split is read only afterwards, by the report
(`studies.report`), for the Pareto models chosen on validation.

Latency objective: ``--latency-backend`` ``ort_cpu | ov_cpu | torch_cuda | ort_cuda`` (default:
the fastest CPU runtime installed, `compress.runners.fastest_cpu_backend`: ``ov_cpu`` when
OpenVINO and NNCF are installed, else ``ort_cpu``; a backend that cannot run here is one ``error:`` line
before any work). Every trial's artifact is built
for that backend's runtime (``Recipe.runtime``: ONNX for ORT, ONNX or NNCF's int8 IR for
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
Baseline: the reference for every ratio, the constraint and the report is the baseline itself
put through the identity recipe (`studies.sweep_spec.BASELINE_RECIPE`: dense fp32, thresholds
searched per region on val, like every trial's), written to ``<out>/<study>/baseline/``.

The search space and the sampler are `studies.search_space`'s; one trial and the worker loop
`studies.sweep_worker`'s (constraint, workers, resumption are described there); creating the
study and measuring the baseline `studies.sweep_setup`'s. This module is the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from compress.runners import LATENCY_BACKENDS
from studies import defaults
from studies.search_space import FINETUNE_STEPS
from studies.storage import StorageError, display_url, journal_url, open_storage
from studies.sweep_latency import resolve_latency_flags
from studies.sweep_setup import default_study_name, prepare_study, time_estimate
from studies.sweep_spec import SweepSpec
from studies.sweep_worker import count_trials, run_workers
from unet.stats import DEFAULT_MARGIN, DEFAULT_REGION_MARGIN


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
        default=DEFAULT_MARGIN,
        help="a trial is infeasible when the lower end of the paired 95%% CI of its val "
        "mean-Dice delta vs the baseline is below minus this (the test report's margin)",
    )
    p.add_argument(
        "--max-region-drop",
        type=float,
        default=DEFAULT_REGION_MARGIN,
        help="... or when that of any region's (WT, TC, ET) val Dice delta is below minus this",
    )
    p.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="do not queue the warm-start recipes (studies.warm_start) in a new study",
    )
    p.add_argument(
        "--latency-backend",
        choices=LATENCY_BACKENDS,
        default=None,
        help="deployment target of the latency objective; each trial's artifact is built for "
        "its runtime (default: the fastest CPU runtime installed: ov_cpu when OpenVINO and NNCF "
        "are, else ort_cpu)",
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
    for flag in ("max_dice_drop", "max_region_drop"):
        if not 0 < getattr(args, flag) <= 1:
            name = "--" + flag.replace("_", "-")
            parser.error(f"{name} must be in (0, 1], got {getattr(args, flag)}")
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
        max_region_drop=args.max_region_drop,
        warm_start=args.warm_start,
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
