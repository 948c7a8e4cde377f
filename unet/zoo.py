"""Model zoo: a registry from names to `UNetConfig` factories, in the shape of timm's API.

    >>> from unet import zoo
    >>> zoo.names("unet3d*")                                   # doctest: +SKIP
    >>> model = zoo.create("unet2d-small", norm="instance")    # overrides go into the config
    >>> zoo.config_from_spec("unet3d-small:upsampling=nearest")  # the same, as one string

A *spec* ``NAME[:FIELD=VALUE,...]`` names a zoo model with overrides of its primitive
`UNetConfig` fields (``upsampling``, ``norm``, ``norm_groups``, ``kernel_size``, ...); the
benchmarks take specs wherever they take model names.

``python -m unet.zoo`` prints a table (name, dims, params, fp32 MB, GMACs at a stated input).
"""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from unet.config import UNetConfig
from unet.models import UNet, count_params


@dataclass(frozen=True)
class ZooEntry:
    """One registered architecture: its config factory and a one-line provenance note."""

    name: str
    build: Callable[[], UNetConfig]
    description: str
    table_input: tuple[int, ...]  # spatial size used for the MACs column of the table


_REGISTRY: dict[str, ZooEntry] = {}


def _register(name: str, description: str, table_input: tuple[int, ...]):
    def deco(fn: Callable[[], UNetConfig]) -> Callable[[], UNetConfig]:
        _REGISTRY[name] = ZooEntry(name, fn, description, table_input)
        return fn

    return deco


@_register(
    "unet2d-tiny", "test-sized 2D net: 3 levels, base 4, BatchNorm, transposed convs", (64, 64)
)
def _unet2d_tiny() -> UNetConfig:
    return UNetConfig.uniform(2, base=4, levels=3)


@_register(
    "unet3d-tiny", "test-sized 3D net: 3 levels, base 4, BatchNorm, transposed convs", (32, 32, 32)
)
def _unet3d_tiny() -> UNetConfig:
    return UNetConfig.uniform(3, base=4, levels=3)


@_register(
    "unet2d-small", "CPU default 2D: 4 levels, base 16, BatchNorm, transposed convs", (128, 128)
)
def _unet2d_small() -> UNetConfig:
    return UNetConfig.uniform(2, base=16, levels=4)


@_register(
    "unet3d-small", "CPU default 3D: 4 levels, base 8, BatchNorm, transposed convs", (64, 64, 64)
)
def _unet3d_small() -> UNetConfig:
    return UNetConfig.uniform(3, base=8, levels=4)


def _cs231n(dims: int) -> UNetConfig:
    return UNetConfig.uniform(
        dims,
        base=18,
        levels=4,
        double_inside=True,
        norm="group",
        norm_groups=9,
        upsampling="nearest",
    )


@_register(
    "cs231n-2d",
    "cs231n pruning study net, 2D: 4 levels, 18 maps, GroupNorm(9), nearest up + concat (~0.43 M)",
    (240, 240),
)
def _cs231n_2d() -> UNetConfig:
    return _cs231n(2)


@_register(
    "cs231n-3d",
    "cs231n pruning study net, 3D twin: 4 levels, 18 maps, GroupNorm(9), nearest up (~1.29 M)",
    (128, 128, 128),
)
def _cs231n_3d() -> UNetConfig:
    return _cs231n(3)


@_register(
    "unet3d-classic",
    "3DUnetCNN classic 3D U-Net: 4 levels, 32 base filters doubling inside a level, no norm, "
    "transposed convs keeping channels (~19 M)",
    (128, 128, 128),
)
def _unet3d_classic() -> UNetConfig:
    return UNetConfig.uniform(
        3, base=64, levels=4, double_inside=True, norm="none", up_widths=(128, 256, 512)
    )


@_register(
    "unet2d-medium",
    "~23 MB fp32 2D net: 5 levels, base 28, BatchNorm, transposed convs (~5.9 M)",
    (240, 240),
)
def _unet2d_medium() -> UNetConfig:
    return UNetConfig.uniform(2, base=28, levels=5)


@_register(
    "unet2d-original",
    "original U-Net (Ronneberger 2015), 64 -> 1024, BatchNorm, transposed convs (~31 M)",
    (240, 240),
)
def _unet2d_original() -> UNetConfig:
    return UNetConfig.uniform(2, base=64, levels=5)


def names(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def entry(name: str) -> ZooEntry:
    """The registry entry for ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def config(name: str, **overrides: Any) -> UNetConfig:
    """The `UNetConfig` of ``name`` with ``overrides`` applied (validated)."""
    return replace(entry(name).build(), **overrides)


# the UNetConfig fields a spec may override, and how their values are read
_SPEC_FIELDS: dict[str, Callable[[str], Any]] = {
    "upsampling": str,
    "norm": str,
    "norm_groups": int,
    "kernel_size": int,
    "in_channels": int,
    "out_channels": int,
}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"unet3d-small:upsampling=nearest"`` -> ``("unet3d-small", {"upsampling": "nearest"})``.

    ``ValueError`` naming the spec for an unknown model, field or unreadable value.
    """
    name, _, rest = spec.partition(":")
    entry(name)
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        field, eq, value = item.partition("=")
        if not eq or field not in _SPEC_FIELDS:
            raise ValueError(
                f"model spec {spec!r}: {item!r} is not FIELD=VALUE with FIELD in "
                f"{', '.join(_SPEC_FIELDS)}"
            )
        try:
            overrides[field] = _SPEC_FIELDS[field](value)
        except ValueError:
            raise ValueError(
                f"model spec {spec!r}: {field} needs an integer, got {value!r}"
            ) from None
    return name, overrides


def config_from_spec(spec: str) -> UNetConfig:
    """The validated `UNetConfig` of a spec (`parse_spec`)."""
    name, overrides = parse_spec(spec)
    if overrides.get("upsampling", "transposed") != "transposed":
        overrides["up_widths"] = ()  # resize upsampling has no transposed-conv widths
    try:
        return config(name, **overrides)
    except ValueError as exc:
        raise ValueError(f"model spec {spec!r}: {exc}") from None


def create(name: str, **overrides: Any) -> UNet:
    """Build a freshly initialised `UNet` by zoo name, e.g. ``create("cs231n-3d")``."""
    return UNet(config(name, **overrides))


def macs(config: UNetConfig, spatial: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (``FlopCounterMode`` FLOPs / 2).

    Runs on the ``meta`` device, so it is instant even for the largest 3D nets, and uses
    torch's flop counter, which gets transposed convs right (Torch-Pruning's over-counts them).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = UNet(config).eval()
        x = torch.zeros(1, config.in_channels, *spatial)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m unet.zoo",
        description="Print the model zoo: name, dims, params, fp32 size, GMACs at a stated input.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--pattern", default="*", help="shell-style filter on names")
    parser.add_argument(
        "--no-macs", action="store_true", help="skip the (slow for big 3D nets) MAC count"
    )
    args = parser.parse_args(argv)
    print(
        f"{'name':<16} {'dims':>4} {'params':>11} {'MB fp32':>8} {'GMACs':>8}  {'input':<12} description"
    )
    for n in names(args.pattern):
        e = entry(n)
        model = create(n)
        p = count_params(model)
        g = "-" if args.no_macs else f"{macs(model.config, e.table_input) / 1e9:.2f}"
        shape = "x".join(map(str, e.table_input))
        print(
            f"{n:<16} {model.config.spatial_dims:>4} {p:>11,} {p * 4 / 1e6:>8.2f} {g:>8}  {shape:<12} {e.description}"
        )


if __name__ == "__main__":
    main()
