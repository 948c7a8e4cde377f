"""The training loop shared by `unet.train` (full runs) and fine-tuning: option checks,
`TrainLoop` (one optimizer step with BCE + Dice, AdamW, warm-up + cosine, autocast), the
global RNG state for exact resumption, and `fit` (train a model in place, no checkpoints).

    from unet.train_loop import fit
    fit(model, "runs/phantom.h5", steps=200, lr=5e-4)     # e.g. fine-tune a pruned model

Batches are a pure function of ``(seed, draw number)`` (`unet.data.datasets`), so resuming
needs no sampler state beyond the step. ``amp="bf16"`` uses bfloat16 autocast (CPU or CUDA);
``amp="fp16"`` uses float16 autocast with a gradient scaler and is refused on the CPU (about
70x slower there).
"""

from __future__ import annotations

import functools
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from unet.amp import AMP_CHOICES, bf16_conv3d_hazard, resolve_amp
from unet.data.canonical import CanonicalDataset
from unet.data.datasets import DrawSampler, PatchDataset, SliceDataset, as_dataset
from unet.inference import DEFAULT_PATCH_3D
from unet.losses import BCEDiceLoss
from unet.models import UNet

AMP_MODES = AMP_CHOICES  # "auto" resolves per device (`unet.amp.resolve_amp`)

# ``extra_loss(image, logits) -> scalar`` is added to BCE + Dice at every step (e.g. distillation)
ExtraLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Defaults that depend on the model's dimensionality (TrainConfig fields left at None).
# Sized for the default phantom (40 subjects of 48x128x128) on a 2-core CPU, fp32 with
# channels_last (measured ~40 slices/s for unet2d-small at 128x128, ~4.2 patches/s of 64^3
# for unet3d-small): about 7.5 minutes for 2D and 11 minutes for 3D, validation included.
DIMS_DEFAULTS: dict[int, dict[str, Any]] = {
    2: {"steps": 1000, "batch_size": 16, "val_every": 200},
    3: {"steps": 1200, "batch_size": 2, "val_every": 200, "patch_size": DEFAULT_PATCH_3D},
}


def default_batch_size(spatial_dims: int) -> int:
    """The training batch size of a model of this dimensionality (`DIMS_DEFAULTS`): 16 slices
    in 2D, 2 patches in 3D; `fit` (and so every fine-tune) uses it unless told otherwise."""
    return int(DIMS_DEFAULTS[spatial_dims]["batch_size"])


# Fields that may differ between a run and its resumption (they do not change the result).
RUNTIME_FIELDS = ("data", "device", "num_workers", "progress", "resume")


