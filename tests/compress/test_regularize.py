"""Group regularisation before structured pruning: it shrinks every prunable layer (transposed
convs included) and is computed once per setting (cache hit, new entry on a changed setting)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import compress.regularize as reg
from unet import load_checkpoint, save_checkpoint, zoo
from unet.train_loop import fit


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(
        tmp_path_factory.mktemp("reg") / "base.pt", zoo.create("unet2d-tiny"), {"threshold": 0.5}
    )


def test_transposed_convs_are_shown_in_conv_layout_and_restored() -> None:
    up = nn.ConvTranspose2d(4, 6, 2, stride=2)
    up.weight.grad = torch.zeros_like(up.weight)
    with reg._conv_layout([up]):
        assert up.weight.shape == (6, 4, 2, 2) and not up.transposed
        up.weight.grad.data[[1]] += 1.0  # what Torch-Pruning does to output channel 1
    assert up.weight.shape == (4, 6, 2, 2) and up.transposed
    assert up.weight.grad[:, 1].eq(1).all() and up.weight.grad.sum() == 4 * 2 * 2


def test_regularisation_shrinks_every_layer_against_plain_training(blob_data: Path) -> None:
    torch.manual_seed(0)
    model = zoo.create("unet2d-tiny")
    plain = fit(copy.deepcopy(model), blob_data, steps=3, batch_size=2, lr=1e-2)
    regular = reg.regularize(model, blob_data, steps=3, strength=1.0, batch_size=2, lr=1e-2)
    plain_w, reg_w = dict(plain.named_modules()), dict(regular.named_modules())
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert any(n.startswith("ups.") for n in convs)
    for name in convs:
        assert reg_w[name].weight.norm() < plain_w[name].weight.norm(), name
    assert not regular.training and all(p.device.type == "cpu" for p in regular.parameters())


def test_cached_once_per_setting(
    ckpt: Path, blob_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real = reg.regularize

    def spy(model: Any, data: Any, **kw: Any) -> Any:
        calls.append(kw)
        return real(model, data, **kw)

    monkeypatch.setattr(reg, "regularize", spy)
    cache = tmp_path / "cache"
    settings = {"steps": 1, "strength": 1e-3, "cache_dir": cache, "seed": 0, "batch_size": 2}

    first = reg.ensure_regularized(ckpt, blob_data, **settings)
    assert len(calls) == 1 and first.parent == cache
    assert first.with_suffix(".done").is_file()
    model, meta = load_checkpoint(first)
    assert meta["regularized"]["steps"] == 1 and meta["regularized"]["strength"] == 1e-3
    assert meta["threshold"] == 0.5

    assert reg.ensure_regularized(ckpt, blob_data, **settings) == first  # cache hit
    assert len(calls) == 1

    seen = {first}
    for change in ({"strength": 2e-3}, {"seed": 1}, {"lr": 1e-3}):
        path = reg.ensure_regularized(ckpt, blob_data, **{**settings, **change})
        assert path not in seen  # a changed setting is a new entry
        seen.add(path)
    assert len(calls) == 4

    first.with_suffix(".done").unlink()  # an unfinished entry is computed again
    assert reg.ensure_regularized(ckpt, blob_data, **settings) == first
    assert len(calls) == 5


def test_without_a_cache_dir_recover_regularises_in_memory(
    ckpt: Path, blob_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import compress.recovery
    from compress.recipe import Recipe

    calls: list[int] = []
    real = reg.regularize

    def spy(model: Any, data: Any, **kw: Any) -> Any:
        calls.append(kw["steps"])
        return real(model, data, **{**kw, "batch_size": 2})

    monkeypatch.setattr(compress.recovery, "regularize", spy)
    monkeypatch.chdir(tmp_path)
    recipe = Recipe(prune="structured", ratio=0.5, regularize_steps=1, regularize_strength=0.1)
    pruned = compress.recovery.recover(ckpt, blob_data, recipe)
    assert calls == [1] and not any(tmp_path.iterdir())  # nothing cached anywhere
    assert pruned.config != zoo.config("unet2d-tiny")
