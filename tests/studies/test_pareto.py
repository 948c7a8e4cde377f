"""`studies.pareto`: the Pareto trials of a stored study, with their artifact paths."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from studies.pareto import load_study, pareto_models, sweep_info


def test_pareto_models_best_val_dice_first(synthetic_study: optuna.Study) -> None:
    models = pareto_models(synthetic_study._storage, "synthetic")
    assert [m.number for m in models] == [0, 1, 2]
    assert [m.val_dice["mean"] for m in models] == [0.90, 0.88, 0.86]
    m = models[1]
    assert m.label == "structured0.50+fp32" and m.recipe["prune"] == "structured"
    assert m.checkpoint == m.trial_dir / "checkpoint.pt"
    assert m.onnx == m.artifact_path == m.trial_dir / "model.onnx"
    assert (m.size_bytes, m.latency_ms) == (1_000_000, 6.0)
    assert m.threshold == {"WT": 0.5, "TC": 0.5, "ET": 0.5}
    assert m.metrics_file()["threshold_mode"] == "global"
    assert all(x.feasible for x in models)


def test_load_study_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such journal file"):
        load_study(f"journal:{tmp_path / 'missing.journal'}", "s")
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="other")
    with pytest.raises(ValueError, match=r"no study 's' in this storage \(it has: other\)"):
        load_study(storage, "s")
    with pytest.raises(ValueError, match="not written by studies.prune_sweep"):
        sweep_info(load_study(storage, "other"))
