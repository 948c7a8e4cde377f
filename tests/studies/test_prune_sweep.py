"""The sweep: search space, bad input, failures, resume, four workers on one journal,
test-split isolation and the end-to-end run (report, figures, loadable Pareto models)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from compress.recipe import Recipe
from compress.teacher_cache import TeacherCache
from studies.prune_sweep import _parser, main
from studies.search_space import (
    DISTILL_WEIGHTS,
    FINETUNE_STEPS,
    PRUNE_ROUNDS,
    REGULARIZE_STRENGTHS,
    STRUCTURED_RATIOS,
    UNSTRUCTURED_RATIOS,
    suggest_recipe,
    unstructured_limit,
)
from studies.storage import WORKER_ATTR, journal_url, open_storage
from studies.trial_budget import SURPLUS_ATTR
from unet import zoo
from unet.data.canonical import CanonicalDataset


def _load(out: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=open_storage(journal_url(out / name / "study.journal"))
    )


def _states(study: optuna.Study, state: TrialState) -> list:
    return study.get_trials(deepcopy=False, states=(state,))


# ------------------------------------------------------------------ search space


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"prune": "none", "precision": "fp32", "threshold": "global"}, Recipe()),
        (
            {"prune": "unstructured", "unstructured_ratio": 0.9, "finetune_steps": 50,
             "prune_rounds": 2, "distill_weight": 1.0,
             "precision": "int8", "calibration": "entropy", "threshold": "per-region"},
            Recipe(prune="unstructured", ratio=0.9, finetune_steps=50, precision="int8",
                   calibration="entropy", threshold="per-region", prune_rounds=2,
                   distill_weight=1.0),
        ),
        (
            {"prune": "structured", "structured_ratio": 0.5, "round_to": 8, "finetune_steps": 0,
             "regularize_steps": 150, "regularize_strength": 0.01,
             "precision": "fp16", "threshold": "global"},
            Recipe(prune="structured", ratio=0.5, round_to=8, precision="fp16",
                   regularize_steps=150, regularize_strength=0.01),
        ),
        (
            {"prune": "pairs", "level_ratio_0": 0.0, "level_ratio_1": 0.25, "level_ratio_2": 0.150,
             "round_to": 1, "regularize_steps": 0, "finetune_steps": 150, "prune_rounds": 4,
             "distill_weight": 0.0, "precision": "fp32", "threshold": "global"},
            Recipe(prune="pairs", level_ratios=(0.0, 0.25, 0.150), finetune_steps=150,
                   prune_rounds=4),
        ),
        (
            {"prune": "structured", "structured_ratio": 0.5, "round_to": 8, "finetune_steps": 150,
             "regularize_steps": 150, "regularize_strength": 0.001, "prune_rounds": 4,
             "distill_weight": 3.0, "precision": "int8", "calibration": "minmax",
             "threshold": "per-region"},
            Recipe(prune="structured", ratio=0.5, round_to=8, finetune_steps=150, prune_rounds=4,
                   distill_weight=3.0, regularize_steps=150, regularize_strength=0.001,
                   precision="int8", threshold="per-region"),
        ),
    ],
)  # fmt: skip
def test_suggest_recipe_maps_parameters(params: dict[str, Any], expected: Recipe) -> None:
    """Every trial searches its small-component removal on val (not a searched axis)."""
    expected = dataclasses.replace(expected, components="search")
    assert suggest_recipe(optuna.trial.FixedTrial(params), levels=3) == expected


def test_search_space_covers_every_method_within_bounds() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    recipes = [suggest_recipe(study.ask(), levels=4) for _ in range(200)]
    assert {r.prune for r in recipes} == {"none", "unstructured", "structured", "pairs"}
    assert {r.precision for r in recipes} == {"fp32", "fp16", "int8"}
    for r in recipes:
        if r.prune == "unstructured":
            assert UNSTRUCTURED_RATIOS[0] <= r.ratio <= UNSTRUCTURED_RATIOS[1]
        if r.prune == "structured":
            assert STRUCTURED_RATIOS[0] <= r.ratio <= STRUCTURED_RATIOS[1]
        if r.prune == "pairs":
            assert len(r.level_ratios) == 4
        if r.prune == "none":
            assert r.finetune_steps == 0  # nothing to recover from
        assert r.finetune_steps in FINETUNE_STEPS
        assert r.prune_rounds in PRUNE_ROUNDS and r.distill_weight in DISTILL_WEIGHTS
        if r.finetune_steps == 0:  # nothing to split or to distil into
            assert r.prune_rounds == 1 and r.distill_weight == 0
        assert r.regularize_steps in (0, max(FINETUNE_STEPS))
        if r.prune not in ("structured", "pairs"):
            assert r.regularize_steps == 0
        if r.regularize_steps:
            assert r.regularize_strength in REGULARIZE_STRENGTHS
    for field in ("prune_rounds", "distill_weight", "regularize_steps", "regularize_strength"):
        assert len({getattr(r, field) for r in recipes}) > 1, field  # every field is searched


@pytest.mark.parametrize("name", ["unet2d-tiny", "unet2d-small", "cs231n-2d"])
def test_unstructured_limit_is_the_last_ratio_that_deletes_no_layer(name: str) -> None:
    from compress.prune_unstructured import prune_unstructured

    torch.manual_seed(0)
    model = zoo.create(name)
    limit = unstructured_limit(model)
    assert UNSTRUCTURED_RATIOS[2] <= limit <= UNSTRUCTURED_RATIOS[1]
    prune_unstructured(copy.deepcopy(model), limit)  # allowed
    if limit < UNSTRUCTURED_RATIOS[1]:
        with pytest.raises(ValueError, match="would zero every weight"):
            prune_unstructured(copy.deepcopy(model), limit + UNSTRUCTURED_RATIOS[2])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    recipes = [suggest_recipe(study.ask(), 4, unstructured_max=limit) for _ in range(300)]
    ratios = [r.ratio for r in recipes if r.prune == "unstructured"]
    assert max(ratios) == limit


# ------------------------------------------------------------------ bad input

_NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "unet9d-huge"], "--model 'unet9d-huge': unknown zoo model"),
        (["--data", "{tmp}/missing.h5"], "--data {tmp}/missing.h5: no such data file"),
        (["--trials", "0"], "--trials must be >= 1"),
        (
            ["--storage", "nosuch://host/db"],
            "--storage: storage 'nosuch://host/db': unknown scheme",
        ),
        (["--storage", "postgresql://u:pw@host:port/db"], "malformed database URL"),
        (["--out", "{tmp}/file.txt/sub"], "--out {tmp}/file.txt/sub: not a writable folder"),
        (["--baseline", "{tmp}/file.txt"], "--baseline"),
        (["--latency-runs", "3"], "--latency-runs must be >= 20"),
        (["--latency-backend", "tensorrt"], "invalid choice: 'tensorrt'"),
        (["--round-to", "eight"], "--round-to must be an integer >= 1 or 'auto', got 'eight'"),
        (["--round-to", "0"], "--round-to must be an integer >= 1 or 'auto', got 0"),
        (["--max-dice-drop", "0"], "--max-dice-drop must be in (0, 1], got 0.0"),
        (["--max-region-drop", "1.5"], "--max-region-drop must be in (0, 1], got 1.5"),
        # the CUDA backends on a machine without a GPU (selection and error path only)
        pytest.param(
            ["--latency-backend", "torch_cuda"],
            "--latency-backend torch_cuda: CUDA is not available",
            marks=_NO_GPU,
        ),
        pytest.param(
            ["--latency-backend", "ort_cuda"],
            "--latency-backend ort_cuda: CUDA is not available",
            marks=_NO_GPU,
        ),
    ],
)
def test_bad_input_is_one_clear_error_before_any_work(
    argv: list[str],
    message: str,
    blob_data: Path,
    untrained_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "file.txt").write_text("not a checkpoint")
    base = [
        "--data",
        str(blob_data),
        "--baseline",
        str(untrained_ckpt),
        "--out",
        str(tmp_path / "out"),
    ]
    if argv[0] == "--model":
        base = base[:2] + base[4:]  # --model applies without --baseline
    argv = [a.format(tmp=tmp_path) for a in base + argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("usage: python -m studies.prune_sweep: error: ") or "error:" in err[-1]
    )
    assert message.format(tmp=tmp_path) in err[-1]
    assert "Traceback" not in "\n".join(err)
    # nothing was started: no study folder, no cache
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------ mechanics, with a fake compressor


@pytest.fixture
def fake_compress(monkeypatch: pytest.MonkeyPatch, make_metrics: Any) -> dict[str, Any]:
    """Replace the expensive compressor: deterministic metrics from the recipe; can fail."""
    import compress.pipeline

    state: dict[str, Any] = {"calls": 0, "baseline_calls": 0, "fail_on": set()}

    def fake(baseline, data, recipe, out_dir, **kw):  # noqa: ANN001, ANN003
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if out.name == "baseline":  # the sweep's reference: the identity recipe
            state["baseline_calls"] += 1
            m = make_metrics(1_001_000, 5.1, 0.8)
            return {
                "baseline": m,
                "compressed": m,
                "recipe": recipe.to_dict(),
                "artifact": "model.onnx",
            }
        state["calls"] += 1
        state["kwargs"] = kw
        state.setdefault("teacher_caches", []).append(kw.get("teacher_cache"))
        if state["calls"] in state["fail_on"]:
            raise RuntimeError(f"boom on call {state['calls']}")
        keep = 1.0 - recipe.ratio
        m = make_metrics(int(1e6 * keep) + 1000, 5.0 * keep + 0.1, 0.8 - 0.1 * recipe.ratio)
        result = {
            "baseline": kw["baseline_metrics"],
            "compressed": m,
            "recipe": recipe.to_dict(),
            "artifact": "model.onnx",
        }
        (out / "metrics.json").write_text(json.dumps(result))
        return result  # fmt: skip

    monkeypatch.setattr(compress.pipeline, "compress_checkpoint", fake)
    return state


def test_failed_trial_is_recorded_and_the_study_goes_on(
    fake_compress: dict[str, Any],
    fast_argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_compress["fail_on"] = {2}
    assert main([*fast_argv, "--trials", "3", "--no-report"]) == 0
    study = _load(tmp_path / "out")
    assert len(_states(study, TrialState.COMPLETE)) == 3
    (failed,) = _states(study, TrialState.FAIL)
    assert failed.user_attrs["error"] == "RuntimeError: boom on call 2"
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.lstrip().startswith("trial ")]
    assert len(lines) == 4  # one summary line per finished trial
    assert any("FAIL" in ln and "boom" in ln for ln in lines)
    assert all("MB" in ln and "ms" in ln and "Dice" in ln for ln in lines if "FAIL" not in ln)
    for t in _states(study, TrialState.COMPLETE):
        assert Path(t.user_attrs["trial_dir"]) == tmp_path / "out" / "s" / "trials" / str(t.number)
        assert Recipe.from_dict(t.user_attrs["recipe"]).label == t.user_attrs["label"]
        # no per-subject rows from the fake: the Dice objective is the point change vs 0.8
        assert t.values[0] == pytest.approx(t.user_attrs["metrics"]["val_dice"]["mean"] - 0.8)


def test_recovery_recipe_round_trips_through_the_study_to_the_report_model(
    fake_compress: dict[str, Any], fast_argv: list[str], tmp_path: Path
) -> None:
    from studies.pareto import DIRECTIONS, as_trial_model

    out = tmp_path / "out"
    storage = open_storage(journal_url(out / "s" / "study.journal"))
    study = optuna.create_study(storage=storage, study_name="s", directions=list(DIRECTIONS))
    study.enqueue_trial(
        {"prune": "structured", "structured_ratio": 0.5, "round_to": 8, "regularize_steps": 150,
         "regularize_strength": 0.01, "finetune_steps": 150, "prune_rounds": 4,
         "distill_weight": 3.0, "precision": "fp32", "threshold": "per-region"}
    )  # fmt: skip
    assert main([*fast_argv, "--trials", "1", "--no-report"]) == 0
    expected = Recipe(
        prune="structured", ratio=0.5, round_to=8, finetune_steps=150, prune_rounds=4,
        distill_weight=3.0, regularize_steps=150, regularize_strength=0.01, threshold="per-region",
        components="search",
    )  # fmt: skip
    (trial,) = _states(_load(out), TrialState.COMPLETE)
    model = as_trial_model(trial)  # what studies.report turns into a row
    assert Recipe.from_dict(model.recipe) == expected
    assert model.label == expected.label == trial.user_attrs["label"]
    assert fake_compress["kwargs"]["cache_dir"] == out / "s" / "cache"


def test_rerun_resumes_and_counts_finished_trials(
    fake_compress: dict[str, Any], fast_argv: list[str], tmp_path: Path
) -> None:
    assert main([*fast_argv, "--trials", "2", "--no-report"]) == 0
    first = {t.number: t.values for t in _states(_load(tmp_path / "out"), TrialState.COMPLETE)}
    assert main([*fast_argv, "--trials", "4", "--no-report"]) == 0
    study = _load(tmp_path / "out")
    done = {t.number: t.values for t in _states(study, TrialState.COMPLETE)}
    assert len(done) == 4 and fake_compress["calls"] == 4
    assert {n: done[n] for n in first} == first
    # the same command once more: nothing left to do; the baseline was measured once
    assert main([*fast_argv, "--trials", "4", "--no-report"]) == 0
    assert fake_compress["calls"] == 4 and fake_compress["baseline_calls"] == 1


def test_rerun_with_another_baseline_is_refused(
    fake_compress: dict[str, Any],
    fast_argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    from unet import zoo
    from unet.checkpoint import save_checkpoint

    assert main([*fast_argv, "--trials", "1", "--no-report"]) == 0
    torch.manual_seed(123)
    other = save_checkpoint(tmp_path / "other.pt", zoo.create("unet2d-tiny"), {})
    argv = list(fast_argv)
    argv[argv.index("--baseline") + 1] = str(other)
    assert main([*argv, "--trials", "2", "--no-report"]) == 2
    assert "was run with another baseline" in capsys.readouterr().err


def test_a_repeated_recipe_reuses_the_earlier_result_and_is_listed_once(
    fake_compress: dict[str, Any],
    fast_argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from studies.pareto import DIRECTIONS, trial_models
    from studies.repeats import REPEAT_ATTR

    out = tmp_path / "out"
    storage = open_storage(journal_url(out / "s" / "study.journal"))
    study = optuna.create_study(storage=storage, study_name="s", directions=list(DIRECTIONS))
    same = {"prune": "structured", "structured_ratio": 0.5, "round_to": 8, "regularize_steps": 0,
            "finetune_steps": 0, "precision": "fp32", "threshold": "global"}  # fmt: skip
    other = {**same, "structured_ratio": 0.25}
    for params in (same, same, other):
        study.enqueue_trial(params)
    assert main([*fast_argv, "--trials", "3", "--no-report", "--no-warm-start"]) == 0
    assert fake_compress["calls"] == 2  # the repeat ran nothing
    one, two = fake_compress["teacher_caches"]  # the worker's trials share its teacher logits
    assert isinstance(one, TeacherCache) and one is two
    first, repeat, third = sorted(_states(_load(out), TrialState.COMPLETE), key=lambda t: t.number)
    assert repeat.user_attrs[REPEAT_ATTR] == first.number and REPEAT_ATTR not in third.user_attrs
    assert repeat.values == first.values and repeat.constraints == first.constraints
    assert repeat.user_attrs["trial_dir"] == first.user_attrs["trial_dir"]  # the same model
    assert repeat.user_attrs["metrics"] == first.user_attrs["metrics"]
    assert not (out / "s" / "trials" / str(repeat.number)).exists()
    assert [m.number for m in trial_models(_load(out))] == [first.number, third.number]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "trial" in ln and "MB" in ln]
    assert sum(f"repeats trial {first.number}" in ln for ln in lines) == 1


def test_a_new_study_runs_the_warm_start_first_and_only_once(
    fake_compress: dict[str, Any], fast_argv: list[str], tmp_path: Path
) -> None:
    from studies.warm_start import WARM_START_ATTR, WARM_START_RATIOS

    assert main([*fast_argv, "--trials", "3", "--no-report"]) == 0
    assert main([*fast_argv, "--trials", "4", "--no-report"]) == 0  # resumed: nothing re-queued
    trials = sorted(_states(_load(tmp_path / "out"), TrialState.COMPLETE), key=lambda t: t.number)
    warm = [t for t in trials if t.user_attrs.get(WARM_START_ATTR)]
    assert [t.number for t in warm] == [0, 1]
    assert [t.params["structured_ratio"] for t in warm] == list(WARM_START_RATIOS)
    assert all(t.params["precision"] == "int8" for t in warm) and len(trials) == 4
    off = [*fast_argv, "--trials", "2", "--no-report", "--no-warm-start", "--study-name", "t"]
    assert main(off) == 0
    assert not any(
        t.user_attrs.get(WARM_START_ATTR)
        for t in _load(tmp_path / "out", "t").get_trials(deepcopy=False)
    )


@pytest.mark.parametrize(
    ("extra", "stored", "what"),
    [  # another feasibility rule; other objectives; a study of the old default backend
        (["--max-region-drop", "0.5"], {}, "max_region_drop (0.03, now 0.5)"),
        ([], {"objectives": ["val_dice_mean", "size_bytes", "latency_ms_ort"]}, "objectives"),
        ([], {"latency_backend": "ov_cpu"}, "latency_backend (ov_cpu, now ort_cpu)"),
        (  # a study from before the region-presence rule: its reference lacks it
            [],
            {"postprocessing": ["min_component"]},
            "post-processing (['min_component'], now ['min_component', 'min_volume'])",
        ),
    ],
)
def test_a_study_is_resumed_only_with_its_own_rule_and_objective(
    extra: list[str],
    stored: dict[str, Any],
    what: str,
    fake_compress: dict[str, Any],
    fast_argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*fast_argv, "--trials", "1", "--no-report"]) == 0
    study = _load(tmp_path / "out")
    study.set_user_attr("sweep", {**study.user_attrs["sweep"], **stored})
    assert main([*fast_argv, "--trials", "2", "--no-report", *extra]) == 2
    assert f"was run with another {what}" in capsys.readouterr().err


def _rows(deltas: list[float]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-subject rows of a candidate that changes every region by ``deltas`` vs 0.9."""

    def row(i: int, d: float) -> dict[str, Any]:
        return {"subject": f"s{i}", "dice": {r: 0.9 + d for r in ("WT", "TC", "ET", "mean")}}

    return [row(i, d) for i, d in enumerate(deltas)], [row(i, 0.0) for i in range(len(deltas))]


