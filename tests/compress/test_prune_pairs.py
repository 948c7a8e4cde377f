"""Encoder-decoder pair pruning: per-level ratios honoured, other levels untouched."""

from __future__ import annotations

import pytest
import torch

from compress.pairs import block_convs, blocks, level_convs, prune_block, prune_pairs
from unet import zoo
from unet.config import UNetConfig


def _level_widths(cfg: UNetConfig, level: int) -> list[int]:
    """Output widths of the convs of one level: encoder, decoder, transposed conv out of it."""
    widths = list(cfg.encoder_widths[level])
    if level < cfg.levels - 1:
        widths += cfg.decoder_widths[level]
    if level > 0 and cfg.upsampling == "transposed":
        widths.append(cfg.up_widths[level - 1])
    return widths


def _seeded(name: str, **overrides):
    torch.manual_seed(0)
    return zoo.create(name, **overrides).eval()


def test_level_and_block_names():
    cfg = zoo.config("unet2d-small")
    assert blocks(cfg) == [
        "encoders.0",
        "encoders.1",
        "encoders.2",
        "encoders.3",
        "decoders.0",
        "decoders.1",
        "decoders.2",
    ]
    assert block_convs(cfg, "decoders.1") == ["decoders.1.convs.0.0", "decoders.1.convs.1.0"]
    assert level_convs(cfg, 0) == [
        "encoders.0.convs.0.0",
        "encoders.0.convs.1.0",
        "decoders.0.convs.0.0",
        "decoders.0.convs.1.0",
    ]
    # the bottleneck: its block and the transposed conv out of it
    assert level_convs(cfg, 3) == ["encoders.3.convs.0.0", "encoders.3.convs.1.0", "ups.2"]
    nearest = zoo.config("cs231n-2d")
    assert level_convs(nearest, 3) == ["encoders.3.convs.0.0", "encoders.3.convs.1.0"]


@pytest.mark.parametrize(
    ("name", "level_ratios", "round_to", "tolerance"),
    [
        ("unet2d-small", (0.0, 0.5, 0.0, 0.75), None, 1),  # channels; 1 channel per unit
        ("unet2d-small", (0.25, 0.0, 0.5, 0.0), 8, 8),
        ("unet3d-small", (0.5, 0.0, 0.25, 0.5), None, 1),
        ("cs231n-2d", (0.0, 0.5, 0.0, 0.5), None, 9),  # GroupNorm(9): 9 channels per unit
        ("unet2d-tiny", (0.75, 0.0, 0.0), None, 1),
    ],
)
def test_per_level_ratios(name, level_ratios, round_to, tolerance):
    model = _seeded(name)
    pruned = prune_pairs(model, level_ratios, round_to=round_to)
    before, after = model.config, pruned.config
    for level, ratio in enumerate(level_ratios):
        w0, w1 = _level_widths(before, level), _level_widths(after, level)
        if ratio == 0:
            assert w1 == w0, f"level {level} changed"
            continue
        removed = sum(w0) - sum(w1)
        # the level's channels fall by the ratio, up to one rounding unit per layer
        assert abs(removed - ratio * sum(w0)) <= tolerance * len(w0) / 2 + 1, (level, w0, w1)
        assert removed > 0 and min(w1) >= 1
        if round_to:
            assert all(w % round_to == 0 for w in w1), w1
        if after.norm == "group":  # (no transposed convs in these GroupNorm nets)
            assert all(w % after.norm_groups == 0 for w in w1), w1
    x = torch.randn(1, 4, *([after.divisor * 2] * after.spatial_dims))
    with torch.no_grad():
        assert pruned(x).shape == (1, 3, *x.shape[2:])


def test_pair_channels_ranked_together():
    """Weak channels anywhere in the pair go first: the level's ratio is not split evenly.

    Half the filters of both decoder-1 convs are shrunk 1000x: at a 22% level ratio (32 of
    the 144 channels of level 1) exactly those 32 go; encoder 1 and ups.0 keep every channel.
    """
    model = _seeded("unet2d-small", norm="none")
    with torch.no_grad():
        for layer in model.decoders[1].convs:
            layer[0].weight[:16].mul_(1e-3)
            layer[0].bias[:16].mul_(1e-3)
    before = model.config
    after = prune_pairs(model, (0.0, 0.22, 0.0, 0.0)).config
    assert sum(_level_widths(before, 1)) == 144
    assert after.encoder_widths == before.encoder_widths
    assert after.up_widths == before.up_widths
    assert after.decoder_widths[1] == (16, 16)


def test_prune_block_touches_only_that_block():
    model = _seeded("unet2d-small")
    pruned = prune_block(model, "decoders.2", 0.5)
    before, after = model.config, pruned.config
    assert after.encoder_widths == before.encoder_widths
    assert after.up_widths == before.up_widths
    assert after.decoder_widths[:2] == before.decoder_widths[:2]
    assert sum(after.decoder_widths[2]) == sum(before.decoder_widths[2]) // 2


@pytest.mark.parametrize(
    ("level_ratios", "match"),
    [
        ((0.5, 0.5), r"level_ratios needs one ratio per level: the model has 3 levels, got 2"),
        ((0.1, 0.2, 0.3, 0.4), r"the model has 3 levels, got 4"),
        ((0.0, 1.0, 0.0), r"level_ratios\[1\] must be in \[0, 1\), got 1.0"),
        ((0.0, -0.5, 0.0), r"level_ratios\[1\] must be in \[0, 1\)"),
        ((0.0, "x", 0.0), r"level_ratios\[1\] must be a number"),
    ],
)
def test_bad_level_ratios(level_ratios, match):
    with pytest.raises(ValueError, match=match):
        prune_pairs(_seeded("unet2d-tiny"), level_ratios)


def test_bad_round_to_and_block():
    model = _seeded("unet2d-tiny")
    with pytest.raises(ValueError, match="round_to"):
        prune_pairs(model, (0.5, 0.5, 0.5), round_to=0)
    with pytest.raises(ValueError, match=r"unknown block 'decoders.2'"):
        prune_block(model, "decoders.2", 0.5)
    with pytest.raises(ValueError, match=r"amount must be in \[0, 1\)"):
        prune_block(model, "decoders.1", 1.0)
    with pytest.raises(ValueError, match=r"level must be in \[0, 3\)"):
        level_convs(model.config, 3)
