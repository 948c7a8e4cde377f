"""The held-out report: row arithmetic, the summary line, the CSV columns."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from studies.report import COLUMNS, _row, rows_csv, summary_line
from unet.data.canonical import REGIONS


def _test(dice: float, hd95: float = 2.0) -> dict[str, Any]:
    return {
        "dice": {**dict.fromkeys(REGIONS, dice), "mean": dice},
        "hd95": {**dict.fromkeys(REGIONS, hd95), "mean": hd95},
    }


def test_row_ratios_are_relative_to_the_baseline(make_metrics: Any) -> None:
    base = make_metrics(4_000_000, 10.0, 0.9)
    small = make_metrics(1_000_000, 4.0, 0.88, params=250)
    row = _row("7", "structured0.50+int8", small, base, _test(0.87, 3.0))
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


def _rows(*items: tuple[str, float, float, float]) -> list[dict[str, Any]]:
    """(trial, test Dice, compression factor, ORT speed-up) -> minimal report rows."""
    return [
        {"trial": t, "recipe": f"r{t}", "test_dice_mean": d, "compression_factor": c,
         "speedup_ort": s}
        for t, d, c, s in items
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "smaller", "faster"),
    [
        # trial 2 is 10x smaller but loses 2 points: not eligible
        (_rows(("baseline", 0.85, 1, 1), ("1", 0.845, 4, 1.5), ("2", 0.83, 10, 3)), "1", "1"),
        # the smallest and the fastest eligible models differ
        (_rows(("baseline", 0.85, 1, 1), ("1", 0.86, 3, 2.5), ("2", 0.841, 5, 1.2)), "2", "1"),
    ],
)
def test_summary_line_picks_the_best_within_one_point(
    rows: list[dict[str, Any]], smaller: str, faster: str
) -> None:
    line = summary_line(rows)
    size_part, speed_part = line.split(" and ")
    assert f"(trial {smaller}," in size_part and f"(trial {faster}," in speed_part
    best = {r["trial"]: r for r in rows}
    assert f"{best[smaller]['compression_factor']:.1f}x smaller" in size_part
    assert f"speed-up of **{best[faster]['speedup_ort']:.2f}x**" in speed_part


def test_summary_line_when_nothing_is_within_one_point() -> None:
    line = summary_line(_rows(("baseline", 0.85, 1, 1), ("1", 0.80, 4, 2)))
    assert line.startswith("No Pareto model stays within 1 point")


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
                "test_dice_ET", "test_hd95_mean"}  # fmt: skip
    assert required <= set(parsed[0])
    assert [r["trial"] for r in parsed] == ["baseline", "3"]
    assert float(parsed[1]["compression_factor"]) == pytest.approx(2.0)
    assert float(parsed[0]["speedup_ort"]) == 1.0
