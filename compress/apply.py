"""Apply one compression recipe to a trained checkpoint; write the artifacts and print the numbers.

    python -m compress.apply --checkpoint runs/unet2d-small.pt --data runs/phantom.h5 \\
        --out runs/s50-int8 --prune structured --ratio 0.5 --round-to 8 \\
        --finetune-steps 200 --precision int8 --threshold per-region

    python -m compress.apply --checkpoint runs/unet2d-small.pt --data runs/phantom.h5 \\
        --out runs/s50-kd --prune structured --ratio 0.5 --round-to 8 --finetune-steps 200 \\
        --prune-rounds 4 --distill-weight 1 --regularize-steps 200 --cache-dir runs/cache

or ``--recipe recipe.json``. The pipeline itself (prune -> fine-tune -> export + cast ->
threshold on val -> measure) and the files it writes are described in `compress.pipeline`, the
recovery methods (gradual pruning, distillation, regularisation) in `compress.recovery`; this
module is its command line and the baseline-vs-compressed table it prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from compress.openvino import unavailable_reason
from compress.pipeline import compress_checkpoint
from compress.recipe import (
    CALIBRATIONS,
    COMPONENT_MODES,
    PRECISIONS,
    PRUNE_METHODS,
    RUNTIMES,
    SELECTION_RULES,
    THRESHOLD_MODES,
    Recipe,
)
from compress.simd import default_round_to
from unet.checkpoint import CheckpointError, load_checkpoint
from unet.data.canonical import CanonicalDataset, DataError


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """Compression factor (size), speed-ups (ORT, OpenVINO, torch) and Dice change vs the
    baseline; a speed-up is the paired one (``speedup_<backend>``) where it was measured."""
    b, c = result["baseline"], result["compressed"]

    def speedup(key: str) -> float | None:
        if f"speedup_{key}" in c:
            return c[f"speedup_{key}"]
        if key in b["latency_ms"] and key in c["latency_ms"]:
            return b["latency_ms"][key]["median"] / c["latency_ms"][key]["median"]
        return None

    return {
        "compression_factor": b["size_bytes"] / c["size_bytes"],
        "compression_factor_zipped": b["size_compressed_bytes"] / c["size_compressed_bytes"],
        "speedup_ort": speedup("ort_cpu"),
        "speedup_ov": speedup("ov_cpu"),
        "speedup_torch": speedup("torch_cpu"),
        "dice_change": c["val_dice"]["mean"] - b["val_dice"]["mean"],
    }


def format_table(result: dict[str, Any]) -> str:
    """Baseline vs compressed, one metric per row, with the ratio column."""
    b, c = result["baseline"], result["compressed"]
    r = ratios(result)
    rows = [
        ("params", f"{b['params']:,}", f"{c['params']:,}", f"{b['params'] / c['params']:.2f}x"),
        (
            "MACs",
            f"{b['macs'] / 1e9:.3f} G",
            f"{c['macs'] / 1e9:.3f} G",
            f"{b['macs'] / c['macs']:.2f}x",
        ),
        (
            "size",
            f"{b['size_bytes'] / 1e6:.3f} MB",
            f"{c['size_bytes'] / 1e6:.3f} MB",
            f"{r['compression_factor']:.2f}x",
        ),
        (
            "size (zlib)",
            f"{b['size_compressed_bytes'] / 1e6:.3f} MB",
            f"{c['size_compressed_bytes'] / 1e6:.3f} MB",
            f"{r['compression_factor_zipped']:.2f}x",
        ),
    ]
    for key, name in (
        ("ort_cpu", "latency ORT CPU"),
        ("ov_cpu", "latency OpenVINO"),
        ("torch_cpu", "latency torch CPU"),
        ("torch_cuda", "latency torch CUDA"),
    ):
        if key in c.get("paired", {}):  # both sides timed in the same rounds
            p = c["paired"][key]
            bl, cl = p["reference_ms"], p["candidate_ms"]
            ratio = f"{p['speedup']:.2f}x"
        elif key in b["latency_ms"] and key in c["latency_ms"]:
            bl, cl = b["latency_ms"][key], c["latency_ms"][key]
            ratio = f"{bl['median'] / cl['median']:.2f}x"
        else:
            continue
        rows.append(
            (
                name,
                f"{bl['median']:.2f} ms ±{bl['iqr']:.2f}",
                f"{cl['median']:.2f} ms ±{cl['iqr']:.2f}",
                ratio,
            )
        )
    paired = result.get("paired_val")
    for region in ("WT", "TC", "ET", "mean"):
        ci = paired["ci95"][region] if paired else None
        rows.append(
            (
                f"val Dice {region}",
                f"{b['val_dice'][region]:.4f}",
                f"{c['val_dice'][region]:.4f}",
                f"{c['val_dice'][region] - b['val_dice'][region]:+.4f}"
                + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""),
            )
        )
    rows.append(
        (
            "threshold WT/TC/ET",
            "/".join(f"{b['threshold'][k]:.2f}" for k in ("WT", "TC", "ET")),
            "/".join(f"{c['threshold'][k]:.2f}" for k in ("WT", "TC", "ET")),
            "",
        )
    )
    for key, name in (("min_component", "min comp."), ("min_volume", "min volume")):
        sizes = [m.get(key) or {} for m in (b, c)]
        if any(v for d in sizes for v in d.values()):
            cells = ["/".join(str(d.get(k, 0)) for k in ("WT", "TC", "ET")) for d in sizes]
            rows.append((f"{name} WT/TC/ET", *cells, "voxels"))
    lines = [
        f"recipe: {result['recipe_label']}",
        f"{'':<20}{'baseline':>20}{'compressed':>20}  ratio / delta",
    ]
    lines += [f"{a:<20}{x:>20}{y:>20}  {z}" for a, x, y, z in rows]
    if paired:
        verdict = "non-inferior" if paired["non_inferior"] else "NOT non-inferior"
        lines.append(
            f"paired over {paired['n_subjects']} val subjects, 95% bootstrap CI in brackets: "
            f"{verdict} at margins {paired['margin']:g} (mean) / {paired['region_margin']:g} "
            "(every region)"
        )
    return "\n".join(lines)


def add_recovery_arguments(p: Any, defaults: Any) -> None:
    """The recovery flags (``--prune-rounds``, ``--distill-weight``, ``--distill-temperature``,
    ``--regularize-steps``, ``--regularize-strength``) on a parser or argument group, with the
    same-named attributes of ``defaults`` (a `Recipe`, or a benchmark's settings) as defaults."""
    p.add_argument(
        "--prune-rounds",
        type=int,
        default=defaults.prune_rounds,
        help="reach the ratio in this many prune -> fine-tune rounds (1 = one-shot)",
    )
    p.add_argument(
        "--distill-weight",
        type=float,
        default=defaults.distill_weight,
        help="weight of distillation from the unpruned baseline during fine-tuning (0 = off)",
    )
    p.add_argument(
        "--distill-temperature",
        type=float,
        default=defaults.distill_temperature,
        help="distillation temperature T (the loss is scaled by T^2)",
    )
    p.add_argument(
        "--regularize-steps",
        type=int,
        default=defaults.regularize_steps,
        help="group-sparsity regularisation steps before structured/pairs pruning (0 = off)",
    )
    p.add_argument(
        "--regularize-strength",
        type=float,
        default=defaults.regularize_strength,
        help="Torch-Pruning GroupNormPruner reg coefficient",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m compress.apply",
        description="Compress one trained checkpoint with a recipe (prune -> fine-tune -> cast -> threshold) and measure it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="baseline checkpoint (.pt)")
    p.add_argument("--data", required=True, help="canonical HDF5 data file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--recipe", default=None, help="recipe JSON file (instead of the recipe flags)")
    d = Recipe()
    p.add_argument("--prune", choices=PRUNE_METHODS, default=d.prune, help="pruning method")
    p.add_argument(
        "--ratio",
        type=float,
        default=d.ratio,
        help="unstructured: fraction of conv weights; structured: fraction of channels",
    )
    p.add_argument(
        "--level-ratios",
        default="",
        help="pairs: one ratio per U-Net level, comma-separated, e.g. 0.2,0.4,0.6,0.6",
    )
    p.add_argument(
        "--round-to",
        default=str(d.round_to),
        help="structured widths rounded to a multiple of this; 'auto': this CPU's SIMD width "
        "for the precision (compress.simd)",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=d.finetune_steps,
        help="optimizer steps of fine-tuning after pruning (batches of the baseline's crops)",
    )
    p.add_argument(
        "--finetune-lr", type=float, default=d.finetune_lr, help="fine-tune learning rate (AdamW)"
    )
    p.add_argument(
        "--precision", choices=PRECISIONS, default=d.precision, help="deployed precision"
    )
    p.add_argument(
        "--calibration", choices=CALIBRATIONS, default=d.calibration, help="int8 calibration method"
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=d.calibration_samples,
        help="int8 calibration inputs (train split); also the val samples of --int8-max-drop",
    )
    p.add_argument(
        "--int8-max-drop",
        type=float,
        default=d.int8_max_drop,
        help="OpenVINO int8: NNCF accuracy control, at most this absolute val Dice drop vs fp32, "
        "operators reverted to f32 until it holds (0 = off)",
    )
    p.add_argument(
        "--threshold",
        choices=THRESHOLD_MODES,
        default=d.threshold,
        help="the baseline's stored threshold(s), or one / one per region searched on val",
    )
    p.add_argument(
        "--components",
        choices=COMPONENT_MODES,
        default=d.components,
        help="post-processing: keep all voxels, or search per-region minimum component sizes "
        "and minimum region volumes (voxels) on val (unet.components)",
    )
    p.add_argument(
        "--selection",
        choices=SELECTION_RULES,
        default=d.selection,
        help="how the val searches choose: the argmax (best), or the baseline's stored "
        "threshold(s) and sizes unless a gain beyond one standard error over val subjects "
        "(one-se; unet.selection)",
    )
    r = p.add_argument_group("recovery after pruning")
    add_recovery_arguments(r, d)
    r.add_argument(
        "--cache-dir",
        default=None,
        help="cache the regularised baseline here and reuse it (default: no cache)",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=d.runtime,
        help="deployment runtime: ort (model.onnx), openvino (model.onnx read by OpenVINO; int8: "
        "NNCF's IR model.xml/.bin), "
        "torch (checkpoint.pt)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads for ORT and torch (latency is measured at this count)",
    )
    p.add_argument("--latency-runs", type=int, default=20, help="timed runs per backend (>= 20)")
    p.add_argument("--device", default="cpu", help="fine-tune device; cuda adds CUDA latency")
    p.add_argument("--seed", type=int, default=0, help="fine-tune and calibration draws")
    return p


def _int_arg(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{flag} must be an integer or 'auto', got {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.recipe:
            recipe = Recipe.from_json(args.recipe)
        else:
            levels = tuple(float(x) for x in args.level_ratios.split(",") if x.strip())
            round_to = (
                default_round_to(precision=args.precision)
                if args.round_to == "auto"
                else _int_arg("--round-to", args.round_to)
            )
            recipe = Recipe(
                prune=args.prune,
                ratio=args.ratio,
                level_ratios=levels,
                round_to=round_to,
                finetune_steps=args.finetune_steps,
                finetune_lr=args.finetune_lr,
                precision=args.precision,
                calibration=args.calibration,
                calibration_samples=args.calibration_samples,
                int8_max_drop=args.int8_max_drop,
                threshold=args.threshold,
                components=args.components,
                selection=args.selection,
                prune_rounds=args.prune_rounds,
                distill_weight=args.distill_weight,
                distill_temperature=args.distill_temperature,
                regularize_steps=args.regularize_steps,
                regularize_strength=args.regularize_strength,
                runtime=args.runtime,
            )
        if recipe.runtime == "openvino" and (reason := unavailable_reason(int8=True)):
            raise ValueError(f"runtime openvino: {reason}")
        load_checkpoint(args.checkpoint)
        data = CanonicalDataset(args.data)
    except (ValueError, CheckpointError, DataError) as exc:
        parser.error(str(exc))
    try:
        result = compress_checkpoint(
            args.checkpoint,
            data,
            recipe,
            args.out,
            threads=args.threads,
            latency_runs=args.latency_runs,
            device=args.device,
            seed=args.seed,
            progress=True,
            cache_dir=args.cache_dir,
        )
    except ValueError as exc:  # e.g. pair ratios that do not fit the model's levels
        parser.error(str(exc))
    print(format_table(result))
    print(
        f"wrote {args.out}/{result['artifact']}, checkpoint.pt, recipe.json, metrics.json",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
