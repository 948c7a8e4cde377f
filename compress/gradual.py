"""Gradual pruning: reach a recipe's pruning target in several prune -> fine-tune rounds.

Round ``k`` of ``n`` prunes to ``k / n`` of the target (Torch-Pruning's ``linear_scheduler``,
the schedule of its ``iterative_steps``), measured against the **original** model, then
fine-tunes for its share of the budget (`split_steps`), so the last round ends exactly where a
one-shot cut would (up to rounding) and the total fine-tune budget is the recipe's::

    from compress.gradual import prune_gradually
    small = prune_gradually(model, recipe, lambda m, steps, k: finetune(m, data, steps))

* structured / pairs: each scope (the whole network, or one U-Net level) is cut so that its
  removed channels approach ``k / n`` x ratio x its original channels; the ratio asked of the
  current (already pruned) model is ``1 - (1 - target) * original / current``. Every round goes
  through `compress.prune_structured.prune_channels`, so widths stay legal (GroupNorm groups,
  ``round_to`` multiples, at least one unit per layer) and the last round's selection is the
  closest achievable to the requested ratio, as for one cut.
* unstructured: the global L1 threshold is re-applied at the cumulative amount; the zeros of
  earlier rounds are the smallest magnitudes, so they stay among the pruned weights (and the
  fine-tune callback keeps them zero).

Channel importance is re-measured after every round's fine-tune: that is what makes gradual
pruning differ from one cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch_pruning.pruner.algorithms.scheduler import linear_scheduler

from compress.pairs import level_convs
from compress.prune_structured import prunable_convs, prune_channels
from compress.prune_unstructured import prune_unstructured
from compress.recipe import Recipe
from unet.models import UNet

# finetune(model, steps, round index) -> the fine-tuned model
Finetune = Callable[[UNet, int, int], UNet]


def split_steps(total: int, rounds: int) -> list[int]:
    """Fine-tune steps per round: ``total`` split evenly, the remainder to the last rounds."""
    if rounds < 1 or total < 0:
        raise ValueError(f"split_steps: need rounds >= 1 and total >= 0, got {rounds}, {total}")
    base, extra = divmod(total, rounds)
    return [base + (1 if k >= rounds - extra else 0) for k in range(rounds)]


def schedule(target: float, rounds: int) -> list[float]:
    """Cumulative pruning targets after each round: ``target * k / rounds`` for k = 1..rounds."""
    if rounds < 1:
        raise ValueError(f"schedule: rounds must be >= 1, got {rounds}")
    steps = linear_scheduler(target, rounds)[1:]
    steps[-1] = target  # exactly the target, whatever the float arithmetic
    return steps


def scopes(model: UNet, recipe: Recipe) -> list[tuple[list[str], float]]:
    """The recipe's structured scopes: ``(conv names ranked together, final ratio)``."""
    if recipe.prune == "structured":
        return [(prunable_convs(model), recipe.ratio)]
    if recipe.prune == "pairs":
        levels = model.config.levels
        if len(recipe.level_ratios) != levels:
            raise ValueError(
                f"level_ratios needs one ratio per level: the model has {levels} levels, "
                f"got {len(recipe.level_ratios)} ratio(s) {list(recipe.level_ratios)}"
            )
        return [(level_convs(model.config, i), r) for i, r in enumerate(recipe.level_ratios)]
    raise ValueError(f"no channel scopes for prune={recipe.prune!r}")


def scope_channels(model: UNet, names: Sequence[str]) -> int:
    """Output channels of the named convolutions of ``model``."""
    modules = dict(model.named_modules())
    return sum(int(modules[n].out_channels) for n in names)


def relative_ratio(original: int, current: int, target: float) -> float:
    """The ratio of ``current`` channels to remove so that ``target`` of ``original`` are gone."""
    if current == original:
        return target
    return min(max(0.0, 1.0 - (1.0 - target) * original / current), 1.0 - 1e-9)


def prune_round(
    model: UNet,
    recipe: Recipe,
    original: Sequence[int],
    fraction: float,
) -> UNet:
    """Prune ``model`` to ``fraction`` (in (0, 1]) of the recipe's target (structured/pairs).

    ``original`` holds each scope's channel count in the unpruned model (`scope_channels`).
    Returns a new `UNet`.
    """
    targets = [
        (names, relative_ratio(c0, scope_channels(model, names), ratio * fraction))
        for (names, ratio), c0 in zip(scopes(model, recipe), original, strict=True)
    ]
    return prune_channels(model, targets, round_to=recipe.round_to)


def prune_gradually(model: UNet, recipe: Recipe, finetune: Finetune) -> UNet:
    """The recipe's pruning in ``recipe.prune_rounds`` rounds, ``finetune`` after each one.

    ``finetune(model, steps, round)`` gets this round's share of ``recipe.finetune_steps``
    (`split_steps`) and returns the fine-tuned model. With one round this is a one-shot
    prune followed by the whole fine-tune. ``model`` is not modified for structured/pairs
    (a new `UNet` is returned); unstructured pruning works in place, as `prune_unstructured`.
    """
    rounds = recipe.prune_rounds
    budget = split_steps(recipe.finetune_steps, rounds)
    if recipe.prune == "none":
        return finetune(model, recipe.finetune_steps, 0)
    original = (
        []
        if recipe.prune == "unstructured"
        else [scope_channels(model, names) for names, _ in scopes(model, recipe)]
    )
    for k, fraction in enumerate(schedule(1.0, rounds)):
        if recipe.prune == "unstructured":
            model = prune_unstructured(model, recipe.ratio * fraction)  # type: ignore[assignment]
        else:
            model = prune_round(model, recipe, original, fraction)
        model = finetune(model, budget[k], k)
    return model
