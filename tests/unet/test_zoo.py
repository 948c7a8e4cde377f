"""Zoo contract: every name builds, maps (N, 4, *S) -> (N, 3, *S), and reference sizes hold."""

from __future__ import annotations

import pytest
import torch

from unet import zoo
from unet.config import UNetConfig
from unet.models import UNet, count_params

# name -> spatial input used for the shape contract (small but divisible by the model's divisor)
SHAPES = {
    "unet2d-tiny": (16, 24),
    "unet3d-tiny": (8, 16, 12),
    "unet2d-small": (32, 48),
    "unet3d-small": (16, 16, 24),
    "cs231n-2d": (24, 32),
    "cs231n-3d": (16, 16, 8),
    "unet3d-classic": (8, 8, 16),
    "unet2d-medium": (32, 48),
    "unet2d-original": (32, 16),
}


def test_every_zoo_name_has_a_shape_case() -> None:
    assert sorted(SHAPES) == zoo.names()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_contract(name: str) -> None:
    model = zoo.create(name).eval()
    spatial = SHAPES[name]
    assert len(spatial) == model.config.spatial_dims
    with torch.no_grad():
        y = model(torch.randn(2, 4, *spatial))
    assert y.shape == (2, 3, *spatial)


# (name, reference parameter count from the literature / issue, 5 % tolerance)
REFERENCE_PARAMS = [
    ("cs231n-2d", 0.43e6),
    ("cs231n-3d", 1.29e6),
    ("unet3d-classic", 19e6),
    ("unet2d-medium", 5.8e6),
    ("unet2d-original", 31e6),
]


@pytest.mark.parametrize(("name", "expected"), REFERENCE_PARAMS)
def test_reference_param_counts(name: str, expected: float) -> None:
    with torch.device("meta"):
        n = count_params(zoo.create(name))
    assert abs(n - expected) / expected < 0.05, f"{name}: {n} params vs ~{expected:.3g}"


def test_medium_is_about_23_mb_fp32() -> None:
    with torch.device("meta"):
        n = count_params(zoo.create("unet2d-medium"))
    assert 22e6 < 4 * n < 24.5e6


def test_2d_3d_twins_share_widths() -> None:
    a, b = zoo.config("cs231n-2d"), zoo.config("cs231n-3d")
    assert a.encoder_widths == b.encoder_widths and a.decoder_widths == b.decoder_widths
    assert (a.spatial_dims, b.spatial_dims) == (2, 3)
    assert a.norm == "group" and a.norm_groups == 9 and a.upsampling == "nearest"


def test_create_overrides_and_unknown_name() -> None:
    model = zoo.create("unet2d-tiny", norm="instance")
    assert model.config.norm == "instance"
    with pytest.raises(ValueError, match="unknown model 'nope'.*unet2d-small"):
        zoo.create("nope")
    assert zoo.names("unet3d*") == ["unet3d-classic", "unet3d-small", "unet3d-tiny"]


def test_macs_counts_transposed_convs_correctly() -> None:
    # one level pair: macs = encoder convs + transposed conv (k=2,s=2) + decoder convs + head
    cfg = UNetConfig(
        spatial_dims=2,
        encoder_widths=((2,), (4,)),
        decoder_widths=((2,),),
        up_widths=(3,),
        norm="none",
    )
    h = w = 8
    expected = (
        4 * 2 * 9 * h * w  # enc0
        + 2 * 4 * 9 * (h // 2) * (w // 2)  # enc1
        + 4 * 3 * 4 * (h // 2) * (w // 2)  # up: each input pixel feeds 2x2 outputs
        + (3 + 2) * 2 * 9 * h * w  # dec0
        + 2 * 3 * h * w  # head
    )
    assert zoo.macs(cfg, (h, w)) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
        ({"norm": "layer"}, "norm must be one of"),
        ({"upsampling": "pixelshuffle"}, "upsampling must be one of"),
        ({"decoder_widths": ()}, "decoder_widths needs 1 blocks"),
        ({"up_widths": ()}, "up_widths needs 1 entries"),
        ({"encoder_widths": ((4,), (0,))}, "width < 1"),
        ({"norm": "group", "norm_groups": 3}, "divisible by norm_groups=3"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    base = {
        "spatial_dims": 2,
        "encoder_widths": ((4,), (8,)),
        "decoder_widths": ((4,),),
        "up_widths": (4,),
    }
    with pytest.raises(ValueError, match=message):
        UNetConfig(**{**base, **kwargs})


def test_config_round_trip_and_unknown_field() -> None:
    cfg = zoo.config("cs231n-3d")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        UNetConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})


def test_explicit_widths_build_exact_layers() -> None:
    cfg = UNetConfig(
        spatial_dims=3,
        encoder_widths=((3, 5), (7, 6), (9,)),
        decoder_widths=((2, 4), (5,)),
        up_widths=(3, 8),
    )
    m = UNet(cfg)
    assert m.encoders[1].convs[0][0].out_channels == 7
    assert m.ups[1].in_channels == 9 and m.ups[1].out_channels == 8
    assert m.decoders[1].convs[0][0].in_channels == 8 + 6
    assert m.decoders[0].convs[0][0].in_channels == 3 + 5
    assert m.head.in_channels == 4


def test_spec_overrides_primitive_fields() -> None:
    assert zoo.parse_spec("unet3d-small") == ("unet3d-small", {})
    name, overrides = zoo.parse_spec("unet3d-small:upsampling=nearest,norm_groups=4")
    assert (name, overrides) == ("unet3d-small", {"upsampling": "nearest", "norm_groups": 4})
    cfg = zoo.config_from_spec("unet3d-small:upsampling=nearest")
    assert cfg == zoo.config("unet3d-small", upsampling="nearest", up_widths=())
    # nearest resize instead of transposed convs: no ConvTranspose left, same output shape
    model = UNet(cfg).eval()
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in model.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope:norm=batch", "unknown model 'nope'"),
        ("unet3d-small:colour=red", "'colour=red' is not FIELD=VALUE"),
        ("unet3d-small:upsampling", "'upsampling' is not FIELD=VALUE"),
        ("unet3d-small:norm_groups=x", "norm_groups needs an integer, got 'x'"),
        (
            "unet3d-small:upsampling=cubic",
            "model spec 'unet3d-small:upsampling=cubic': .*upsampling",
        ),
    ],
)
def test_bad_spec_names_the_spec_and_what_is_wrong(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        zoo.config_from_spec(spec)
