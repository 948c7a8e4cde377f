"""`python -m unet.evaluate --reference`: the paired block, and refusals of bad references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unet import zoo
from unet.checkpoint import save_checkpoint
from unet.evaluate import main


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two untrained tiny models with different weights (so their per-subject Dice differ)."""
    folder = tmp_path_factory.mktemp("ckpts")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = zoo.create("unet2d-tiny").eval()
        paths.append(save_checkpoint(folder / f"m{seed}.pt", model, {"threshold": 0.5}))
    return paths[0], paths[1]


def run(argv: list[str]) -> None:
    assert main(argv) == 0


def test_reference_checkpoint_writes_the_paired_block(
    blob_data: Path, two_checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    cand, ref = two_checkpoints
    common = ["--data", str(blob_data), "--split", "val", "--no-hd95"]
    run(["--checkpoint", str(cand), "--reference", str(ref), "--out", str(tmp_path / "p"), *common])
    run(["--checkpoint", str(cand), "--out", str(tmp_path / "c"), *common])
    run(["--checkpoint", str(ref), "--out", str(tmp_path / "r"), *common])
    paired_run = json.loads((tmp_path / "p" / "metrics.json").read_text())
    cand_run = json.loads((tmp_path / "c" / "metrics.json").read_text())
    ref_run = json.loads((tmp_path / "r" / "metrics.json").read_text())
    paired = paired_run["paired"]
    assert paired["reference"] == str(ref)
    assert paired["margin"] == 0.01 and paired["region_margin"] == 0.03
    assert set(paired["dice_delta"]) == set(paired["ci95"]) == {"WT", "TC", "ET", "mean"}
    for key in ("WT", "TC", "ET", "mean"):
        delta = cand_run["mean"]["dice"][key] - ref_run["mean"]["dice"][key]
        assert paired["dice_delta"][key] == pytest.approx(delta, abs=1e-9)
        lo, hi = paired["ci95"][key]
        assert lo <= paired["dice_delta"][key] <= hi
    assert isinstance(paired["non_inferior"], bool)
    assert paired["n_subjects"] == len(cand_run["per_subject"])


def test_a_model_against_itself_is_non_inferior_with_zero_width_ci(
    blob_data: Path, two_checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    cand, _ = two_checkpoints
    run(
        ["--checkpoint", str(cand), "--reference", str(cand), "--data", str(blob_data)]
        + ["--split", "test", "--out", str(tmp_path)]
    )
    paired = json.loads((tmp_path / "metrics.json").read_text())["paired"]
    assert paired["dice_delta"]["mean"] == 0.0 and paired["ci95"]["mean"] == [0.0, 0.0]
    assert paired["hd95_delta"]["mean"] == 0.0
    assert paired["non_inferior"] is True


def test_reference_metrics_json_of_the_same_subjects_is_accepted(
    blob_data: Path, two_checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    cand, ref = two_checkpoints
    common = ["--data", str(blob_data), "--split", "val", "--no-hd95"]
    run(["--checkpoint", str(ref), "--out", str(tmp_path / "r"), *common])
    run(
        ["--checkpoint", str(cand), "--out", str(tmp_path / "p"), *common]
        + ["--reference", str(tmp_path / "r" / "metrics.json")]
    )
    run(["--checkpoint", str(cand), "--out", str(tmp_path / "q"), *common, "--reference", str(ref)])
    from_json = json.loads((tmp_path / "p" / "metrics.json").read_text())["paired"]
    from_ckpt = json.loads((tmp_path / "q" / "metrics.json").read_text())["paired"]
    assert from_json["dice_delta"] == from_ckpt["dice_delta"]
    assert from_json["ci95"] == from_ckpt["ci95"]


@pytest.mark.parametrize(
    ("make_reference", "problem"),
    [
        ("other_split", "same subjects"),
        ("not_metrics", "not a metrics.json of unet.evaluate"),
        ("missing", "no such file"),
    ],
)
def test_bad_reference_is_one_error_line_and_nothing_written(
    blob_data: Path,
    two_checkpoints: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_reference: str,
    problem: str,
) -> None:
    cand, ref = two_checkpoints
    common = ["--data", str(blob_data), "--no-hd95"]
    reference = tmp_path / "ref.json"
    if make_reference == "other_split":  # evaluated on the test subjects, compared on val
        run(["--checkpoint", str(ref), "--out", str(tmp_path / "r"), "--split", "test", *common])
        reference = tmp_path / "r" / "metrics.json"
    elif make_reference == "not_metrics":
        reference.write_text('{"hello": 1}')
    capsys.readouterr()
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["--checkpoint", str(cand), "--reference", str(reference), "--out", str(out)] + common)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m unet.evaluate: error:") and problem in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value", "problem"),
    [
        ("--margin", "-0.1", "must be >= 0"),
        ("--region-margin", "-1", "must be >= 0"),
        ("--resamples", "10", ">= 2000"),
        ("--margin", "abc", "invalid float value"),
    ],
)
def test_bad_paired_flags(
    blob_data: Path,
    two_checkpoints: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    problem: str,
) -> None:
    cand, ref = two_checkpoints
    with pytest.raises(SystemExit) as info:
        main(
            ["--checkpoint", str(cand), "--reference", str(ref), "--data", str(blob_data)]
            + ["--out", str(tmp_path / "o"), flag, value]
        )
    assert info.value.code == 2
    assert problem in capsys.readouterr().err
