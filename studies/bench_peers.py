"""The peer benchmark: the project's recipe against what a user would reach for instead.

    python -m studies.bench peers --checkpoint runs/sweep/cache/unet2d-small-<key>.pt \\
        --data runs/sweep/cache/phantom-<key>.h5 \\
        --recipe runs/sweep/unet2d-small-phantom/trials/<n>/recipe.json --out runs/bench/peers

Rows, all from the same baseline checkpoint, in one run:

* ``ours``: the given recipe (e.g. the sweep's best non-inferior Pareto model) through
  `compress.pipeline.compress_checkpoint`;
* ``ort_int8``: the dense model quantized by ONNX Runtime's ``quantize_static`` with every
  option at its default (QDQ, per-tensor int8 weights and activations, min-max calibration on
  the same training-split inputs);
* ``metapruner``: Torch-Pruning's stock global pruner (``tp.pruner.BasePruner``, of which
  ``MetaPruner`` is the deprecated alias; ``GroupMagnitudeImportance(p=2)``,
  ``global_pruning=True``, no ``round_to``, the head left alone) removing the same fraction of
  channels as ``ours``, then the same plain fine-tune budget, deployed at ``ours``' precision
  (only for a structured or pairs recipe);
* ``nncf_ov_int8``: the dense model quantized by NNCF post-training quantization, run by
  OpenVINO (needs the ``openvino`` extra; left out with a note otherwise). Last, because
  OpenVINO and PyTorch training in one process have crashed (README, known problems).

Every row is judged the same way: size of the deployable artifact, speed-up paired against
the baseline's fp32 ONNX in ONNX Runtime (`compress.timing.paired_latency`, alternating
rounds, one process; cross-runtime for the OpenVINO row), and the val Dice delta paired over
subjects with its 95% bootstrap CI (`unet.stats.paired_comparison`), thresholds searched per
region on val for every row. The test split is not read. Writes ``peers.json`` and
``peers.md`` into ``--out``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from compress.export import ort_forward, ort_session
from compress.finetune import finetune
from compress.pipeline import compress_checkpoint, measure_spatial
from compress.prune_structured import channel_count
from compress.quantize import ArrayCalibrationReader
from compress.recipe import Recipe
from compress.runners import latency_call
from compress.surgery import rebuild
from compress.timing import paired_latency
from compress.validation import validate
from studies.report_format import delta_ci, table_start
from studies.sweep_spec import BASELINE_RECIPE
from unet.checkpoint import load_checkpoint
from unet.data.canonical import REGIONS, CanonicalDataset
from unet.data.datasets import sample_inputs
from unet.models import UNet
from unet.stats import paired_comparison

REFERENCE = BASELINE_RECIPE  # the sweep's reference (dense fp32, thresholds and components on val)
ROWS = ("ours", "ort_int8", "metapruner", "nncf_ov_int8")
NAMES = {
    "ours": "project recipe",
    "ort_int8": "dense int8, ORT quantize_static defaults",
    "metapruner": "Torch-Pruning stock global pruner + fine-tune",
    "nncf_ov_int8": "dense int8, NNCF PTQ on OpenVINO",
}


def stock_prune(model: UNet, fraction: float, example_shape: tuple[int, ...]) -> UNet:
    """Torch-Pruning's stock global pruner removing ``fraction`` of the prunable channels.

    Everything at Torch-Pruning's defaults but the two things a user must choose: the ratio
    and global ranking; the head (the three region outputs) is left alone. Returns a plain
    `UNet` (`compress.surgery.rebuild`).
    """
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    pruner = tp.pruner.BasePruner(
        pruned,
        torch.randn(example_shape),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=fraction,
        global_pruning=True,
        ignored_layers=[pruned.head],
    )
    pruner.step()
    return rebuild(pruned)


def ort_default_int8(
    fp32_onnx: Path, out: Path, data: CanonicalDataset, model: UNet, samples: int, seed: int
) -> Path:
    """``quantize_static`` with every option at ONNX Runtime's default, calibrated on the same
    training-split inputs as the project's int8 path."""
    from onnxruntime.quantization import quantize_static

    cfg = model.config
    calibration = sample_inputs(
        data, "train", samples, cfg.spatial_dims, None, seed, divisor=cfg.divisor
    )
    name = ort_session(fp32_onnx).get_inputs()[0].name
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    quantize_static(fp32_onnx, path, ArrayCalibrationReader(name, calibration))
    return path


