"""The recovery benchmark: structured 0.5 (round_to 8) with each recovery method, at equal
fine-tune budget, judged on the test split with paired confidence intervals.

    python -m studies.bench recovery --checkpoint runs/unet2d-small.pt --data runs/phantom.h5 \\
        --finetune-steps 200 --out runs/bench/recovery

Rows (`recovery_recipes`): (a) plain fine-tune, (b) distillation from the baseline, (c) gradual
pruning, (d) group regularisation before pruning, (e) all three; every row spends the same
``--finetune-steps`` on fine-tuning (the regularisation phase is paid once per study and cached
in ``<out>/cache``, so it is reported separately, as ``--regularize-steps``). Thresholds are
searched on val by `compress.pipeline.compress_checkpoint`, as in the sweep; the reference is
the baseline through the sweep's identity recipe (dense fp32 ONNX, per-region thresholds on
val). The test split is read only to score the finished models: per subject, paired against
the reference (`unet.stats.paired_comparison`: Dice delta and 95% bootstrap CI per region and
for the mean, non-inferiority at 1 / 3 Dice points).

Writes ``recovery.json`` (every row: recipe, metrics, paired comparison, ratios) and
``recovery.md`` (the table) into ``--out``. The size factor is the reference's artifact size over
the row's; the ORT speed-up is paired (`compress.timing.paired_latency`: reference and row timed
in alternating rounds in one process, median of the per-round ratios with its quartiles), so
machine load moves both sides of each round. Absolute milliseconds are for information only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compress.apply import add_recovery_arguments
from compress.export import ort_forward, ort_session
from compress.pipeline import compress_checkpoint
from compress.recipe import Recipe
from studies.bench_args import add_baseline_arguments, add_run_arguments
from studies.report_format import delta_ci, table_start
from studies.sweep_spec import BASELINE_RECIPE
from unet.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from unet.config import UNetConfig
from unet.data.canonical import REGIONS, CanonicalDataset, DataError
from unet.evaluate import evaluate_model
from unet.io import write_text_atomic
from unet.stats import paired_comparison

METHODS = ("a", "b", "c", "d", "e")
NAMES = {
    "a": "fine-tune",
    "b": "distillation",
    "c": "gradual",
    "d": "regularised",
    "e": "all three",
}
# the sweep's reference (studies.sweep_spec.BASELINE_RECIPE): dense fp32, per-region thresholds
# and post-processing (component removal, presence rule), all chosen on val
REFERENCE = BASELINE_RECIPE


@dataclasses.dataclass(frozen=True)
class RecoverySettings:
    """The knobs of the benchmark (primitives; stored in ``recovery.json``)."""

    finetune_steps: int = 200
    ratio: float = 0.5
    round_to: int = 8
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    prune_rounds: int = 4
    regularize_steps: int = 200
    regularize_strength: float = 1e-2


def recovery_recipes(s: RecoverySettings) -> dict[str, Recipe]:
    """Rows a-e: structured ``ratio`` / ``round_to``, the same fine-tune budget in each."""
    base = Recipe(
        prune="structured",
        ratio=s.ratio,
        round_to=s.round_to,
        finetune_steps=s.finetune_steps,
        threshold=REFERENCE.threshold,
        components=REFERENCE.components,
    )
    distill = {"distill_weight": s.distill_weight, "distill_temperature": s.distill_temperature}
    gradual = {"prune_rounds": s.prune_rounds}
    regular = {
        "regularize_steps": s.regularize_steps,
        "regularize_strength": s.regularize_strength,
    }
    return {
        "a": base,
        "b": dataclasses.replace(base, **distill),
        "c": dataclasses.replace(base, **gradual),
        "d": dataclasses.replace(base, **regular),
        "e": dataclasses.replace(base, **distill, **gradual, **regular),
    }


def held_out_scores(
    run_dir: Path, data: CanonicalDataset, m: dict[str, Any], threads: int
) -> list[dict[str, Any]]:
    """Per-subject test Dice of the ONNX model in ``run_dir`` with the threshold(s) and
    post-processing of its M ``m`` (all chosen on val)."""
    payload = read_checkpoint(run_dir / "checkpoint.pt")
    config = UNetConfig.from_dict(payload["config"])
    forward = ort_forward(ort_session(run_dir / "model.onnx", threads=threads))
    result = evaluate_model(
        forward,
        data,
        "test",
        m["threshold"],
        hd95=False,
        min_component=m.get("min_component"),
        min_volume=m.get("min_volume"),
        spatial_dims=config.spatial_dims,
        divisor=config.divisor,
        patch_size=payload["meta"].get("patch_size"),
    )
    return result["per_subject"]


def paired_speedup(metrics: dict[str, Any], backend: str = "ort_cpu") -> dict[str, float]:
    """The paired speed-up of ``metrics`` (a compressed M) on ``backend``: median and quartiles
    of the per-round ratios reference / candidate."""
    p = metrics["paired"][backend]
    return {"median": p["speedup"], "q25": p["speedup_q25"], "q75": p["speedup_q75"]}


def run_recovery(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    settings: RecoverySettings,
    *,
    methods: Sequence[str] = METHODS,
    threads: int = 2,
    latency_runs: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the reference and the chosen rows; return everything ``recovery.json`` holds."""
    out, ds = Path(out), CanonicalDataset(data)
    kw = {"threads": threads, "latency_runs": latency_runs, "seed": seed}
    ref = compress_checkpoint(checkpoint, ds, REFERENCE, out / "reference", **kw)["compressed"]
    ref_scores = held_out_scores(out / "reference", ds, ref, threads)
    recipes = recovery_recipes(settings)
    rows: dict[str, Any] = {}
    for key in methods:
        start = time.perf_counter()
        result = compress_checkpoint(
            checkpoint,
            ds,
            recipes[key],
            out / key,
            baseline_metrics=ref,
            cache_dir=out / "cache",
            **kw,
        )
        cand = result["compressed"]
        paired = paired_comparison(held_out_scores(out / key, ds, cand, threads), ref_scores)
        rows[key] = {
            "method": NAMES[key],
            "recipe": recipes[key].to_dict(),
            "label": recipes[key].label,
            "metrics": cand,
            "test_paired": paired.to_dict(),
            "compression_factor": ref["size_bytes"] / cand["size_bytes"],
            "speedup_ort": paired_speedup(cand),
            "wall_s": time.perf_counter() - start,
        }
    return {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "data_fingerprint": ds.fingerprint,
        "settings": dataclasses.asdict(settings),
        "threads": threads,
        "reference": {"recipe": REFERENCE.to_dict(), "metrics": ref},
        "test_subjects": len(ref_scores),
        "rows": rows,
    }


