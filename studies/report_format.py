"""The report's tables and its summary line, from report rows (dicts of primitives).

`studies.report` builds the rows (the Pareto set, chosen on val, evaluated on test and compared
paired with the baseline); this module only formats them: ``pareto.csv`` (`rows_csv`), the
Markdown table (`markdown_table`), the one-line verdict (`summary_line`) and the sentences that
name the study's rules (`dice_objective_name`, `feasible_rule`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from studies.pareto import LATENCY_NAMES, has_mean_dice_objective
from unet.data.canonical import REGIONS

# report column suffix -> latency backend
SHORT_BACKENDS = {"ort": "ort_cpu", "ov": "ov_cpu", "torch": "torch_cpu"}

_R = (*REGIONS, "mean")
DETECTION_FIELDS = ("empty_delta", "empty_subjects", "false_regions")  # unet.detection
# paired test comparison vs the baseline: the mean's delta and CI, then each region's
PAIRED_COLUMNS = (
    "test_dice_delta",
    "test_dice_delta_lo",
    "test_dice_delta_hi",
    *(f"test_dice_delta_{r}{end}" for r in REGIONS for end in ("", "_lo", "_hi")),
    "non_inferior",
    # per region: "subject reference -> candidate" Dice of its largest loss (unet.stats)
    *(f"test_largest_loss_{r}" for r in REGIONS),
    # per region: the delta on subjects whose region is empty in the truth (unet.detection)
    *(f"test_{k}_{r}" for k in DETECTION_FIELDS for r in REGIONS),
)
COLUMNS = (
    "trial",
    "recipe",
    "params",
    "nonzero_params",
    "macs",
    "size_bytes",
    "size_compressed_bytes",
    "compression_factor",
    "compression_factor_compressed",
    "latency_ms_ort",
    "latency_iqr_ms_ort",
    "speedup_ort",
    "latency_ms_ov",
    "latency_iqr_ms_ov",
    "speedup_ov",
    "latency_ms_torch",
    "speedup_torch",
    *(f"threshold_{r}" for r in REGIONS),
    *(f"min_component_{r}" for r in REGIONS),
    *(f"min_volume_{r}" for r in REGIONS),
    *(f"val_dice_{r}" for r in _R),
    *(f"test_dice_{r}" for r in _R),
    *(f"test_hd95_{r}" for r in _R),
    *PAIRED_COLUMNS,
    "artifact",
)


def delta_ci(paired: dict[str, Any], key: str) -> str:
    """``+0.012 [-0.003, +0.027]``: a paired comparison's Dice delta and 95% CI for ``key``
    (a region or ``mean``)."""
    lo, hi = paired["ci95"][key]
    return f"{paired['dice_delta'][key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def table_start(caption: str, head: str) -> list[str]:
    """The first lines of a benchmark's Markdown table: caption, blank line, head, rule."""
    return [caption, "", head, "|" + "---|" * (head.count("|") - 1)]


def short_name(backend: str) -> str:
    """The column suffix of a latency backend (``ov_cpu`` -> ``ov``)."""
    return {v: k for k, v in SHORT_BACKENDS.items()}.get(backend, backend)


def summary_line(rows: Sequence[dict[str, Any]], backend: str = "ort_cpu") -> str:
    """Best compression factor and (paired) speed-up on ``backend`` among the **non-inferior**
    Pareto models (paired test comparison with the baseline: mean within its margin, every
    region within its own)."""
    key = "speedup_" + short_name(backend)
    base = rows[0]
    ok = [r for r in rows[1:] if r.get("non_inferior")]
    margins = (
        f"mean-Dice margin {base.get('margin', 0.01):g}, region margin "
        f"{base.get('region_margin', 0.03):g}; paired 95% bootstrap CIs over "
        f"{base.get('n_test_subjects', '?')} test subjects"
    )
    if not ok:
        return (
            f"No Pareto model is non-inferior to the baseline on test ({margins}; baseline test "
            f"mean Dice {base['test_dice_mean']:.4f})."
        )
    size = max(ok, key=lambda r: r["compression_factor"])
    speed = max(ok, key=lambda r: r.get(key) or 0.0)
    name = LATENCY_NAMES.get(backend, backend)

    def delta(r: dict[str, Any]) -> str:
        return (
            f"test Dice delta {r['test_dice_delta']:+.4f} "
            f"[{r['test_dice_delta_lo']:+.4f}, {r['test_dice_delta_hi']:+.4f}]"
        )

    return (
        f"Best among non-inferior Pareto models ({margins}): "
        f"**{size['compression_factor']:.1f}x smaller** (trial {size['trial']}, {size['recipe']}, "
        f"{delta(size)}) and an {name} speed-up of **{speed.get(key) or 0.0:.2f}x** "
        f"(trial {speed['trial']}, {speed['recipe']}, {delta(speed)})."
    )


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_fmt(row.get(c)) for c in COLUMNS])
    return buf.getvalue()


