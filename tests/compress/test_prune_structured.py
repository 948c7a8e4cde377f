"""Structured global pruning on every zoo model: forward, shapes, params, fresh-process reload.

Every zoo architecture is pruned at full size (the graph is traced at the smallest valid input,
so even unet2d-original takes well under a second); forwards run at a tiny input. Variants that
the zoo does not hold (InstanceNorm, linear upsampling, no norm, GroupNorm with transposed convs)
are added as overrides of the tiny nets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compress.prune_structured import (
    channel_count,
    prunable_convs,
    prune_channels,
    prune_structured,
    pruning_summary,
    removal_plan,
)
from unet import save_checkpoint, zoo
from unet.models import UNet, count_params

RATIOS = (0.25, 0.5, 0.75)

# The wide zoo nets (6-31 M params) are pruned at full size too, but take seconds each on two
# busy cores: they run as `slow` (still in CI), in their own fixture.
WIDE = ("unet2d-medium", "unet2d-original", "unet3d-classic")

# (case id, zoo name, config overrides, round_to)
CASES: list[tuple[str, str, dict[str, Any], int | None]] = [
    *((name, name, {}, None) for name in zoo.names()),
    ("unet2d-tiny-instance", "unet2d-tiny", {"norm": "instance"}, None),
    (
        "unet3d-tiny-instance-linear",
        "unet3d-tiny",
        {"norm": "instance", "upsampling": "linear", "up_widths": ()},
        None,
    ),
    (
        "unet2d-tiny-none-nearest",
        "unet2d-tiny",
        {"norm": "none", "upsampling": "nearest", "up_widths": ()},
        None,
    ),
    ("unet2d-small-group4-transposed", "unet2d-small", {"norm": "group", "norm_groups": 4}, None),
    ("unet2d-small-round8", "unet2d-small", {}, 8),
    ("unet3d-small-round8", "unet3d-small", {}, 8),
    ("cs231n-2d-round8", "cs231n-2d", {}, 8),
]
TABLE = [
    pytest.param(*case, id=case[0], marks=[pytest.mark.slow] if case[0] in WIDE else [])
    for case in CASES
]
CASE_ARGS = ("case_id", "name", "overrides", "round_to")


def _widths(cfg) -> list[int]:
    return [w for block in (*cfg.encoder_widths, *cfg.decoder_widths) for w in block] + list(
        cfg.up_widths
    )


def _randomise_norms(model: nn.Module, seed: int) -> None:
    """Non-trivial norm parameters and running stats, so slicing mistakes show up."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm) and m.weight is not None:
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    from unet import load_checkpoint
    torch.set_num_threads(int(sys.argv[2]))  # the parent's count: same reduction order, same bits
    results = {}
    for case in sorted(Path(sys.argv[1]).iterdir()):
        model, meta = load_checkpoint(case / "model.pt")
        x = torch.from_numpy(np.load(case / "input.npy"))
        expected = np.load(case / "expected.npy")
        with torch.no_grad():
            y = model(x).numpy()
        results[case.name] = {
            "config": model.config.to_dict(),
            "max_abs_diff": float(np.abs(y - expected).max()),
            "identical": bool(np.array_equal(y, expected)),
            "has_tp_state": any("torch_pruning" in str(type(m)) for m in model.modules()),
        }
    print(json.dumps(results))
    """
)


def _prune_and_reload(cases: list[tuple], root: Path) -> dict[str, Any]:
    """Prune each case at every ratio, save, and reload all of them in ONE fresh process."""
    out: dict[str, Any] = {}
    for case_id, name, overrides, round_to in cases:
        torch.manual_seed(0)
        model = zoo.create(name, **overrides).eval()
        _randomise_norms(model, seed=1)
        cfg = model.config
        side = cfg.divisor * (2 if cfg.norm in ("instance", "group") else 1)  # smallest valid
        x = torch.randn(1, cfg.in_channels, *([side] * cfg.spatial_dims))
        for ratio in RATIOS:
            pruned = prune_structured(model, ratio, round_to=round_to).eval()
            with torch.no_grad():
                y = pruned(x)
            key = f"{case_id}@{ratio}"
            case_dir = root / key
            case_dir.mkdir(parents=True)
            save_checkpoint(case_dir / "model.pt", pruned, {"recipe": {"ratio": ratio}})
            np.save(case_dir / "input.npy", x.numpy())
            np.save(case_dir / "expected.npy", y.numpy())
            out[key] = {
                "before_config": cfg,
                "after_config": pruned.config,
                "summary": pruning_summary(model, pruned),
                "out_shape": tuple(y.shape),
                "in_shape": tuple(x.shape),
                "finite": bool(torch.isfinite(y).all()),
            }
    argv = [sys.executable, "-c", _CHILD, str(root), str(torch.get_num_threads())]
    child = subprocess.run(argv, capture_output=True, text=True, check=True)
    for key, value in json.loads(child.stdout).items():
        out[key]["reloaded"] = value
    return out


@pytest.fixture(scope="module")
def pruned_fast(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cases = [c for c in CASES if c[0] not in WIDE]
    return _prune_and_reload(cases, tmp_path_factory.mktemp("pruned_fast"))


@pytest.fixture(scope="module")
def pruned_wide(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cases = [c for c in CASES if c[0] in WIDE]
    return _prune_and_reload(cases, tmp_path_factory.mktemp("pruned_wide"))


@pytest.fixture
def pruned(request: pytest.FixtureRequest, case_id: str) -> dict[str, Any]:
    """Results of ``case_id`` at every ratio, keyed by ratio."""
    table = request.getfixturevalue("pruned_wide" if case_id in WIDE else "pruned_fast")
    return {ratio: table[f"{case_id}@{ratio}"] for ratio in RATIOS}


@pytest.mark.parametrize(CASE_ARGS, TABLE)
def test_pruned_model_runs_and_shrinks(pruned, case_id, name, overrides, round_to):
    kept = []
    for ratio in RATIOS:
        r = pruned[ratio]
        s = r["summary"]
        assert r["finite"]
        assert r["out_shape"] == (r["in_shape"][0], 3, *r["in_shape"][2:])
        # no layer deleted, head untouched
        assert min(_widths(r["after_config"])) >= 1
        assert s["channels_after"] < s["channels_before"], f"nothing pruned at {ratio}"
        # conv params are products of two widths: they fall faster than the channels
        assert s["param_ratio_kept"] < 1.0 - s["channel_ratio_removed"]
        kept.append(s["params_after"])
        if round_to is None:
            # the closest achievable ratio to the request (GroupNorm: 9 or 4 channels a unit)
            assert s["channel_ratio_removed"] == pytest.approx(ratio, abs=0.02)
    if round_to is None:
        assert kept == sorted(kept, reverse=True) and len(set(kept)) == len(kept), kept
    else:  # rounding may saturate (cs231n + round_to=8: only the 144-wide conv can move)
        assert kept == sorted(kept, reverse=True), kept


@pytest.mark.parametrize(CASE_ARGS, TABLE)
def test_fresh_process_reload_is_identical(pruned, case_id, name, overrides, round_to):
    for ratio in RATIOS:
        r = pruned[ratio]
        child = r["reloaded"]
        assert child["config"] == r["after_config"].to_dict()
        assert not child["has_tp_state"]
        assert child["identical"], f"max abs diff {child['max_abs_diff']}"


@pytest.mark.parametrize(CASE_ARGS, TABLE)
def test_widths_respect_groups_and_round_to(pruned, case_id, name, overrides, round_to):
    for ratio in RATIOS:
        r = pruned[ratio]
        before, after = r["before_config"], r["after_config"]
        conv_multiple = np.lcm(round_to or 1, after.norm_groups if after.norm == "group" else 1)
        multiples = [conv_multiple] * (len(_widths(before)) - len(before.up_widths))
        multiples += [round_to or 1] * len(before.up_widths)  # transposed convs: no norm
        assert after.norm_groups == before.norm_groups
        for w0, w1, m in zip(_widths(before), _widths(after), multiples, strict=True):
            assert w1 <= w0
            # a pruned width is a multiple (a layer narrower than one multiple is left alone)
            assert w1 == w0 or w1 % m == 0, (w0, w1, m)
        if after.norm == "group":  # GN convs really shrank (the Torch-Pruning trap)
            gn_before = [w for b in (*before.encoder_widths, *before.decoder_widths) for w in b]
            gn_after = [w for b in (*after.encoder_widths, *after.decoder_widths) for w in b]
            assert sum(a < b for a, b in zip(gn_after, gn_before, strict=True)) >= 1


def test_groupnorm_widths_fall_and_stay_divisible():
    torch.manual_seed(0)
    model = zoo.create("cs231n-2d")
    before = channel_count(model)
    for ratio, most in ((0.25, 0.8), (0.5, 0.55), (0.75, 0.3)):
        cfg = prune_structured(model, ratio).config
        widths = [w for b in (*cfg.encoder_widths, *cfg.decoder_widths) for w in b]
        assert all(w % 9 == 0 and w >= 9 for w in widths), widths
        assert sum(widths) <= most * before, (ratio, widths)


def _mask_removed(model: UNet, plan: dict[str, list[int]]) -> UNet:
    """Zero (conv, norm) parameters of the planned channels: the output of each is then 0."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, idxs in plan.items():
            conv = modules[name]
            if isinstance(conv, nn.modules.conv._ConvTransposeNd):
                conv.weight[:, idxs] = 0
            else:
                conv.weight[idxs] = 0
            if conv.bias is not None:
                conv.bias[idxs] = 0
            norm = modules.get(name[:-1] + "1")  # encoders.i.convs.j.0 -> .1
            if norm is not None and getattr(norm, "weight", None) is not None:
                norm.weight[idxs] = 0
                norm.bias[idxs] = 0
    return model


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("unet2d-tiny", {}),
        ("unet3d-tiny", {"norm": "instance", "upsampling": "linear", "up_widths": ()}),
        ("unet2d-small", {"norm": "none", "upsampling": "nearest", "up_widths": ()}),
    ],
    ids=["batch-transposed-2d", "instance-linear-3d", "none-nearest-2d"],
)
def test_pruned_equals_original_with_channels_zeroed(name, overrides):
    """Hard pruning = the unpruned net with the removed channels' outputs forced to zero.

    True for per-channel norms (batch, instance, none); GroupNorm statistics mix channels.
    """
    torch.manual_seed(0)
    model = zoo.create(name, **overrides).eval()
    _randomise_norms(model, seed=2)
    scopes = [(prunable_convs(model), 0.5)]
    plan = removal_plan(model, scopes)
    pruned = prune_structured(model, 0.5).eval()
    assert sum(map(len, plan.values())) == channel_count(model) - channel_count(pruned)
    masked = _mask_removed(zoo.create(name, **overrides).eval(), plan)
    masked.load_state_dict(_mask_removed(model, plan).state_dict())
    x = torch.randn(2, 4, *([2 * model.config.divisor] * model.config.spatial_dims))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-4)


