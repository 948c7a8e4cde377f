"""Pruning-friendly training: a sparsity-inducing group regularisation phase before structured
pruning, with Torch-Pruning's own regulariser, computed once and cached.

`regularize` continues training a baseline with BCE + Dice while Torch-Pruning's
``GroupNormPruner`` (the DepGraph paper's group-level sparsity, Fang et al., CVPR 2023) adds
``reg x gamma x w`` to the gradient of every parameter coupled to a channel (conv filters, the
input slices of the convs that read it across the skip concatenation, the norm's scale), with
``gamma`` from 1 for the most important channel group to 16 for the least important. The
least important groups are driven towards zero, so the global magnitude ranking of
`compress.prune_structured` can then remove them with less damage. The regulariser acts between
``backward()`` and the optimizer step (an optimizer step pre-hook, limited to the optimizer of
this model); the training itself is `compress.finetune.finetune` (`unet.train_loop.fit`).

Torch-Pruning 1.6.1's regularisers index every convolution weight as ``(out, in, ...)``, which
is wrong for transposed convolutions (``(in, out, ...)``: an ``IndexError``, or the wrong
slices when the widths agree). While the regulariser runs, each transposed conv is therefore
shown to it in the ordinary conv layout (`_conv_layout`: transposed views of the weight and its
gradient, ``transposed=False``); its in-place gradient update lands in the real gradient.

`ensure_regularized` caches the result, like the sweep caches its baseline: a checkpoint under
``cache_dir`` keyed by a hash of (baseline file SHA-256, data fingerprint, settings), written
atomically and marked finished by a ``.done`` file; a file lock makes concurrent workers of one
study wait for one computation instead of repeating it::

    from compress.regularize import ensure_regularized
    path = ensure_regularized("runs/unet2d-small.pt", "runs/phantom.h5", steps=200,
                              strength=1e-3, cache_dir="runs/sweep/s/cache")
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from compress.finetune import finetune
from compress.prune_structured import _example_input
from unet.checkpoint import load_checkpoint, save_checkpoint
from unet.data.canonical import CanonicalDataset
from unet.data.datasets import as_dataset
from unet.io import file_sha256, write_text_atomic
from unet.models import UNet
from unet.train_loop import default_batch_size

CACHE_VERSION = 1  # bump when the regularisation changes, so old cache entries are not reused


def regularize(
    model: UNet,
    data: CanonicalDataset | str | os.PathLike[str],
    *,
    steps: int,
    strength: float,
    lr: float = 5e-4,
    seed: int = 0,
    batch_size: int | None = None,
    patch_size: Sequence[int] | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> UNet:
    """A copy of ``model`` trained ``steps`` steps with BCE + Dice + group regularisation.

    ``strength`` is Torch-Pruning's ``GroupNormPruner(reg=...)`` (> 0); ``lr`` the AdamW
    learning rate (warm-up + cosine, as `fit`). The head's output channels (the three regions)
    are not regularised. Returns the new model in eval mode on the CPU; ``model`` is untouched.
    """
    if steps < 1:
        raise ValueError(f"regularize: steps must be >= 1, got {steps}")
    if not strength > 0:
        raise ValueError(f"regularize: strength must be > 0, got {strength}")
    work = copy.deepcopy(model).cpu().eval()
    for m in work.modules():  # Torch-Pruning's tracing cannot follow in-place ReLUs (see
        if isinstance(m, nn.ReLU):  # compress.prune_structured); same outputs either way
            m.inplace = False
    with torch.enable_grad():  # the dependency graph is traced through autograd
        pruner = tp.pruner.GroupNormPruner(
            work,
            _example_input(work, None),
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            reg=strength,
            ignored_layers=[work.head],
            root_module_types=[nn.modules.conv._ConvNd],
        )
    own = {id(p) for p in work.parameters()}
    transposed = [m for m in work.modules() if isinstance(m, nn.modules.conv._ConvTransposeNd)]

    def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if any(id(p) in own for group in optimizer.param_groups for p in group["params"]):
            with _conv_layout(transposed):
                pruner.regularize(work)

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        finetune(
            work,
            data,
            steps,
            lr=lr,
            batch_size=batch_size,
            patch_size=patch_size,
            seed=seed,
            device=device,
            progress=progress,
        )
    finally:
        handle.remove()
    return work.cpu().eval()


@contextlib.contextmanager
def _conv_layout(modules: Sequence[nn.modules.conv._ConvTransposeNd]) -> Iterator[None]:
    """Show transposed convs as ordinary ones: weight and grad as ``(out, in, ...)`` views."""
    saved = []
    for m in modules:
        weight, grad = m.weight.data, m.weight.grad
        saved.append((m, weight, grad))
        m.weight.data = weight.transpose(0, 1)
        m.weight.grad = None if grad is None else grad.transpose(0, 1)
        m.transposed = False
    try:
        yield
    finally:
        for m, weight, grad in saved:
            m.weight.data = weight
            m.weight.grad = grad  # updated in place through its view
            m.transposed = True


def cache_settings(
    baseline: str | os.PathLike[str],
    data: CanonicalDataset,
    *,
    steps: int,
    strength: float,
    lr: float,
    seed: int,
    batch_size: int,
) -> dict[str, Any]:
    """What a cached regularised checkpoint depends on (its cache key is a hash of this)."""
    return {
        "version": CACHE_VERSION,
        "baseline_sha256": file_sha256(baseline),
        "data_fingerprint": data.fingerprint,
        "steps": int(steps),
        "strength": float(strength),
        "lr": float(lr),
        "seed": int(seed),
        "batch_size": int(batch_size),
    }


def cache_key(settings: dict[str, Any]) -> str:
    """A short stable hash of `cache_settings`."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_regularized(
    baseline: str | os.PathLike[str],
    data: CanonicalDataset | str | os.PathLike[str],
    steps: int,
    strength: float,
    cache_dir: str | os.PathLike[str],
    seed: int = 0,
    *,
    lr: float = 5e-4,
    batch_size: int | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> Path:
    """The cached `regularize` result for these settings, computed only if missing.

    Returns ``<cache_dir>/regularized-<key>.pt`` (a plain checkpoint: the baseline's meta
    plus ``meta["regularized"]`` = the settings); ``<key>.done`` beside it marks it complete.
    """
    data = as_dataset(data)
    if batch_size is None:  # the training batch of the baseline's dimensionality
        batch_size = default_batch_size(load_checkpoint(baseline)[0].config.spatial_dims)
    settings = cache_settings(
        baseline, data, steps=steps, strength=strength, lr=lr, seed=seed, batch_size=batch_size
    )
    cache = Path(cache_dir)
    stem = f"regularized-{cache_key(settings)}"
    path, done = cache / f"{stem}.pt", cache / f"{stem}.done"
    if done.is_file() and path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f"{stem}.lock"):
        if done.is_file() and path.is_file():  # another worker finished it while we waited
            return path
        model, meta = load_checkpoint(baseline)
        result = regularize(
            model,
            data,
            steps=steps,
            strength=strength,
            lr=lr,
            seed=seed,
            batch_size=batch_size,
            patch_size=meta.get("patch_size"),
            device=device,
            progress=progress,
        )
        kept = {k: v for k, v in meta.items() if k != "metrics"}
        save_checkpoint(path, result, {**kept, "regularized": settings})
        write_text_atomic(done, json.dumps(settings, indent=2))
    return path
