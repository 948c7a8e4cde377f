"""`unet.detection`: a paired Dice delta split into regions empty in the truth and the rest."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import pytest

from unet.data.canonical import REGIONS
from unet.detection import detection_split, detection_text
from unet.evaluate import evaluate_probabilities, metrics_csv
from unet.stats import paired_comparison


def _row(sid: str, dice: tuple[float, float, float], truth: tuple, pred: tuple) -> dict[str, Any]:
    return {
        "subject": sid,
        "dice": {**dict(zip(REGIONS, dice, strict=True)), "mean": float(np.mean(dice))},
        "voxels": {
            "truth": dict(zip(REGIONS, truth, strict=True)),
            "pred": dict(zip(REGIONS, pred, strict=True)),
        },
    }


# Four subjects. s0 and s1 have no ET (and s1 no tumour at all); the candidate marks a false ET
# speck on s0, the reference a false WT region on s1 that the candidate does not; on s3 the
# candidate misses a small TC the reference found.
REFERENCE = [
    _row("s0", (0.90, 0.80, 1.0), (100, 20, 0), (95, 20, 0)),
    _row("s1", (0.0, 1.0, 1.0), (0, 0, 0), (40, 0, 0)),
    _row("s2", (0.85, 0.70, 0.60), (80, 30, 10), (90, 25, 8)),
    _row("s3", (0.80, 0.50, 1.0), (60, 4, 0), (70, 3, 0)),
]
CANDIDATE = [
    _row("s0", (0.88, 0.80, 0.0), (100, 20, 0), (99, 20, 2)),
    _row("s1", (1.0, 1.0, 1.0), (0, 0, 0), (0, 0, 0)),
    _row("s2", (0.87, 0.66, 0.60), (80, 30, 10), (90, 27, 8)),
    _row("s3", (0.78, 0.0, 1.0), (60, 4, 0), (66, 0, 0)),
]


def test_split_adds_up_and_counts_each_kind_of_flip() -> None:
    cmp = paired_comparison(CANDIDATE, REFERENCE)
    split = cmp.detection
    assert set(split) == set(REGIONS)
    for r in REGIONS:  # the two parts add up to the region's mean delta
        assert split[r].empty_delta + split[r].present_delta == pytest.approx(cmp.dice_delta[r])
    et, wt, tc = split["ET"], split["WT"], split["TC"]
    assert (et.empty_subjects, et.false_regions, et.cleared) == (3, 1, 0)
    assert et.empty_delta == pytest.approx(-1.0 / 4) and et.present_delta == pytest.approx(0.0)
    assert (wt.empty_subjects, wt.false_regions, wt.cleared) == (1, 0, 1)
    assert wt.empty_delta == pytest.approx(1.0 / 4)
    assert wt.present_delta == pytest.approx((-0.02 + 0.02 - 0.02) / 4)
    assert (tc.empty_subjects, tc.missed, tc.found) == (1, 1, 0)
    assert tc.present_delta == pytest.approx((0.0 - 0.04 - 0.5) / 4)
    # the JSON block and the summary carry it
    assert cmp.to_dict()["detection"]["ET"]["false_regions"] == 1
    assert "by truth: WT +0.2500 on 1 empty (0 false region(s), 1 cleared)" in cmp.summary()
    assert "ET -0.2500 on 3 empty (1 false region(s)" in detection_text(split)


def test_rows_without_voxel_counts_give_no_split() -> None:
    """Rows of a metrics.json written before the counts existed: no split, not a wrong one."""
    old = [{k: v for k, v in row.items() if k != "voxels"} for row in REFERENCE]
    cmp = paired_comparison(CANDIDATE, old)
    assert cmp.detection == {} and "detection" not in cmp.to_dict()
    assert "by truth" not in cmp.summary()
    by_id = {r["subject"]: r for r in CANDIDATE}
    assert detection_split(by_id, {r["subject"]: r for r in old}, sorted(by_id)) is None


def test_different_truths_are_refused_naming_the_subject() -> None:
    other = [dict(row) for row in REFERENCE]
    other[2] = _row("s2", (0.85, 0.70, 0.60), (80, 31, 10), (90, 25, 8))
    with pytest.raises(ValueError, match="subject 's2' has 30 true TC voxels in the candidate"):
        paired_comparison(CANDIDATE, other)


def test_evaluation_rows_count_voxels_after_post_processing() -> None:
    """The counts are of the evaluated masks: a speck removed by min_component is not counted."""
    probs = np.zeros((3, 8, 16, 16), dtype=np.float32)
    probs[0, 2:4, 2:6, 2:6] = 0.9  # a 32-voxel WT blob ...
    probs[0, 6, 10, 10:12] = 0.9  # ... and a 2-voxel speck
    target = np.zeros(probs.shape, dtype=bool)
    target[0, 2:4, 2:6, 2:5] = True  # 24 true WT voxels
    sizes = {"WT": 3, "TC": 0, "ET": 0}
    result = evaluate_probabilities([("s0", probs, target)], 0.5, hd95=False, min_component=sizes)
    voxels = result["per_subject"][0]["voxels"]
    assert voxels == {"truth": {"WT": 24, "TC": 0, "ET": 0}, "pred": {"WT": 32, "TC": 0, "ET": 0}}
    row = next(csv.DictReader(io.StringIO(metrics_csv(result))))
    assert (row["truth_WT"], row["pred_WT"], row["pred_ET"]) == ("24", "32", "0")
    assert float(row["dice_WT"]) == pytest.approx(2 * 24 / (24 + 32))