def test_dice_objective_prefers_a_consistent_model_to_one_lucky_subject() -> None:
    from studies.pareto import dice_objective
    from unet.stats import paired_comparison

    lucky = paired_comparison(*_rows([0.0] * 24 + [0.09])).to_dict()  # one flip: mean +0.0036
    steady = paired_comparison(*_rows([0.002] * 25)).to_dict()  # +0.002 on every subject
    assert lucky["dice_delta"]["mean"] > steady["dice_delta"]["mean"]
    metrics = {"val_dice": {"mean": 0.9}}
    assert dice_objective(metrics, steady, 0.9) == pytest.approx(0.002)
    assert dice_objective(metrics, lucky, 0.9) == pytest.approx(0.0)
    assert dice_objective({"val_dice": {"mean": 0.85}}, None, 0.9) == pytest.approx(-0.05)


class _Attrs:
    """The part of an Optuna trial that `constraint_value` writes to."""

    def __init__(self) -> None:
        self.user_attrs: dict[str, Any] = {}

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


def _paired(ci: dict[str, tuple[float, float]]) -> dict[str, Any]:
    return {"ci95": {k: list(v) for k, v in ci.items()}, "dice_delta": {}}


@pytest.mark.parametrize(
    ("ci", "expected"),
    [
        # mean and every region within their margins: feasible by the smaller excess
        ({"mean": (-0.004, 0.01), "WT": (-0.02, 0.01), "TC": (-0.01, 0), "ET": (0, 0.01)}, -0.006),
        # the mean is fine but TC trades away up to 4 points: infeasible by 0.01
        ({"mean": (-0.002, 0.02), "WT": (0, 0.05), "TC": (-0.04, 0), "ET": (-0.01, 0)}, 0.01),
        # every region fine, the mean's lower bound too low: infeasible by 0.005
        ({"mean": (-0.015, 0.0), "WT": (-0.02, 0), "TC": (-0.02, 0), "ET": (-0.02, 0)}, 0.005),
    ],
)
def test_feasibility_is_non_inferiority_on_val(
    ci: dict[str, tuple[float, float]], expected: float
) -> None:
    from studies.sweep_worker import constraint_value

    info = {"baseline_metrics": {"val_dice": {"WT": 0.9, "TC": 0.9, "ET": 0.9, "mean": 0.9}}}
    result = {
        "compressed": {"val_dice": {"WT": 0.9, "TC": 0.88, "ET": 0.9, "mean": 0.893}},
        "paired_val": _paired(ci),
    }
    trial = _Attrs()
    value = constraint_value(trial, result, info, 0.01, 0.03)  # type: ignore[arg-type]
    assert value == pytest.approx(expected)
    assert trial.user_attrs["dice_drop"] == pytest.approx(0.007)
    assert trial.user_attrs["dice_drop_bound"] == pytest.approx(-ci["mean"][0])
    worst = max(-ci[r][0] for r in ("WT", "TC", "ET"))
    assert trial.user_attrs["region_drop_bound"] == pytest.approx(worst)
    # without per-subject rows, the point losses stand in: TC's 0.02 is within 0.03
    del result["paired_val"]
    assert constraint_value(_Attrs(), result, info, 0.01, 0.03) == pytest.approx(-0.003)  # type: ignore[arg-type]


