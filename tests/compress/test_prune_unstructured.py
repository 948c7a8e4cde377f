"""Unstructured global L1 pruning: exact sparsity, masks that survive training, smaller files."""

from __future__ import annotations

import functools
import gzip

import pytest
import torch
from torch import nn

from compress.prune_unstructured import (
    apply_masks,
    conv_modules,
    conv_sparsity,
    prune_unstructured,
    sparsity_masks,
)
from unet import load_checkpoint, save_checkpoint, zoo


def _seeded(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return zoo.create(name, **overrides)


def _iid(name: str, **overrides) -> nn.Module:
    """Conv weights i.i.d. N(0, 1) in every layer, like a trained net's in that no layer is
    uniformly smaller than the others (default init scales by fan-in, and a global threshold
    at >= 80% then wipes whole deep layers: see the refusal test)."""
    model = _seeded(name, **overrides)
    with torch.no_grad():
        for m in conv_modules(model).values():
            m.weight.normal_()
    return model


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.8, 0.95])
@pytest.mark.parametrize(
    ("name", "overrides"),
    [("unet2d-tiny", {}), ("unet3d-tiny", {}), ("cs231n-2d", {})],
    ids=["2d-batch-transposed", "3d-batch-transposed", "2d-group-nearest"],
)
def test_sparsity_matches_request(name, overrides, amount):
    model = _iid(name, **overrides)
    assert conv_sparsity(model) == 0.0
    prune_unstructured(model, amount)
    assert conv_sparsity(model) == pytest.approx(amount, abs=0.005)
    # permanent: plain parameters again, no torch.nn.utils.prune re-parametrisation
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert all(not m._forward_pre_hooks for m in conv_modules(model).values())


def test_one_global_threshold_over_every_conv_but_the_head():
    model = _seeded("unet2d-tiny")
    head = model.head.weight.detach().clone()
    before = {n: m.weight.detach().abs().clone() for n, m in conv_modules(model).items()}
    assert "head" not in before and "ups.0" in before  # transposed convs are in, head is out
    prune_unstructured(model, 0.5)
    assert torch.equal(model.head.weight, head)
    kept = torch.cat([before[n][m.weight != 0] for n, m in conv_modules(model).items()])
    dropped = torch.cat([before[n][m.weight == 0] for n, m in conv_modules(model).items()])
    assert dropped.max() <= kept.min()  # one threshold, not one per layer
    sparsity = {n: float((m.weight == 0).float().mean()) for n, m in conv_modules(model).items()}
    assert max(sparsity.values()) - min(sparsity.values()) > 0.3  # layers differ: it is global


def test_biases_and_norms_untouched():
    model = _iid("unet2d-tiny", norm="none")
    biases = {n: p.clone() for n, p in model.named_parameters() if not n.endswith("weight")}
    prune_unstructured(model, 0.8)
    for n, p in model.named_parameters():
        if n in biases:
            assert torch.equal(p, biases[n]), n


def test_masks_keep_zeros_during_training():
    """``apply_masks`` as ``after_step``: optimizer steps do not revive pruned weights."""
    model = _seeded("unet2d-tiny")
    prune_unstructured(model, 0.7)
    masks = sparsity_masks(model)
    after_step = functools.partial(apply_masks, masks=masks)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(4, 4, 16, 16), torch.rand(4, 3, 16, 16)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()
        after_step(model)
    assert conv_sparsity(model) == pytest.approx(0.7, abs=0.005)
    for name, m in conv_modules(model).items():
        assert not bool(m.weight[~masks[name]].any()), name


def test_finetune_with_fit_keeps_sparsity(blob_data):
    from unet.train_loop import fit

    model = _seeded("unet2d-tiny")
    prune_unstructured(model, 0.6)
    masks = sparsity_masks(model)
    before = {n: m.weight.detach().clone() for n, m in conv_modules(model).items()}
    fit(
        model,
        blob_data,
        steps=2,
        batch_size=4,
        after_step=functools.partial(apply_masks, masks=masks),
    )
    assert conv_sparsity(model) == pytest.approx(0.6, abs=0.005)
    assert any(not torch.equal(before[n], m.weight) for n, m in conv_modules(model).items())


def test_apply_masks_bad_input():
    model = _seeded("unet2d-tiny")
    masks = sparsity_masks(model)
    with pytest.raises(KeyError, match="no such convolution"):
        apply_masks(model, {"nope": masks["ups.0"]})
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"ups.0": masks["ups.1"]})


def test_sparse_checkpoint_compressed_size_falls_with_sparsity(tmp_path):
    sizes = []
    for amount in (0.0, 0.5, 0.8, 0.95):
        model = _iid("unet2d-small").eval()
        prune_unstructured(model, amount)
        path = save_checkpoint(tmp_path / f"s{amount}.pt", model, sparse=True)
        sizes.append(len(gzip.compress(path.read_bytes(), compresslevel=6)))
        reloaded, _ = load_checkpoint(path)  # dense weights restored exactly
        for key, value in model.state_dict().items():
            assert torch.equal(reloaded.state_dict()[key], value), key
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4, sizes
    assert sizes[-1] < 0.25 * sizes[0], sizes  # 95% zeros: most of the file is gone


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, "a lot", None])
def test_bad_amount(amount):
    with pytest.raises(ValueError, match="amount must be"):
        prune_unstructured(_seeded("unet2d-tiny"), amount)


def test_amount_that_would_delete_a_layer_is_refused_and_model_unchanged():
    model = _seeded("unet2d-tiny")  # default init: deep layers have the smallest weights
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"amount=0.95 would zero every weight of .*encoders\.2\.convs\.0\.0"
    ):
        prune_unstructured(model, 0.95)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert conv_sparsity(model) == 0.0
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())


def test_no_convolutions():
    with pytest.raises(ValueError, match="no convolution"):
        prune_unstructured(nn.Linear(3, 3), 0.5)
    with pytest.raises(ValueError, match="no convolution"):
        conv_sparsity(nn.Linear(3, 3))
