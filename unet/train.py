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
import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from unet import zoo
from unet.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from unet.data.canonical import REGIONS, CanonicalDataset, DataError
from unet.data.datasets import as_dataset
from unet.evaluate import evaluate_model
from unet.io import write_text_atomic
from unet.train_loop import (
    AMP_MODES,
    DIMS_DEFAULTS,
    RUNTIME_FIELDS,
    TrainConfigError,
    TrainLoop,
    _check,
    check_options,
)

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