# ------------------------------------------------------------------ real runs


@pytest.fixture
def data_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record the subject id of every image / label read from any canonical file."""
    seen: list[str] = []
    image, label = CanonicalDataset.image, CanonicalDataset.label

    def spy_image(self, sid, *a, **k):  # noqa: ANN001, ANN002, ANN003
        seen.append(sid)
        return image(self, sid, *a, **k)

    def spy_label(self, sid, *a, **k):  # noqa: ANN001, ANN002, ANN003
        seen.append(sid)
        return label(self, sid, *a, **k)

    monkeypatch.setattr(CanonicalDataset, "image", spy_image)
    monkeypatch.setattr(CanonicalDataset, "label", spy_label)
    yield seen


@pytest.mark.slow
def test_end_to_end_search_never_reads_test_report_does(
    sweep_argv: list[str],
    blob_data: Path,
    tmp_path: Path,
    data_spy: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from compress.export import ort_session
    from studies.pareto import pareto_models
    from unet.checkpoint import load_checkpoint
    from unet.evaluate import evaluate_model

    test_ids = set(CanonicalDataset(blob_data).split("test"))
    val_ids = set(CanonicalDataset(blob_data).split("val"))
    out = tmp_path / "out"

    # search phase: validation and training subjects only
    # every trial feasible (--max-dice-drop 1): the tiny models lose a lot, and the Pareto set
    # must not be empty here
    argv = [*sweep_argv, "--trials", "3", "--seed", "1", "--finetune-steps", "0", "2",
            "--max-dice-drop", "1", "--max-region-drop", "1"]  # fmt: skip
    assert main([*argv, "--no-report"]) == 0
    assert val_ids <= set(data_spy), "the search must evaluate on validation"
    assert not test_ids & set(data_spy), "the search read test subjects"

    # the same command again: the 3 trials are there, so only the report phase runs; it reads test
    data_spy.clear()
    assert main(argv) == 0
    assert test_ids <= set(data_spy)
    study = _load(out)
    assert len(_states(study, TrialState.COMPLETE)) == 3

    study_dir = out / "s"
    assert (study_dir / "baseline" / "model.onnx").is_file()
    reference = study.user_attrs["baseline_metrics"]
    assert (
        reference["val_dice"]["mean"]
        >= study.user_attrs["baseline_as_trained"]["val_dice"]["mean"] - 1e-9
    )
    for t in _states(study, TrialState.COMPLETE):
        for name in ("model.onnx", "checkpoint.pt", "metrics.json"):
            assert (study_dir / "trials" / str(t.number) / name).is_file()
    report = (study_dir / "report.md").read_text()
    assert "Machine" in report and "onnxruntime" in report and "thread" in report
    assert "Best among non-inferior Pareto models" in report or "No Pareto model" in report
    assert "non-inferior" in report and "test delta mean [95% CI]" in report
    for name in ("pareto_front", "pruning_curves", "threshold_curves", "overlay"):
        for fmt in ("png", "pdf"):
            assert (study_dir / "figures" / f"{name}.{fmt}").stat().st_size > 1000

    rows = list(csv.DictReader((study_dir / "pareto.csv").open()))
    models = pareto_models(journal_url(study_dir / "study.journal"), "s")
    assert models and [r["trial"] for r in rows] == ["baseline", *(str(m.number) for m in models)]
    required = {"trial", "recipe", "params", "size_bytes", "size_compressed_bytes",
                "compression_factor", "latency_ms_ort", "speedup_ort", "latency_ms_torch",
                "val_dice_mean", "test_dice_mean", "test_dice_WT", "test_dice_TC",
                "test_dice_ET", "test_hd95_mean", "test_dice_delta", "test_dice_delta_lo",
                "test_dice_delta_hi", "test_dice_delta_TC_lo", "non_inferior"}  # fmt: skip
    assert required <= set(rows[0])
    for row in rows[1:]:  # every Pareto model is compared paired with the baseline on test
        lo, delta, hi = (float(row[f"test_dice_delta{e}"]) for e in ("_lo", "", "_hi"))
        assert lo <= delta <= hi and row["non_inferior"] in ("True", "False")
    assert (
        json.loads((study_dir / "pareto.json").read_text())["pareto"][0]["trial"]
        == rows[1]["trial"]
    )

    # figures and report are rebuilt from the storage alone
    from studies import figures, report

    storage = journal_url(study_dir / "study.journal")
    assert figures.main(["--study", "s", "--storage", storage, "--out", str(tmp_path / "f")]) == 0
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == sorted(
        p.name for p in (study_dir / "figures").iterdir()
    )
    assert report.main(["--study", "s", "--storage", storage, "--out", str(tmp_path / "r")]) == 0
    again = list(csv.DictReader((tmp_path / "r" / "pareto.csv").open()))
    assert [r["test_dice_mean"] for r in again] == [r["test_dice_mean"] for r in rows]

    # an external test set: another file's test subjects only, paired columns, own folder
    from studies import external
    from tests.conftest import write_blob_dataset

    ext = write_blob_dataset(tmp_path / "ext.h5", 5, seed=9, split_fractions=(0.0, 0.0, 1.0))
    data_spy.clear()
    assert external.main(["--study", "s", "--storage", storage, "--data", str(ext)]) == 0
    assert set(data_spy) == set(CanonicalDataset(ext).split("test"))  # 5 new subjects, all read
    folder = study_dir / f"external-{CanonicalDataset(ext).fingerprint}"
    ext_rows = list(csv.DictReader((folder / "external.csv").open()))
    assert [r["trial"] for r in ext_rows] == [r["trial"] for r in rows]
    assert all(
        float(r["test_dice_delta_lo"]) <= float(r["test_dice_delta_hi"]) for r in ext_rows[1:]
    )
    assert json.loads((folder / "external.json").read_text())["baseline"]["n_test_subjects"] == 5
    assert "external test set" in (folder / "external.md").read_text()
    with pytest.raises(SystemExit):  # the study's own data is not external
        external.main(["--study", "s", "--storage", storage, "--data", str(blob_data)])
    assert "error: " in capsys.readouterr().err

    # every Pareto model loads (checkpoint and ONNX) and reproduces its stored val Dice
    for m in models:
        model, meta = load_checkpoint(m.checkpoint)
        assert meta["threshold"] == pytest.approx(m.threshold)
        session = ort_session(m.onnx, threads=1)
        x = np.zeros((1, 4, 32, 32), dtype=np.float32)
        assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (1, 3, 32, 32)
        forward, config = m.forward(threads=1)
        again = evaluate_model(forward, blob_data, "val", m.threshold, hd95=False,
                               min_component=m.min_component, min_volume=m.min_volume,
                               spatial_dims=config.spatial_dims, divisor=config.divisor)  # fmt: skip
        assert meta["min_component"] == m.min_component  # chosen on val, stored in both
        assert meta["min_volume"] == m.min_volume
        assert again["mean"]["dice"]["mean"] == pytest.approx(m.val_dice["mean"], abs=1e-3)


@pytest.mark.slow
def test_four_workers_share_one_journal_on_two_cores(
    sweep_argv: list[str], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """4 worker processes, 1 thread each, on one journal file: exactly the asked trials, each
    in its own folder with its own result; the journal replays whole (no torn record)."""
    argv = [*sweep_argv, "--trials", "6", "--workers", "4", "--finetune-steps", "0",
            "--seed", "6", "--max-dice-drop", "1", "--max-region-drop", "1", "--no-report"]  # fmt: skip
    assert main(argv) == 0
    output = capfd.readouterr()
    assert "Traceback" not in output.out + output.err
    journal = tmp_path / "out" / "s" / "study.journal"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert records and all("op_code" in r for r in records)
    study = _load(tmp_path / "out")
    complete = _states(study, TrialState.COMPLETE)
    assert len(complete) == 6
    assert not _states(study, TrialState.FAIL) and not _states(study, TrialState.RUNNING)
    assert all(t.user_attrs.get(SURPLUS_ATTR) for t in _states(study, TrialState.PRUNED))
    dirs = [t.user_attrs["trial_dir"] for t in complete]
    assert len(set(dirs)) == len(dirs)
    for t in complete:
        result = json.loads((Path(t.user_attrs["trial_dir"]) / "metrics.json").read_text())
        assert result["recipe"] == t.user_attrs["recipe"]
        assert t.values[1] == result["compressed"]["size_bytes"] > 0
    assert len({t.user_attrs[WORKER_ATTR]["pid"] for t in complete}) >= 2


# ------------------------------------------------------------------ latency backend and objective


def test_missing_openvino_is_one_error_line(
    fast_argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    monkeypatch.setattr(
        "compress.openvino.unavailable_reason", lambda int8=False: "openvino not installed"
    )
    with pytest.raises(SystemExit) as exc:
        main([*fast_argv, "--latency-backend", "ov_cpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("error: --latency-backend ov_cpu: openvino not installed")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("missing", "expected"),
    [((), "ov_cpu"), (("openvino",), "ort_cpu"), (("nncf",), "ort_cpu")],
)
def test_default_backend_is_the_fastest_cpu_runtime_installed(
    monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...], expected: str
) -> None:
    """The sweep's default ``--latency-backend`` (omitted) resolves to OpenVINO when OpenVINO
    and NNCF are installed (found, not imported), else to ONNX Runtime."""
    import argparse
    import importlib.util

    from compress import openvino
    from compress.runners import fastest_cpu_backend
    from studies.sweep_latency import resolve_latency_flags

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in missing else (real(name, *a) or object()),
    )
    monkeypatch.setattr(openvino, "unavailable_reason", lambda int8=False: None)
    assert fastest_cpu_backend() == expected
    args = argparse.Namespace(latency_backend=None, round_to="8")
    resolve_latency_flags(argparse.ArgumentParser(), args)
    assert (args.latency_backend, args.round_to) == (expected, 8)
    args = _parser().parse_args([])
    assert args.latency_backend is None  # omitted: resolved by resolve_latency_flags


@pytest.mark.parametrize(
    ("backend", "flags", "expected"),
    [("ort_cuda", "", ("fp32", "fp16", "int8")), ("ort_cpu", "avx2", ("fp32", "int8")),
     ("ov_cpu", "avx2 avx512f", ("fp32", "int8")),
     ("ov_cpu", "avx512f avx512_bf16", ("fp32", "bf16", "int8")),
     ("ov_cpu", "amx_bf16", ("fp32", "bf16", "int8")),
     ("torch_cuda", "", ("fp32", "fp16", "bf16"))],
)  # fmt: skip
def test_fp16_and_bf16_are_searched_only_where_computed_natively(
    backend: str, flags: str, expected: tuple[str, ...]
) -> None:
    from studies.sweep_latency import searched_precisions

    assert searched_precisions(backend, frozenset(flags.split())) == expected


@pytest.mark.parametrize("backend", ["ort_cpu", pytest.param("ov_cpu", marks=pytest.mark.openvino)])
def test_objective_is_reference_median_over_paired_speedup(
    fake_compress: dict[str, Any],
    fast_argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
) -> None:
    """Each trial's recipe is built for the backend's runtime, timed there paired against the
    worker's reference calls; objective = the baseline's median (once) / paired speed-up."""
    import compress.pipeline
    from compress.openvino import unavailable_reason

    if backend == "ov_cpu" and unavailable_reason(int8=True):
        pytest.skip(f"OpenVINO/NNCF: {unavailable_reason(int8=True)}")
    fake = compress.pipeline.compress_checkpoint
    seen: list[dict[str, Any]] = []

    def paired(baseline, data, recipe, out_dir, **kw):  # noqa: ANN001, ANN003
        result = fake(baseline, data, recipe, out_dir, **kw)
        seen.append({"recipe": recipe, **kw})
        base = result["compressed"]
        base["latency_ms"][backend] = {"median": 5.1, "iqr": 0.1}  # the baseline's, once
        if Path(out_dir).name != "baseline":
            result["compressed"][f"speedup_{backend}"] = 2.0 + recipe.ratio
        return result

    monkeypatch.setattr(compress.pipeline, "compress_checkpoint", paired)
    assert main([*fast_argv, "--trials", "2", "--no-report", "--latency-backend", backend]) == 0
    study = _load(tmp_path / "out")
    runtime = {"ort_cpu": "ort", "ov_cpu": "openvino"}[backend]
    assert study.user_attrs["sweep"]["latency_backend"] == backend
    assert study.user_attrs["sweep"]["baseline_recipe"]["runtime"] == runtime
    # fp16 is not searched on a CPU (computed in fp32 there, so no faster), nor bf16 on a CPU
    # without bf16 units
    from unet.amp import BF16_CPU_FLAGS, cpu_flags

    bf16 = ["bf16"] if backend == "ov_cpu" and cpu_flags() & set(BF16_CPU_FLAGS) else []
    expected = ["fp32", *bf16, "int8"]
    assert study.user_attrs["sweep"]["precisions"] == expected
    assert all(Recipe.from_dict(t.user_attrs["recipe"]).precision in expected for t in study.trials)
    trials = seen[1:]
    assert len(trials) == 2
    for call in trials:
        assert call["recipe"].runtime == runtime
        assert call["backends"][0] == backend
        assert set(call["references"]) >= {backend}  # the worker's reference calls, reused
        assert call["references"] is trials[0]["references"]
    for t in _states(study, TrialState.COMPLETE):
        ratio = Recipe.from_dict(t.user_attrs["recipe"]).ratio
        assert t.values[2] == pytest.approx(5.1 / (2.0 + ratio))
        assert t.user_attrs["metrics"]["latency_objective_ms"] == pytest.approx(t.values[2])


@pytest.mark.parametrize(
    ("flag", "expected"), [(["--round-to", "auto"], "auto"), (["--round-to", "16"], [1, 16])]
)
def test_round_to_choices_follow_the_machine(
    fake_compress: dict[str, Any], fast_argv: list[str], tmp_path: Path, flag: list, expected: Any
) -> None:
    from compress.simd import default_round_to

    assert main([*fast_argv, "--trials", "1", "--no-report", *flag]) == 0
    study = _load(tmp_path / "out")
    if expected == "auto":
        expected = sorted({1, default_round_to()})
    assert study.user_attrs["sweep"]["round_to_choices"] == expected
    for t in study.trials:
        if "round_to" in t.params:
            assert t.params["round_to"] in expected


def test_a_recipe_stored_before_a_field_existed_still_counts_as_a_repeat() -> None:
    """`studies.repeats.earlier_run` compares stored recipes with new fields at their
    defaults, so a resumed study recognises recipes its older trials ran."""
    from studies.repeats import earlier_run

    recipe = Recipe(prune="unstructured", ratio=0.5, threshold="per-region").to_dict()
    old = {k: v for k, v in recipe.items() if k != "selection"}  # written before the field
    study = optuna.create_study(directions=["maximize"])
    study.add_trial(
        optuna.trial.create_trial(value=1.0, user_attrs={"recipe": {"not": "a recipe"}})
    )
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"recipe": old}))
    found = earlier_run(study, recipe)
    assert found is not None and found.number == 1
    assert earlier_run(study, {**recipe, "ratio": 0.6}) is None
