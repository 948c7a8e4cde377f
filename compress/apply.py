"""Apply one compression recipe to a trained checkpoint; write the artifacts and the numbers.

    python -m compress.apply --checkpoint runs/unet2d-small.pt --data runs/phantom.h5 \\
        --out runs/s50-int8 --prune structured --ratio 0.5 --round-to 8 \\
        --finetune-steps 200 --precision int8 --threshold per-region

or ``--recipe recipe.json``. Steps: prune -> fine-tune (training split) -> export + cast
(int8 calibrated on training-split inputs) -> threshold search (validation split) -> measure.
The test split is never read here. Writes into ``--out``:

* ``model.onnx``: the deployable ONNX model (fp32 / fp16 / int8 QDQ; for ``bf16`` the fp32 ONNX,
  since ONNX Runtime's CPU provider has no bf16 convolutions: the bf16 artifact is the checkpoint);
* ``checkpoint.pt``: importable with ``unet.load_checkpoint`` (pruned widths, stored threshold,
  recipe, metrics; sparse storage after unstructured pruning; fp16/bf16 weights for those precisions);
* ``recipe.json`` and ``metrics.json`` = ``{"baseline": M, "compressed": M, ...}`` where each M has
  ``params``, ``macs``, ``size_bytes``, ``size_compressed_bytes``, ``latency_ms``
  (``{"ort_cpu": {"median", "iqr"}, "torch_cpu": {...}}``), ``threshold`` and ``val_dice``.

``size_bytes`` is the size of the deployable artifact (``model.onnx``; ``checkpoint.pt`` for bf16);
``size_compressed_bytes`` its zlib-6 size, which is what unstructured sparsity can save.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from compress.cast import cast_forward, cast_module, onnx_to_fp16
from compress.export import check_parity, export_onnx, ort_forward, ort_session
from compress.finetune import finetune
from compress.measure import measure
from compress.prune import prune_pairs, prune_structured, prune_unstructured
from compress.quantize import quantize_int8
from compress.recipe import CALIBRATIONS, PRECISIONS, PRUNE_METHODS, THRESHOLD_MODES, Recipe
from compress.threshold import search_thresholds
from unet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from unet.data.canonical import CanonicalDataset, DataError
from unet.data.datasets import sample_inputs
from unet.evaluate import as_thresholds, collect_probabilities, evaluate_probabilities
from unet.inference import DEFAULT_PATCH_3D, Forward, round_up
from unet.io import write_text_atomic
from unet.models import UNet


def _as_data(data: CanonicalDataset | str | Path) -> CanonicalDataset:
    return data if isinstance(data, CanonicalDataset) else CanonicalDataset(data)


def measure_spatial(model: UNet, data: CanonicalDataset, meta: dict[str, Any]) -> tuple[int, ...]:
    """Input size for MACs and latency: one axial slice (2D) or one inference window (3D)."""
    cfg = model.config
    d, h, w = data.shape(data.split("val")[0])
    sizes = (h, w) if cfg.spatial_dims == 2 else tuple(meta.get("patch_size") or DEFAULT_PATCH_3D)
    return tuple(round_up(s, cfg.divisor) for s in sizes)


def prune_model(model: UNet, recipe: Recipe) -> UNet:
    """Step 1: the recipe's pruning, returning a plain `UNet` (a new one if structure changed)."""
    if recipe.prune == "unstructured":
        return prune_unstructured(model, recipe.ratio)
    if recipe.prune == "structured":
        return prune_structured(model, recipe.ratio, round_to=recipe.round_to)
    if recipe.prune == "pairs":
        return prune_pairs(model, recipe.level_ratios, round_to=recipe.round_to)
    return model


def _val_dice_and_threshold(
    forward: Forward,
    model: UNet,
    data: CanonicalDataset,
    mode: str,
    fixed: dict[str, float] | None,
    patch_size: Any,
) -> tuple[dict[str, float], dict[str, float], dict[str, Any] | None]:
    cfg = model.config
    items = collect_probabilities(
        forward, data, data.split("val"), cfg.spatial_dims, cfg.divisor, patch_size
    )
    if mode == "fixed":
        threshold = as_thresholds(fixed)
        val = evaluate_probabilities(items, threshold, hd95=False)["mean"]["dice"]
        return threshold, val, None
    result = search_thresholds(items, mode=mode)
    return dict(result.thresholds), dict(result.val_dice), result.to_dict()