def _speedup(s: dict[str, float]) -> str:
    return f"{s['median']:.2f} [{s['q25']:.2f}, {s['q75']:.2f}]"


def recovery_table(bench: dict[str, Any]) -> str:
    """The markdown table: one row per method, test Dice deltas with 95% CIs vs the reference."""
    ref = bench["reference"]["metrics"]
    head = (
        "| row | method | size MB | size x | ORT ms | ORT x [IQR] | val Dice | test dDice mean [95% CI] "
        + "".join(f"| d{r} [95% CI] " for r in REGIONS)
        + "| non-inferior |"
    )
    caption = (
        f"Structured {bench['settings']['ratio']} (round_to {bench['settings']['round_to']}), "
        f"{bench['settings']['finetune_steps']} fine-tune steps per row; reference: "
        f"{ref['size_bytes'] / 1e6:.3f} MB, ORT {ref['latency_ms']['ort_cpu']['median']:.2f} ms, "
        f"val Dice {ref['val_dice']['mean']:.4f}; {bench['test_subjects']} test subjects, "
        f"{bench['threads']} threads."
    )
    lines = table_start(caption, head)
    for key, row in bench["rows"].items():
        m, p = row["metrics"], row["test_paired"]
        lines.append(
            f"| {key} | {row['method']} | {m['size_bytes'] / 1e6:.3f} | "
            f"{row['compression_factor']:.2f} | {m['latency_ms']['ort_cpu']['median']:.2f} | "
            f"{_speedup(row['speedup_ort'])} | {m['val_dice']['mean']:.4f} | {delta_ci(p, 'mean')} "
            + "".join(f"| {delta_ci(p, r)} " for r in REGIONS)
            + f"| {'yes' if p['non_inferior'] else 'no'} |"
        )
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    """The ``recovery`` subcommand of `studies.bench`."""
    d = RecoverySettings()
    r = sub.add_parser(
        "recovery",
        help="structured 0.5 with each recovery method, paired test CIs vs the baseline",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_baseline_arguments(r)
    r.add_argument("--finetune-steps", type=int, default=d.finetune_steps, help="per row")
    r.add_argument(
        "--ratio", type=float, default=d.ratio, help="structured: fraction of channels removed"
    )
    r.add_argument(
        "--round-to",
        type=int,
        default=d.round_to,
        help="structured widths rounded to a multiple of this",
    )
    add_recovery_arguments(r, d)
    r.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="rows to run: a fine-tune, b distillation, c gradual, d regularised, e all three",
    )
    add_run_arguments(r, "runs/bench/recovery", latency_runs=50, seed=True)


def command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run ``python -m studies.bench recovery``: write recovery.json and recovery.md."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = sorted(set(methods) - set(METHODS))
    if bad or not methods:
        parser.error(f"--methods: unknown row(s) {bad or methods}; choose from {','.join(METHODS)}")
    if args.finetune_steps < 1:
        parser.error(
            f"--finetune-steps must be >= 1 (rows compare fine-tuning), got {args.finetune_steps}"
        )
    settings = RecoverySettings(
        finetune_steps=args.finetune_steps,
        ratio=args.ratio,
        round_to=args.round_to,
        distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature,
        prune_rounds=args.prune_rounds,
        regularize_steps=args.regularize_steps,
        regularize_strength=args.regularize_strength,
    )
    try:
        recovery_recipes(settings)  # every row's recipe validates before any work
        load_checkpoint(args.checkpoint)
        CanonicalDataset(args.data)
    except (ValueError, CheckpointError, DataError) as exc:
        parser.error(str(exc))
    out = Path(args.out)
    result = run_recovery(
        args.checkpoint,
        args.data,
        out,
        settings,
        methods=methods,
        threads=args.threads,
        latency_runs=args.latency_runs,
        seed=args.seed,
    )
    table = recovery_table(result)
    write_text_atomic(out / "recovery.json", json.dumps(result, indent=2))
    write_text_atomic(out / "recovery.md", table + "\n")
    print(table)
    return 0
