"""Encoder-decoder pair pruning: one structured ratio per U-Net level, or per conv block.

A level's *pair* is what its skip concatenation couples: encoder block ``i`` (whose output is
the skip) and decoder block ``i`` (which reads it); the bottleneck level ``L-1`` has no decoder.
The transposed conv that upsamples *out of* level ``i`` (``ups[i-1]``, computed from level-``i``
features) belongs to level ``i``; with nearest/linear upsampling there is none. All output
channels of a level's convs are ranked together (mean-normalised group L1 magnitude, as in
`compress.prune_structured`) and ``level_ratios[i]`` of them are removed::

    from compress.pairs import prune_pairs
    small = prune_pairs(model, [0.0, 0.25, 0.5, 0.75])   # 4 levels; level 0 untouched

A *conv pair* of the sensitivity analysis is the convs of one double-conv block
(``encoders.<i>`` or ``decoders.<i>``), pruned alone with `prune_block`.
"""

from __future__ import annotations

from collections.abc import Sequence

from compress.channel_selection import check_fraction
from compress.prune_structured import prune_channels
from unet.config import UNetConfig
from unet.models import UNet


def blocks(config: UNetConfig) -> list[str]:
    """Conv-block names, encoders first: ``encoders.0 ... encoders.<L-1>, decoders.0 ...``."""
    return [f"encoders.{i}" for i in range(config.levels)] + [
        f"decoders.{i}" for i in range(config.levels - 1)
    ]


def block_convs(config: UNetConfig, block: str) -> list[str]:
    """Conv module names of one block, e.g. ``encoders.1.convs.0.0`` and ``encoders.1.convs.1.0``."""
    if block not in blocks(config):
        raise ValueError(f"unknown block {block!r}; this UNet has {', '.join(blocks(config))}")
    kind, index = block.split(".")
    widths = (config.encoder_widths if kind == "encoders" else config.decoder_widths)[int(index)]
    return [f"{block}.convs.{j}.0" for j in range(len(widths))]


def level_convs(config: UNetConfig, level: int) -> list[str]:
    """Conv module names of one level: encoder block, decoder block, transposed conv out of it."""
    if not 0 <= level < config.levels:
        raise ValueError(f"level must be in [0, {config.levels}), got {level}")
    names = block_convs(config, f"encoders.{level}")
    if level < config.levels - 1:
        names += block_convs(config, f"decoders.{level}")
    if level > 0 and config.upsampling == "transposed":
        names.append(f"ups.{level - 1}")
    return names


def prune_pairs(model: UNet, level_ratios: Sequence[float], *, round_to: int | None = None) -> UNet:
    """Structured pruning with ``level_ratios[i]`` of level ``i``'s channels removed.

    ``len(level_ratios)`` must equal ``model.config.levels``; each ratio in [0, 1). Channels
    are ranked inside each level only; a level at ratio 0 keeps every width. Returns a new
    `UNet` (``model`` untouched); rounding and the one-unit floor as in `prune_structured`.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"pair pruning needs a unet.UNet, got {type(model).__name__}")
    ratios = list(level_ratios)
    levels = model.config.levels
    if len(ratios) != levels:
        raise ValueError(
            f"level_ratios needs one ratio per level: the model has {levels} levels, "
            f"got {len(ratios)} ratio(s) {ratios}"
        )
    ratios = [check_fraction(r, f"level_ratios[{i}]") for i, r in enumerate(ratios)]
    scopes = [(level_convs(model.config, i), r) for i, r in enumerate(ratios)]
    return prune_channels(model, scopes, round_to=round_to)


def prune_block(model: UNet, block: str, amount: float, *, round_to: int | None = None) -> UNet:
    """Remove ``amount`` of the output channels of one conv block's convs, ranked together."""
    if not isinstance(model, UNet):
        raise TypeError(f"pair pruning needs a unet.UNet, got {type(model).__name__}")
    amount = check_fraction(amount, "amount")
    return prune_channels(model, [(block_convs(model.config, block), amount)], round_to=round_to)
