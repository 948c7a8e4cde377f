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

from unet.phantom import PHANTOM_VERSION, PhantomConfig, write_phantom
from unet.train import TrainConfig, train
from unet.train_config import RUNTIME_FIELDS

DEFAULT_MODEL = "unet2d-small"
DEFAULT_OUT = "runs/sweep"
DEFAULT_TRIALS = 24
# The zero-argument run must finish (phantom, baseline, 24 trials, report) in ~15 minutes on a
# 2-core CPU, so its baseline trains for fewer steps than `unet.train`'s default (the cosine
# schedule is compressed accordingly). Pass --baseline to compress a fully trained model.
BASELINE_STEPS = 500
BASELINE_VAL_EVERY = 250


def default_phantom() -> PhantomConfig:
    """The phantom of the zero-argument sweep: `unet.phantom`'s default data set."""
    return PhantomConfig()


def default_training(model: str, data: str, out: str, *, device: str, seed: int) -> TrainConfig:
    """The baseline training of the zero-argument sweep: `unet.train`'s defaults except the
    number of steps (`BASELINE_STEPS`)."""
    return TrainConfig(
        data=data,
        out=out,
        model=model,
        steps=BASELINE_STEPS,
        val_every=BASELINE_VAL_EVERY,
        device=device,
        seed=seed,
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

    fingerprint = CanonicalDataset(data).fingerprint
    probe = default_training(model, str(data), "x.pt", device=device, seed=seed).resolved()
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
    cfg = default_training(model, str(data), str(path), device=device, seed=seed)
    summary = train(TrainConfig.from_dict({**cfg.to_dict(), "resume": True}))
    write_text_atomic(done, json.dumps(summary, indent=2))
    return path