class TrainConfigError(ValueError):
    """A bad training option; ``field`` names it (the CLI shows it as ``--field-name``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _check(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise TrainConfigError(field, problem)


def check_options(
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_fraction: float,
    amp: str,
    device: str,
    tumour_fraction: float,
    bce_weight: float,
    dice_weight: float,
    num_workers: int,
    spatial_dims: int,
    divisor: int,
    patch_size: Sequence[int] | None,
) -> torch.device:
    """Validate the loop options shared by `fit` and `train`; return the torch device."""
    _check(steps >= 0, "steps", f"must be >= 0, got {steps}")
    _check(batch_size >= 1, "batch_size", f"must be >= 1, got {batch_size}")
    _check(lr > 0 and math.isfinite(lr), "lr", f"must be a positive number, got {lr}")
    _check(weight_decay >= 0, "weight_decay", f"must be >= 0, got {weight_decay}")
    _check(0 <= warmup_fraction < 1, "warmup_fraction", f"must be in [0, 1), got {warmup_fraction}")
    _check(amp in AMP_MODES, "amp", f"must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    _check(
        0 <= tumour_fraction <= 1, "tumour_fraction", f"must be in [0, 1], got {tumour_fraction}"
    )
    _check(bce_weight >= 0, "bce_weight", f"must be >= 0, got {bce_weight}")
    _check(dice_weight >= 0, "dice_weight", f"must be >= 0, got {dice_weight}")
    _check(bce_weight + dice_weight > 0, "dice_weight", "bce_weight and dice_weight are both 0")
    _check(num_workers >= 0, "num_workers", f"must be >= 0, got {num_workers}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise TrainConfigError("device", f"not a torch device: {device!r}") from None
    _check(dev.type in ("cpu", "cuda"), "device", f"must be cpu or cuda[:n], got {device!r}")
    _check(
        dev.type != "cuda" or torch.cuda.is_available(),
        "device",
        f"{device!r} requested but CUDA is not available",
    )
    _check(
        amp != "fp16" or dev.type == "cuda",
        "amp",
        "fp16 autocast needs a CUDA device (on the CPU it is ~70x slower than fp32); "
        "use bf16 or off",
    )
    if patch_size is not None or spatial_dims == 3:
        _check(
            patch_size is not None and len(patch_size) == spatial_dims and min(patch_size) >= 1,
            "patch_size",
            f"must be {spatial_dims} positive ints ({'D H W' if spatial_dims == 3 else 'H W'}) "
            f"for a {spatial_dims}D model, got {None if patch_size is None else tuple(patch_size)}",
        )
        assert patch_size is not None
        _check(
            all(p % divisor == 0 for p in patch_size),
            "patch_size",
            f"{tuple(patch_size)} must be divisible by the model's divisor {divisor}",
        )
    if amp == "bf16" and dev.type == "cpu" and spatial_dims == 3:
        assert patch_size is not None
        hazard = bf16_conv3d_hazard(patch_size[0], divisor)
        _check(hazard is None, "amp", f"bf16 on the CPU: {hazard}; use off or auto")
    return dev


# ------------------------------------------------------------------ the loop


def warmup_cosine(step: int, *, total: int, warmup: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _memory_format(spatial_dims: int, channels_last: bool) -> torch.memory_format:
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


class TrainLoop:
    """The moving parts of one training run and the one optimizer step that `fit` and
    `train` share. ``state_dict()`` holds everything needed to continue exactly (model
    weights excepted: those live in the checkpoint's ``state_dict``)."""

    def __init__(
        self,
        model: UNet,
        data: CanonicalDataset,
        subjects: str | Sequence[str],
        *,
        steps: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        warmup_fraction: float,
        seed: int,
        device: torch.device,
        amp: str,
        patch_size: Sequence[int] | None,
        tumour_fraction: float,
        bce_weight: float,
        dice_weight: float,
        channels_last: bool,
        num_workers: int,
        augment: bool,
        after_step: Callable[[nn.Module], None] | None = None,
        extra_loss: ExtraLoss | None = None,
    ) -> None:
        dims = model.config.spatial_dims
        self.model = model
        self.steps = steps
        self.batch_size = batch_size
        self.device = device
        self.amp, self.amp_reason = resolve_amp(amp, device)
        if self.amp == "bf16" and device.type == "cpu" and dims == 3:
            hazard = bf16_conv3d_hazard((patch_size or DEFAULT_PATCH_3D)[0], model.config.divisor)
            if hazard is not None:  # only "auto" gets here: check_options refuses "bf16"
                self.amp, self.amp_reason = "off", f"{hazard}: fp32"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        self.memory_format = _memory_format(dims, channels_last)
        self.after_step = after_step
        self.extra_loss = extra_loss
        self.step = 0
        model.to(device=device, memory_format=self.memory_format).train()
        if dims == 2:
            self.dataset: SliceDataset | PatchDataset = SliceDataset(
                data,
                subjects,
                tumour_fraction=tumour_fraction,
                seed=seed,
                augment=augment,
                divisor=model.config.divisor,
                patch_size=patch_size,
            )
        else:
            self.dataset = PatchDataset(
                data,
                subjects,
                patch_size=tuple(patch_size or DEFAULT_PATCH_3D),
                fg_prob=tumour_fraction,
                seed=seed,
                augment=augment,
            )
        self.num_workers = num_workers
        self.loss_fn = BCEDiceLoss(bce_weight, dice_weight)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        warmup = max(1, round(warmup_fraction * steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, functools.partial(warmup_cosine, total=max(steps, 1), warmup=warmup)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == "fp16")
        self._batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _loader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=DrawSampler(start=self.step * self.batch_size),
            num_workers=self.num_workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            # A private generator: creating the iterator must not consume the global RNG.
            generator=torch.Generator().manual_seed(0),
            # Workers start from a clean server process, not by forking this one: forking a
            # process in which a threaded runtime (OpenVINO's TBB, OpenMP) already runs can
            # deadlock or crash the children.
            multiprocessing_context="forkserver" if self.num_workers else None,
            persistent_workers=False,
        )
        return iter(loader)

    def train_step(self) -> float:
        """One optimizer step on the next batch; returns the loss (float)."""
        if self._batches is None:
            self._batches = self._loader()
        image, target = next(self._batches)
        image = image.to(self.device, non_blocking=True).contiguous(
            memory_format=self.memory_format
        )
        target = target.to(self.device, non_blocking=True)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            logits = self.model(image)
        loss = self.loss_fn(logits, target)  # float32 even under autocast
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(image, logits)
        value = loss.item()
        if not math.isfinite(value) and not self.scaler.is_enabled():
            raise FloatingPointError(
                f"training loss is {value} at step {self.step + 1}: diverged (lower the lr?)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if self.after_step is not None:
            self.after_step(self.model)
        return value

    def close(self) -> None:
        """Stop DataLoader workers (if any)."""
        self._batches = None

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "next_draw": self.step * self.batch_size,  # the sampler's whole state
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self._batches = None
        set_rng_state(state["rng"])


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch, CUDA, numpy, python) as tensors / lists (``weights_only``-safe).

    Training itself draws from none of them (batches come from per-draw generators); they
    are saved so that code run around the loop (e.g. an ``after_step`` hook) resumes exactly.
    """
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global state is what we save)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def fit(
    model: UNet,
    data: CanonicalDataset | str | os.PathLike[str],
    *,
    steps: int,
    batch_size: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
    amp: str = "off",
    patch_size: Sequence[int] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    extra_loss: ExtraLoss | None = None,
    progress: bool = False,
    subjects: str | Sequence[str] = "train",
    tumour_fraction: float = 0.5,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    warmup_fraction: float = 0.05,
    channels_last: bool = True,
    num_workers: int = 0,
    augment: bool = True,
) -> UNet:
    """Train ``model`` in place for ``steps`` optimizer steps on ``subjects``; no checkpoints.

    The same loop as `train` (BCE + Dice, AdamW, warm-up + cosine), for fine-tuning e.g. a
    pruned model. ``after_step(model)`` runs after every optimizer step (e.g. to re-apply
    pruning masks); ``extra_loss(image, logits)`` is added to the BCE + Dice loss of every
    step (e.g. a distillation term; its gradient reaches the model through ``logits``). 3D
    models train on patches of ``patch_size`` (default 64^3); 2D models on whole slices, or
    on ``(H, W)`` tumour-centred crops when ``patch_size`` is given. ``batch_size`` None: the
    training default of the model's dimensionality (`default_batch_size`: 16 in 2D, 2 in 3D).
    Returns the model in eval mode on ``device`` (``steps=0``: returned untouched).
    """
    if steps == 0:
        return model
    dims = model.config.spatial_dims
    if batch_size is None:
        batch_size = default_batch_size(dims)
    if dims == 3 and patch_size is None:
        patch_size = DEFAULT_PATCH_3D
    dev = check_options(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_fraction=warmup_fraction,
        amp=amp,
        device=device,
        tumour_fraction=tumour_fraction,
        bce_weight=bce_weight,
        dice_weight=dice_weight,
        num_workers=num_workers,
        spatial_dims=dims,
        divisor=model.config.divisor,
        patch_size=patch_size,
    )
    loop = TrainLoop(
        model,
        as_dataset(data),
        subjects,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_fraction=warmup_fraction,
        seed=seed,
        device=dev,
        amp=amp,
        patch_size=patch_size,
        tumour_fraction=tumour_fraction,
        bce_weight=bce_weight,
        dice_weight=dice_weight,
        channels_last=channels_last,
        num_workers=num_workers,
        augment=augment,
        after_step=after_step,
        extra_loss=extra_loss,
    )
    with tqdm(total=steps, desc="fit", disable=None if progress else True, leave=False) as bar:
        while loop.step < steps:
            bar.set_postfix(loss=f"{loop.train_step():.4f}", refresh=False)
            bar.update()
    loop.close()
    return model.to(memory_format=torch.contiguous_format).eval()
