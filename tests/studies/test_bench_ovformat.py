"""The OpenVINO format benchmark (`studies.bench_ovformat`): IR vs ONNX rows, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress.openvino import unavailable_reason
from studies.bench import main
from unet.data.canonical import CanonicalDataset

pytestmark = [
    pytest.mark.openvino,
    pytest.mark.skipif(
        unavailable_reason(int8=True) is not None, reason=f"OpenVINO/NNCF: {unavailable_reason()}"
    ),
]


def test_ovformat_rows_sizes_and_parity(
    untrained_ckpt: Path, blob_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fp32 IR and ONNX compute the same logits; the int8 ONNX is smaller than the int8 IR (a
    tiny model: the IR's XML graph outweighs its weights); quartiles bracket the median."""
    out = tmp_path / "f.json"
    argv = ["ovformat", "--checkpoint", str(untrained_ckpt), "--data", str(blob_data),
            "--precisions", "fp32,int8", "--calibration-samples", "4", "--rounds", "20",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    rows = {r["precision"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "int8"]
    assert result["input_shape"] == [1, 4, 32, 32]  # the blob data's slice
    assert rows["fp32"]["max_logit_diff"] <= 1e-4
    fp32 = rows["fp32"]
    for region, value in fp32["val_dice_ir"].items():  # the same logits: the same val Dice
        assert fp32["val_dice_onnx"][region] == pytest.approx(value, abs=1e-3)
    assert fp32["val_paired_onnx_vs_ir"]["dice_delta"]["mean"] == pytest.approx(0, abs=1e-3)
    n_val = len(CanonicalDataset(blob_data).split("val"))
    assert all(r["val_paired_onnx_vs_ir"]["n_subjects"] == n_val for r in rows.values())
    # the same NNCF quantization either way: logits agree to int8 precision
    assert rows["int8"]["max_logit_diff"] <= 0.1 * rows["int8"]["logit_scale"]
    for r in rows.values():
        assert r["onnx_bytes"] < r["ir_bytes"]
        assert 0 < r["speedup_q25"] <= r["speedup"] <= r["speedup_q75"]
    assert "| int8 |" in capsys.readouterr().out
    assert "machine" in result


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--precisions", "int4"], "--precisions: unknown ['int4']"),
        (["--rounds", "3"], "--rounds must be >= "),
        (["--calibration-samples", "0"], "--calibration-samples must be >= 1"),
        (["--data", "missing.h5"], "--data: missing.h5: no such file"),
    ],
)
def test_ovformat_bad_flags_are_one_error_line(
    extra: list[str],
    message: str,
    untrained_ckpt: Path,
    blob_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "f.json"
    argv = ["ovformat", "--checkpoint", str(untrained_ckpt), "--data", str(blob_data),
            "--out", str(out), *extra]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert sum("error:" in line for line in err) == 1 and message in err[-1]
    assert not out.exists()
