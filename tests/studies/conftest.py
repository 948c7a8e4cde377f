"""Fixtures of the studies tests: a tiny trained baseline, sweep arguments, a synthetic study,
a throw-away PostgreSQL server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from studies.pareto import CONSTRAINT, DIRECTIONS
from tests.postgres import PostgresServer, missing_reason
from unet.data.canonical import REGIONS

POSTGRES_URL_ENV = "UNET_COMPRESS_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL database for this session: a throw-away server (`tests.postgres`),
    or the server named by ``UNET_COMPRESS_TEST_POSTGRES_URL``. Without server binaries: a
    skip with the reason, except under CI (``CI`` set), where it is a failure."""
    external = os.environ.get(POSTGRES_URL_ENV)
    if external:
        yield external
        return
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)
    server = PostgresServer.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_baseline(blob_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """unet2d-tiny trained for 40 steps on the blob data (val mean Dice well above 0)."""
    from unet.train import TrainConfig, train

    out = tmp_path_factory.mktemp("baseline") / "tiny.pt"
    train(
        TrainConfig(
            data=str(blob_data),
            out=str(out),
            model="unet2d-tiny",
            steps=40,
            batch_size=8,
            val_every=40,
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def untrained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised unet2d-tiny checkpoint (for tests that never run a model)."""
    from unet import zoo
    from unet.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "untrained.pt"
    save_checkpoint(path, zoo.create("unet2d-tiny"), {})
    return path


@pytest.fixture
def fast_argv(blob_data: Path, untrained_ckpt: Path, tmp_path: Path) -> list[str]:
    """Sweep arguments for tests with a fake compressor (no training needed)."""
    return [
        "--data", str(blob_data),
        "--baseline", str(untrained_ckpt),
        "--threads", "1",
        "--study-name", "s",
        "--out", str(tmp_path / "out"),
        "--latency-backend", "ort_cpu",  # fake_metrics time ort_cpu and torch_cpu
        "--round-to", "8",  # not this CPU's SIMD width: the same search space on every machine
    ]  # fmt: skip


@pytest.fixture
def sweep_argv(blob_data: Path, tiny_baseline: Path, tmp_path: Path) -> list[str]:
    """Arguments of a quick sweep on the tiny data and baseline (one thread, study "s")."""
    return [
        "--data", str(blob_data),
        "--baseline", str(tiny_baseline),
        "--threads", "1",
        "--study-name", "s",
        "--out", str(tmp_path / "out"),
        "--latency-backend", "ort_cpu",  # the ORT artifacts these tests open
        "--round-to", "8",  # not this CPU's SIMD width: the same search space on every machine
    ]  # fmt: skip


def fake_metrics(size: int, latency: float, dice: float, params: int = 1000) -> dict[str, Any]:
    """An M dict as `compress.apply` writes it."""
    return {
        "params": params,
        "nonzero_params": params,
        "macs": 10 * params,
        "size_bytes": size,
        "size_compressed_bytes": int(size * 0.9),
        "latency_ms": {"ort_cpu": {"median": latency, "iqr": 0.01}, "torch_cpu": {"median": 2 * latency, "iqr": 0.02}},
        "threshold": dict.fromkeys(REGIONS, 0.5),
        "val_dice": {**dict.fromkeys(REGIONS, dice), "mean": dice},
    }  # fmt: skip


@pytest.fixture
def make_metrics() -> Any:
    """`fake_metrics` as a fixture, for the test modules."""
    return fake_metrics


def threshold_curve(peak: float) -> dict[str, Any]:
    grid = [i / 20 for i in range(1, 20)]
    curve = {r: {"threshold": grid, "dice": [1 - abs(t - peak) for t in grid]} for r in REGIONS}
    curve["mean"] = curve["WT"]
    return curve


@pytest.fixture
def synthetic_study(tmp_path: Path) -> optuna.Study:
    """An in-memory sweep study of 6 hand-made trials (3 Pareto, 1 infeasible) with folders.

    Trial values (val Dice, size bytes, ORT ms): 0 (0.90, 4e6, 10) Pareto; 1 (0.88, 1e6, 6)
    Pareto; 2 (0.86, 5e5, 8) Pareto; 3 (0.87, 2e6, 12) dominated by 1; 4 (0.30, 1e5, 2)
    infeasible; 5 (0.86, 4e6, 11) dominated by 0.
    """
    study = optuna.create_study(directions=list(DIRECTIONS), study_name="synthetic")
    base = fake_metrics(4_000_000, 10.0, 0.90, params=10_000)
    study.set_user_attr("baseline_metrics", base)
    baseline_dir = tmp_path / "baseline"
    baseline_dir.mkdir()
    record = {"threshold_curve": threshold_curve(0.5), "threshold_mode": "per-region"}
    (baseline_dir / "metrics.json").write_text(json.dumps(record))
    study.set_user_attr(
        "sweep",
        {
            "data": "none.h5",
            "baseline": "none.pt",
            "baseline_dir": str(baseline_dir),
            "baseline_recipe": {"threshold": "per-region"},
            "max_dice_drop": 0.05,
            "threads": 1,
        },
    )
    table = [
        ("none", 0.0, 0, "fp32", 0.90, 4_000_000, 10.0, 10_000),
        ("structured", 0.5, 50, "fp32", 0.88, 1_000_000, 6.0, 2_500),
        ("unstructured", 0.8, 0, "int8", 0.86, 500_000, 8.0, 2_000),
        ("pairs", 0.0, 50, "fp16", 0.87, 2_000_000, 12.0, 4_000),
        ("structured", 0.8, 0, "int8", 0.30, 100_000, 2.0, 400),
        ("unstructured", 0.3, 50, "fp32", 0.86, 4_000_000, 11.0, 7_000),
    ]
    for number, (method, ratio, ft, precision, dice, size, lat, params) in enumerate(table):
        trial_dir = tmp_path / "trials" / str(number)
        trial_dir.mkdir(parents=True)
        record = {
            "threshold_curve": threshold_curve(0.3 + 0.05 * number),
            "threshold_mode": "global",
        }
        (trial_dir / "metrics.json").write_text(json.dumps(record))
        recipe = {"prune": method, "ratio": ratio, "finetune_steps": ft, "precision": precision}
        study.add_trial(
            optuna.trial.create_trial(
                values=[dice, size, lat],
                params={"prune": method},
                distributions={"prune": CategoricalDistribution(["none", "structured", "unstructured", "pairs"])},
                user_attrs={
                    "recipe": recipe,
                    "label": f"{method}{ratio:.2f}+{precision}",
                    "metrics": fake_metrics(size, lat, dice, params),
                    "trial_dir": str(trial_dir),
                    "artifact": "model.onnx",
                },
                constraints={CONSTRAINT: (0.90 - dice) - 0.05},
            )
        )  # fmt: skip
    return study
