"""The files of a training run and how a run is reopened: paths, the JSONL metrics log and
the resume checks (`unet.train` uses them).

    paths = run_paths("runs/unet2d-small.pt")   # {"best", "last", "log"}
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from unet.checkpoint import CheckpointError, read_checkpoint
from unet.data.canonical import CanonicalDataset
from unet.io import write_text_atomic
from unet.train_config import RUNTIME_FIELDS, TrainConfig
from unet.train_loop import _check


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


def open_run(
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
