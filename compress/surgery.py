"""Turn a `UNet` whose layers were resized in place (structured pruning) back into a plain one.

Torch-Pruning shrinks tensors inside the modules but leaves ``model.config`` stale. Here the
`UNetConfig` is rebuilt from the actual tensor shapes (encoder, decoder and up widths) and a
fresh `UNet` of that config is loaded with the weights (strict), so the result is just another
zoo-style model: ``save_checkpoint`` -> ``unet.load_checkpoint`` rebuilds it in any process
with no Torch-Pruning state::

    model = rebuild(pruned_in_place)      # new UNet, config matches the shapes
"""

from __future__ import annotations

import dataclasses

from unet.config import UNetConfig
from unet.models import UNet


def config_from_shapes(model: UNet) -> UNetConfig:
    """The `UNetConfig` that describes ``model``'s current tensor shapes."""
    if not isinstance(model, UNet):
        raise TypeError(f"expected a unet.UNet, got {type(model).__name__}")
    cfg = model.config

    def widths(block) -> tuple[int, ...]:
        return tuple(int(layer[0].out_channels) for layer in block.convs)

    ups = tuple(int(up.out_channels) for up in model.ups) if cfg.upsampling == "transposed" else ()
    return dataclasses.replace(
        cfg,
        encoder_widths=tuple(widths(b) for b in model.encoders),
        decoder_widths=tuple(widths(b) for b in model.decoders),
        up_widths=ups,
    )


def rebuild(model: UNet) -> UNet:
    """A new `UNet` built from ``model``'s shapes, holding copies of its weights and buffers.

    ``RuntimeError`` (from ``load_state_dict``) if the shapes do not form a consistent U-Net.
    The new model is in the same train/eval mode as ``model``.
    """
    new = UNet(config_from_shapes(model)).to(next(model.parameters()).device)
    new.load_state_dict(model.state_dict(), strict=True)
    return new.train(model.training)
