"""Short BCE+Dice fine-tune after pruning, on the training split, reusing `unet.train.fit`.

Unstructured zeros stay zero: their masks are re-applied after every optimizer step. An
``extra_loss`` (e.g. `compress.distill.Distillation`) is added to BCE + Dice.

    >>> from compress.finetune import finetune
    >>> finetune(pruned_model, "runs/phantom.h5", steps=200, keep_zeros=True)   # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from compress.prune_unstructured import apply_masks, sparsity_masks
from unet.data.canonical import CanonicalDataset
from unet.models import UNet
from unet.train_loop import ExtraLoss, fit


def finetune(
    model: UNet,
    data: CanonicalDataset | str | Path,
    steps: int,
    *,
    lr: float = 5e-4,
    batch_size: int | None = None,
    keep_zeros: bool = False,
    extra_loss: ExtraLoss | None = None,
    patch_size: Sequence[int] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> UNet:
    """Fine-tune ``model`` in place for ``steps`` optimizer steps (0: unchanged) and return it.

    ``keep_zeros=True`` keeps every currently-zero conv weight at zero (unstructured pruning).
    ``batch_size`` None: the model's training batch size (16 slices in 2D, 2 patches in 3D).
    The model is left in eval mode.
    """
    if steps < 0:
        raise ValueError(f"finetune: steps must be >= 0, got {steps}")
    if steps:
        after_step = (
            functools.partial(apply_masks, masks=sparsity_masks(model)) if keep_zeros else None
        )
        fit(
            model,
            data,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            patch_size=patch_size,
            after_step=after_step,
            extra_loss=extra_loss,
            progress=progress,
        )
    return model.eval()
