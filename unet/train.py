"""Train a zoo U-Net with BCE + Dice: `fit` (the bare loop) and `train` (a run with validation,
checkpoints, a metrics log and exact resume).

    python -m unet.train --data runs/phantom.h5 --out runs/unet2d-small.pt
    python -m unet.train --model unet3d-small --data runs/phantom.h5 --out runs/unet3d-small.pt
    python -m unet.train --data runs/phantom.h5 --out runs/unet2d-small.pt --resume   # after a kill

A run writes three files next to ``--out``:

* ``<out>``: the best model on the validation split (volume-level mean Dice, threshold 0.5),
* ``<out stem>.last.pt``: the rolling last checkpoint, with the optimizer, scheduler, step
  and RNG states, written at every validation; ``--resume`` continues it to the same final
  step and ends with the same weights as an uninterrupted run,
* ``<out stem>.jsonl``: one JSON line per log interval (loss, lr, samples/s) and validation.

2D models train on random axial slices (tumour slices oversampled), 3D models on random
patches (tumour-centred with the same probability). The optimizer is AdamW with a linear
warm-up and cosine decay of the learning rate. Batches are a pure function of
``(seed, draw number)`` (`unet.data.datasets`), so resuming needs no sampler state beyond
the step. ``--amp bf16`` uses bfloat16 autocast (CPU or CUDA); ``--amp fp16`` uses float16
autocast with a gradient scaler and is refused on the CPU (about 70x slower there).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from unet import zoo
from unet.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from unet.data.canonical import REGIONS, CanonicalDataset, DataError
from unet.data.datasets import DrawSampler, PatchDataset, SliceDataset, as_dataset
from unet.evaluate import evaluate_model
from unet.inference import DEFAULT_PATCH_3D
from unet.io import write_text_atomic
from unet.losses import BCEDiceLoss
from unet.models import UNet

AMP_MODES = ("off", "bf16", "fp16")

# Defaults that depend on the model's dimensionality (TrainConfig fields left at None).
# Sized for the default phantom (40 subjects of 48x128x128) on a 2-core CPU, fp32 with
# channels_last (measured ~40 slices/s for unet2d-small at 128x128, ~4.2 patches/s of 64^3
# for unet3d-small): about 7.5 minutes for 2D and 11 minutes for 3D, validation included.
DIMS_DEFAULTS: dict[int, dict[str, Any]] = {
    2: {"steps": 1000, "batch_size": 16, "val_every": 200},
    3: {"steps": 1200, "batch_size": 2, "val_every": 200, "patch_size": DEFAULT_PATCH_3D},
}

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
    if spatial_dims == 2:
        _check(patch_size is None, "patch_size", "is for 3D models only (2D trains on slices)")
    else:
        _check(
            patch_size is not None and len(patch_size) == 3 and min(patch_size) >= 1,
            "patch_size",
            f"must be three positive ints (D H W), got {patch_size}",
        )
        assert patch_size is not None
        _check(
            all(p % divisor == 0 for p in patch_size),
            "patch_size",
            f"{tuple(patch_size)} must be divisible by the model's divisor {divisor}",
        )
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
    ) -> None:
        dims = model.config.spatial_dims
        self.model = model
        self.steps = steps
        self.batch_size = batch_size
        self.device = device
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.memory_format = _memory_format(dims, channels_last)
        self.after_step = after_step
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
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
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
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
    amp: str = "off",
    patch_size: Sequence[int] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
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
    pruning masks). 3D models train on patches of ``patch_size`` (default 64^3). Returns
    the model in eval mode on ``device`` (``steps=0``: returned untouched).
    """
    if steps == 0:
        return model
    dims = model.config.spatial_dims
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
    )
    with tqdm(total=steps, desc="fit", disable=not progress, leave=False) as bar:
        while loop.step < steps:
            bar.set_postfix(loss=f"{loop.train_step():.4f}", refresh=False)
            bar.update()
    loop.close()
    return model.to(memory_format=torch.contiguous_format).eval()