def _metrics(
    model: UNet,
    spatial: tuple[int, ...],
    onnx_path: Path,
    artifact: Path,
    threads: int,
    runs: int,
    device: str,
) -> dict[str, Any]:
    backends = ("ort_cpu", "torch_cpu") + (("torch_cuda",) if device.startswith("cuda") else ())
    return measure(
        model,
        spatial,
        onnx_path=onnx_path,
        artifact=artifact,
        threads=threads,
        runs=runs,
        backends=backends,
    ).to_dict()


def measure_baseline(
    baseline: str | Path,
    data: CanonicalDataset | str | Path,
    *,
    threads: int = 2,
    latency_runs: int = 20,
    device: str = "cpu",
) -> dict[str, Any]:
    """The baseline's M (see module docstring): exported to a temporary fp32 ONNX, its stored threshold."""
    model, meta = load_checkpoint(baseline)
    data = _as_data(data)
    spatial = measure_spatial(model, data, meta)
    with tempfile.TemporaryDirectory(prefix="unet-compress-") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
        forward = ort_forward(ort_session(onnx_path, threads=threads))
        threshold, val, _ = _val_dice_and_threshold(
            forward, model, data, "fixed", meta.get("threshold"), meta.get("patch_size")
        )
        m = _metrics(model, spatial, onnx_path, onnx_path, threads, latency_runs, device)
    return {**m, "threshold": threshold, "val_dice": val}


