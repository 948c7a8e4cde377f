"""The held-out report: row arithmetic, paired test columns, the summary line, the CSV columns."""

from __future__ import annotations

import csv
import importlib
import io
from typing import Any

import numpy as np
import pytest

from studies.report import PER_SUBJECT, _row, add_paired_columns
from studies.report_format import COLUMNS, markdown_table, rows_csv, summary_line
from unet.data.canonical import REGIONS


def _test(dice: float, hd95: float = 2.0) -> dict[str, Any]:
    return {
        "dice": {**dict.fromkeys(REGIONS, dice), "mean": dice},
        "hd95": {**dict.fromkeys(REGIONS, hd95), "mean": hd95},
    }


def test_row_ratios_are_relative_to_the_baseline(make_metrics: Any) -> None:
    base = make_metrics(4_000_000, 10.0, 0.9)
    small = {
        **make_metrics(1_000_000, 4.0, 0.88, params=250),
        "min_component": {"WT": 64, "TC": 16, "ET": 0},
        "min_volume": {"WT": 0, "TC": 32, "ET": 8},
    }
    row = _row("7", "structured0.50+int8", small, base, _test(0.87, 3.0))
    assert [row[f"min_component_{r}"] for r in REGIONS] == [64, 16, 0]
    assert [row[f"min_volume_{r}"] for r in REGIONS] == [0, 32, 8]
    older = _row("b", "dense", base, base, _test(0.9))  # metrics without post-processing
    assert older["min_component_WT"] == 0 and older["min_volume_ET"] == 0
    assert row["trial"] == "7" and row["recipe"] == "structured0.50+int8"
    assert row["compression_factor"] == pytest.approx(4.0)
    assert row["compression_factor_compressed"] == pytest.approx(4.0)
    assert row["speedup_ort"] == pytest.approx(2.5)
    assert row["speedup_torch"] == pytest.approx(20.0 / 8.0)
    assert row["latency_ms_ort"] == 4.0 and row["latency_ms_torch"] == 8.0
    assert row["val_dice_mean"] == pytest.approx(0.88)
    assert row["test_dice_ET"] == pytest.approx(0.87)
    assert row["test_hd95_mean"] == pytest.approx(3.0)
    assert set(row) <= set(COLUMNS)


def _rows(*items: tuple[str, bool | None, float, float]) -> list[dict[str, Any]]:
    """(trial, non-inferior, compression factor, ORT speed-up) -> minimal report rows."""
    return [
        {"trial": t, "recipe": f"r{t}", "test_dice_mean": 0.85, "non_inferior": ni,
         "compression_factor": c, "speedup_ort": s, "test_dice_delta": -0.002,
         "test_dice_delta_lo": -0.008, "test_dice_delta_hi": 0.004}
        for t, ni, c, s in items
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "smaller", "faster"),
    [
        # trial 2 is 10x smaller but not non-inferior: not eligible
        (_rows(("baseline", None, 1, 1), ("1", True, 4, 1.5), ("2", False, 10, 3)), "1", "1"),
        # the smallest and the fastest eligible models differ
        (_rows(("baseline", None, 1, 1), ("1", True, 3, 2.5), ("2", True, 5, 1.2)), "2", "1"),
    ],
)
def test_summary_line_picks_the_best_non_inferior(
    rows: list[dict[str, Any]], smaller: str, faster: str
) -> None:
    line = summary_line(rows)
    size_part, speed_part = line.split(" and an ONNX")
    assert f"(trial {smaller}," in size_part and f"(trial {faster}," in speed_part
    best = {r["trial"]: r for r in rows}
    assert f"{best[smaller]['compression_factor']:.1f}x smaller" in size_part
    assert f"speed-up of **{best[faster]['speedup_ort']:.2f}x**" in speed_part
    assert "non-inferior" in line and "[-0.0080, +0.0040]" in line


def test_summary_line_when_nothing_is_non_inferior() -> None:
    line = summary_line(_rows(("baseline", None, 1, 1), ("1", False, 4, 2)))
    assert line.startswith("No Pareto model is non-inferior to the baseline on test")


def _subjects(dice: list[tuple[float, float, float]]) -> list[dict[str, Any]]:
    return [
        {"subject": f"s{i}", "dice": {"WT": w, "TC": c, "ET": e, "mean": (w + c + e) / 3}}
        for i, (w, c, e) in enumerate(dice)
    ]


