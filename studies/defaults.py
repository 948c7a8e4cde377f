"""The sweep's embedded default: phantom data and a trained baseline, cached by their settings.

    from studies.defaults import ensure_baseline, ensure_phantom
    data = ensure_phantom("runs/sweep/cache")                       # phantom-<key>.h5
    ckpt = ensure_baseline("runs/sweep/cache", "unet2d-small", data)  # unet2d-small-<key>.pt

Each cached file is named by a hash of the settings that produced it (the `PhantomConfig`; the
`TrainConfig` without its paths, plus the data fingerprint), so changing a setting makes a new
file instead of silently reusing a stale one, and an unchanged setting is never redone. A
baseline counts as cached only once its training run finished (a ``.done.json`` marker); a run
killed half-way is resumed (``unet.train`` resume), not restarted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from unet import zoo
from unet.inference import round_up
from unet.phantom import PHANTOM_VERSION, PhantomConfig, write_phantom
from unet.train import train
from unet.train_config import RUNTIME_FIELDS, TrainConfig

DEFAULT_MODEL = "unet2d-small"
DEFAULT_OUT = "runs/sweep"
DEFAULT_TRIALS = 24
# The reference of the zero-argument study must be converged: more training must not improve it
# (a compression study against an under-trained baseline credits fine-tuning with what is really
# extra training). It trains with early stopping on the val mean Dice (`unet.train`'s default
# monitor: at per-region thresholds searched on val, so that stray voxels in tumour-free val
# subjects do not pick the checkpoint): validation every BASELINE_VAL_EVERY steps, stop after
# BASELINE_PATIENCE validations without a gain above BASELINE_MIN_DELTA, at the latest at
# BASELINE_MAX_STEPS (the length of the cosine schedule). Measured on the default phantom with
# 64x64 crops (README "Fifth measurement session"): a 1500-step cap with validation every 100
# stopped on a noisy plateau at step 1300 and a 3000-step run beat it on test by 3.5 Dice points
# [+1.6, +8.4]; hence 3000 steps, validated every 300 (patience 4 = 1200 steps).
BASELINE_MAX_STEPS = 3000
BASELINE_VAL_EVERY = 300
BASELINE_PATIENCE = 4
BASELINE_MIN_DELTA = 0.002
# 2D baselines train on tumour-centred crops of this size (validation stays on whole slices),
# and so do the fine-tunes of every trial (they reuse the checkpoint's crop size): a step of
# `unet2d-small` on 16 crops of 64x64 costs a fifth of one on 16 slices of 128x128 here, and
# the crop-trained baseline was non-inferior on val to the full-slice one (paired; README "Fifth
# measurement session").
BASELINE_CROP_2D = (64, 64)


def default_phantom() -> PhantomConfig:
    """The phantom of the zero-argument sweep: `unet.phantom`'s default data set."""
    return PhantomConfig()


def baseline_crop(model: str, slice_shape: tuple[int, int]) -> tuple[int, int] | None:
    """The training crop of a 2D baseline: `BASELINE_CROP_2D`, shrunk to the (divisor-padded)
    slices of the data; None (whole slices) for 3D models or slices no larger than the crop."""
    cfg = zoo.config(model)
    if cfg.spatial_dims != 2:
        return None
    padded = tuple(round_up(n, cfg.divisor) for n in slice_shape)
    crop = tuple(min(c, n) for c, n in zip(BASELINE_CROP_2D, padded, strict=True))
    return None if crop == padded else (crop[0], crop[1])


def default_training(
    model: str,
    data: str,
    out: str,
    *,
    device: str,
    seed: int,
    patch_size: tuple[int, ...] | None = None,
) -> TrainConfig:
    """The baseline training of the zero-argument sweep: `unet.train`'s defaults (``--amp auto``)
    with early stopping on val (`BASELINE_PATIENCE`), a step cap (`BASELINE_MAX_STEPS`) and, in
    2D, training crops ``patch_size`` (`baseline_crop`)."""
    return TrainConfig(
        data=data,
        out=out,
        model=model,
        steps=BASELINE_MAX_STEPS,
        val_every=BASELINE_VAL_EVERY,
        patience=BASELINE_PATIENCE,
        min_delta=BASELINE_MIN_DELTA,
        device=device,
        seed=seed,
        patch_size=patch_size,
        progress=True,
    )


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able settings dict."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_phantom(cache: str | os.PathLike[str], cfg: PhantomConfig | None = None) -> Path:
    """The cached phantom file for ``cfg`` (default `default_phantom`), generated if missing."""
    cfg = cfg or default_phantom()
    key = settings_key({"phantom_version": PHANTOM_VERSION, **cfg.to_dict()})
    path = Path(cache) / f"phantom-{key}.h5"
    if not path.is_file():
        print(f"generating the phantom ({cfg.subjects} subjects) -> {path}", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_phantom(path, cfg, progress=True)
    return path


def ensure_baseline(
    cache: str | os.PathLike[str],
    model: str,
    data: str | os.PathLike[str],
    *,
    device: str = "cpu",
    seed: int = 0,
) -> Path:
    """The cached baseline checkpoint for ``model`` trained on ``data``, trained if missing."""
    from unet.data.canonical import CanonicalDataset

    dataset = CanonicalDataset(data)
    fingerprint = dataset.fingerprint
    shapes = [dataset.shape(sid)[1:] for sid in dataset.split("train")]
    crop = baseline_crop(model, (max(h for h, _ in shapes), max(w for _, w in shapes)))
    probe = default_training(
        model, str(data), "x.pt", device=device, seed=seed, patch_size=crop
    ).resolved()
    settings = {
        k: v
        for k, v in probe.to_dict().items()
        if k not in (*RUNTIME_FIELDS, "data", "out", "progress")
    }
    key = settings_key({"data_fingerprint": fingerprint, **settings})
    path = Path(cache) / f"{model}-{key}.pt"
    done = path.with_name(path.stem + ".done.json")
    if done.is_file() and path.is_file():
        return path
    from unet.io import write_text_atomic

    print(f"training the {model} baseline -> {path}", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = default_training(model, str(data), str(path), device=device, seed=seed, patch_size=crop)
    summary = train(TrainConfig.from_dict({**cfg.to_dict(), "resume": True}))
    write_text_atomic(done, json.dumps(summary, indent=2))
    return path


def training_speed(checkpoint: str | os.PathLike[str]) -> float | None:
    """Training samples per second of a cached baseline run, or None if it is not one.

    The median ``samples_per_s`` of the run's JSONL log (time in optimizer steps only: what a
    fine-tune costs per sample), else the whole run's rate from its ``.done.json`` (which counts
    the validation passes too, so it underestimates the speed).
    """
    path = Path(checkpoint)
    done = path.with_name(path.stem + ".done.json")
    try:
        summary = json.loads(done.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    log = path.with_name(path.stem + ".jsonl")
    try:
        rates = [
            float(r["samples_per_s"])
            for r in map(json.loads, log.read_text(encoding="utf-8").splitlines())
            if r.get("kind") == "train"
        ]
        if rates:
            return float(sorted(rates)[len(rates) // 2])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        from unet.checkpoint import read_checkpoint

        batch = read_checkpoint(path)["meta"]["train_config"]["batch_size"]
        return float(summary["steps"]) * float(batch) / float(summary["train_time_s"])
    except (OSError, KeyError, ValueError, ZeroDivisionError, TypeError):
        return None
