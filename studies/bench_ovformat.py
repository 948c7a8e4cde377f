"""OpenVINO's two model formats side by side: the same model as an IR and as ONNX.

    python -m studies.bench ovformat --checkpoint runs/sweep/unet2d-small-phantom/trial-13/checkpoint.pt \\
        --data runs/sweep/cache/phantom-f3334c6b936d.h5

The checkpoint (a baseline or any pruned trial's ``checkpoint.pt``) is exported to fp32 ONNX
and written per precision both ways `compress.deploy.write_openvino` can: an IR (``.xml`` +
``.bin``) and ONNX (int8: NNCF's OpenVINO and ONNX backends on the same ``--calibration-samples``
training-split inputs). Per precision: both sizes on disk, OpenVINO's paired speed-up of the
ONNX over the IR (`compress.timing.paired_latency`: alternating rounds, median per-round
ratio with quartiles, at the model's measurement input, batch 1), the largest logit
difference between the two on val inputs, and the val Dice of each in OpenVINO (probability
0.5, no post-processing) with the paired delta ONNX - IR over val subjects and its 95%
bootstrap CI (`unet.stats.paired_comparison`). This is why ``--runtime openvino`` ships ONNX
for float precisions (an IR's XML graph costs ~50 KB whatever the weights) and an IR for int8
(README, "Twelfth measurement session").
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compress.deploy import artifact_files, write_openvino
from compress.export import export_onnx
from compress.measure import file_sizes
from compress.openvino import compile_ir, ov_forward
from compress.pipeline import measure_spatial
from compress.runners import latency_call
from compress.timing import paired_latency
from unet.checkpoint import load_checkpoint
from unet.data.canonical import CanonicalDataset
from unet.data.datasets import sample_inputs
from unet.evaluate import evaluate_model
from unet.stats import paired_comparison

PRECISIONS = ("fp32", "fp16", "int8")


def ir_vs_onnx(
    checkpoint: str | Path,
    data: str | Path,
    *,
    precisions: Sequence[str] = PRECISIONS,
    calibration_samples: int = 32,
    threads: int = 2,
    rounds: int = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """One row per precision: IR and ONNX bytes, paired speed-up ONNX / IR in OpenVINO, the
    largest |logit difference| between them on 4 val inputs, and their val Dice (paired)."""
    model, meta = load_checkpoint(checkpoint)
    dataset = CanonicalDataset(data)
    cfg = model.config
    spatial = measure_spatial(model, dataset, meta)
    shape = (1, cfg.in_channels, *spatial)
    patch = meta.get("patch_size")

    def draw(split: str, n: int) -> np.ndarray:
        return sample_inputs(dataset, split, n, cfg.spatial_dims, patch, seed, divisor=cfg.divisor)

    val = draw("val", 4)
    rows = []
    with tempfile.TemporaryDirectory(prefix="unet-compress-ovformat-") as tmp:
        fp32 = export_onnx(model.eval(), Path(tmp) / "fp32.onnx")
        for precision in precisions:
            paths = {}
            for suffix in (".xml", ".onnx"):
                paths[suffix] = write_openvino(
                    precision, fp32, Path(tmp) / f"{precision}{suffix}",
                    lambda: draw("train", calibration_samples),
                )  # fmt: skip
            sizes = {s: file_sizes(artifact_files(p))[0] for s, p in paths.items()}
            forwards = {
                s: ov_forward(compile_ir(paths[s], precision, threads=threads)) for s in paths
            }
            ir_out, onnx_out = forwards[".xml"](val), forwards[".onnx"](val)
            scores = {
                s: evaluate_model(
                    f,
                    dataset,
                    "val",
                    hd95=False,
                    spatial_dims=cfg.spatial_dims,
                    divisor=cfg.divisor,
                    patch_size=patch,
                )  # fmt: skip
                for s, f in forwards.items()
            }
            delta = paired_comparison(
                scores[".onnx"]["per_subject"], scores[".xml"]["per_subject"], seed=seed
            )
            p = paired_latency(
                latency_call("ov_cpu", paths[".onnx"], shape, threads=threads, precision=precision),
                latency_call("ov_cpu", paths[".xml"], shape, threads=threads, precision=precision),
                threads=threads,
                rounds=rounds,
            )
            rows.append(
                {"precision": precision, "ir_bytes": sizes[".xml"], "onnx_bytes": sizes[".onnx"],
                 "speedup": p.speedup, "speedup_q25": p.speedup_q25, "speedup_q75": p.speedup_q75,
                 "ir_ms": p.reference.median_ms, "onnx_ms": p.candidate.median_ms,
                 "max_logit_diff": float(np.abs(ir_out - onnx_out).max()),
                 "logit_scale": float(np.abs(ir_out).max()),
                 "val_dice_ir": scores[".xml"]["mean"]["dice"],
                 "val_dice_onnx": scores[".onnx"]["mean"]["dice"],
                 "val_paired_onnx_vs_ir": delta.to_dict()}
            )  # fmt: skip
    return {
        "checkpoint": str(checkpoint),
        "input_shape": list(shape),
        "threads": threads,
        "rounds": rounds,
        "calibration_samples": calibration_samples,
        "rows": rows,
    }


def ovformat_table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| precision | IR KB (xml + bin) | ONNX KB | ONNX / IR size | OpenVINO speed-up ONNX vs IR "
        "[IQR] | IR ms | ONNX ms | max logit diff (max logit) | val Dice IR | val Dice ONNX "
        "| ONNX - IR [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        paired = r["val_paired_onnx_vs_ir"]
        lo, hi = paired["ci95"]["mean"]
        lines.append(
            f"| {r['precision']} | {r['ir_bytes'] / 1e3:.0f} | {r['onnx_bytes'] / 1e3:.0f} "
            f"| {r['onnx_bytes'] / r['ir_bytes']:.2f} | {r['speedup']:.2f}x "
            f"[{r['speedup_q25']:.2f}, {r['speedup_q75']:.2f}] | {r['ir_ms']:.2f} "
            f"| {r['onnx_ms']:.2f} | {r['max_logit_diff']:.2g} ({r['logit_scale']:.3g}) "
            f"| {r['val_dice_ir']['mean']:.4f} | {r['val_dice_onnx']['mean']:.4f} "
            f"| {paired['dice_delta']['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] |"
        )
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    """The ``ovformat`` sub-command of `studies.bench`."""
    from studies.bench_args import add_baseline_arguments, add_run_arguments

    e = sub.add_parser(
        "ovformat",
        help="OpenVINO: the same model as IR and as ONNX (size, paired latency, logits)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_baseline_arguments(e)
    e.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated")
    e.add_argument("--calibration-samples", type=int, default=32, help="int8: training inputs")
    e.add_argument("--rounds", type=int, default=40, help="paired rounds per row (>= 20)")
    add_run_arguments(e, "runs/bench/ovformat.json", seed=True)


def command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Validate the flags (one ``error:`` line each), run, write JSON, print the table."""
    from compress.measure import MIN_RUNS
    from compress.openvino import unavailable_reason
    from studies.bench_args import write_and_print

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or (bad := [p for p in precisions if p not in PRECISIONS]):
        parser.error(f"--precisions: unknown {bad if precisions else 'empty'}; known: {PRECISIONS}")
    if reason := unavailable_reason(int8="int8" in precisions):
        parser.error(f"ovformat: {reason}")
    for name in ("checkpoint", "data"):
        if not Path(getattr(args, name)).is_file():
            parser.error(f"--{name}: {getattr(args, name)}: no such file")
    if args.rounds < MIN_RUNS:
        parser.error(f"--rounds must be >= {MIN_RUNS}, got {args.rounds}")
    if args.calibration_samples < 1:
        parser.error(f"--calibration-samples must be >= 1, got {args.calibration_samples}")
    result = ir_vs_onnx(
        args.checkpoint, args.data, precisions=precisions,
        calibration_samples=args.calibration_samples, threads=args.threads, rounds=args.rounds,
        seed=args.seed,
    )  # fmt: skip
    return write_and_print(args.out, result, ovformat_table, args.threads)