def _val_row(
    per_subject: list[dict[str, Any]], ref: list[dict[str, Any]], size: int, ref_size: int
) -> dict[str, Any]:
    return {
        "size_bytes": size,
        "compression_factor": ref_size / size,
        "val_paired": paired_comparison(per_subject, ref).to_dict(),
        "val_per_subject": per_subject,
    }


def run_peers(
    checkpoint: str | Path,
    data: str | Path,
    recipe: Recipe,
    out: str | Path,
    *,
    threads: int = 2,
    latency_runs: int = 50,
    seed: int = 0,
    peers: Sequence[str] = ROWS[1:],
) -> dict[str, Any]:
    """Build ``ours`` and the ``peers`` rows (`ROWS`), then time each against the baseline's
    ORT fp32 session in alternating rounds; return everything ``peers.json`` holds."""
    from compress import openvino

    out, ds = Path(out), CanonicalDataset(data)
    kw = {"threads": threads, "latency_runs": latency_runs, "seed": seed}
    baseline, meta = load_checkpoint(checkpoint)
    shape = (1, baseline.config.in_channels, *measure_spatial(baseline, ds, meta))
    ref = compress_checkpoint(checkpoint, ds, REFERENCE, out / "reference", **kw)["compressed"]
    ref_scores, ref_size = ref["val_per_subject"], ref["size_bytes"]
    rows: dict[str, Any] = {}
    timed: dict[str, tuple[str, Path, str]] = {}  # row -> (backend, artifact, precision)
    notes: list[str] = []

    def pipeline_row(key: str, row_recipe: Recipe, **extra: Any) -> None:
        start = time.perf_counter()
        result = compress_checkpoint(
            checkpoint, ds, row_recipe, out / key, baseline_metrics=ref, cache_dir=out / "cache",
            **kw, **extra,
        )  # fmt: skip
        m = result["compressed"]
        rows[key] = _val_row(m["val_per_subject"], ref_scores, m["size_bytes"], ref_size)
        rows[key].update(recipe=row_recipe.to_dict(), wall_s=time.perf_counter() - start)
        backend = "ov_cpu" if row_recipe.runtime == "openvino" else "ort_cpu"
        timed[key] = (backend, out / key / result["artifact"], row_recipe.precision)

    pipeline_row("ours", recipe)
    if "ort_int8" in peers:
        start = time.perf_counter()
        path = ort_default_int8(
            out / "reference" / "model.onnx", out / "ort_int8", ds, baseline,
            recipe.calibration_samples, seed,
        )  # fmt: skip
        forward = ort_forward(ort_session(path, threads=threads))
        val = validate(
            forward, baseline, ds, "per-region", None, meta.get("patch_size"), components="search"
        )
        rows["ort_int8"] = _val_row(val.per_subject, ref_scores, path.stat().st_size, ref_size)
        rows["ort_int8"].update(threshold=val.threshold, wall_s=time.perf_counter() - start)
        timed["ort_int8"] = ("ort_cpu", path, "int8")

    ours_model, _ = load_checkpoint(out / "ours" / "checkpoint.pt")
    fraction = 1 - channel_count(ours_model) / channel_count(baseline)
    prunes_channels = recipe.prune in ("structured", "pairs") and fraction > 0
    if "metapruner" in peers and prunes_channels:
        start = time.perf_counter()
        small = stock_prune(baseline, fraction, shape)
        small = finetune(
            small, ds, recipe.finetune_steps, lr=recipe.finetune_lr, seed=seed,
            patch_size=meta.get("patch_size"),
        )  # fmt: skip
        plain = dataclasses.replace(recipe, prune_rounds=1, distill_weight=0.0, regularize_steps=0)
        pipeline_row("metapruner", plain, prepared=small)
        rows["metapruner"].update(
            channel_fraction=1 - channel_count(small) / channel_count(baseline),
            wall_s=time.perf_counter() - start,
        )
    elif "metapruner" in peers:
        notes.append(f"metapruner: left out, the recipe removes no channels ({recipe.label})")

    if "nncf_ov_int8" in peers:
        if (reason := openvino.unavailable_reason(int8=True)) is None:
            ov = dataclasses.replace(REFERENCE, precision="int8", runtime="openvino")
            pipeline_row("nncf_ov_int8", ov, backends=("ov_cpu",))
        else:
            notes.append(f"nncf_ov_int8: left out ({reason})")

    # all rows timed at the end, each paired against the same baseline ORT fp32 session
    reference_call = latency_call(
        "ort_cpu", out / "reference" / "model.onnx", shape, threads=threads
    )
    for key, (backend, artifact, precision) in timed.items():
        call = latency_call(backend, artifact, shape, threads=threads, precision=precision)
        p = paired_latency(call, reference_call, threads=threads, rounds=latency_runs)
        rows[key]["backend"] = backend
        rows[key]["speedup"] = {"median": p.speedup, "q25": p.speedup_q25, "q75": p.speedup_q75}
        rows[key]["latency_ms"] = p.candidate.median_ms
        rows[key]["reference_latency_ms"] = p.reference.median_ms
    for key, row in rows.items():
        row["name"] = NAMES[key]
    return {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "data_fingerprint": ds.fingerprint,
        "recipe": recipe.to_dict(),
        "recipe_label": recipe.label,
        "threads": threads,
        "latency_runs": latency_runs,
        "reference": {"size_bytes": ref_size, "val_dice": ref["val_dice"]},
        "val_subjects": len(ref_scores),
        "rows": rows,
        "ahead": ahead_of_peers(rows),
        "notes": notes,
    }


