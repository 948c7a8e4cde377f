"""`python -m unet.predict` and `python -m unet.evaluate` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from unet import save_checkpoint, zoo
from unet.data.canonical import CanonicalDataset, label_from_regions
from unet.evaluate import main as evaluate_main
from unet.predict import main as predict_main


@pytest.fixture()
def tiny_ckpt(tmp_path: Path) -> Path:
    return save_checkpoint(
        tmp_path / "tiny.pt",
        zoo.create("unet2d-tiny"),
        {"threshold": {"WT": 0.3, "TC": 0.5, "ET": 0.7}},
    )


def test_predict_writes_prediction_and_overlay(
    tmp_path: Path, tiny_ckpt: Path, blob_data: Path
) -> None:
    out, png = tmp_path / "pred.h5", tmp_path / "overlay.png"
    assert (
        predict_main(
            [
                "--checkpoint",
                str(tiny_ckpt),
                "--data",
                str(blob_data),
                "--subject",
                "s001",
                "--out",
                str(out),
                "--overlay",
                str(png),
            ]
        )
        == 0
    )
    with h5py.File(out) as f:
        probs, regions, label = (
            f["probabilities"][...],
            f["regions"][...].astype(bool),
            f["label"][...],
        )
        assert json.loads(f.attrs["threshold"]) == {"WT": 0.3, "TC": 0.5, "ET": 0.7}
    assert probs.shape == (3, 8, 32, 32) and probs.min() >= 0 and probs.max() <= 1
    np.testing.assert_array_equal(regions[0], probs[0] > 0.3)  # the stored threshold was used
    np.testing.assert_array_equal(regions[2], probs[2] > 0.7)
    np.testing.assert_array_equal(label, label_from_regions(regions))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_unknown_subject_is_a_clear_error(
    tmp_path: Path, tiny_ckpt: Path, blob_data: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exc:
        predict_main(
            [
                "--checkpoint",
                str(tiny_ckpt),
                "--data",
                str(blob_data),
                "--subject",
                "nobody",
                "--out",
                str(tmp_path / "p.h5"),
            ]
        )
    assert exc.value.code == 2
    assert "no subject 'nobody'" in capsys.readouterr().err
    assert not (tmp_path / "p.h5").exists()


def test_evaluate_cli_writes_csv_and_json(tmp_path: Path, tiny_ckpt: Path, blob_data: Path) -> None:
    assert (
        evaluate_main(
            [
                "--checkpoint",
                str(tiny_ckpt),
                "--data",
                str(blob_data),
                "--split",
                "test",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    test_ids = CanonicalDataset(blob_data).split("test")
    assert [s["subject"] for s in result["per_subject"]] == test_ids
    assert result["threshold"] == {"WT": 0.3, "TC": 0.5, "ET": 0.7}
    assert set(result["mean"]) == {"dice", "hd95"}
    rows = (tmp_path / "ev" / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("subject,dice_WT,dice_TC,dice_ET,dice_mean,hd95_WT") and len(
        rows
    ) == 1 + len(test_ids)
    mean_wt = np.mean([float(r.split(",")[1]) for r in rows[1:]])
    assert mean_wt == pytest.approx(result["mean"]["dice"]["WT"], abs=1e-5)


def test_evaluate_cli_bad_checkpoint(
    tmp_path: Path, blob_data: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("nope")
    with pytest.raises(SystemExit):
        evaluate_main(
            ["--checkpoint", str(bad), "--data", str(blob_data), "--out", str(tmp_path / "ev")]
        )
    assert "bad.pt: not a safe unet-compress checkpoint" in capsys.readouterr().err


def test_stored_component_removal_is_applied_unless_kept(tmp_path: Path, blob_data: Path) -> None:
    """Threshold 0 makes each region one volume-filling component; a stored minimum size above
    the volume removes WT, a stored minimum volume above it empties ET, in `unet.evaluate` and
    `unet.predict`; ``--keep-components`` keeps both."""
    sizes, volumes = {"WT": 10**6, "TC": 0, "ET": 0}, {"WT": 0, "TC": 0, "ET": 10**6}
    meta = {"threshold": 0.0, "min_component": sizes, "min_volume": volumes}
    ckpt = save_checkpoint(tmp_path / "cc.pt", zoo.create("unet2d-tiny"), meta)
    common = ["--checkpoint", str(ckpt), "--data", str(blob_data)]
    for keep, wt_empty in (([], True), (["--keep-components"], False)):
        out = tmp_path / f"ev{len(keep)}"
        assert (
            evaluate_main([*common, "--split", "val", "--out", str(out), "--no-hd95", *keep]) == 0
        )
        result = json.loads((out / "metrics.json").read_text())
        none = {"WT": 0, "TC": 0, "ET": 0}
        assert result["min_component"] == (sizes if not keep else none)
        assert result["min_volume"] == (volumes if not keep else none)
        wt = [s["dice"]["WT"] for s in result["per_subject"]]
        tc = [s["dice"]["TC"] for s in result["per_subject"]]
        assert all(d == 0.0 for d in wt) == wt_empty and all(0 < d < 1 for d in tc)
        et = [s["dice"]["ET"] for s in result["per_subject"]]  # emptied: 0, or 1 without ET
        assert all(d in (0.0, 1.0) for d in et) if wt_empty else any(0 < d < 1 for d in et)
        pred = tmp_path / f"pred{len(keep)}.h5"
        assert predict_main([*common, "--subject", "s001", "--out", str(pred), *keep]) == 0
        with h5py.File(pred) as f:
            regions = f["regions"][...].astype(bool)
            assert json.loads(f.attrs["min_volume"]) == (volumes if not keep else none)
        assert (not regions[0].any()) == wt_empty and regions[1].all()
        assert (not regions[2].any()) == wt_empty
