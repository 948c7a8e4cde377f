"""The sweep's time estimate after the baseline, and the cached baseline's training speed."""

from __future__ import annotations

import json
from pathlib import Path

import optuna

from studies import defaults
from studies.sweep_setup import time_estimate
from studies.sweep_spec import SweepSpec
from unet import zoo
from unet.checkpoint import save_checkpoint


def spec(trials: int, finetune_steps: tuple[int, ...]) -> SweepSpec:
    return SweepSpec(
        storage="journal:x", study_name="s", study_dir="d", data="x.h5", baseline="b.pt",
        trials=trials, finetune_steps=finetune_steps,
    )  # fmt: skip


def test_time_estimate_adds_measurement_and_mean_finetune() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("baseline_measure_s", 10.0)
    # mean fine-tune 50 steps x 16 samples at 16 samples/s = 50 s; 60 s x 24 trials / 2 workers
    line = time_estimate(study, spec(24, (0, 50, 100)), workers=2, train_samples_per_s=16.0)
    assert "~60 s per trial" in line and "~12 min for 24 trial(s) on 2 worker(s)" in line
    unknown = time_estimate(study, spec(24, (0, 50, 100)), workers=1, train_samples_per_s=None)
    assert "~10 s per trial" in unknown and "fine-tune not estimated" in unknown


def test_training_speed_reads_the_cached_run(tmp_path: Path) -> None:
    ckpt = save_checkpoint(
        tmp_path / "b.pt", zoo.create("unet2d-tiny"), {"train_config": {"batch_size": 8}}
    )
    assert defaults.training_speed(ckpt) is None  # no .done.json: not a finished cached run
    (tmp_path / "b.done.json").write_text(json.dumps({"steps": 100, "train_time_s": 50.0}))
    assert defaults.training_speed(ckpt) == 16.0  # no log: the whole run's rate
    records = [{"kind": "setup"}, *({"kind": "train", "samples_per_s": v} for v in (30, 90, 60))]
    records.append({"kind": "val", "samples_per_s": 1.0})  # only optimizer steps count
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert defaults.training_speed(ckpt) == 60.0  # the log's median: validation time excluded
