"""Paired bootstrap comparison: deltas, CI coverage, determinism, non-inferiority rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from unet.stats import bootstrap_ci, check_same_subjects, paired_comparison


def rows(dice: np.ndarray, prefix: str = "s") -> list[dict[str, Any]]:
    """per_subject rows from an (n, 3) array of WT/TC/ET Dice."""
    return [
        {
            "subject": f"{prefix}{i:03d}",
            "dice": {"WT": w, "TC": t, "ET": e, "mean": (w + t + e) / 3},
            "hd95": {"WT": 1.0, "TC": 2.0, "ET": 3.0, "mean": 2.0},
        }
        for i, (w, t, e) in enumerate(dice.tolist())
    ]


def test_identical_scores_give_zero_delta_and_zero_width_ci() -> None:
    ref = rows(np.random.default_rng(0).uniform(0.6, 0.95, (30, 3)))
    cmp = paired_comparison(ref, ref)
    for key in ("WT", "TC", "ET", "mean"):
        assert cmp.dice_delta[key] == 0.0
        assert cmp.ci95[key] == (0.0, 0.0)
    assert cmp.non_inferior
    assert cmp.hd95_delta["mean"] == 0.0


def test_known_shift_is_recovered_and_covered() -> None:
    """A constant shift plus subject noise: the CI contains the true shift and is about
    2 * 1.96 * sd / sqrt(n) wide."""
    rng = np.random.default_rng(1)
    n, sd, shift = 40, 0.02, -0.05
    ref = rng.uniform(0.7, 0.9, (n, 3))
    cand = ref + shift + rng.normal(0, sd, (n, 3))
    cmp = paired_comparison(rows(cand), rows(ref))
    lo, hi = cmp.ci95["WT"]
    se = sd / np.sqrt(n)
    assert abs(cmp.dice_delta["WT"] - shift) < 3 * se  # the estimate is the shift
    assert lo < cmp.dice_delta["WT"] < hi
    assert lo - 2 * se < shift < hi + 2 * se
    expected_width = 2 * 1.96 * se
    assert 0.6 * expected_width < hi - lo < 1.6 * expected_width
    assert not cmp.non_inferior  # 5 points lost


def test_coverage_is_near_nominal() -> None:
    """Over 40 synthetic studies the 95% CI misses the true delta in roughly 5% of them."""
    true, misses = 0.01, 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        d = true + rng.normal(0, 0.03, 25)
        lo, hi = bootstrap_ci(d, seed=seed)
        misses += not (lo <= true <= hi)
    assert misses <= 6  # P(>6 misses | p=0.05, n=40) < 2%; a broken CI misses far more


def test_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    rng = np.random.default_rng(2)
    d = rng.normal(0, 0.05, 20)
    assert bootstrap_ci(d, seed=3) == bootstrap_ci(d, seed=3)
    assert bootstrap_ci(d, seed=3) != bootstrap_ci(d, seed=4)


def test_region_trade_off_with_unchanged_mean_is_not_non_inferior() -> None:
    """WT falls by 0.15, TC rises by 0.15: the mean holds, but a region is lost."""
    rng = np.random.default_rng(3)
    ref = rng.uniform(0.7, 0.85, (30, 3))
    cand = ref + np.array([-0.15, 0.15, 0.0]) + rng.normal(0, 0.005, (30, 3))
    cmp = paired_comparison(rows(cand), rows(ref))
    assert abs(cmp.dice_delta["mean"]) < 0.01
    assert cmp.ci95["mean"][0] > -0.01
    assert cmp.ci95["WT"][1] < -0.1
    assert not cmp.non_inferior


@pytest.mark.parametrize(
    ("shift", "margin", "region_margin", "expected"),
    [
        ((-0.002, -0.002, -0.002), 0.01, 0.03, True),  # small loss, inside both margins
        ((-0.02, -0.02, -0.02), 0.01, 0.03, False),  # mean lower bound below -1 pt
        ((-0.02, -0.02, -0.02), 0.05, 0.05, True),  # same, wider margins
        ((-0.05, 0.025, 0.025), 0.01, 0.03, False),  # WT lost beyond its margin
        ((-0.05, 0.025, 0.025), 0.01, 0.08, True),  # ... unless the region margin allows it
    ],
)
def test_non_inferior_follows_both_lower_bounds(
    shift: tuple[float, float, float], margin: float, region_margin: float, expected: bool
) -> None:
    rng = np.random.default_rng(4)
    ref = rng.uniform(0.7, 0.85, (40, 3))
    cand = ref + np.array(shift) + rng.normal(0, 0.002, (40, 3))
    cmp = paired_comparison(rows(cand), rows(ref), margin=margin, region_margin=region_margin)
    assert cmp.non_inferior is expected
    lower_ok = cmp.ci95["mean"][0] >= -margin and all(
        cmp.ci95[r][0] >= -region_margin for r in ("WT", "TC", "ET")
    )
    assert cmp.non_inferior is lower_ok


def test_subjects_are_matched_by_id_not_order() -> None:
    rng = np.random.default_rng(5)
    ref = rows(rng.uniform(0.6, 0.9, (10, 3)))
    cand = [dict(r) for r in reversed(ref)]
    assert paired_comparison(cand, ref).dice_delta["mean"] == 0.0


@pytest.mark.parametrize(
    ("cand_prefix", "problem"),
    [("t", "only in the candidate"), ("s", None)],
)
def test_different_subjects_are_refused(cand_prefix: str, problem: str | None) -> None:
    ref = rows(np.full((4, 3), 0.8))
    cand = rows(np.full((4, 3), 0.8), prefix=cand_prefix)
    if problem is None:
        assert check_same_subjects(cand, ref) == [r["subject"] for r in ref]
    else:
        with pytest.raises(ValueError, match=problem):
            paired_comparison(cand, ref)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"margin": -0.01}, "margins must be >= 0"),
        ({"resamples": 100}, "resamples must be >= 2000"),
        ({"confidence": 1.5}, "confidence must be in"),
    ],
)
def test_bad_parameters(kwargs: dict[str, Any], problem: str) -> None:
    ref = rows(np.full((4, 3), 0.8))
    with pytest.raises(ValueError, match=problem):
        paired_comparison(ref, ref, **kwargs)


def test_to_dict_has_the_metrics_json_shape() -> None:
    rng = np.random.default_rng(6)
    ref = rng.uniform(0.7, 0.9, (12, 3))
    d = paired_comparison(rows(ref - 0.01), rows(ref)).to_dict()
    assert set(d["dice_delta"]) == set(d["ci95"]) == {"WT", "TC", "ET", "mean"}
    assert all(isinstance(v, list) and len(v) == 2 for v in d["ci95"].values())
    assert d["n_subjects"] == 12 and d["resamples"] == 2000
    assert isinstance(d["non_inferior"], bool)
    assert d["dice_delta"]["mean"] == pytest.approx(-0.01)


def test_largest_loss_names_the_subject_that_flips_an_empty_region() -> None:
    """One ET flip (1 -> 0: a few voxels marked where there is no ET) among 25 subjects decides
    the verdict; the comparison names that subject and both Dice values."""
    ref = np.random.default_rng(7).uniform(0.85, 0.95, (25, 3))
    ref[14, 2] = 1.0  # neither side marks ET
    cand = ref + 0.002
    cand[14, 2] = 0.0
    cand[3, 0] -= 0.01  # a small WT loss elsewhere
    cmp = paired_comparison(rows(cand), rows(ref))
    assert not cmp.non_inferior and cmp.ci95["ET"][0] < -0.03
    assert cmp.largest_loss["ET"] == ("s014", 0.0, 1.0)
    assert cmp.largest_loss["WT"][0] == "s003"
    assert "TC" not in cmp.largest_loss  # no subject lost TC
    assert cmp.worst_subject("ET") == "s014 1.00 -> 0.00" and cmp.worst_subject("TC") == ""
    assert "ET s014 1.00 -> 0.00" in cmp.summary()
    assert cmp.to_dict()["largest_loss"]["ET"] == {
        "subject": "s014",
        "candidate": 0.0,
        "reference": 1.0,
    }
    assert "largest_loss" not in paired_comparison(rows(ref), rows(ref)).to_dict()
