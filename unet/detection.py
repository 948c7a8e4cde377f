"""How much of a paired Dice delta is region *detection*: subjects whose region is empty in the
truth, and regions missed or found whole.

    from unet.detection import detection_split
    by_id = lambda rows: {r["subject"]: r for r in rows}              # unet.evaluate's rows
    split = detection_split(by_id(candidate), by_id(reference), subjects)   # None: no voxels
    split["ET"].empty_delta, split["ET"].false_regions

`unet.stats.paired_comparison` calls it for every paired comparison (``PairedComparison.detection``).

Under the BraTS rule a region that is empty in the truth scores Dice 1 when the prediction is
empty too and 0 when it marks a single voxel, so on such a subject a paired delta is -1, 0 or
+1: one speck on a tumour-free subject moves a region's mean over 25 subjects by 0.04, and it
is a different failure (a false detection, which post-processing or a presence rule may
remove) from a boundary that is a few voxels off. Each region's mean delta (candidate -
reference, over all ``n`` subjects) is split into two sums, each divided by ``n`` so that they
add up to the mean delta:

* ``empty_delta`` over the ``empty_subjects`` whose truth region is empty, with the counts
  ``false_regions`` (the candidate marks the region, the reference does not) and ``cleared``
  (the reverse);
* ``present_delta`` over the rest: segmentation quality, including regions that one side
  misses entirely: ``missed`` (the candidate marks nothing, the reference marks something)
  and ``found`` (the reverse).

The rows are `unet.evaluate`'s ``per_subject`` dicts; the split needs their ``voxels`` block
(``{"truth": {"WT", "TC", "ET"}, "pred": {...}}``, voxel counts after post-processing), which
rows written before it existed lack (then there is no split, not a wrong one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from unet.data.canonical import REGIONS


@dataclass(frozen=True)
class RegionSplit:
    """One region's split of a paired Dice delta (Dice units; counts are subjects)."""

    empty_subjects: int
    empty_delta: float
    present_delta: float
    false_regions: int
    cleared: int
    missed: int
    found: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return asdict(self)


def voxel_counts(pred: Any, target: Any) -> dict[str, dict[str, int]]:
    """The ``voxels`` block of a per-subject row from bool maps (3, ...) in `REGIONS` order."""
    return {
        "truth": {r: int(target[i].sum()) for i, r in enumerate(REGIONS)},
        "pred": {r: int(pred[i].sum()) for i, r in enumerate(REGIONS)},
    }


def detection_split(
    candidate: Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, Mapping[str, Any]],
    subjects: Sequence[str],
) -> dict[str, RegionSplit] | None:
    """Per region, the `RegionSplit` of the paired Dice delta over ``subjects`` (rows by id).

    None when a row of either side has no ``voxels`` block. `ValueError` naming the subject
    when the two sides disagree on a truth volume (they were evaluated on different labels).
    """
    if not subjects:
        raise ValueError("detection split: no subjects")
    rows = [(candidate[s], reference[s]) for s in subjects]
    if any("voxels" not in c or "voxels" not in r for c, r in rows):
        return None
    n = len(subjects)
    out = {}
    for region in REGIONS:
        empty = present = 0.0
        counts = {"empty_subjects": 0, "false_regions": 0, "cleared": 0, "missed": 0, "found": 0}
        for sid, (c, r) in zip(subjects, rows, strict=True):
            truth = int(c["voxels"]["truth"][region])
            if truth != int(r["voxels"]["truth"][region]):
                raise ValueError(
                    f"detection split: subject {sid!r} has {truth} true {region} voxels in the "
                    f"candidate and {r['voxels']['truth'][region]} in the reference"
                )
            delta = float(c["dice"][region]) - float(r["dice"][region])
            c_marks = int(c["voxels"]["pred"][region]) > 0
            r_marks = int(r["voxels"]["pred"][region]) > 0
            if truth == 0:
                empty += delta
                counts["empty_subjects"] += 1
                counts["false_regions"] += c_marks and not r_marks
                counts["cleared"] += r_marks and not c_marks
            else:
                present += delta
                counts["missed"] += r_marks and not c_marks
                counts["found"] += c_marks and not r_marks
        out[region] = RegionSplit(empty_delta=empty / n, present_delta=present / n, **counts)
    return out


def detection_text(split: Mapping[str, RegionSplit]) -> str:
    """One clause per region, e.g. ``ET -0.0250 on 37 empty (5 false region(s), 0 cleared)
    +0.0017 on the rest (0 missed, 0 found)``."""
    return ", ".join(
        f"{r} {s.empty_delta:+.4f} on {s.empty_subjects} empty ({s.false_regions} false "
        f"region(s), {s.cleared} cleared) {s.present_delta:+.4f} on the rest ({s.missed} missed, "
        f"{s.found} found)"
        for r, s in split.items()
    )
