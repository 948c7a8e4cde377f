"""The peer benchmark (`studies.bench_peers`): the stock pruner, the comparison, the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx
import pytest
import torch

from compress.prune_structured import channel_count
from compress.recipe import Recipe
from studies.bench import main
from studies.bench_peers import ahead_of_peers, stock_prune
from unet import zoo
from unet.data.canonical import CanonicalDataset


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_stock_pruner_removes_the_fraction_and_keeps_the_head(fraction: float) -> None:
    torch.manual_seed(0)
    model = zoo.create("unet2d-tiny").eval()
    small = stock_prune(model, fraction, (1, 4, 32, 32))
    removed = 1 - channel_count(small) / channel_count(model)
    assert removed == pytest.approx(fraction, abs=0.05)
    assert small.config.out_channels == 3 and small.head.out_channels == 3
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        assert small(x).shape == model(x).shape == (2, 3, 32, 32)
    # a plain UNet again: it round-trips through its config
    assert type(small)(small.config).load_state_dict(small.state_dict()) is not None


def _row(size: int, speedup: float, delta: float) -> dict:
    return {
        "size_bytes": size,
        "speedup": {"median": speedup},
        "val_paired": {"dice_delta": {"mean": delta}},
    }


def test_ahead_of_peers_names_each_axis_where_ours_wins() -> None:
    rows = {
        "ours": _row(100, 3.0, -0.005),
        "ort_int8": _row(400, 1.2, 0.001),  # ours smaller and faster, not more accurate
        "metapruner": _row(100, 3.5, -0.05),  # equal size is not ahead; only Dice
    }
    assert ahead_of_peers(rows) == {"ort_int8": ["size", "speed"], "metapruner": ["dice"]}


@pytest.mark.parametrize(
    ("recipe_text", "extra", "message"),
    [
        (None, [], "--recipe "),
        ("{not json", [], "not valid JSON"),
        ('{"prune": "structured", "bogus": 1}', [], "unknown field(s) ['bogus']"),
        ('{"prune": "structured", "ratio": 0.5}', ["--peers", "ours,zz"], "--peers: unknown"),
        ('{"prune": "structured", "ratio": 0.5}', ["--latency-runs", "3"], "--latency-runs"),
    ],
)
def test_peers_bad_input_is_one_error_line_before_any_work(
    recipe_text, extra, message, untrained_ckpt: Path, blob_data: Path, tmp_path: Path, capsys
) -> None:  # noqa: ANN001
    recipe = tmp_path / "recipe.json"
    if recipe_text is not None:
        recipe.write_text(recipe_text)
    out = tmp_path / "peers"
    argv = ["peers", "--checkpoint", str(untrained_ckpt), "--data", str(blob_data),
            "--recipe", str(recipe), "--out", str(out), *extra]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("error:" in ln for ln in err) == 1 and message in err[-1]
    assert not out.exists()


@pytest.mark.slow
def test_peers_bench_on_tiny_data(tiny_baseline: Path, blob_data: Path, tmp_path: Path) -> None:
    recipe = Recipe(
        prune="structured", ratio=0.5, round_to=1, finetune_steps=2, precision="int8",
        threshold="per-region",
    )  # fmt: skip
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(recipe.to_dict()))
    out = tmp_path / "peers"
    # OpenVINO stays out of this process (README, known problems): its row has its own test file
    argv = ["peers", "--checkpoint", str(tiny_baseline), "--data", str(blob_data),
            "--recipe", str(recipe_path), "--peers", "ort_int8,metapruner",
            "--threads", "1", "--latency-runs", "20", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    bench = json.loads((out / "peers.json").read_text())
    rows = bench["rows"]
    assert list(rows) == ["ours", "ort_int8", "metapruner"]
    n_val = len(CanonicalDataset(blob_data).split("val"))
    assert bench["val_subjects"] == n_val
    for row in rows.values():
        paired = row["val_paired"]
        assert paired["n_subjects"] == n_val
        assert (
            paired["ci95"]["mean"][0] <= paired["dice_delta"]["mean"] <= paired["ci95"]["mean"][1]
        )
        s = row["speedup"]
        assert 0 < s["q25"] <= s["median"] <= s["q75"]
        assert row["compression_factor"] == pytest.approx(
            bench["reference"]["size_bytes"] / row["size_bytes"]
        )
    # ORT's defaults: QDQ with per-tensor scales (one element per scale: no per-channel axis)
    graph = onnx.load(out / "ort_int8" / "model.onnx").graph
    scales = {i.name: i for i in graph.initializer}
    dequant = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert dequant and any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert all(math.prod(scales[n.input[1]].dims) == 1 for n in dequant if n.input[1] in scales)
    assert rows["ort_int8"]["compression_factor"] > 1
    assert rows["ours"]["compression_factor"] > rows["ort_int8"]["compression_factor"]
    # the stock pruner removed the same fraction of channels as ours, within rounding
    ours = Recipe.from_dict(rows["ours"]["recipe"])
    assert ours == recipe
    assert rows["metapruner"]["channel_fraction"] == pytest.approx(0.5, abs=0.06)
    assert set(bench["ahead"]) == {"ort_int8", "metapruner"}
    table = (out / "peers.md").read_text().splitlines()
    assert [ln.split("|")[1].strip() for ln in table if ln.startswith("| ") and "---" not in ln][
        1:
    ] == ["ours", "ort_int8", "metapruner"]


@pytest.mark.openvino
@pytest.mark.skipif(
    __import__("compress.openvino").openvino.unavailable_reason(int8=True) is not None,
    reason="OpenVINO/NNCF not installed",
)
def test_peers_nncf_row_is_timed_on_openvino_against_the_ort_reference(
    untrained_ckpt: Path, blob_data: Path, tmp_path: Path
) -> None:
    """No training in this test: it runs in the OpenVINO process (README, known problems)."""
    from studies.bench_peers import run_peers

    ours = Recipe(precision="int8", threshold="per-region")  # dense int8, nothing to train
    bench = run_peers(
        untrained_ckpt, blob_data, ours, tmp_path / "peers", threads=1, latency_runs=20,
        peers=["nncf_ov_int8", "metapruner"],
    )  # fmt: skip
    rows = bench["rows"]
    assert list(rows) == ["ours", "nncf_ov_int8"]
    assert bench["notes"] == [
        f"metapruner: left out, the recipe removes no channels ({ours.label})"
    ]
    row = rows["nncf_ov_int8"]
    assert row["backend"] == "ov_cpu" and rows["ours"]["backend"] == "ort_cpu"
    assert (tmp_path / "peers" / "nncf_ov_int8" / "model.xml").is_file()
    assert Recipe.from_dict(row["recipe"]).runtime == "openvino"
    assert 0 < row["speedup"]["q25"] <= row["speedup"]["median"] <= row["speedup"]["q75"]
    assert row["val_paired"]["n_subjects"] == bench["val_subjects"]
