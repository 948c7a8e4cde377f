"""One `UNet` for 2D and 3D, built from a `UNetConfig` (see `unet.config`).

Blocks are ``conv -> norm -> ReLU`` repeated; encoder levels are joined by 2x max-pooling,
decoder levels upsample 2x (transposed conv, nearest or (bi/tri)linear interpolation) and
concatenate the skip connection. The head is a 1x1 conv giving one logit per region
(WT, TC, ET). Layers are picked by ``spatial_dims`` through small factories, so 2D and 3D
share one code path.

Module names are stable and meaningful; compression code relies on them::

    encoders.<i>.convs.<j>   decoders.<i>.convs.<j>   ups.<i>   head
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet.config import UNetConfig

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BATCH = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def make_norm(kind: str, spatial_dims: int, channels: int, groups: int) -> nn.Module:
    """Normalisation layer by name; ``none`` gives ``nn.Identity``.

    InstanceNorm is affine without running statistics (running stats are not sliced by
    structural pruning, and per-image statistics are what instance norm means anyway).
    """
    if kind == "batch":
        return _BATCH[spatial_dims](channels)
    if kind == "instance":
        return _INSTANCE[spatial_dims](channels, affine=True, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ConvBlock(nn.Module):
    """``len(widths)`` times ``conv(k) -> norm -> ReLU``; conv ``j`` outputs ``widths[j]``."""

    def __init__(self, cfg: UNetConfig, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers = []
        c = in_channels
        for w in widths:
            layers.append(
                nn.Sequential(
                    _CONV[cfg.spatial_dims](
                        c, w, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=cfg.norm == "none"
                    ),
                    make_norm(cfg.norm, cfg.spatial_dims, w, cfg.norm_groups),
                    nn.ReLU(inplace=True),
                )
            )
            c = w
        self.convs = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.convs:
            x = layer(x)
        return x


class UNet(nn.Module):
    """U-Net for ``(N, in_channels, *spatial)`` inputs giving ``(N, out_channels, *spatial)`` logits.

    Spatial sizes must be divisible by ``config.divisor``. Example::

        from unet.zoo import create
        model = create("unet2d-small")
        logits = model(torch.randn(1, 4, 128, 128))   # (1, 3, 128, 128)
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.encoders = nn.ModuleList()
        c = cfg.in_channels
        for widths in cfg.encoder_widths:
            self.encoders.append(ConvBlock(cfg, c, widths))
            c = widths[-1]
        self.pool = _POOL[cfg.spatial_dims](2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList([nn.Identity() for _ in cfg.decoder_widths])
        below = cfg.encoder_widths[-1][-1]
        ups: list[nn.Module] = []
        for i in reversed(range(cfg.levels - 1)):
            if cfg.upsampling == "transposed":
                ups.append(_CONV_T[cfg.spatial_dims](below, cfg.up_widths[i], 2, stride=2))
                up_c = cfg.up_widths[i]
            else:
                ups.append(nn.Identity())
                up_c = below
            self.decoders[i] = ConvBlock(
                cfg, up_c + cfg.encoder_widths[i][-1], cfg.decoder_widths[i]
            )
            below = cfg.decoder_widths[i][-1]
        self.ups = nn.ModuleList(list(reversed(ups)))
        self.head = _CONV[cfg.spatial_dims](below, cfg.out_channels, 1)

    def _upsample(self, i: int, x: torch.Tensor) -> torch.Tensor:
        mode = self.config.upsampling
        if mode == "transposed":
            return self.ups[i](x)
        if mode == "nearest":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        interp = "bilinear" if self.config.spatial_dims == 2 else "trilinear"
        return F.interpolate(x, scale_factor=2.0, mode=interp, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = self.pool(x)
            x = enc(x)
            skips.append(x)
        for i in reversed(range(self.config.levels - 1)):
            x = self._upsample(i, x)
            x = self.decoders[i](torch.cat([x, skips[i]], dim=1))
        return self.head(x)


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them, trainable or not)."""
    return sum(p.numel() for p in model.parameters())
