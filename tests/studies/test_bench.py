"""`studies.bench`: the reference recipes are valid and the table shows every model and ratio."""

from __future__ import annotations

from studies.bench import REFERENCE_RECIPES, compress_table


def _m(size: int, ort: float, torch: float, dice: float, macs: int) -> dict:
    lat = {"ort_cpu": {"median": ort, "iqr": 0.1}, "torch_cpu": {"median": torch, "iqr": 0.2}}
    d = {"WT": dice, "TC": dice, "ET": dice, "mean": dice}
    return {
        "size_bytes": size,
        "size_compressed_bytes": size // 2,
        "latency_ms": lat,
        "val_dice": d,
        "macs": macs,
    }


def test_reference_recipes_match_the_issue_benchmark() -> None:
    a, b, c = REFERENCE_RECIPES.values()
    assert (a.prune, a.ratio, a.precision) == ("structured", 0.5, "fp32") and a.finetune_steps > 0
    assert (b.prune, b.ratio, b.precision) == ("structured", 0.5, "int8")
    assert (c.prune, c.ratio, c.precision) == ("unstructured", 0.9, "fp32") and c.finetune_steps > 0


def test_compress_table_rows_and_ratios() -> None:
    base = _m(2_000_000, 10.0, 40.0, 0.85, 4_000_000)
    small = _m(500_000, 5.0, 30.0, 0.83, 1_000_000)
    ratios = {
        "compression_factor": 4.0,
        "compression_factor_zipped": 4.0,
        "speedup_ort": 2.0,
        "speedup_torch": 40 / 30,
        "dice_change": -0.02,
    }
    bench = {
        "baseline": base,
        "recipes": {"a: x": {"baseline": base, "compressed": small, "ratios": ratios}},
    }
    text = compress_table(bench)
    assert text.splitlines()[1].startswith("baseline") and "a: x" in text.splitlines()[2]
    assert (
        "size 4.00x" in text
        and "ORT 2.00x" in text
        and "MACs 4.00x" in text
        and "val Dice -0.0200" in text
    )


def test_ceiling_tiny_run_reports_rates_and_percentages(tmp_path, capsys) -> None:  # noqa: ANN001
    """A toy-sized run (the real one is a benchmark): every row has a rate, ceilings are 100 %,
    each model's percentage is its rate over the ceiling of the same runtime and dims."""
    import json

    from studies.bench import main

    out = tmp_path / "c.json"
    argv = ["ceiling", "--runtimes", "ort", "--precisions", "fp32", "--models", "unet2d-tiny",
            "--channels", "8", "--conv-2d", "16", "--input-2d", "32",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["what"] for r in rows] == ["conv3x3 8ch 16x16", "unet2d-tiny 32x32"]
    ceil = {(r["runtime"], r["dims"]): r["gflops"] for r in rows if r["what"].startswith("conv")}
    for r in rows:
        assert r["gflops"] > 0 and r["median_ms"] > 0
        expected = 100 * r["gflops"] / ceil[(r["runtime"], r["dims"])]
        assert r["percent_of_ceiling"] == __import__("pytest").approx(expected)
    assert "| unet2d-tiny 32x32 | ort | fp32 |" in capsys.readouterr().out


def test_ceiling_bad_flags_are_one_error_line(tmp_path, capsys) -> None:  # noqa: ANN001
    import pytest

    from studies.bench import main

    with pytest.raises(SystemExit) as exc:
        main(["ceiling", "--runtimes", "tensorrt", "--out", str(tmp_path / "c.json")])
    assert exc.value.code == 2
    assert "error: --runtimes: unknown ['tensorrt']" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