def compress_checkpoint(
    baseline: str | Path,
    data: CanonicalDataset | str | Path,
    recipe: Recipe,
    out_dir: str | Path,
    *,
    threads: int = 2,
    latency_runs: int = 20,
    device: str = "cpu",
    baseline_metrics: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``recipe`` on the ``baseline`` checkpoint; write artifacts into ``out_dir``; return metrics.

    ``baseline_metrics`` reuses an earlier `measure_baseline` result (the sweep measures it once).
    Only the training split (fine-tune, int8 calibration) and validation split (threshold,
    ``val_dice``) are read.
    """
    data = _as_data(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_checkpoint(baseline)
    patch_size = meta.get("patch_size")
    spatial = measure_spatial(model, data, meta)
    if baseline_metrics is None:
        baseline_metrics = measure_baseline(
            baseline, data, threads=threads, latency_runs=latency_runs, device=device
        )

    model = prune_model(model, recipe)
    model = finetune(
        model,
        data,
        recipe.finetune_steps,
        lr=recipe.finetune_lr,
        keep_zeros=recipe.prune == "unstructured",
        patch_size=patch_size,
        seed=seed,
        device=device,
        progress=progress,
    ).cpu()
    cfg = model.config

    onnx_path = out / "model.onnx"
    with tempfile.TemporaryDirectory(prefix="unet-compress-", dir=out) as tmp:
        fp32_onnx = export_onnx(model, Path(tmp) / "fp32.onnx")
        check_parity(
            model,
            fp32_onnx,
            sample_inputs(
                data, "train", 1, cfg.spatial_dims, patch_size, seed, divisor=cfg.divisor
            ),
        )
        if recipe.precision == "int8":
            calibration = sample_inputs(
                data,
                "train",
                recipe.calibration_samples,
                cfg.spatial_dims,
                patch_size,
                seed,
                divisor=cfg.divisor,
            )
            quantize_int8(fp32_onnx, onnx_path, calibration, recipe.calibration)
        elif recipe.precision == "fp16":
            onnx_to_fp16(fp32_onnx, onnx_path)
        else:
            shutil.copyfile(fp32_onnx, Path(tmp) / "copy.onnx")
            Path(tmp, "copy.onnx").replace(onnx_path)

    if recipe.precision == "bf16":
        cast_module(model, "bf16")
        forward = cast_forward(model)
    else:
        forward = ort_forward(ort_session(onnx_path, threads=threads))
    threshold, val, threshold_info = _val_dice_and_threshold(
        forward, model, data, recipe.threshold, meta.get("threshold"), patch_size
    )

    checkpoint_path = out / "checkpoint.pt"
    ckpt_meta = {
        **{k: v for k, v in meta.items() if k not in ("metrics", "recipe", "threshold")},
        "threshold": threshold,
        "recipe": recipe.to_dict(),
        "baseline": str(baseline),
        "data_fingerprint": data.fingerprint,
        "precision": recipe.precision,
        "metrics": {"val_dice": val},
    }
    half = recipe.precision in ("fp16", "bf16")
    with warnings.catch_warnings():  # fp16 here is for storage, not for CPU compute
        warnings.simplefilter("ignore", RuntimeWarning)
        stored = cast_module(model, recipe.precision) if half else model
    save_checkpoint(checkpoint_path, stored, ckpt_meta, sparse=recipe.prune == "unstructured")
    # torch CPU latency in the deployed dtype, except fp16: emulated on CPUs (~70x slower), so the
    # fp32 module is timed instead and metrics.json says so
    if recipe.precision == "fp16":
        model.float()
    artifact = checkpoint_path if recipe.precision == "bf16" else onnx_path
    compressed = _metrics(model, spatial, onnx_path, artifact, threads, latency_runs, device)
    compressed.update(
        threshold=threshold, val_dice=val, torch_dtype=str(next(model.parameters()).dtype)
    )
    model.float()
    result = {
        "baseline": baseline_metrics,
        "compressed": compressed,
        "recipe": recipe.to_dict(),
        "recipe_label": recipe.label,
        "artifact": artifact.name,
        "threshold_mode": recipe.threshold,
        "threshold_curve": (threshold_info or {}).get("curve"),
        "data_fingerprint": data.fingerprint,
    }
    write_text_atomic(out / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    return result


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """Compression factor (size), speed-ups (ORT, torch) and Dice change vs the baseline."""
    b, c = result["baseline"], result["compressed"]

    def speedup(key: str) -> float | None:
        if key in b["latency_ms"] and key in c["latency_ms"]:
            return b["latency_ms"][key]["median"] / c["latency_ms"][key]["median"]
        return None

    return {
        "compression_factor": b["size_bytes"] / c["size_bytes"],
        "compression_factor_zipped": b["size_compressed_bytes"] / c["size_compressed_bytes"],
        "speedup_ort": speedup("ort_cpu"),
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
        ("torch_cpu", "latency torch CPU"),
        ("torch_cuda", "latency torch CUDA"),
    ):
        if key in b["latency_ms"] and key in c["latency_ms"]:
            bl, cl = b["latency_ms"][key], c["latency_ms"][key]
            rows.append(
                (
                    name,
                    f"{bl['median']:.2f} ms ±{bl['iqr']:.2f}",
                    f"{cl['median']:.2f} ms ±{cl['iqr']:.2f}",
                    f"{bl['median'] / cl['median']:.2f}x",
                )
            )
    for region in ("WT", "TC", "ET", "mean"):
        rows.append(
            (
                f"val Dice {region}",
                f"{b['val_dice'][region]:.4f}",
                f"{c['val_dice'][region]:.4f}",
                f"{c['val_dice'][region] - b['val_dice'][region]:+.4f}",
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
    lines = [
        f"recipe: {result['recipe_label']}",
        f"{'':<20}{'baseline':>20}{'compressed':>20}{'ratio':>10}",
    ]
    lines += [f"{a:<20}{x:>20}{y:>20}{z:>10}" for a, x, y, z in rows]
    return "\n".join(lines)


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
    p.add_argument("--prune", choices=PRUNE_METHODS, default=d.prune)
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
        type=int,
        default=d.round_to,
        help="structured widths rounded to a multiple of this",
    )
    p.add_argument("--finetune-steps", type=int, default=d.finetune_steps)
    p.add_argument("--finetune-lr", type=float, default=d.finetune_lr)
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    p.add_argument(
        "--calibration", choices=CALIBRATIONS, default=d.calibration, help="int8 calibration method"
    )
    p.add_argument("--calibration-samples", type=int, default=d.calibration_samples)
    p.add_argument("--threshold", choices=THRESHOLD_MODES, default=d.threshold)
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads for ORT and torch (latency is measured at this count)",
    )
    p.add_argument("--latency-runs", type=int, default=20, help="timed runs per backend (>= 20)")
    p.add_argument("--device", default="cpu", help="fine-tune device; cuda adds CUDA latency")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.recipe:
            recipe = Recipe.from_json(args.recipe)
        else:
            levels = tuple(float(x) for x in args.level_ratios.split(",") if x.strip())
            recipe = Recipe(
                prune=args.prune,
                ratio=args.ratio,
                level_ratios=levels,
                round_to=args.round_to,
                finetune_steps=args.finetune_steps,
                finetune_lr=args.finetune_lr,
                precision=args.precision,
                calibration=args.calibration,
                calibration_samples=args.calibration_samples,
                threshold=args.threshold,
            )
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
        )
    except ValueError as exc:  # e.g. pair ratios that do not fit the model's levels
        parser.error(str(exc))
    print(format_table(result))
    print(f"wrote {args.out}/model.onnx, checkpoint.pt, recipe.json, metrics.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
