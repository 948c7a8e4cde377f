"""Paired comparison of two models over the same subjects: Dice deltas, 95% bootstrap CIs and
non-inferiority.

    from unet.stats import paired_comparison
    cmp = paired_comparison(candidate["per_subject"], reference["per_subject"])
    cmp.dice_delta["mean"], cmp.ci95["mean"], cmp.non_inferior

Inputs are the ``per_subject`` lists that `unet.evaluate` produces (``{"subject": id,
"dice": {"WT", "TC", "ET", "mean"}, "hd95": {...}}``), for a candidate and a reference evaluated
on the **same** subjects; they are matched by subject id, and different subject sets are an
error. For each region and for the mean over regions the result holds:

* ``dice_delta``: the mean over subjects of (candidate - reference) Dice, in Dice units (0-1);
* ``ci95``: its 95% confidence interval from a bootstrap over subjects
  (``scipy.stats.bootstrap``, BCa, ``resamples`` >= 2000, fixed ``seed``); every region is
  resampled with the same subject draws, so the intervals are joint in the subjects;
* ``non_inferior``: the mean-Dice CI's lower bound is >= ``-margin`` **and** every region's
  lower bound is >= ``-region_margin`` (defaults 0.01 and 0.03), so a model that trades one
  region for another is not called non-inferior even when the mean holds.

HD95 deltas (mm, candidate - reference; negative is better) and their CIs are added when both
sides have HD95; they are informative only and do not enter ``non_inferior``.

``largest_loss`` names, per region, the subject with the most negative Dice delta and both
Dice values: with 25 subjects one flip of an empty region (Dice 1 when neither side marks a
voxel, 0 when one side marks a few) moves a region's mean by 0.04 and can decide the verdict,
and this is where a reader sees it. ``detection`` says how much of each region's delta comes
from such subjects (`unet.detection`), when both sides' rows carry voxel counts.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from unet.data.canonical import REGIONS
from unet.detection import RegionSplit, detection_split, detection_text

KEYS = (*REGIONS, "mean")
DEFAULT_MARGIN = 0.01
DEFAULT_REGION_MARGIN = 0.03
DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
MIN_RESAMPLES = 2000


@dataclass(frozen=True)
class PairedComparison:
    """The result of `paired_comparison` (primitives; ``to_dict`` for JSON)."""

    n_subjects: int
    margin: float
    region_margin: float
    confidence: float
    resamples: int
    seed: int
    dice_delta: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    non_inferior: bool
    hd95_delta: dict[str, float] = field(default_factory=dict)
    hd95_ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    # region -> (subject, candidate Dice, reference Dice) of its most negative delta
    largest_loss: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    # region -> the delta split into regions empty in the truth and the rest (`unet.detection`);
    # empty when a side's rows carry no voxel counts
    detection: dict[str, RegionSplit] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``paired`` block of ``metrics.json`` (without the ``reference`` path)."""
        d: dict[str, Any] = {
            "n_subjects": self.n_subjects,
            "margin": self.margin,
            "region_margin": self.region_margin,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
            "method": "paired bootstrap over subjects (BCa)",
            "dice_delta": dict(self.dice_delta),
            "ci95": {k: [lo, hi] for k, (lo, hi) in self.ci95.items()},
            "non_inferior": self.non_inferior,
        }
        if self.hd95_delta:
            d["hd95_delta"] = dict(self.hd95_delta)
            d["hd95_ci95"] = {k: [lo, hi] for k, (lo, hi) in self.hd95_ci95.items()}
        if self.largest_loss:
            d["largest_loss"] = {
                r: {"subject": s, "candidate": c, "reference": ref}
                for r, (s, c, ref) in self.largest_loss.items()
            }
        if self.detection:
            d["detection"] = {r: split.to_dict() for r, split in self.detection.items()}
        return d

    def worst_subject(self, region: str) -> str:
        """``subject 1.00 -> 0.00`` for ``region``'s largest loss ('' if it has none)."""
        if region not in self.largest_loss:
            return ""
        subject, cand, ref = self.largest_loss[region]
        return f"{subject} {ref:.2f} -> {cand:.2f}"

    def summary(self) -> str:
        """One line: mean delta with CI and the verdict."""
        lo, hi = self.ci95["mean"]
        verdict = "non-inferior" if self.non_inferior else "NOT non-inferior"
        regions = ", ".join(
            f"{r} {self.dice_delta[r]:+.4f} [{self.ci95[r][0]:+.4f}, {self.ci95[r][1]:+.4f}]"
            for r in REGIONS
        )
        losses = "; ".join(
            f"{r} {self.worst_subject(r)}" for r in REGIONS if r in self.largest_loss
        )
        return (
            f"paired over {self.n_subjects} subjects: mean Dice {self.dice_delta['mean']:+.4f} "
            f"[{lo:+.4f}, {hi:+.4f}] ({regions}); {verdict} at margins "
            f"{self.margin:g} (mean) / {self.region_margin:g} (regions)"
            + (f"; largest loss per region (reference -> candidate): {losses}" if losses else "")
            + (f"; by truth: {detection_text(self.detection)}" if self.detection else "")
        )


