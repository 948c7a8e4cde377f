"""`TrainConfig`: everything that defines a training run, as primitives (stored in checkpoints).

    cfg = TrainConfig(data="runs/phantom.h5", out="runs/unet2d-small.pt").resolved()

``resolved()`` fills the per-dimensionality defaults (`DIMS_DEFAULTS`) and validates every
value (`TrainConfigError` names the field).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from unet import zoo
from unet.checkpoint import CheckpointError, read_checkpoint
from unet.config import UNetConfig
from unet.train_loop import (
    DIMS_DEFAULTS,
    RUNTIME_FIELDS,
    TrainConfigError,
    _check,
    check_options,
)
from unet.train_monitor import MONITORS

__all__ = ["RUNTIME_FIELDS", "TrainConfig", "TrainConfigError"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (primitives only; stored in checkpoints).

    ``steps``, ``batch_size``, ``val_every`` and ``patch_size`` left at None take the
    per-dimensionality defaults of `DIMS_DEFAULTS` (see `resolved`). ``steps`` is the step cap
    (and the length of the cosine schedule). ``patience``: early stopping -- the run stops once
    ``patience`` validations in a row have not raised the best val mean Dice by more than
    ``min_delta`` (None: run all ``steps``); ``monitor`` is the val mean Dice that early stopping
    and the best checkpoint follow: ``"tuned"`` at per-region thresholds searched on val,
    ``"fixed"`` at 0.5 (`unet.train_monitor`). ``amp="auto"``: bf16 autocast where the device
    computes bf16 natively, else fp32 (`unet.amp.resolve_amp`). ``architecture``: a checkpoint
    whose architecture (its `UNetConfig`, e.g. a structurally pruned one) is trained from fresh
    weights instead of ``model``'s -- the "pruned architecture from scratch" control of
    pruning studies (None: ``model``); ``model`` still names the run and its defaults.
    """

    data: str
    out: str
    model: str = "unet2d-small"
    steps: int | None = None
    batch_size: int | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    amp: str = "auto"
    seed: int = 0
    device: str = "cpu"
    val_every: int | None = None
    log_every: int = 25
    patience: int | None = None
    min_delta: float = 0.0
    monitor: str = "tuned"
    patch_size: tuple[int, ...] | None = None
    tumour_fraction: float = 0.5
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    augment: bool = True
    channels_last: bool = True
    num_workers: int = 0
    resume: bool = False
    progress: bool = True
    architecture: str | None = None

    def model_config(self) -> UNetConfig:
        """The architecture to train: ``architecture``'s stored config, else ``model``'s."""
        if self.architecture is None:
            try:
                return zoo.config(self.model)
            except ValueError as exc:
                raise TrainConfigError("model", str(exc)) from None
        try:
            return UNetConfig.from_dict(read_checkpoint(self.architecture)["config"])
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            raise TrainConfigError("architecture", str(exc)) from None

    def resolved(self) -> TrainConfig:
        """Defaults filled in for the model's dimensionality, and every value validated."""
        model_config = self.model_config()
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
        _check(
            cfg.patience is None or cfg.patience >= 1,
            "patience",
            f"must be >= 1 validations (or None: no early stopping), got {cfg.patience}",
        )
        _check(
            math.isfinite(cfg.min_delta) and 0 <= cfg.min_delta < 1,
            "min_delta",
            f"must be in [0, 1) (Dice units), got {cfg.min_delta}",
        )
        _check(
            cfg.monitor in MONITORS,
            "monitor",
            f"must be one of {', '.join(MONITORS)}, got {cfg.monitor!r}",
        )
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