def test_paired_columns_judge_every_region(make_metrics: Any) -> None:
    """Pareto model 1 keeps every region; model 2 keeps the mean but trades WT for TC."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.7, 0.9, (24, 3))
    base = make_metrics(4_000_000, 10.0, 0.9)
    rows = [
        _row("baseline", "baseline", base, base, _test(0.8)),
        _row("1", "a", make_metrics(1_000_000, 5.0, 0.89), base, _test(0.8)),
        _row("2", "b", make_metrics(500_000, 4.0, 0.89), base, _test(0.8)),
    ]
    rows[0][PER_SUBJECT] = _subjects(ref.tolist())
    rows[1][PER_SUBJECT] = _subjects((ref + rng.normal(0, 0.002, ref.shape)).tolist())
    rows[2][PER_SUBJECT] = _subjects((ref + [-0.1, 0.1, 0.0]).tolist())
    add_paired_columns(rows)
    assert all(PER_SUBJECT not in r for r in rows)
    assert rows[0]["n_test_subjects"] == 24 and "non_inferior" not in rows[0]
    assert rows[1]["non_inferior"] is True
    assert rows[2]["non_inferior"] is False
    assert rows[2]["test_dice_delta"] == pytest.approx(0.0, abs=1e-9)
    assert rows[2]["test_dice_delta_WT"] == pytest.approx(-0.1)
    assert rows[2]["test_dice_delta_WT_hi"] < -0.09
    for r in rows[1:]:
        assert r["test_dice_delta_lo"] <= r["test_dice_delta"] <= r["test_dice_delta_hi"]
    # the subject behind the worst region is named, baseline -> model; no loss, no name
    subject, ref_dice, arrow, model_dice = rows[2]["test_largest_loss_WT"].split()
    assert arrow == "->" and float(model_dice) == pytest.approx(float(ref_dice) - 0.1, abs=0.006)
    assert ref_dice == f"{ref[int(subject[1:]), 0]:.2f}"
    assert rows[2]["test_largest_loss_TC"] == rows[2]["test_largest_loss_ET"] == ""
    table = markdown_table(rows)
    assert "| reference | - | - |" in table and "| WT -0.1" in table
    assert f"({rows[2]['test_largest_loss_WT']}) | no |" in table
    parsed = list(csv.DictReader(io.StringIO(rows_csv(rows))))
    assert parsed[2]["non_inferior"] == "False" and parsed[0]["non_inferior"] == ""
    assert float(parsed[2]["test_dice_delta_WT_lo"]) < -0.1 + 0.01
    assert "trial 1" in summary_line(rows) and "trial 2" not in summary_line(rows)


def test_paired_columns_split_off_regions_empty_in_the_truth(make_metrics: Any) -> None:
    """A false ET speck on one of 24 subjects (ET empty in the truth): the row's ET delta is all
    on the empty subjects, and the table names it next to the subject."""
    dice = [(0.9, 0.8, 1.0 if i < 6 else 0.7) for i in range(24)]
    base = make_metrics(4_000_000, 10.0, 0.9)
    rows = [
        _row("baseline", "baseline", base, base, _test(0.8)),
        _row("1", "a", make_metrics(1_000_000, 5.0, 0.89), base, _test(0.8)),
    ]
    reference, candidate = (
        _subjects(dice),
        _subjects([(w, c, 0.0) if i == 2 else (w, c, e) for i, (w, c, e) in enumerate(dice)]),
    )
    for ref_row, cand_row in zip(reference, candidate, strict=True):
        truth = {"WT": 50, "TC": 20, "ET": 0 if ref_row["dice"]["ET"] == 1.0 else 9}
        ref_row["voxels"] = {"truth": truth, "pred": {**truth, "ET": truth["ET"]}}
        speck = cand_row["subject"] == "s2"
        cand_row["voxels"] = {"truth": truth, "pred": {**truth, "ET": 3 if speck else truth["ET"]}}
    rows[0][PER_SUBJECT], rows[1][PER_SUBJECT] = reference, candidate
    add_paired_columns(rows)
    row = rows[1]
    assert row["test_dice_delta_ET"] == pytest.approx(-1 / 24)
    assert row["test_empty_delta_ET"] == pytest.approx(-1 / 24)
    assert (row["test_empty_subjects_ET"], row["test_false_regions_ET"]) == (6, 1)
    assert row["test_empty_delta_WT"] == 0.0 and row["test_empty_subjects_WT"] == 0
    assert "(s2 1.00 -> 0.00; 1 false region(s) in 6 empty: -0.0417) | no |" in markdown_table(rows)
    parsed = list(csv.DictReader(io.StringIO(rows_csv(rows))))
    assert parsed[1]["test_false_regions_ET"] == "1" and parsed[0]["test_false_regions_ET"] == ""


def test_csv_has_the_issue_columns_baseline_first(make_metrics: Any) -> None:
    base = make_metrics(4_000_000, 10.0, 0.9)
    rows = [
        _row("baseline", "baseline", base, base, _test(0.9)),
        _row("3", "x", make_metrics(2_000_000, 5.0, 0.89), base, _test(0.88)),
    ]
    parsed = list(csv.DictReader(io.StringIO(rows_csv(rows))))
    required = {"trial", "recipe", "params", "size_bytes", "size_compressed_bytes",
                "compression_factor", "latency_ms_ort", "speedup_ort", "latency_ms_torch",
                "val_dice_mean", "test_dice_mean", "test_dice_WT", "test_dice_TC",
                "test_dice_ET", "test_hd95_mean", "test_dice_delta", "test_dice_delta_lo",
                "test_dice_delta_hi", "test_dice_delta_WT_lo", "test_dice_delta_ET_hi",
                "non_inferior"}  # fmt: skip
    assert required <= set(parsed[0])
    assert [r["trial"] for r in parsed] == ["baseline", "3"]
    assert float(parsed[1]["compression_factor"]) == pytest.approx(2.0)
    assert float(parsed[0]["speedup_ort"]) == 1.0


@pytest.mark.parametrize("module", ["studies.report", "studies.external"])
def test_negative_margins_are_one_error_line(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main = importlib.import_module(module).main
    argv = ["--study", "s", "--storage", "journal:/nonexistent", "--region-margin", "-0.1"]
    if module == "studies.external":
        argv += ["--data", "/nonexistent.h5"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("error: --margin and --region-margin must be >= 0, got 0.01, -0.1")
