"""Figures from a stored study: what is highlighted, where the optima are, the files written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from studies.figures import (
    log_axis,
    pareto_front_figure,
    pruning_curves_figure,
    save_figure,
    threshold_curves_figure,
)
from studies.figures_overlay import overlay_models
from studies.pareto import trial_models


def _collection(ax, label: str) -> np.ndarray:  # noqa: ANN001
    for c in ax.collections:
        if c.get_label() == label:
            return np.asarray(c.get_offsets())
    raise AssertionError(f"no scatter labelled {label!r}")


def test_pareto_set_is_the_feasible_three_objective_front(synthetic_study: optuna.Study) -> None:
    assert {t.number for t in synthetic_study.best_trials} == {0, 1, 2}
    assert [m.number for m in trial_models(synthetic_study, pareto_only=True)] == [0, 1, 2]
    assert [m.feasible for m in trial_models(synthetic_study)] == [True] * 4 + [False, True]


def test_pareto_front_figure(synthetic_study: optuna.Study) -> None:
    fig = pareto_front_figure(synthetic_study)
    size_ax, latency_ax = fig.axes[:2]
    pareto = _collection(size_ax, "Pareto set (3 objectives)")
    assert sorted(map(tuple, pareto)) == sorted([(4.0, 0.90), (1.0, 0.88), (0.5, 0.86)])
    assert sorted(_collection(latency_ax, "Pareto set (3 objectives)")[:, 0]) == [6.0, 8.0, 10.0]
    assert _collection(size_ax, "infeasible trial").tolist() == [[0.1, 0.30]]
    assert len(_collection(size_ax, "trial")) == 2  # dominated, feasible: 3 and 5
    assert _collection(size_ax, "baseline").tolist() == [[4.0, 0.90]]
    assert size_ax.get_xscale() == "log" and "MB" in size_ax.get_xlabel()
    assert "ms" in latency_ax.get_xlabel()
    assert {t.get_text() for t in size_ax.texts} == {"#0", "#1", "#2"}


def test_pareto_front_plots_the_dice_objective_of_new_studies(
    synthetic_study: optuna.Study,
) -> None:
    from studies.pareto import OBJECTIVES

    info = synthetic_study.user_attrs["sweep"]
    synthetic_study.set_user_attr("sweep", {**info, "objectives": list(OBJECTIVES)})
    for t in synthetic_study.get_trials():  # hand-made: objective values = val means here
        assert t.values[0] == t.user_attrs["metrics"]["val_dice"]["mean"]
    size_ax = pareto_front_figure(synthetic_study).axes[0]
    assert _collection(size_ax, "baseline").tolist() == [[4.0, 0.0]]  # no change vs itself
    assert "lower end of the paired 95% CI" in size_ax.get_ylabel()
    pareto = _collection(size_ax, "Pareto set (3 objectives)")
    assert sorted(pareto[:, 1]) == [0.86, 0.88, 0.90]  # the trials' stored objective values


def test_pruning_curves_one_panel_per_method(synthetic_study: optuna.Study) -> None:
    fig = pruning_curves_figure(synthetic_study)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["unstructured (2 trials)", "structured (2 trials)", "pairs (1 trial)"]
    structured = fig.axes[1]
    # one scatter per trial plus the baseline star; x = baseline / non-zero params
    xs = sorted(float(c.get_offsets()[0][0]) for c in structured.collections)
    assert xs == pytest.approx([1.0, 4.0, 25.0])


def test_threshold_curves_mark_both_optima(synthetic_study: optuna.Study) -> None:
    fig = threshold_curves_figure(synthetic_study)
    wt = fig.axes[0]
    curves = [ln for ln in wt.lines if ln.get_linestyle() == "-"]
    assert len(curves) == 4  # the baseline and one per Pareto model
    assert curves[0].get_color() == "black" and curves[0].get_label() == "baseline (per-region)"
    markers = {ln.get_marker(): ln for ln in wt.lines if ln.get_linestyle() in ("None", "")}
    assert set(markers) == {"o", "v"}
    # synthetic curve of trial 0 peaks at 0.3 in every region and in the mean
    per_region = [ln.get_xdata()[0] for ln in wt.lines if ln.get_marker() == "v"]
    assert per_region == pytest.approx([0.5, 0.3, 0.35, 0.4])


def test_a_folder_of_another_study_is_refused_not_drawn(synthetic_study: optuna.Study) -> None:
    """A trial folder whose metrics.json records another model (e.g. ``trial_dir`` resolved from
    another working directory) is an error naming it, not another study's curve."""
    model = trial_models(synthetic_study, pareto_only=True)[1]
    path = model.trial_dir / "metrics.json"
    record = json.loads(path.read_text())
    same = {"size_bytes": model.size_bytes, "val_dice": model.val_dice}
    path.write_text(json.dumps({**record, "compressed": same}))
    model.check_folder()  # the study's own folder
    assert threshold_curves_figure(synthetic_study) is not None
    path.write_text(json.dumps({**record, "compressed": {**same, "size_bytes": 280_004}}))
    with pytest.raises(ValueError, match=r"trials/1: holds another model than trial 1 .*280004"):
        threshold_curves_figure(synthetic_study)


def test_overlay_shows_best_and_smallest_pareto_model(synthetic_study: optuna.Study) -> None:
    assert [m.number for m in overlay_models(synthetic_study)] == [0, 2]


def test_save_figure_writes_png_and_pdf(synthetic_study: optuna.Study, tmp_path: Path) -> None:
    paths = save_figure(pareto_front_figure(synthetic_study), tmp_path / "figs", "front")
    assert [p.name for p in paths] == ["front.png", "front.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    assert paths[1].read_bytes()[:4] == b"%PDF"


@pytest.mark.parametrize(
    ("values", "expected_ticks"),
    [((0.026, 0.036), None), ((0.1, 40.0), [0.1, 0.2, 0.5, 1, 2, 5, 10, 20])],
)
def test_log_axis_labels_are_plain_numbers(values: tuple, expected_ticks: list | None) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(values, [0, 1])
    log_axis(ax, values)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all("e" not in s and "$" not in s for s in labels)
    if expected_ticks is not None:
        shown = [float(s) for s in labels]
        assert set(expected_ticks) <= set(shown)
    plt.close(fig)
