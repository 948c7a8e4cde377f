"""The sweep's search space: one `compress.recipe.Recipe` per Optuna trial, and the sampler.

    from studies.search_space import make_sampler, suggest_recipe
    recipe = suggest_recipe(trial, levels=4)      # inside an objective

Define-by-run (a parameter exists only where it applies): ``prune`` none /
unstructured (ratio 0.30-0.95 in steps of 0.05, capped at the largest ratio that deletes no
layer of the baseline, `unstructured_limit`) / structured (ratio 0.10-0.80, steps of 0.05) /
pairs (one ratio per U-Net level in {0, 0.25, 0.5, 0.75}); ``round_to`` {1, R} for structured
and pairs, R from ``--round-to`` (default ``auto``: this CPU's SIMD width, `compress.simd`: 16
with AVX-512, 8 with AVX2); ``finetune_steps`` from ``--finetune-steps`` (default 0 / 50 / 150,
after pruning only); ``precision`` per runtime (`RUNTIME_PRECISIONS`): ORT fp32 / fp16 / int8
(bf16 is not searched there: ORT's CPU provider has no bf16 convolutions), OpenVINO fp32 /
fp16 / bf16 / int8, torch fp32 / fp16 / bf16, less fp16 on a CPU backend and bf16 on a CPU
without bf16 units (`studies.sweep_latency.searched_precisions`: computed in fp32 there);
``calibration`` minmax / entropy / percentile for
int8 (ORT's calibrators; NNCF uses its own min-max); ``threshold`` global / per-region.
Every trial (and the baseline, `studies.sweep_spec.BASELINE_RECIPE`) searches its post-processing
(small-component removal and region-presence rule) on val (``components="search"``,
`compress.components`): it costs no size or latency and only ever removes voxels where val Dice
gains, so it is not a searched axis.
Recovery after pruning (`compress.recovery`): ``regularize_steps`` 0 or the longest fine-tune
with ``regularize_strength`` in `REGULARIZE_STRENGTHS` for structured / pairs (group
regularisation before the cut, cached once per study and strength); ``prune_rounds`` in
`PRUNE_ROUNDS` and ``distill_weight`` in `DISTILL_WEIGHTS` when a pruned model is fine-tuned.

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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import optuna
import torch

from compress.recipe import Recipe

PRUNE_METHODS = ("none", "unstructured", "structured", "pairs")
UNSTRUCTURED_RATIOS = (0.3, 0.95, 0.05)  # low, high, step: fraction of conv weights zeroed
STRUCTURED_RATIOS = (0.1, 0.8, 0.05)  # fraction of channels removed
LEVEL_RATIOS = (0.0, 0.75, 0.25)  # per U-Net level, pairs only
ROUND_TO = (1, 8)
# Fine-tune steps after pruning. A 2D baseline trained on crops (the default's 64x64,
# `studies.defaults.BASELINE_CROP_2D`) is fine-tuned on crops of the same size: 150 steps of 16
# crops cost about half of what 75 steps of 16 whole 128x128 slices did (the earlier grid).
FINETUNE_STEPS = (0, 50, 150)
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
        components="search",
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
