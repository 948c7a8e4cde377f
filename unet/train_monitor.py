"""What a training run validates and monitors: volume-level val Dice, at threshold 0.5 and at
per-region thresholds searched on val.

    val = validation_scores(model, data, patch_size=None, device="cpu", tuned=True)
    monitor_value(val, "tuned")   # the val mean Dice that early stopping and "best" follow

Why ``tuned`` is the default monitor: on BraTS-style data a few stray voxels in a tumour-free
val subject make its Dice 0 at threshold 0.5 (the BraTS rule), so the val mean Dice at 0.5 jumps
by several points between validations of a still-improving model and picks checkpoints by noise
(measured: a run's best-at-0.5 checkpoint at step 800 scored val 0.942 after the per-region
threshold and component search of `compress.apply`, its last one at step 1400 0.959). Searching
the per-region thresholds on the same val probabilities (`unet.threshold`, a few seconds) scores
what the model can do once calibrated, which is how every model is used downstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from unet.data.canonical import CanonicalDataset
from unet.evaluate import collect_probabilities, evaluate_probabilities
from unet.inference import torch_forward
from unet.models import UNet
from unet.threshold import search_thresholds

if TYPE_CHECKING:
    from unet.train_config import TrainConfig

MONITORS = ("tuned", "fixed")
MONITOR_TEXT = {
    "tuned": "val mean Dice (volume level) at per-region thresholds searched on val",
    "fixed": "val mean Dice (volume level, threshold 0.5)",
}


def validation_scores(
    model: UNet,
    data: CanonicalDataset,
    *,
    patch_size: Sequence[int] | None,
    device: str,
    tuned: bool,
) -> dict[str, Any]:
    """Val metrics of ``model``: ``{"dice": {WT, TC, ET, mean}}`` at threshold 0.5 and, with
    ``tuned``, ``"tuned": {"dice": {...}, "threshold": {WT, TC, ET}}`` at per-region thresholds
    searched on the same probabilities. The model is left in the mode it was in."""
    was_training = model.training
    cfg = model.config
    forward = torch_forward(model, device)
    items = collect_probabilities(
        forward, data, data.split("val"), cfg.spatial_dims, cfg.divisor, patch_size
    )
    scores: dict[str, Any] = {
        "dice": evaluate_probabilities(items, 0.5, hd95=False)["mean"]["dice"]
    }
    if tuned:
        result = search_thresholds(items, mode="per-region")
        scores["tuned"] = {"dice": dict(result.val_dice), "threshold": dict(result.thresholds)}
    if was_training:
        model.train()
    return scores


def monitor_value(scores: dict[str, Any], monitor: str) -> float:
    """The monitored val mean Dice of `validation_scores` output."""
    return float((scores["tuned"] if monitor == "tuned" else scores)["dice"]["mean"])


def stopping_rule(cfg: TrainConfig) -> dict[str, Any]:
    """The stopping rule of a run, as recorded in its checkpoints' ``meta["stopping"]``."""
    rule = (
        f"stop when {cfg.patience} validations in a row (every {cfg.val_every} steps) do not "
        f"raise the best val mean Dice by more than {cfg.min_delta}, or at {cfg.steps} steps"
        if cfg.patience is not None
        else f"fixed length: {cfg.steps} steps"
    )
    return {
        "rule": rule,
        "monitor": MONITOR_TEXT[cfg.monitor],
        "patience": cfg.patience,
        "min_delta": cfg.min_delta,
        "val_every": cfg.val_every,
        "max_steps": cfg.steps,
    }


def val_line(cfg: TrainConfig, record: dict[str, Any], loss: str) -> str:
    """The line a validation prints when there is no progress bar (output not a terminal)."""
    tuned = "tuned" in record
    dice = record["tuned"]["dice"] if tuned else record["dice"]
    regions = " ".join(f"{r} {dice[r]:.4f}" for r in ("WT", "TC", "ET"))
    best = ", best so far" if record.get("best") else ""
    at = "searched thresholds" if tuned else "threshold 0.5"
    return (
        f"{cfg.model} step {record['step']}/{cfg.steps}: loss {loss}, val mean Dice "
        f"{dice['mean']:.4f} ({regions}, {at}){best}, {record['val_s']:.0f} s"
    )
