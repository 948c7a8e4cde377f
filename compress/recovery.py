"""The prune + fine-tune stage of a recipe, with its recovery methods:

    [regularise the baseline (cached)] -> prune -> fine-tune [-> prune -> fine-tune ...]

* ``regularize_steps`` > 0: pruning starts from the baseline after a group-sparsity
  regularisation phase (`compress.regularize`; cached under ``cache_dir`` when one is given,
  so the trials of a study compute it once);
* ``prune_rounds`` > 1: the target is reached in rounds (`compress.gradual`), the fine-tune
  budget ``finetune_steps`` split across them; round ``k`` draws its batches with ``seed + k``;
* ``distill_weight`` > 0: every fine-tune step adds the distillation loss from the unpruned
  baseline (the teacher, never the regularised copy; `compress.distill`).

    from compress.recovery import recover
    small = recover("runs/unet2d-small.pt", "runs/phantom.h5", recipe, cache_dir="runs/cache")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from compress.distill import Distillation
from compress.finetune import finetune
from compress.gradual import prune_gradually
from compress.recipe import Recipe
from compress.regularize import ensure_regularized, regularize
from compress.teacher_cache import TeacherCache
from unet.checkpoint import load_checkpoint
from unet.data.canonical import CanonicalDataset
from unet.data.datasets import as_dataset
from unet.models import UNet


def prune_and_finetune(
    model: UNet,
    data: CanonicalDataset | str | os.PathLike[str],
    recipe: Recipe,
    *,
    teacher: UNet | None = None,
    patch_size: Sequence[int] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    teacher_cache: TeacherCache | None = None,
) -> UNet:
    """Prune ``model`` as the recipe says (in ``prune_rounds``), fine-tuning after each round,
    with distillation from ``teacher`` if ``distill_weight`` > 0 (its logits reused from
    ``teacher_cache`` where a batch was seen before). Returns the model on the CPU, in eval
    mode."""
    data = as_dataset(data)
    distill = None
    if recipe.distill_weight > 0:
        if teacher is None:
            raise ValueError("recipe: distill_weight > 0 needs a teacher (the unpruned baseline)")
        distill = Distillation(
            teacher, recipe.distill_weight, recipe.distill_temperature, cache=teacher_cache
        )

    def tune(m: UNet, steps: int, round_index: int) -> UNet:
        return finetune(
            m,
            data,
            steps,
            lr=recipe.finetune_lr,
            keep_zeros=recipe.prune == "unstructured",
            extra_loss=distill,
            patch_size=patch_size,
            seed=seed + round_index,
            device=device,
            progress=progress,
        ).cpu()

    return prune_gradually(model, recipe, tune)


def recover(
    baseline: str | os.PathLike[str],
    data: CanonicalDataset | str | os.PathLike[str],
    recipe: Recipe,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    teacher_cache: TeacherCache | None = None,
) -> UNet:
    """The recipe's whole prune + fine-tune stage on the ``baseline`` checkpoint (module doc);
    ``teacher_cache`` keeps the distillation teacher's logits across calls (one baseline)."""
    data = as_dataset(data)
    teacher, meta = load_checkpoint(Path(baseline))
    start = teacher
    settings = {"steps": recipe.regularize_steps, "strength": recipe.regularize_strength}
    if recipe.regularize_steps > 0 and cache_dir is not None:
        path = ensure_regularized(
            baseline, data, **settings, cache_dir=cache_dir, seed=seed, lr=recipe.finetune_lr,
            device=device, progress=progress,
        )  # fmt: skip
        start = load_checkpoint(path)[0]
    elif recipe.regularize_steps > 0:
        start = regularize(
            teacher, data, **settings, lr=recipe.finetune_lr, seed=seed,
            patch_size=meta.get("patch_size"), device=device, progress=progress,
        )  # fmt: skip
    return prune_and_finetune(
        start,
        data,
        recipe,
        teacher=teacher,
        patch_size=meta.get("patch_size"),
        seed=seed,
        device=device,
        progress=progress,
        teacher_cache=teacher_cache,
    )
