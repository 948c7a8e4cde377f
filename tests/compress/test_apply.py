"""`compress.apply`: one recipe end to end, artifacts, metrics contract, split discipline, CLI errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from compress.apply import format_table, main, ratios
from compress.pipeline import compress_checkpoint, measure_baseline
from compress.prune import conv_sparsity
from compress.recipe import Recipe
from unet import load_checkpoint, save_checkpoint, zoo
from unet.components import stored_postprocessing
from unet.data.canonical import REGIONS, CanonicalDataset
from unet.evaluate import evaluate_model
from unet.train_loop import fit

S50 = ["--prune", "structured", "--ratio", "0.5", "--finetune-steps", "5"]
M_KEYS = {
    "params",
    "macs",
    "size_bytes",
    "size_compressed_bytes",
    "latency_ms",
    "threshold",
    "val_dice",
}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, blob_data: Path) -> Path:
    model = zoo.create("unet2d-tiny")
    fit(model, blob_data, steps=30, batch_size=8, seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "base.pt", model, {"threshold": 0.5})


@pytest.fixture(scope="module")
def baseline_metrics(baseline: Path, blob_data: Path) -> dict:
    return measure_baseline(baseline, blob_data, threads=1)


@pytest.fixture()
def spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every subject whose image or label is read."""
    seen: list[str] = []
    image, label = CanonicalDataset.image, CanonicalDataset.label

    def spy_image(self, sid, *a, **k):
        seen.append(sid)
        return image(self, sid, *a, **k)

    def spy_label(self, sid, *a, **k):
        seen.append(sid)
        return label(self, sid, *a, **k)

    monkeypatch.setattr(CanonicalDataset, "image", spy_image)
    monkeypatch.setattr(CanonicalDataset, "label", spy_label)
    return seen


def test_structured_int8_recipe_end_to_end(
    tmp_path: Path, baseline: Path, baseline_metrics: dict, blob_data: Path, spy: list[str]
) -> None:
    recipe = Recipe(
        prune="structured", ratio=0.5, finetune_steps=5, precision="int8", threshold="per-region"
    )
    result = compress_checkpoint(
        baseline, blob_data, recipe, tmp_path, threads=1, baseline_metrics=baseline_metrics
    )
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.onnx",
        "checkpoint.pt",
        "recipe.json",
        "metrics.json",
    }
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(result))
    assert Recipe.from_json(tmp_path / "recipe.json") == recipe
    b, c = result["baseline"], result["compressed"]
    assert set(b) >= M_KEYS and set(c) >= M_KEYS
    assert (
        set(c["latency_ms"]) >= {"ort_cpu", "torch_cpu"}
        and c["latency_ms"]["ort_cpu"]["median"] > 0
    )
    assert c["params"] < b["params"] and c["macs"] < b["macs"]
    assert c["size_bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert ratios(result)["compression_factor"] == pytest.approx(b["size_bytes"] / c["size_bytes"])
    assert "compressed" in format_table(result) and "val Dice ET" in format_table(result)
    # the stored checkpoint rebuilds the pruned net and carries threshold + recipe
    model, meta = load_checkpoint(tmp_path / "checkpoint.pt")
    assert model.config != zoo.config("unet2d-tiny")
    assert meta["threshold"] == c["threshold"] and Recipe.from_dict(meta["recipe"]) == recipe
    # the int8 ONNX runs and is really quantized
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 4, 32, 32), np.float32)})[0]
    assert out.shape == (1, 3, 32, 32)
    assert any(
        n.op_type == "QuantizeLinear"
        for n in __import__("onnx").load(str(tmp_path / "model.onnx")).graph.node
    )
    # the paired val comparison: over the val subjects, deltas = differences of the means
    data = CanonicalDataset(blob_data)
    paired = result["paired_val"]
    assert paired["n_subjects"] == len(data.split("val")) == len(c["val_per_subject"])
    for key in ("WT", "TC", "ET", "mean"):
        delta = c["val_dice"][key] - b["val_dice"][key]
        assert paired["dice_delta"][key] == pytest.approx(delta, abs=1e-9)
        assert paired["ci95"][key][0] <= paired["dice_delta"][key] <= paired["ci95"][key][1]
    for region, split in paired["detection"].items():  # unet.detection: the parts add up
        total = split["empty_delta"] + split["present_delta"]
        assert total == pytest.approx(paired["dice_delta"][region], abs=1e-9)
    assert "non-inferior at margins 0.01 (mean) / 0.03" in format_table(result)
    # split discipline: train + val only
    assert not set(spy) & set(data.split("test"))
    assert set(data.split("val")) <= set(spy)