# ------------------------------------------------------------------ a full run


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (primitives only; stored in checkpoints).

    ``steps``, ``batch_size``, ``val_every`` and ``patch_size`` left at None take the
    per-dimensionality defaults of `DIMS_DEFAULTS` (see `resolved`).
    """

    data: str
    out: str
    model: str = "unet2d-small"
    steps: int | None = None
    batch_size: int | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    amp: str = "off"
    seed: int = 0
    device: str = "cpu"
    val_every: int | None = None
    log_every: int = 25
    patch_size: tuple[int, int, int] | None = None
    tumour_fraction: float = 0.5
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    augment: bool = True
    channels_last: bool = True
    num_workers: int = 0
    resume: bool = False
    progress: bool = True

    def resolved(self) -> TrainConfig:
        """Defaults filled in for the model's dimensionality, and every value validated."""
        try:
            model_config = zoo.config(self.model)
        except ValueError as exc:
            raise TrainConfigError("model", str(exc)) from None
        defaults = DIMS_DEFAULTS[model_config.spatial_dims]
        filled = {
            key: defaults[key] if getattr(self, key) is None else getattr(self, key)
            for key in ("steps", "batch_size", "val_every", "patch_size")
            if key in defaults
        }
        if filled.get("patch_size") is not None:
            filled["patch_size"] = tuple(int(p) for p in filled["patch_size"])
        cfg = dataclasses.replace(self, **filled)
        _check(bool(cfg.data), "data", "is required")
        _check(bool(cfg.out), "out", "is required")
        _check(
            Path(cfg.out).suffix == ".pt", "out", f"must be a .pt checkpoint path, got {cfg.out!r}"
        )
        _check(cfg.steps >= 1, "steps", f"must be >= 1 for a training run, got {cfg.steps}")
        _check(cfg.val_every is not None and cfg.val_every >= 1, "val_every", "must be >= 1")
        _check(cfg.log_every >= 1, "log_every", f"must be >= 1, got {cfg.log_every}")
        check_options(
            **cfg.loop_options(),
            spatial_dims=model_config.spatial_dims,
            divisor=model_config.divisor,
        )
        return cfg

    def loop_options(self) -> dict[str, Any]:
        """The options that `check_options` validates."""
        names = (
            "steps",
            "batch_size",
            "lr",
            "weight_decay",
            "warmup_fraction",
            "amp",
            "device",
            "tumour_fraction",
            "bce_weight",
            "dice_weight",
            "num_workers",
            "patch_size",
        )
        return {n: getattr(self, n) for n in names}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size) if self.patch_size is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}")
        d = dict(d)
        if d.get("patch_size") is not None:
            d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)


def run_paths(out: str | os.PathLike[str]) -> dict[str, Path]:
    """The files of a run: best checkpoint, rolling last checkpoint, JSONL metrics log."""
    best = Path(out)
    return {
        "best": best,
        "last": best.with_name(best.stem + ".last.pt"),
        "log": best.with_name(best.stem + ".jsonl"),
    }


class JsonlLog:
    """A JSON-lines metrics log, rewritten atomically on every append (it stays small).

    On resume, lines past the resumed step are dropped, so the log of a killed and resumed
    run reads like the log of an uninterrupted one.
    """

    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        self.path = path
        self.lines: list[str] = []
        if keep_until_step is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step", 0) <= keep_until_step:
                    self.lines.append(line)

    def append(self, record: dict[str, Any]) -> None:
        self.lines.append(json.dumps(record, sort_keys=True))
        write_text_atomic(self.path, "\n".join(self.lines) + "\n")


def _open_run(
    cfg: TrainConfig, data: CanonicalDataset, paths: dict[str, Path]
) -> dict[str, Any] | None:
    """The last checkpoint to resume from (checked against ``cfg``), or None for a fresh run."""
    last = paths["last"]
    if not cfg.resume:
        for p in (paths["best"], last):
            _check(not p.exists(), "out", f"{p} exists: pass --resume to continue it, or remove it")
        return None
    if not last.is_file():
        return None
    payload = read_checkpoint(last)
    if "train_state" not in payload or "train_config" not in payload["meta"]:
        raise CheckpointError(f"{last}: not a training checkpoint (no train state), cannot resume")
    saved = TrainConfig.from_dict(payload["meta"]["train_config"])
    changed = [
        f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)} (run has {getattr(saved, f.name)})"
        for f in fields(TrainConfig)
        if f.name not in RUNTIME_FIELDS and getattr(cfg, f.name) != getattr(saved, f.name)
    ]
    _check(not changed, "resume", f"{last} was trained with other options: {'; '.join(changed)}")
    _check(
        payload["meta"].get("data_fingerprint") == data.fingerprint,
        "resume",
        f"{last} was trained on other data than {data.path} (fingerprint differs)",
    )
    return payload


