"""Gradual pruning: the schedule, the fine-tune budget split, the final ratio and legal widths."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from compress.gradual import prune_gradually, schedule, split_steps
from compress.pairs import level_convs
from compress.prune import conv_sparsity, prune_pairs, prune_structured, pruning_summary
from compress.recipe import Recipe
from unet import zoo
from unet.models import UNet


@pytest.mark.parametrize(
    ("total", "rounds", "expected"),
    [(200, 3, [66, 67, 67]), (10, 1, [10]), (0, 2, [0, 0]), (3, 4, [0, 1, 1, 1])],
)
def test_split_steps_spends_the_whole_budget(total: int, rounds: int, expected: list) -> None:
    assert split_steps(total, rounds) == expected
    assert sum(expected) == total


def test_schedule_is_linear_and_ends_on_the_target() -> None:
    assert schedule(0.5, 4) == pytest.approx([0.125, 0.25, 0.375, 0.5])
    assert schedule(0.35, 3)[-1] == 0.35
    with pytest.raises(ValueError, match="rounds"):
        schedule(0.5, 0)


class _Tune:
    """A fake fine-tune: records (steps, round) and rescales every output channel at random,
    so that the next round ranks channels differently (as after real fine-tuning)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, model: UNet, steps: int, k: int) -> UNet:
        self.calls.append((steps, k))
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.modules.conv._ConvNd):
                    dim = 1 if m.transposed else 0
                    shape = [1] * m.weight.ndim
                    shape[dim] = m.weight.shape[dim]
                    m.weight.mul_(torch.rand(shape, generator=g) + 0.5)
        return model


def _legal(model: UNet, round_to: int, original: UNet) -> None:
    cfg, before = model.config, original.config
    widths = [w for block in cfg.encoder_widths + cfg.decoder_widths for w in block]
    old = [w for block in before.encoder_widths + before.decoder_widths for w in block]
    for w, w0 in zip(widths, old, strict=True):
        assert 1 <= w <= w0
        if cfg.norm == "group":
            assert w % cfg.norm_groups == 0
        if w != w0:  # a pruned width is a multiple of round_to (and of the group count)
            assert w % round_to == 0


@pytest.mark.parametrize(
    ("name", "overrides", "ratio", "round_to", "rounds"),
    [
        ("unet2d-small", {}, 0.5, 8, 3),
        ("unet2d-small", {"norm": "group", "norm_groups": 4}, 0.5, 8, 3),
        ("cs231n-2d", {}, 0.5, 1, 4),  # GroupNorm(9)
        ("unet2d-tiny", {}, 0.3, 1, 2),
    ],
)
def test_structured_gradual_reaches_the_ratio_with_legal_widths(
    name: str, overrides: dict[str, Any], ratio: float, round_to: int, rounds: int
) -> None:
    model = zoo.create(name, **overrides)
    recipe = Recipe(
        prune="structured", ratio=ratio, round_to=round_to, finetune_steps=10, prune_rounds=rounds
    )
    tune = _Tune()
    pruned = prune_gradually(model, recipe, tune)
    assert [k for _, k in tune.calls] == list(range(rounds))
    assert sum(s for s, _ in tune.calls) == 10
    _legal(pruned, round_to, model)
    achieved = pruning_summary(model, pruned)["channel_ratio_removed"]
    one_shot = pruning_summary(model, prune_structured(model, ratio, round_to=round_to))
    # as close to the request as one cut gets (rounding granularity: one multiple per layer)
    assert achieved == pytest.approx(one_shot["channel_ratio_removed"], abs=0.02)
    assert achieved == pytest.approx(ratio, abs=0.02)


def test_one_round_is_the_one_shot_cut() -> None:
    model = zoo.create("unet2d-small")
    recipe = Recipe(prune="structured", ratio=0.4, round_to=8)
    expected = prune_structured(model, 0.4, round_to=8).config
    assert prune_gradually(model, recipe, lambda m, steps, k: m).config == expected


def test_pairs_gradual_reaches_each_level_ratio() -> None:
    model = zoo.create("unet2d-small")
    ratios = (0.0, 0.25, 0.5, 0.75)
    recipe = Recipe(prune="pairs", level_ratios=ratios, round_to=8, prune_rounds=3)
    pruned = prune_gradually(model, recipe, _Tune())
    one_shot = prune_pairs(model, ratios, round_to=8)
    _legal(pruned, 8, model)
    modules = [dict(m.named_modules()) for m in (model, pruned, one_shot)]
    for level, r in enumerate(ratios):
        names = level_convs(model.config, level)
        c0, c1, c_one = (sum(m[n].out_channels for n in names) for m in modules)
        assert 1 - c1 / c0 == pytest.approx(r, abs=0.1)
        assert abs(c1 - c_one) <= 8  # one round_to multiple of the one-shot cut


def test_unstructured_gradual_keeps_earlier_zeros_and_ends_at_the_amount() -> None:
    model = zoo.create("unet2d-tiny")
    seen: list[float] = []

    def tune(m: UNet, steps: int, k: int) -> UNet:
        seen.append(conv_sparsity(m))
        return m

    pruned = prune_gradually(model, Recipe(prune="unstructured", ratio=0.6, prune_rounds=3), tune)
    assert seen == pytest.approx([0.2, 0.4, 0.6], abs=0.005)
    assert conv_sparsity(pruned) == pytest.approx(0.6, abs=0.005)


def test_pairs_with_the_wrong_number_of_levels_is_refused() -> None:
    model = zoo.create("unet2d-tiny")  # 3 levels
    recipe = Recipe(prune="pairs", level_ratios=(0.5, 0.5), prune_rounds=2)
    with pytest.raises(ValueError, match="one ratio per level"):
        prune_gradually(model, recipe, _Tune())
