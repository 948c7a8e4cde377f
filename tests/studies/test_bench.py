"""`studies.bench`: the reference recipes are valid and the table shows every model and ratio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.recipe import Recipe
from studies.bench import REFERENCE_RECIPES, compress_table, main
from studies.bench_recovery import METHODS, RecoverySettings, recovery_recipes
from unet.data.canonical import CanonicalDataset


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


# ------------------------------------------------------------------ recovery


@pytest.mark.parametrize("steps", [1, 2, 200])
def test_recovery_rows_differ_only_in_their_method_at_equal_budget(steps: int) -> None:
    rows = recovery_recipes(RecoverySettings(finetune_steps=steps))
    assert list(rows) == list(METHODS)
    for r in rows.values():
        assert (r.prune, r.ratio, r.round_to, r.finetune_steps) == ("structured", 0.5, 8, steps)
        assert r.precision == "fp32" and r.threshold == "per-region"
    on = {
        k: (r.distill_weight > 0, r.prune_rounds > 1, r.regularize_steps > 0)
        for k, r in rows.items()
    }
    assert on == {
        "a": (False, False, False),
        "b": (True, False, False),
        "c": (False, True, False),
        "d": (False, False, True),
        "e": (True, True, True),
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "a,z"], "--methods: unknown row(s) ['z']"),
        (["--finetune-steps", "0"], "--finetune-steps must be >= 1"),
        (["--distill-weight", "-1"], "recipe: distill_weight must be a number in [0, 100]"),
        (["--prune-rounds", "0"], "recipe: prune_rounds must be an integer in [1, 10]"),
        (["--regularize-strength", "0"], "recipe: regularize_strength must be a number in (0, 1]"),
    ],
)
def test_recovery_bad_input_is_one_error_before_any_work(
    extra: list[str], message: str, untrained_ckpt: Path, blob_data: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "rec"
    argv = ["recovery", "--checkpoint", str(untrained_ckpt), "--data", str(blob_data)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(out), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.slow
def test_recovery_bench_on_tiny_data(tiny_baseline: Path, blob_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    argv = ["recovery", "--checkpoint", str(tiny_baseline), "--data", str(blob_data),
            "--finetune-steps", "1", "--regularize-steps", "1", "--prune-rounds", "2",
            "--methods", "a,e", "--threads", "1", "--latency-runs", "20", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    bench = json.loads((out / "recovery.json").read_text())
    test_ids = CanonicalDataset(blob_data).split("test")
    assert bench["test_subjects"] == len(test_ids) and list(bench["rows"]) == ["a", "e"]
    for key, row in bench["rows"].items():
        recipe = Recipe.from_dict(row["recipe"])
        assert recipe == recovery_recipes(RecoverySettings(**bench["settings"]))[key]
        assert recipe.label == row["label"]
        paired = row["test_paired"]
        assert paired["n_subjects"] == len(test_ids)
        for region in ("WT", "TC", "ET", "mean"):
            lo, hi = paired["ci95"][region]
            assert lo <= paired["dice_delta"][region] <= hi
        assert isinstance(paired["non_inferior"], bool)
        ref = bench["reference"]["metrics"]
        assert row["compression_factor"] == pytest.approx(
            ref["size_bytes"] / row["metrics"]["size_bytes"]
        )
        assert row["compression_factor"] > 1
        # the speed-up is the paired one measured by compress_checkpoint, with its quartiles
        speedup, paired_ort = row["speedup_ort"], row["metrics"]["paired"]["ort_cpu"]
        assert speedup["median"] == paired_ort["speedup"] == row["metrics"]["speedup_ort_cpu"]
        assert 0 < speedup["q25"] <= speedup["median"] <= speedup["q75"]
    # the regularised row used the cache; the table has one line per row
    assert len(list((out / "cache").glob("regularized-*.done"))) == 1
    table = (out / "recovery.md").read_text().splitlines()
    assert [
        ln.split("|")[1].strip() for ln in table if ln.startswith("| a") or ln.startswith("| e")
    ] == ["a", "e"]


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


def test_ceiling_bad_model_spec_is_one_error_line(tmp_path, capsys) -> None:  # noqa: ANN001
    import pytest

    from studies.bench import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "ceiling",
                "--models",
                "unet3d-small:upsampling=cubic",
                "--out",
                str(tmp_path / "c.json"),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("usage: ") is False and "error: --models: model spec" in err[-1]
    assert not (tmp_path / "c.json").exists()


def test_macs_bench_tiny_run_rows_and_ratios(tmp_path, capsys) -> None:  # noqa: ANN001
    """A toy run on ORT: one row per round_to, the MAC reduction is the zoo's MAC count of the
    dense model over the pruned one, share = speed-up / reduction, quartiles bracket the median."""
    import json

    import pytest
    import torch

    from compress.prune_structured import prune_structured
    from studies.bench import main
    from unet import zoo

    out = tmp_path / "m.json"
    argv = ["macs", "--models", "unet2d-tiny", "--round-to", "1,4", "--runtimes", "ort",
            "--side", "32", "--threads", "1", "--rounds", "20", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["round_to"], r["runtime"]) for r in rows] == [
        ("unet2d-tiny", 1, "ort"),
        ("unet2d-tiny", 4, "ort"),
    ]
    torch.manual_seed(0)  # the bench's --seed default: the same random weights, the same cut
    dense = zoo.create("unet2d-tiny")
    for r in rows:
        small = prune_structured(dense, 0.5, round_to=r["round_to"])
        expected = zoo.macs(dense.config, (32, 32)) / zoo.macs(small.config, (32, 32))
        assert r["mac_reduction"] == pytest.approx(expected)
        assert r["mac_reduction"] > 1.5
        assert r["speedup_q25"] <= r["speedup"] <= r["speedup_q75"]
        assert r["share"] == pytest.approx(r["speedup"] / r["mac_reduction"])
    assert "| unet2d-tiny | 32x32 | 0.5 | 4 | ort |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--round-to", "x"], "--round-to: integers or 'auto'"),
        (["--round-to", "0"], "--round-to: values must be >= 1"),
        (["--ratio", "1.5"], "--ratio must be in (0, 1)"),
        (["--runtimes", "tensorrt"], "--runtimes: unknown ['tensorrt']"),
        (["--models", "unet2d-tiny:norm=zz"], "--models: model spec"),
        (["--rounds", "3"], "--rounds must be >= "),
    ],
)
def test_macs_bench_bad_flags_are_one_error_line(extra, message, tmp_path, capsys) -> None:  # noqa: ANN001
    from studies.bench import main

    with pytest.raises(SystemExit) as exc:
        main(["macs", "--runtimes", "ort", *extra, "--out", str(tmp_path / "m.json")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "m.json").exists()
