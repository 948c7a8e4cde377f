"""Train a zoo U-Net with BCE + Dice: `train`, a run with validation, early stopping,
checkpoints, a metrics log and exact resume (the bare loop is `unet.train_loop.fit`).

    python -m unet.train --data runs/phantom.h5 --out runs/unet2d-small.pt
    python -m unet.train --model unet3d-small --data runs/phantom.h5 --out runs/unet3d-small.pt
    python -m unet.train --data runs/phantom.h5 --out runs/unet2d-small.pt --resume   # after a kill

``--steps`` is the step cap; ``--patience N`` stops earlier once N validations in a row have
not improved the val mean Dice (early stopping; the rule and where the run stopped are recorded
in the checkpoints' ``meta["stopping"]``). ``--amp auto`` (the default) trains with bf16
autocast where the CPU or GPU computes bf16 natively and says which it chose.

A run writes three files next to ``--out``:

* ``<out>``: the best model on the validation split (volume-level mean Dice at per-region
  thresholds searched on val; ``--monitor fixed``: at threshold 0.5; `unet.train_monitor`),
* ``<out stem>.last.pt``: the rolling last checkpoint, with the optimizer, scheduler, step
  and RNG states, written at every validation; ``--resume`` continues it to the same final
  step and ends with the same weights as an uninterrupted run,
* ``<out stem>.jsonl``: one JSON line per log interval (loss, lr, samples/s) and validation.

2D models train on random axial slices (tumour slices oversampled) or, with ``--patch-size H
W``, on crops of them (centred on a tumour pixel for tumour slices; validation stays on whole
slices), 3D models on random patches (tumour-centred with the same probability). The optimizer
is AdamW with a linear warm-up and cosine decay of the learning rate. Batches are a pure function of
``(seed, draw number)`` (`unet.data.datasets`), so resuming needs no sampler state beyond
the step. ``--amp bf16`` uses bfloat16 autocast (CPU or CUDA); ``--amp fp16`` uses float16
autocast with a gradient scaler and is refused on the CPU (about 70x slower there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from unet import zoo
from unet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from unet.data.canonical import REGIONS, CanonicalDataset, DataError
from unet.data.datasets import as_dataset
from unet.killpoints import killpoint
from unet.models import UNet
from unet.train_config import TrainConfig
from unet.train_loop import AMP_MODES, DIMS_DEFAULTS, TrainConfigError, TrainLoop, _check
from unet.train_monitor import (
    MONITORS,
    monitor_value,
    stopping_rule,
    val_line,
    validation_scores,
)
from unet.train_run import JsonlLog, open_run, run_paths

# ------------------------------------------------------------------ a full run


class _Validator:
    """Validation at checkpoints: volume-level val Dice, best model, rolling last checkpoint,
    and the early-stopping decision."""

    def __init__(
        self, cfg: TrainConfig, data: CanonicalDataset, paths: dict[str, Path], state: dict
    ) -> None:
        self.cfg, self.data, self.paths = cfg, data, paths
        self.best: dict[str, Any] = dict(
            state.get("best", {"dice": -1.0, "step": 0, "metrics": {}})
        )
        self.stopped: dict[str, Any] | None = state.get("stopped")
        self.amp = state.get("amp")
        self.elapsed_s = float(state.get("elapsed_s", 0.0))  # training time of earlier sessions
        self._since = time.perf_counter()

    def meta(self, step: int, val: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "model": cfg.model,
            "train_config": cfg.to_dict(),
            "amp": self.amp,
            "data": str(self.data.path),
            "data_fingerprint": self.data.fingerprint,
            "step": step,
            "best_step": self.best["step"],
            "metrics": {"val": val},
            "threshold": dict.fromkeys(REGIONS, 0.5),
            "patch_size": list(cfg.patch_size) if cfg.patch_size else None,
            "stopping": {**stopping_rule(cfg), **(self.stopped or {})},
            "recipe": None,
        }

    def plateaued(self, step: int) -> bool:
        """Early stopping: ``patience`` validations since the last improvement."""
        cfg = self.cfg
        assert cfg.val_every is not None
        return cfg.patience is not None and step - self.best["step"] >= cfg.patience * cfg.val_every

    def __call__(self, loop: TrainLoop) -> dict[str, Any]:
        """Validate ``loop.model``, save best (if improved) then last; return the log record."""
        t_val = time.perf_counter()
        model, step = loop.model, loop.step
        val = validation_scores(
            model,
            self.data,
            patch_size=self.cfg.patch_size,
            device=self.cfg.device,
            tuned=self.cfg.monitor == "tuned",
        )
        value = monitor_value(val, self.cfg.monitor)
        improved = value > self.best["dice"] + self.cfg.min_delta
        if improved:
            self.best = {"dice": value, "step": step, "metrics": val}
            save_checkpoint(self.paths["best"], model, self.meta(step, val))
        if self.plateaued(step):
            self.stopped = {"stopped_at_step": step, "reason": "plateau"}
        elif step >= (self.cfg.steps or 0):
            self.stopped = {"stopped_at_step": step, "reason": "step cap"}
        now = time.perf_counter()
        self.elapsed_s, self._since = self.elapsed_s + now - self._since, now
        train_state = {
            **loop.state_dict(),
            "best": self.best,
            "elapsed_s": self.elapsed_s,
            "stopped": self.stopped,
            "amp": self.amp,
        }
        save_checkpoint(self.paths["last"], model, self.meta(step, val), train_state=train_state)
        if self.stopped is not None:  # the best checkpoint learns how the run ended
            best_model, best_meta = load_checkpoint(self.paths["best"])
            best_meta["stopping"] = {**stopping_rule(self.cfg), **self.stopped}
            save_checkpoint(self.paths["best"], best_model, best_meta)
        return {
            "kind": "val",
            "step": step,
            "dice": val["dice"],
            **({"tuned": val["tuned"]} if "tuned" in val else {}),
            "monitored": value,
            "best": improved,
            "val_s": time.perf_counter() - t_val,
        }


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the training run ``cfg``; return a summary dict.

    Validates every ``val_every`` steps and at the end: the best model by the monitored val
    mean Dice (``monitor``: at per-region thresholds searched on val, or at 0.5) goes
    to ``cfg.out``, the rolling last checkpoint (with train state) to ``<out stem>.last.pt``.
    With ``patience`` the run stops early once val mean Dice has plateaued (`stopping_rule`,
    recorded in both checkpoints). Without ``resume``, an existing run at ``cfg.out`` is an
    error; with it, the last checkpoint (if any, else a fresh start) is continued with the same
    options (runtime ones excepted: `RUNTIME_FIELDS`); a finished run is a no-op.
    """
    cfg = cfg.resolved()
    assert cfg.steps is not None and cfg.batch_size is not None and cfg.val_every is not None
    data = as_dataset(cfg.data)
    _check(bool(data.split("train")), "data", f"{data.path}: no labelled training subjects")
    _check(bool(data.split("val")), "data", f"{data.path}: no labelled validation subjects")
    paths = run_paths(cfg.out)
    payload = open_run(cfg, data, paths)

    torch.manual_seed(cfg.seed)
    model = UNet(cfg.model_config())
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
    validate.amp = {"requested": cfg.amp, "used": loop.amp, "reason": loop.amp_reason}
    log = JsonlLog(paths["log"], keep_until_step=start_step if payload is not None else None)
    print(
        f"amp {cfg.amp} -> {loop.amp} ({loop.amp_reason}); {stopping_rule(cfg)['rule']}",
        file=sys.stderr,
    )
    if payload is None:
        log.append({"kind": "setup", "step": 0, "amp": validate.amp, **stopping_rule(cfg)})

    losses: list[float] = []
    postfix = {"loss": "-", "val_dice": "-"}
    t_log = time.perf_counter()
    with tqdm(
        total=cfg.steps, initial=start_step, desc=cfg.model, disable=None if cfg.progress else True
    ) as bar:
        while validate.stopped is None and loop.step < cfg.steps:
            killpoint("train.step")
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
                postfix["val_dice"] = f"{record['monitored']:.4f}"
                if bar.disable and cfg.progress:  # a log file gets one line per validation
                    print(val_line(cfg, record, postfix["loss"]), file=sys.stderr, flush=True)
                t_log += record["val_s"]  # keep validation time out of samples/s
            bar.set_postfix(postfix, refresh=False)
    loop.close()
    if validate.stopped is not None and validate.stopped["stopped_at_step"] > start_step:
        log.append({"kind": "stop", "step": loop.step, **validate.stopped})
    return {
        "model": cfg.model,
        "out": str(paths["best"]),
        "last": str(paths["last"]),
        "log": str(paths["log"]),
        "steps": loop.step,
        "resumed_from_step": start_step if payload is not None else None,
        "best_step": validate.best["step"],
        "best_val": validate.best["metrics"],
        "stopping": {**stopping_rule(cfg), **(validate.stopped or {})},
        "amp": validate.amp,
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
    p.add_argument(
        "--architecture",
        default=d.architecture,
        metavar="CHECKPOINT",
        help="train this checkpoint's architecture (e.g. a pruned one) from fresh weights "
        "instead of --model's: the from-scratch control of a pruning study; --model still "
        "names the run's defaults",
    )
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
        help="autocast: auto (bf16 where the CPU/GPU computes it natively, else fp32 on CPU and "
        "fp16 on older GPUs), bf16 (CPU/CUDA), fp16 (CUDA only, with a gradient scaler), off",
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
        "--patience",
        type=int,
        default=d.patience,
        help="early stopping: stop after this many validations without a val mean-Dice gain "
        "above --min-delta (default: none, train all --steps)",
    )
    p.add_argument(
        "--min-delta",
        type=float,
        default=d.min_delta,
        help="smallest val mean-Dice gain that counts as an improvement (Dice units)",
    )
    p.add_argument(
        "--monitor",
        choices=MONITORS,
        default=d.monitor,
        help="val mean Dice that early stopping and the best checkpoint follow: at per-region "
        "thresholds searched on val (tuned) or at 0.5 (fixed)",
    )
    p.add_argument(
        "--log-every", type=int, default=d.log_every, help="write a JSONL train line every N steps"
    )
    p.add_argument(
        "--patch-size",
        type=int,
        nargs="+",
        metavar="N",
        default=d.patch_size,
        help="3D: D H W of the training patches and the validation sliding window (None: "
        + " ".join(map(str, DIMS_DEFAULTS[3]["patch_size"]))
        + "); 2D: H W of tumour-centred training crops (None: whole slices; validation is "
        "always on whole slices)",
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
