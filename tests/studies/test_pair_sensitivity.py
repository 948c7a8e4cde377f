"""``python -m studies.pair_sensitivity``: CSV + heat-map from a checkpoint, clear CLI errors."""

from __future__ import annotations

import csv

import pytest
import torch

from studies.pair_sensitivity import main
from unet import save_checkpoint, zoo


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = zoo.create("unet2d-tiny")
    return save_checkpoint(
        tmp_path / "tiny.pt", model, {"threshold": {"WT": 0.4, "TC": 0.5, "ET": 0.5}}
    )


def test_writes_csv_and_figures(tmp_path, checkpoint, blob_data, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(blob_data),
            "--out",
            str(out),
            "--amounts",
            "0,0.5",
        ]
    )
    assert code == 0
    with open(out / "pair_sensitivity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["pair", "amount", "params", "val_dice_mean", "dice_drop"]
    assert [(r["pair"], r["amount"]) for r in rows] == [
        (p, a)
        for p in ("encoders.0", "encoders.1", "encoders.2", "decoders.0", "decoders.1")
        for a in ("0", "0.5")
    ]
    assert all(float(r["dice_drop"]) == 0.0 for r in rows if r["amount"] == "0")
    png = (out / "pair_sensitivity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "pair_sensitivity.pdf").read_bytes()[:5] == b"%PDF-"
    assert "pair,amount,params" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--amounts", "0.5,1.2"], "amounts must be numbers in [0, 1)"),
        (["--amounts", "half"], "not a comma-separated list of numbers"),
        (["--checkpoint", "{tmp}/missing.pt"], "missing.pt: no such checkpoint file"),
        (["--checkpoint", "{tmp}/bogus.pt"], "bogus.pt: not a safe unet-compress checkpoint"),
        (["--data", "{tmp}/missing.h5"], "missing.h5: no such data file"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, checkpoint, blob_data, capsys, args, message):
    (tmp_path / "bogus.pt").write_bytes(b"not a checkpoint")
    base = {"--checkpoint": str(checkpoint), "--data": str(blob_data), "--out": str(tmp_path / "o")}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([x for kv in base.items() for x in kv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