def test_input_model_untouched_and_mode_kept():
    torch.manual_seed(0)
    model = zoo.create("unet2d-tiny").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_structured(model, 0.5)
    assert pruned is not model and type(pruned) is UNet and pruned.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert count_params(pruned) < count_params(model)


def test_ratio_zero_is_identity():
    torch.manual_seed(0)
    model = zoo.create("unet2d-small", norm="group", norm_groups=4).eval()
    same = prune_structured(model, 0.0, round_to=8).eval()
    assert same.config == model.config
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


def test_high_ratio_saturates_instead_of_deleting_layers():
    model = zoo.create("unet2d-tiny")
    cfg = prune_structured(model, 0.99).config
    assert set(_widths(cfg)) == {1}
    cfg = prune_structured(model, 0.99, round_to=2).config
    assert set(_widths(cfg)) == {2}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ratio": 1.0}, ValueError, r"ratio must be in \[0, 1\), got 1.0"),
        ({"ratio": -0.1}, ValueError, r"ratio must be in \[0, 1\)"),
        ({"ratio": "half"}, ValueError, r"ratio must be a number"),
        ({"ratio": 0.5, "round_to": 0}, ValueError, r"round_to must be None or an integer >= 1"),
        ({"ratio": 0.5, "round_to": 2.5}, ValueError, r"round_to"),
        ({"ratio": 0.5, "round_to": True}, ValueError, r"round_to"),
        ({"ratio": 0.5, "example_shape": (1, 4, 6, 6)}, ValueError, r"example_shape"),
        ({"ratio": 0.5, "example_shape": (1, 3, 8, 8)}, ValueError, r"example_shape"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    model = zoo.create("unet2d-tiny")
    with pytest.raises(error, match=match):
        prune_structured(model, **kwargs)


def test_not_a_unet():
    with pytest.raises(TypeError, match="unet.UNet"):
        prune_structured(nn.Sequential(nn.Conv2d(4, 3, 3)), 0.5)


def test_bad_scopes():
    model = zoo.create("unet2d-tiny")
    with pytest.raises(ValueError, match=r"scope 0: \['head'\] are not prunable"):
        prune_channels(model, [(["head"], 0.5)])
    with pytest.raises(ValueError, match=r"scope 1: \['ups.0'\] already belong to another"):
        prune_channels(model, [(["ups.0"], 0.5), (["ups.0", "ups.1"], 0.5)])
    with pytest.raises(ValueError, match=r"ratio of scope 0 must be in \[0, 1\)"):
        prune_channels(model, [(["ups.0"], 1.0)])