class _Validator:
    """Validation at checkpoints: volume-level val Dice, best model, rolling last checkpoint."""

    def __init__(
        self, cfg: TrainConfig, data: CanonicalDataset, paths: dict[str, Path], state: dict
    ) -> None:
        self.cfg, self.data, self.paths = cfg, data, paths
        self.best: dict[str, Any] = dict(
            state.get("best", {"dice": -1.0, "step": 0, "metrics": {}})
        )
        self.elapsed_s = float(state.get("elapsed_s", 0.0))  # training time of earlier sessions
        self._since = time.perf_counter()

    def meta(self, step: int, val: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "model": cfg.model,
            "train_config": cfg.to_dict(),
            "data": str(self.data.path),
            "data_fingerprint": self.data.fingerprint,
            "step": step,
            "best_step": self.best["step"],
            "metrics": {"val": val},
            "threshold": dict.fromkeys(REGIONS, 0.5),
            "patch_size": list(cfg.patch_size) if cfg.patch_size else None,
            "recipe": None,
        }

    def __call__(self, loop: TrainLoop) -> dict[str, Any]:
        """Validate ``loop.model``, save best (if improved) then last; return the log record."""
        t_val = time.perf_counter()
        model, step = loop.model, loop.step
        val = evaluate_model(
            model,
            self.data,
            "val",
            hd95=False,
            patch_size=self.cfg.patch_size,
            device=self.cfg.device,
        )["mean"]
        improved = val["dice"]["mean"] > self.best["dice"]
        if improved:
            self.best = {"dice": val["dice"]["mean"], "step": step, "metrics": val}
            save_checkpoint(self.paths["best"], model, self.meta(step, val))
        now = time.perf_counter()
        self.elapsed_s, self._since = self.elapsed_s + now - self._since, now
        train_state = {**loop.state_dict(), "best": self.best, "elapsed_s": self.elapsed_s}
        save_checkpoint(self.paths["last"], model, self.meta(step, val), train_state=train_state)
        return {
            "kind": "val",
            "step": step,
            "dice": val["dice"],
            "best": improved,
            "val_s": time.perf_counter() - t_val,
        }


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the training run ``cfg``; return a summary dict.

    Validates every ``val_every`` steps and at the end: the best model by val mean Dice goes
    to ``cfg.out``, the rolling last checkpoint (with train state) to ``<out stem>.last.pt``.
    Without ``resume``, an existing run at ``cfg.out`` is an error; with it, the last
    checkpoint (if any, else a fresh start) is continued to the same final step, with the
    same options (runtime ones excepted: `RUNTIME_FIELDS`); a finished run is a no-op.
    """
    cfg = cfg.resolved()
    assert cfg.steps is not None and cfg.batch_size is not None and cfg.val_every is not None
    data = as_dataset(cfg.data)
    _check(bool(data.split("train")), "data", f"{data.path}: no labelled training subjects")
    _check(bool(data.split("val")), "data", f"{data.path}: no labelled validation subjects")
    paths = run_paths(cfg.out)
    payload = _open_run(cfg, data, paths)

    torch.manual_seed(cfg.seed)
    model = zoo.create(cfg.model)
    if payload is not None:
        model.load_state_dict(payload["state_dict"])
    options = {k: v for k, v in cfg.loop_options().items() if k != "device"}
    loop = TrainLoop(
        model,
        data,
        "train",
        **options,
        seed=cfg.seed,
        device=torch.device(cfg.device),
        channels_last=cfg.channels_last,
        augment=cfg.augment,
    )
    state = payload["train_state"] if payload is not None else {}
    if payload is not None:
        loop.load_state_dict(state)
    start_step = loop.step
    validate = _Validator(cfg, data, paths, state)
    log = JsonlLog(paths["log"], keep_until_step=start_step if payload is not None else None)

    losses: list[float] = []
    postfix = {"loss": "-", "val_dice": "-"}
    t_log = time.perf_counter()
    with tqdm(total=cfg.steps, initial=start_step, desc=cfg.model, disable=not cfg.progress) as bar:
        while loop.step < cfg.steps:
            losses.append(loop.train_step())
            bar.update()
            step = loop.step
            if step % cfg.log_every == 0 or step == cfg.steps:
                record = {
                    "kind": "train",
                    "step": step,
                    "loss": float(np.mean(losses)),
                    "lr": loop.lr,
                    "samples_per_s": len(losses) * cfg.batch_size / (time.perf_counter() - t_log),
                }
                log.append(record)
                postfix["loss"] = f"{record['loss']:.4f}"
                losses, t_log = [], time.perf_counter()
            if step % cfg.val_every == 0 or step == cfg.steps:
                record = validate(loop)
                log.append(record)
                postfix["val_dice"] = f"{record['dice']['mean']:.4f}"
                t_log += record["val_s"]  # keep validation time out of samples/s
            bar.set_postfix(postfix, refresh=False)
    loop.close()
    return {
        "model": cfg.model,
        "out": str(paths["best"]),
        "last": str(paths["last"]),
        "log": str(paths["log"]),
        "steps": loop.step,
        "resumed_from_step": start_step if payload is not None else None,
        "best_step": validate.best["step"],
        "best_val": validate.best["metrics"],
        "train_time_s": validate.elapsed_s,
    }


# ------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig(data="", out="")
    p = argparse.ArgumentParser(
        prog="python -m unet.train",
        description="Train a zoo U-Net (BCE + Dice) on a canonical data set, with validation, "
        "best/last checkpoints, a JSONL log and exact resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def dims_help(text: str, key: str) -> str:
        return f"{text}; None: {DIMS_DEFAULTS[2][key]} for 2D, {DIMS_DEFAULTS[3][key]} for 3D"

    required = {"required": True, "default": argparse.SUPPRESS}
    p.add_argument("--data", **required, help="canonical HDF5 file (trains on its train split)")
    p.add_argument(
        "--out",
        **required,
        help="best checkpoint (.pt); the run also writes <stem>.last.pt, <stem>.jsonl",
    )
    p.add_argument("--model", default=d.model, help=f"zoo name: {', '.join(zoo.names())}")
    p.add_argument("--steps", type=int, default=d.steps, help=dims_help("optimizer steps", "steps"))
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=dims_help("batch size", "batch_size")
    )
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument(
        "--warmup-fraction",
        type=float,
        default=d.warmup_fraction,
        help="fraction of steps of linear LR warm-up before the cosine decay",
    )
    p.add_argument(
        "--amp",
        choices=AMP_MODES,
        default=d.amp,
        help="autocast: bf16 (CPU/CUDA) or fp16 (CUDA only, with a gradient scaler)",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help="seed of the initial weights and of the batches"
    )
    p.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    p.add_argument(
        "--val-every",
        type=int,
        default=d.val_every,
        help=dims_help("validate and checkpoint every N steps (and at the end)", "val_every"),
    )
    p.add_argument(
        "--log-every", type=int, default=d.log_every, help="write a JSONL train line every N steps"
    )
    p.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        default=d.patch_size,
        help="3D models only: training patch and validation sliding window; None: "
        + " ".join(map(str, DIMS_DEFAULTS[3]["patch_size"])),
    )
    p.add_argument(
        "--tumour-fraction",
        type=float,
        default=d.tumour_fraction,
        help="probability of a tumour slice (2D) / tumour-centred patch (3D)",
    )
    p.add_argument("--bce-weight", type=float, default=d.bce_weight, help="weight of the BCE term")
    p.add_argument(
        "--dice-weight", type=float, default=d.dice_weight, help="weight of the soft Dice term"
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=d.augment,
        help="random flips and 90-degree turns",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=d.channels_last,
        help="channels_last (2D) / channels_last_3d (3D) memory format (faster on CPU)",
    )
    p.add_argument(
        "--num-workers", type=int, default=d.num_workers, help="DataLoader worker processes"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue <out stem>.last.pt if it exists (same options)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=d.progress,
        help="tqdm progress bar with loss and val Dice",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    values = vars(args)
    if values["patch_size"] is not None:
        values["patch_size"] = tuple(values["patch_size"])
    cfg = TrainConfig(**values)
    try:
        summary = train(cfg)
    except TrainConfigError as exc:
        parser.error(f"argument --{exc.field.replace('_', '-')}: {exc.problem}")
    except (DataError, CheckpointError) as exc:
        parser.error(str(exc))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
