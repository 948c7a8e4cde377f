"""Setting a sweep up: create or load the study, measure the baseline once, estimate the time.

    from studies.sweep_setup import prepare_study, time_estimate
    study = prepare_study(open_storage(spec.storage), spec, model="unet2d-small")
    print(time_estimate(study, spec, workers=1, train_samples_per_s=16.0))

A stored study made with another data file, baseline or search grid is refused.
"""

from __future__ import annotations

import hashlib
import sys
import time
import warnings
from pathlib import Path

import optuna

from compress.components import SEARCHED
from compress.recipe import Recipe
from studies.pareto import DIRECTIONS, OBJECTIVES
from studies.search_space import ROUND_TO, unstructured_limit
from studies.storage import fail_dead_trials
from studies.sweep_latency import searched_precisions
from studies.sweep_spec import SweepSpec
from studies.sweep_worker import count_trials
from studies.warm_start import enqueue_warm_start, warm_start_params


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

    A stored study made with another data file or baseline is refused (``ValueError``). A new
    study queues its warm-start trials (`studies.warm_start`) unless ``spec.warm_start`` is off.
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
        "max_region_drop": spec.max_region_drop,
        "finetune_steps": list(spec.finetune_steps),
        "objectives": list(OBJECTIVES),
        "latency_backend": spec.latency_backend,
        "round_to_choices": sorted({1, spec.round_to}),
        "precisions": list(searched_precisions(spec.latency_backend)),
        "postprocessing": list(SEARCHED),
    }
    stored = study.user_attrs.get("sweep")
    if stored is not None:
        old_defaults = {
            "latency_backend": "ort_cpu",
            "round_to_choices": list(ROUND_TO),
            "max_region_drop": None,  # studies before the region constraint had none
            "postprocessing": ["min_component"],  # before the region-presence rule
        }
        if "baseline_recipe" in stored:  # fields added since take their defaults
            stored = {
                **stored,
                "baseline_recipe": Recipe.from_dict(stored["baseline_recipe"]).to_dict(),
            }
        for key, what in (
            ("data_fingerprint", "data"),
            ("baseline_sha256", "baseline"),
            ("baseline_recipe", "baseline recipe"),
            ("finetune_steps", "finetune_steps"),
            ("latency_backend", "latency_backend"),
            ("round_to_choices", "round_to_choices"),
            ("max_dice_drop", "max_dice_drop"),
            ("max_region_drop", "max_region_drop"),
            ("objectives", "objectives"),
            ("postprocessing", "post-processing"),
        ):
            was = stored.get(key, old_defaults.get(key))
            if was != info[key]:
                values = "" if isinstance(was, dict) else f" ({was}, now {info[key]})"
                raise ValueError(
                    f"study {spec.study_name!r} in this storage was run with another {what}"
                    f"{values}; pick another --study-name or --storage"
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
        if spec.warm_start:
            enqueue_warm_start(
                study,
                warm_start_params(
                    spec.finetune_steps, info["round_to_choices"], info["precisions"]
                ),
            )
    if "baseline_metrics" not in study.user_attrs:
        if progress:
            print(
                "measuring the baseline (thresholds and post-processing searched on val) ...",
                file=sys.stderr,
            )
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