def bootstrap_ci(
    deltas: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap CI of the mean of paired per-subject ``deltas`` (BCa, scipy).

    Identical deltas (e.g. identical models) give the zero-width interval ``(d, d)``; with a
    single subject there is no spread to resample and the interval is ``(d, d)`` as well.
    """
    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.ndim != 1 or deltas.size == 0:
        raise ValueError(f"bootstrap_ci: need a 1-D array of deltas, got shape {deltas.shape}")
    if not np.all(np.isfinite(deltas)):
        raise ValueError("bootstrap_ci: deltas contain NaN or inf")
    if np.ptp(deltas) == 0.0:
        d = float(deltas[0])
        return d, d
    lo, hi = _bootstrap(deltas, "BCa", resamples, confidence, seed)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # BCa can fail on very skewed tiny samples
        lo, hi = _bootstrap(deltas, "percentile", resamples, confidence, seed)
    return lo, hi


def _bootstrap(
    deltas: np.ndarray, method: str, resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(
            (deltas,),
            np.mean,
            n_resamples=resamples,
            confidence_level=confidence,
            method=method,
            random_state=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _by_subject(per_subject: Sequence[Mapping[str, Any]], side: str) -> dict[str, Mapping]:
    out: dict[str, Mapping] = {}
    for row in per_subject:
        sid = str(row["subject"])
        if sid in out:
            raise ValueError(f"paired comparison: subject {sid!r} appears twice in the {side}")
        out[sid] = row
    return out


def check_same_subjects(
    candidate: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The common subject ids (sorted); `ValueError` naming the difference if the sets differ."""
    cand, ref = _by_subject(candidate, "candidate"), _by_subject(reference, "reference")
    only_c, only_r = sorted(set(cand) - set(ref)), sorted(set(ref) - set(cand))
    if only_c or only_r:
        raise ValueError(
            "paired comparison needs the same subjects on both sides: "
            f"only in the candidate {only_c[:5]}{'...' if len(only_c) > 5 else ''}, "
            f"only in the reference {only_r[:5]}{'...' if len(only_r) > 5 else ''}"
        )
    if not cand:
        raise ValueError("paired comparison: no subjects")
    return sorted(cand)


def _deltas(
    cand: dict[str, Mapping], ref: dict[str, Mapping], subjects: list[str], metric: str, key: str
) -> np.ndarray:
    return np.array([cand[s][metric][key] - ref[s][metric][key] for s in subjects], np.float64)


def paired_comparison(
    candidate: Sequence[Mapping[str, Any]],
    reference: Sequence[Mapping[str, Any]],
    *,
    margin: float = DEFAULT_MARGIN,
    region_margin: float = DEFAULT_REGION_MARGIN,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedComparison:
    """Compare per-subject Dice of ``candidate`` with ``reference`` (see the module docstring).

    ``margin`` / ``region_margin``: non-inferiority margins in Dice units (>= 0);
    ``resamples`` >= 2000 bootstrap resamples; ``confidence`` in (0, 1); ``seed`` fixes the draws.
    """
    if not (margin >= 0 and region_margin >= 0):
        raise ValueError(
            f"margins must be >= 0, got margin={margin}, region_margin={region_margin}"
        )
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"resamples must be >= {MIN_RESAMPLES}, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    subjects = check_same_subjects(candidate, reference)
    cand, ref = _by_subject(candidate, "candidate"), _by_subject(reference, "reference")
    kw = {"resamples": resamples, "confidence": confidence, "seed": seed}
    dice_delta, ci, largest = {}, {}, {}
    for key in KEYS:
        d = _deltas(cand, ref, subjects, "dice", key)
        dice_delta[key] = float(d.mean())
        ci[key] = bootstrap_ci(d, **kw)
        if key in REGIONS and d.min() < 0:  # the first subject (sorted ids) on ties
            s = subjects[int(np.argmin(d))]
            largest[key] = (s, float(cand[s]["dice"][key]), float(ref[s]["dice"][key]))
    hd_delta, hd_ci = {}, {}
    if all("hd95" in cand[s] and "hd95" in ref[s] for s in subjects):
        for key in KEYS:
            d = _deltas(cand, ref, subjects, "hd95", key)
            hd_delta[key] = float(d.mean())
            hd_ci[key] = bootstrap_ci(d, **kw)
    non_inferior = ci["mean"][0] >= -margin and all(ci[r][0] >= -region_margin for r in REGIONS)
    return PairedComparison(
        n_subjects=len(subjects),
        margin=float(margin),
        region_margin=float(region_margin),
        confidence=float(confidence),
        resamples=int(resamples),
        seed=int(seed),
        dice_delta=dice_delta,
        ci95=ci,
        non_inferior=bool(non_inferior),
        hd95_delta=hd_delta,
        hd95_ci95=hd_ci,
        largest_loss=largest,
        detection=detection_split(cand, ref, subjects) or {},
    )