def paired_cells(row: dict[str, Any]) -> str:
    """The paired columns of one Markdown row (reference: ``-``)."""
    if row.get("non_inferior") is None:
        return "reference | - | -"
    worst = min(REGIONS, key=lambda r: row[f"test_dice_delta_{r}_lo"])
    loss = row.get(f"test_largest_loss_{worst}")
    if loss and row.get(f"test_false_regions_{worst}") is not None:
        loss += (
            f"; {row[f'test_false_regions_{worst}']} false region(s) in "
            f"{row[f'test_empty_subjects_{worst}']} empty: {row[f'test_empty_delta_{worst}']:+.4f}"
        )
    return (
        f"{row['test_dice_delta']:+.4f} [{row['test_dice_delta_lo']:+.4f}, "
        f"{row['test_dice_delta_hi']:+.4f}] | {worst} {row[f'test_dice_delta_{worst}_lo']:+.4f} "
        f"{f'({loss}) ' if loss else ''}| {'yes' if row['non_inferior'] else 'no'}"
    )


def markdown_table(rows: Sequence[dict[str, Any]], backend: str = "ort_cpu") -> str:
    """The report's Markdown table: one row per model, latency on ``backend``, paired verdict."""

    def mb(n: float) -> str:
        return f"{n / 1e6:.3f}"

    def opt(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    short = short_name(backend)
    name = {"ort": "ORT", "ov": "OpenVINO"}.get(short, short)
    header = (
        f"| trial | recipe | params | size MB | zlib MB | factor | {name} ms | {name} x "
        "| torch ms | torch x | val Dice | test Dice WT | TC | ET | mean | test HD95 mean "
        "| test delta mean [95% CI] | worst region lo | non-inferior |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['trial']} | {r['recipe']} | {r['params']:,} | {mb(r['size_bytes'])} "
            f"| {mb(r['size_compressed_bytes'])} | {r['compression_factor']:.2f} "
            f"| {opt(r.get(f'latency_ms_{short}'), '.2f')} "
            f"| {opt(r.get(f'speedup_{short}'), '.2f')} "
            f"| {opt(r.get('latency_ms_torch'), '.2f')} | {opt(r.get('speedup_torch'), '.2f')} "
            f"| {r['val_dice_mean']:.4f} | {r['test_dice_WT']:.4f} | {r['test_dice_TC']:.4f} "
            f"| {r['test_dice_ET']:.4f} | {r['test_dice_mean']:.4f} | {r['test_hd95_mean']:.2f} "
            f"| {paired_cells(r)} |"
        )
    return "\n".join(lines)


def dice_objective_name(info: dict[str, Any]) -> str:
    """What the study's Dice objective was (`studies.pareto.dice_objective`)."""
    if has_mean_dice_objective(info):
        return "val mean Dice"
    return "the lower end of the paired 95% CI of the val mean-Dice change vs the baseline"


def feasible_rule(info: dict[str, Any]) -> str:
    """How the study judged feasibility on val (`studies.sweep_worker.constraint_value`)."""
    rule = (
        "feasible = the paired 95% CI of the val mean-Dice delta vs the baseline stays above "
        f"-{info['max_dice_drop']:g}"
    )
    region = info.get("max_region_drop")
    return rule if region is None else f"{rule} and every region's above -{region:g}"
