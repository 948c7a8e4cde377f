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