def test_recovery_recipe_round_trips_and_shares_the_cached_regularisation(
    tmp_path: Path, baseline: Path, baseline_metrics: dict, blob_data: Path, spy: list[str]
) -> None:
    recipe = Recipe(
        prune="structured",
        ratio=0.5,
        finetune_steps=2,
        prune_rounds=2,
        distill_weight=1.0,
        distill_temperature=2.0,
        regularize_steps=1,
        regularize_strength=0.01,
    )
    cache = tmp_path / "cache"
    kw = {"threads": 1, "baseline_metrics": baseline_metrics, "cache_dir": cache}
    result = compress_checkpoint(baseline, blob_data, recipe, tmp_path / "a", **kw)
    assert Recipe.from_json(tmp_path / "a" / "recipe.json") == recipe
    assert (
        Recipe.from_dict(load_checkpoint(tmp_path / "a" / "checkpoint.pt")[1]["recipe"]) == recipe
    )
    assert Recipe.from_dict(result["recipe"]) == recipe
    assert result["recipe_label"] == "reg1(0.01)+structured0.50+gradual2+ft2+kd1(T2)+fp32+global"
    entries = sorted(p.name for p in cache.iterdir() if p.suffix in (".pt", ".done"))
    assert len(entries) == 2  # one regularised checkpoint and its .done marker
    # another recipe with the same regularisation reuses the entry
    other = dataclasses.replace(recipe, ratio=0.3, prune_rounds=1)
    compress_checkpoint(baseline, blob_data, other, tmp_path / "b", **kw)
    assert sorted(p.name for p in cache.iterdir() if p.suffix in (".pt", ".done")) == entries
    assert not set(spy) & set(CanonicalDataset(blob_data).split("test"))


def test_stored_val_dice_is_reproducible(
    tmp_path: Path, baseline: Path, baseline_metrics: dict, blob_data: Path
) -> None:
    recipe = Recipe(prune="unstructured", ratio=0.5, threshold="global")
    result = compress_checkpoint(
        baseline, blob_data, recipe, tmp_path, threads=1, baseline_metrics=baseline_metrics
    )
    model, meta = load_checkpoint(tmp_path / "checkpoint.pt")
    again = evaluate_model(model, blob_data, "val", meta["threshold"], hd95=False)
    assert again["mean"]["dice"]["mean"] == pytest.approx(
        result["compressed"]["val_dice"]["mean"], abs=1e-4
    )
    assert conv_sparsity(model) == pytest.approx(0.5, abs=0.005)  # zeros survive save/load


def test_component_search_is_stored_and_reproducible(
    tmp_path: Path, baseline: Path, baseline_metrics: dict, blob_data: Path
) -> None:
    """``components="search"``: sizes chosen on val land in metrics.json and the checkpoint,
    the stored val Dice is what `unet.evaluate` gives with them, and never below no removal."""
    recipe = Recipe(threshold="per-region", components="search")
    result = compress_checkpoint(
        baseline, blob_data, recipe, tmp_path, threads=1, baseline_metrics=baseline_metrics
    )
    model, meta = load_checkpoint(tmp_path / "checkpoint.pt")
    sizes = result["compressed"]["min_component"]
    volumes = result["compressed"]["min_volume"]
    assert meta["min_component"] == sizes and set(sizes) == {"WT", "TC", "ET"}
    assert meta["min_volume"] == volumes and set(volumes) == {"WT", "TC", "ET"}
    assert set(result["component_curve"]) == set(result["volume_curve"]) == {"WT", "TC", "ET"}
    kw = {"hd95": False}
    post = {"min_component": sizes, "min_volume": volumes}
    again = evaluate_model(model, blob_data, "val", meta["threshold"], **post, **kw)
    assert again["mean"]["dice"]["mean"] == pytest.approx(
        result["compressed"]["val_dice"]["mean"], abs=1e-4
    )
    kept = evaluate_model(model, blob_data, "val", meta["threshold"], **kw)
    assert again["mean"]["dice"]["mean"] >= kept["mean"]["dice"]["mean"] - 1e-9
    for r in REGIONS:  # the volume search starts where the size search ended
        by_size, by_volume = result["component_curve"][r], result["volume_curve"][r]
        assert max(by_size["dice"]) == pytest.approx(by_volume["dice"][0], abs=1e-9)
        assert max(by_volume["dice"]) == pytest.approx(again["mean"]["dice"][r], abs=1e-4)


def test_one_se_selection_keeps_an_anchor_that_is_the_val_best(
    tmp_path: Path, baseline: Path, baseline_metrics: dict, blob_data: Path
) -> None:
    """``selection="one-se"`` anchors every val search (threshold, size, volume) at the
    reference's M: anchored at what the argmax chooses, it keeps exactly that; the stored val
    Dice is reproducible."""
    best = Recipe(threshold="per-region", components="search")
    found = compress_checkpoint(
        baseline, blob_data, best, tmp_path / "best", threads=1, baseline_metrics=baseline_metrics
    )["compressed"]
    anchor = {**baseline_metrics, "threshold": found["threshold"]}
    anchor["min_component"] = found["min_component"]
    anchor["min_volume"] = found["min_volume"]
    recipe = dataclasses.replace(best, selection="one-se")
    result = compress_checkpoint(
        baseline, blob_data, recipe, tmp_path / "1se", threads=1, baseline_metrics=anchor
    )
    c = result["compressed"]
    assert c["threshold"] == found["threshold"]
    assert c["min_component"] == found["min_component"]
    assert c["min_volume"] == found["min_volume"]
    assert result["threshold_search"]["rule"] == "one-se"
    assert result["threshold_search"]["anchor"] == found["threshold"]
    assert result["recipe_label"].endswith("+cc+1se")
    model, meta = load_checkpoint(tmp_path / "1se" / "checkpoint.pt")
    post = stored_postprocessing(meta)
    again = evaluate_model(model, blob_data, "val", meta["threshold"], **post, hd95=False)
    assert again["mean"]["dice"]["mean"] == pytest.approx(c["val_dice"]["mean"], abs=1e-4)


