"""Recipes deployed per runtime (ORT, OpenVINO, torch): artifacts, precision recorded, paired
speed-ups in metrics.json, the --runtime / --round-to CLI flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compress import openvino as cov
from compress.apply import main
from compress.deploy import artifact_name, latency_backends
from compress.pipeline import compress_checkpoint
from compress.recipe import Recipe
from compress.simd import default_round_to
from unet import save_checkpoint, zoo

needs_ov = pytest.mark.skipif(
    cov.unavailable_reason(int8=True) is not None,
    reason=f"OpenVINO/NNCF: {cov.unavailable_reason(int8=True)}",
)


# `-m "not openvino"` deselects every test that loads OpenVINO / NNCF.
pytestmark = pytest.mark.openvino


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, blob_data: Path) -> Path:
    torch.manual_seed(0)  # untrained: these tests check artifacts and numbers, not accuracy
    model = zoo.create("unet2d-tiny")
    return save_checkpoint(tmp_path_factory.mktemp("base") / "base.pt", model, {"threshold": 0.5})


@pytest.mark.parametrize(
    ("runtime", "precision", "name", "device", "backends"),
    [
        ("ort", "fp32", "model.onnx", "cpu", ("ort_cpu", "torch_cpu")),
        ("ort", "bf16", "checkpoint.pt", "cpu", ("ort_cpu", "torch_cpu")),
        ("openvino", "int8", "model.xml", "cpu", ("ov_cpu", "torch_cpu")),
        ("openvino", "fp16", "model.onnx", "cpu", ("ov_cpu", "torch_cpu")),
        ("openvino", "bf16", "model.onnx", "cuda", ("ov_cpu", "torch_cpu", "torch_cuda")),
        ("torch", "fp16", "checkpoint.pt", "cuda", ("torch_cpu", "torch_cuda")),
    ],
)
def test_artifact_and_backends_per_runtime(
    runtime: str, precision: str, name: str, device: str, backends: tuple
) -> None:
    assert artifact_name(runtime, precision) == name
    assert latency_backends(runtime, device) == backends


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"runtime": "tensorrt"}, "runtime must be one of"),
        ({"runtime": "torch", "precision": "int8"}, "int8 needs runtime ort or openvino"),
    ],
)
def test_recipe_refuses_bad_runtime(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Recipe(**fields)


def test_recipe_label_names_the_runtime() -> None:
    assert Recipe(precision="int8").label == "dense+int8(minmax)+global"  # ort: as before
    assert Recipe(precision="int8", runtime="openvino").label.endswith("@openvino")
    assert Recipe.from_dict({"prune": "none"}).runtime == "ort"  # old recipe files still load


@needs_ov
@pytest.mark.slow
@pytest.mark.parametrize(  # fp32 parity: test_openvino.py
    ("precision", "max_drop", "files"),
    [
        ("int8", 0.0, ["model.bin", "model.xml"]),  # NNCF's IR
        ("int8", 0.05, ["model.bin", "model.xml"]),
        ("fp16", 0.0, ["model.onnx"]),  # float precisions: the ONNX OpenVINO reads
    ],
)
def test_openvino_recipe_end_to_end(
    tmp_path: Path, baseline: Path, blob_data: Path, precision: str, max_drop: float, files: list
) -> None:
    recipe = Recipe(
        prune="structured",
        ratio=0.25,
        precision=precision,
        runtime="openvino",
        threshold="fixed",
        int8_max_drop=max_drop,
    )
    result = compress_checkpoint(baseline, blob_data, recipe, tmp_path, threads=1)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(["checkpoint.pt", "metrics.json", "recipe.json", *files])
    assert result["artifact"] == files[-1]
    c = result["compressed"]
    artifact = tmp_path / files[-1]
    assert c["size_bytes"] == sum((tmp_path / name).stat().st_size for name in files)
    assert set(c["latency_ms"]) == {"ov_cpu", "torch_cpu"}
    # paired against the baseline's fp32 call on the same backend, ratios stored flat too
    assert set(c["paired"]) == {"ov_cpu", "torch_cpu"}
    assert c["speedup_ov_cpu"] == c["paired"]["ov_cpu"]["speedup"] > 0
    assert c["paired"]["ov_cpu"]["rounds"] == 20
    assert c["ov_inference_precision"] == "f32"  # int8: non-quantized ops in f32; fp16 storage
    if precision == "int8":
        text = artifact.read_text(encoding="utf-8")
        assert "FakeQuantize" in text or "FakeConvert" in text
    # the stored val Dice is the one of the deployed artifact, reproducible from it
    from unet import load_checkpoint
    from unet.evaluate import evaluate_model

    model, meta = load_checkpoint(tmp_path / "checkpoint.pt")
    assert meta["runtime"] == "openvino" and meta["precision"] == precision
    assert Recipe.from_json(tmp_path / "recipe.json").int8_max_drop == max_drop
    forward = cov.ov_forward(cov.compile_ir(artifact, precision, threads=1))
    again = evaluate_model(forward, blob_data, "val", hd95=False, spatial_dims=2, divisor=4)
    assert again["mean"]["dice"]["mean"] == pytest.approx(c["val_dice"]["mean"], abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["compressed"]["speedup_ov_cpu"]


def test_ort_recipe_stores_paired_speedups(tmp_path: Path, baseline: Path, blob_data: Path) -> None:
    result = compress_checkpoint(
        baseline, blob_data, Recipe(threshold="fixed"), tmp_path, threads=1
    )
    c = result["compressed"]
    assert set(c["paired"]) == {"ort_cpu", "torch_cpu"}
    # the identity recipe vs the baseline: same graph, so the paired ratio is near 1
    assert 0.5 < c["speedup_ort_cpu"] < 2.0
    p = c["paired"]["ort_cpu"]
    assert p["speedup_q25"] <= p["speedup"] <= p["speedup_q75"]
    assert np.isfinite(p["reference_ms"]["median"]) and p["candidate_ms"]["runs"] == 20


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--runtime", "tensorrt"], "invalid choice: 'tensorrt'"),
        (["--runtime", "torch", "--precision", "int8"], "int8 needs runtime ort or openvino"),
        (["--round-to", "eight"], "--round-to must be an integer or 'auto', got 'eight'"),
        (
            ["--precision", "int8", "--int8-max-drop", "0.01"],
            "int8_max_drop (NNCF accuracy control) needs precision int8 and runtime openvino",
        ),
        (
            ["--precision", "int8", "--runtime", "openvino", "--int8-max-drop", "0.9"],
            "int8_max_drop must be a number in [0, 0.5], got 0.9",
        ),
    ],
)
def test_cli_bad_runtime_flags(
    tmp_path: Path, baseline: Path, blob_data: Path, extra: list, message: str, capsys
) -> None:
    argv = ["--checkpoint", str(baseline), "--data", str(blob_data), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        main(argv + extra)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_openvino_missing_is_one_error_line(
    tmp_path: Path, baseline: Path, blob_data: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr("compress.apply.unavailable_reason", lambda int8=False: "not installed")
    argv = ["--checkpoint", str(baseline), "--data", str(blob_data), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--runtime", "openvino"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("error: runtime openvino: not installed")


def test_cli_round_to_auto_follows_the_cpu(
    tmp_path: Path, baseline: Path, blob_data: Path, capsys
) -> None:
    out = tmp_path / "o"
    argv = ["--checkpoint", str(baseline), "--data", str(blob_data), "--out", str(out)]
    assert (
        main(
            [
                *argv,
                "--prune",
                "structured",
                "--ratio",
                "0.25",
                "--round-to",
                "auto",
                "--threshold",
                "fixed",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["round_to"] == default_round_to(precision="fp32")