def ahead_of_peers(rows: dict[str, Any]) -> dict[str, list[str]]:
    """Per peer, the axes on which ``ours`` is ahead: ``size`` (smaller artifact), ``speed``
    (larger paired speed-up) and ``dice`` (larger val mean-Dice delta; point estimates)."""
    ours = rows["ours"]
    ahead = {}
    for key, row in rows.items():
        if key == "ours":
            continue
        axes = []
        if ours["size_bytes"] < row["size_bytes"]:
            axes.append("size")
        if ours["speedup"]["median"] > row["speedup"]["median"]:
            axes.append("speed")
        if ours["val_paired"]["dice_delta"]["mean"] > row["val_paired"]["dice_delta"]["mean"]:
            axes.append("dice")
        ahead[key] = axes
    return ahead


def peers_table(bench: dict[str, Any]) -> str:
    """The markdown table: one row per method, paired speed-up and val Dice deltas."""
    ref = bench["reference"]
    head = (
        "| row | method | size MB | size x | speed-up vs ORT fp32 [IQR] | val dDice mean [95% CI] "
        + "".join(f"| d{r} [95% CI] " for r in REGIONS)
        + "| ours ahead on |"
    )
    caption = (
        f"Recipe `{bench['recipe_label']}`; reference: the baseline as fp32 ONNX, "
        f"{ref['size_bytes'] / 1e6:.3f} MB, val mean Dice {ref['val_dice']['mean']:.4f}; "
        f"{bench['val_subjects']} val subjects, {bench['threads']} threads, "
        f"{bench['latency_runs']} paired rounds per row."
    )
    lines = table_start(caption, head)
    for key, row in bench["rows"].items():
        s, p = row["speedup"], row["val_paired"]
        ahead = "" if key == "ours" else ", ".join(bench["ahead"][key]) or "none"
        lines.append(
            f"| {key} | {row['name']} | {row['size_bytes'] / 1e6:.3f} | "
            f"{row['compression_factor']:.2f} | {s['median']:.2f} [{s['q25']:.2f}, "
            f"{s['q75']:.2f}] | {delta_ci(p, 'mean')} "
            + "".join(f"| {delta_ci(p, r)} " for r in REGIONS)
            + f"| {ahead} |"
        )
    lines += [f"- {n}" for n in bench["notes"]]
    return "\n".join(lines)
