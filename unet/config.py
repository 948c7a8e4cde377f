"""`UNetConfig`: a U-Net described by primitives only, with the width of every convolution.

Because every width is explicit, a pruned network is just another config: a checkpoint
stores ``config.to_dict()`` and the model is rebuilt with ``UNet(UNetConfig.from_dict(d))``.

Layout of a U-Net with ``L = len(encoder_widths)`` levels::

    level 0   enc[0] ─────────────── skip ──────────────► cat ─ dec[0] ─ head (1x1 conv)
    level 1     └ pool ─ enc[1] ──── skip ──────► cat ─ dec[1] ┘ (up[0])
    ...                                                 ...
    level L-1              └ pool ─ enc[L-1] (bottleneck) ┘ (up[L-2])

``encoder_widths[i]`` holds the output width of each conv of encoder block ``i``;
``decoder_widths[i]`` the widths of the decoder block at level ``i`` (``i < L - 1``), which sees
``concat(up(x), skip_i)``; ``up_widths[i]`` the output width of the transposed conv that
upsamples into level ``i`` (empty for ``nearest`` / ``linear`` upsampling, which keep channels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

NORMS = ("batch", "instance", "group", "none")
UPSAMPLINGS = ("transposed", "nearest", "linear")


def _as_widths(value: Any, name: str) -> tuple[tuple[int, ...], ...]:
    try:
        widths = tuple(tuple(int(w) for w in block) for block in value)
    except TypeError as exc:
        raise ValueError(
            f"UNetConfig.{name} must be a list of lists of ints, got {value!r}"
        ) from exc
    return widths


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of one U-Net; every field is a primitive (or nested tuples of ints)."""

    spatial_dims: int
    encoder_widths: tuple[tuple[int, ...], ...]
    decoder_widths: tuple[tuple[int, ...], ...]
    up_widths: tuple[int, ...] = ()
    in_channels: int = 4
    out_channels: int = 3
    norm: str = "batch"
    norm_groups: int = 8
    upsampling: str = "transposed"
    kernel_size: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "encoder_widths", _as_widths(self.encoder_widths, "encoder_widths")
        )
        object.__setattr__(
            self, "decoder_widths", _as_widths(self.decoder_widths, "decoder_widths")
        )
        object.__setattr__(self, "up_widths", tuple(int(w) for w in self.up_widths))
        self.validate()

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field if the config cannot describe a U-Net."""
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"UNetConfig.spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.norm not in NORMS:
            raise ValueError(f"UNetConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(
                f"UNetConfig.upsampling must be one of {UPSAMPLINGS}, got {self.upsampling!r}"
            )
        levels = len(self.encoder_widths)
        if levels < 1:
            raise ValueError("UNetConfig.encoder_widths needs at least one level")
        if len(self.decoder_widths) != levels - 1:
            raise ValueError(
                f"UNetConfig.decoder_widths needs {levels - 1} blocks for {levels} levels, "
                f"got {len(self.decoder_widths)}"
            )
        expected_up = levels - 1 if self.upsampling == "transposed" else 0
        if len(self.up_widths) != expected_up:
            raise ValueError(
                f"UNetConfig.up_widths needs {expected_up} entries for upsampling="
                f"{self.upsampling!r} with {levels} levels, got {len(self.up_widths)}"
            )
        for name in ("encoder_widths", "decoder_widths"):
            for i, block in enumerate(getattr(self, name)):
                if not block:
                    raise ValueError(f"UNetConfig.{name}[{i}] is empty: a block needs >= 1 conv")
                if any(w < 1 for w in block):
                    raise ValueError(f"UNetConfig.{name}[{i}] has a width < 1: {block}")
                if self.norm == "group" and any(w % self.norm_groups for w in block):
                    raise ValueError(
                        f"UNetConfig.{name}[{i}] = {block}: with norm='group' every width must be "
                        f"divisible by norm_groups={self.norm_groups}"
                    )
        if any(w < 1 for w in self.up_widths):
            raise ValueError(f"UNetConfig.up_widths has a width < 1: {self.up_widths}")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("UNetConfig.in_channels and out_channels must be >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"UNetConfig.kernel_size must be odd and >= 1, got {self.kernel_size}")

    # ------------------------------------------------------------ properties
    @property
    def levels(self) -> int:
        """Number of resolution levels (the bottleneck included)."""
        return len(self.encoder_widths)

    @property
    def divisor(self) -> int:
        """Spatial sizes must be divisible by this (one 2x pooling per level below the top)."""
        return 2 ** (self.levels - 1)

    # ---------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of primitives (lists, ints, strs): safe for JSON and ``weights_only``."""
        d = asdict(self)
        d["encoder_widths"] = [list(b) for b in self.encoder_widths]
        d["decoder_widths"] = [list(b) for b in self.decoder_widths]
        d["up_widths"] = list(self.up_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"UNetConfig: unknown field(s) {unknown}")
        return cls(**d)

    @classmethod
    def uniform(
        cls,
        spatial_dims: int,
        base: int,
        levels: int,
        convs_per_block: int = 2,
        double_inside: bool = False,
        **kwargs: Any,
    ) -> UNetConfig:
        """The usual U-Net: width ``base * 2**level``, ``convs_per_block`` convs per block.

        ``double_inside=True`` gives the 3DUnetCNN/cs231n pattern where encoder level ``i`` has
        convs ``[base*2**i/2 ... base*2**i]`` i.e. the width doubles *inside* the level
        (``[b/2, b], [b, 2b], ...``) and decoder level ``i`` takes the skip width.
        """
        upsampling = kwargs.get("upsampling", "transposed")
        if double_inside:
            enc = [
                tuple([base * 2**i // 2] * (convs_per_block - 1) + [base * 2**i])
                for i in range(levels)
            ]
        else:
            enc = [tuple([base * 2**i] * convs_per_block) for i in range(levels)]
        dec = [tuple([enc[i][-1]] * convs_per_block) for i in range(levels - 1)]
        if upsampling == "transposed":
            kwargs.setdefault("up_widths", tuple(enc[i][-1] for i in range(levels - 1)))
        return cls(
            spatial_dims=spatial_dims,
            encoder_widths=tuple(enc),
            decoder_widths=tuple(dec),
            **kwargs,
        )