def test_bf16_and_fixed_threshold(
    tmp_path: Path, baseline: Path, baseline_metrics: dict, blob_data: Path
) -> None:
    result = compress_checkpoint(
        baseline,
        blob_data,
        Recipe(precision="bf16", threshold="fixed"),
        tmp_path,
        threads=1,
        baseline_metrics=baseline_metrics,
    )
    assert result["artifact"] == "checkpoint.pt"
    assert result["compressed"]["threshold"] == {"WT": 0.5, "TC": 0.5, "ET": 0.5}
    assert result["compressed"]["size_bytes"] == (tmp_path / "checkpoint.pt").stat().st_size
    # bf16 weights: the checkpoint loses ~2 bytes per parameter against the fp32 baseline file
    saved = baseline.stat().st_size - result["compressed"]["size_bytes"]
    assert saved > 1.5 * result["compressed"]["params"]
    assert result["compressed"]["val_dice"]["mean"] == pytest.approx(
        baseline_metrics["val_dice"]["mean"], abs=0.05
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prune", "structured", "--ratio", "1.0"], "ratio must be in \\[0, 1\\)"),
        (["--prune", "pairs", "--level-ratios", "0.1,0.2"], "level"),
        (["--precision", "int4"], "invalid choice: 'int4'"),
        # recovery flags: wrong type, out of range, not applicable
        (["--prune-rounds", "two"], "argument --prune-rounds: invalid int value: 'two'"),
        ([*S50, "--prune-rounds", "0"], "recipe: prune_rounds must be an integer in \\[1, 10\\]"),
        ([*S50, "--prune-rounds", "11"], "recipe: prune_rounds must be an integer in \\[1, 10\\]"),
        (["--distill-weight", "x"], "argument --distill-weight: invalid float value: 'x'"),
        ([*S50, "--distill-weight", "-1"], "recipe: distill_weight must be a number in \\[0, 100\\]"),
        ([*S50, "--distill-weight", "1", "--distill-temperature", "0"], "distill_temperature must be"),
        (["--distill-weight", "1"], "distill_weight > 0 needs finetune_steps > 0"),
        (["--regularize-steps", "1.5"], "argument --regularize-steps: invalid int value: '1.5'"),
        ([*S50, "--regularize-steps", "-3"], "recipe: regularize_steps must be an integer"),
        (["--regularize-steps", "5"], "regularize_steps only apply to structured/pairs"),
        ([*S50, "--regularize-steps", "3", "--regularize-strength", "5"], "regularize_strength must be"),
        (["--regularize-strength", "nan"], "regularize_strength must be a number"),
    ],
)  # fmt: skip
def test_cli_bad_recipe_flags(
    tmp_path: Path, baseline: Path, blob_data: Path, extra: list, message: str, capsys
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--checkpoint",
                str(baseline),
                "--data",
                str(blob_data),
                "--out",
                str(tmp_path / "o"),
                *extra,
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err)
    assert err.count("error:") == 1 and err.strip().splitlines()[-1].startswith("python -m")


def test_cli_bad_recipe_file_and_checkpoint(
    tmp_path: Path, baseline: Path, blob_data: Path, capsys
) -> None:
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"prune": "structured", "ratio": 0.3, "sparsity": 0.2}))
    with pytest.raises(SystemExit):
        main(
            [
                "--checkpoint",
                str(baseline),
                "--data",
                str(blob_data),
                "--out",
                str(tmp_path / "o"),
                "--recipe",
                str(recipe),
            ]
        )
    assert "r.json: recipe: unknown field(s) ['sparsity']" in capsys.readouterr().err
    not_ckpt = tmp_path / "notes.txt"
    not_ckpt.write_text("hello")
    with pytest.raises(SystemExit):
        main(
            ["--checkpoint", str(not_ckpt), "--data", str(blob_data), "--out", str(tmp_path / "o")]
        )
    assert "notes.txt: not a safe unet-compress checkpoint" in capsys.readouterr().err


def test_cli_prints_table(tmp_path: Path, baseline: Path, blob_data: Path, capsys) -> None:
    assert (
        main(
            [
                "--checkpoint",
                str(baseline),
                "--data",
                str(blob_data),
                "--out",
                str(tmp_path / "o"),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "recipe: dense+fp32+global" in out and "latency ORT CPU" in out
