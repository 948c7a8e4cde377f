"""Unstructured global magnitude pruning: one L1 threshold over all convolution weights.

``amount`` is the fraction of convolution weights set to zero: the weights of every
``Conv``/``ConvTranspose`` except the 1x1 output ``head`` are ranked together by ``|w|`` and
the smallest ``round(amount * n)`` become zero (``torch.nn.utils.prune.global_unstructured``
with ``L1Unstructured``), then made permanent with ``prune.remove``. Biases and norm
parameters are never pruned. The head is left out, as in structured pruning: it is a tiny
fraction of the weights, and each of its three rows is a whole output region with only as
many weights as the last decoder width, which a high global threshold could wipe.

A layer is never deleted silently: freshly initialised nets have fan-in-scaled weights, so a
global threshold strips deep layers first, and if it would zero every weight of some layer
`prune_unstructured` raises instead. The tensors stay dense: zeros save disk space only when
the checkpoint is stored sparse (``save_checkpoint(..., sparse=True)``: bit mask + non-zero
values) or compressed, and they save no time.

Fine-tuning keeps the zeros by re-applying the masks after every optimizer step::

    import functools
    from compress.prune_unstructured import apply_masks, prune_unstructured, sparsity_masks
    from unet.train_loop import fit

    prune_unstructured(model, 0.9)
    masks = sparsity_masks(model)
    fit(model, data, steps=200, after_step=functools.partial(apply_masks, masks=masks))
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from compress.channel_selection import check_fraction

_CONV_TYPES = (nn.modules.conv._ConvNd,)  # Conv1/2/3d and ConvTranspose1/2/3d


def conv_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The prunable convolutions (transposed included) by module name: all but ``head``."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, _CONV_TYPES) and name != "head"
    }


def conv_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over the prunable conv weights (`conv_modules`)."""
    weights = [m.weight for m in conv_modules(model).values()]
    if not weights:
        raise ValueError(f"{type(model).__name__} has no convolution weights")
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def prune_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """Zero the ``amount`` smallest-magnitude conv weights of ``model`` (in place; returned).

    One global L1 threshold over the conv weights of `conv_modules`; achieved sparsity is ``round(amount * n) / n``
    of the conv weights (plus any zeros that were already there). Raises ``ValueError`` for
    ``amount`` outside [0, 1), and, leaving ``model`` unchanged, if the threshold would zero
    every weight of some layer (that layer would be deleted: its output no longer depends on
    its input).
    """
    amount = check_fraction(amount, "amount")
    convs = conv_modules(model)
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution weights to prune")
    if amount == 0.0:
        return model
    originals = {name: m.weight.detach().clone() for name, m in convs.items()}
    params = [(m, "weight") for m in convs.values()]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for m, _ in params:
        prune.remove(m, "weight")
    wiped = [name for name, m in convs.items() if not bool(m.weight.detach().any())]
    if wiped:
        with torch.no_grad():
            for name, m in convs.items():
                m.weight.copy_(originals[name])
        raise ValueError(
            f"amount={amount} would zero every weight of {', '.join(wiped)} "
            "(the layer would be deleted); use a smaller amount"
        )
    return model


def sparsity_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{conv module name: bool tensor, True where the weight is non-zero}``."""
    return {name: m.weight.detach() != 0 for name, m in conv_modules(model).items()}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the conv weights where ``masks`` is False (in place), e.g. after an optimizer step.

    ``KeyError`` if a mask names a module ``model`` does not have; ``ValueError`` on a shape
    mismatch.
    """
    convs = conv_modules(model)
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in convs:
                raise KeyError(f"mask for {name!r}, but the model has no such convolution")
            w = convs[name].weight
            if mask.shape != w.shape:
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(mask.shape)}, weight {tuple(w.shape)}"
                )
            w.mul_(mask.to(device=w.device, dtype=w.dtype))
