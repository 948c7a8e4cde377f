"""Does latency follow MACs? Structured pruning's MAC reduction against its paired speed-up.

    python -m studies.bench macs                                   # unet2d-small, unet2d-medium, 240x240
    python -m studies.bench macs --models unet2d-medium --ratio 0.5 --round-to 1,8 --runtimes ort

For each model (zoo spec, seeded random weights: latency does not depend on the values) and
each ``round_to``, the model is pruned structurally at ``--ratio`` (`compress.prune_structured`,
the sweep's pruner), both are exported to fp32 ONNX, and the pruned one is timed against the
dense one in alternating rounds on each runtime (`compress.timing.paired_latency`: the
speed-up is the median per-round ratio, with quartiles). ``share`` = speed-up / MAC reduction:
1.0 means latency falls exactly as fast as the arithmetic. Issue 9's target is >= 0.8 at
240x240 for structured 0.5 with width rounding.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from compress.export import export_onnx
from compress.prune_structured import prune_structured
from compress.runners import latency_call
from compress.timing import paired_latency
from unet import zoo
from unet.models import UNet

RUNTIME_BACKENDS = {"ort": "ort_cpu", "openvino": "ov_cpu"}


def macs_vs_latency(
    *,
    models: Sequence[str] = ("unet2d-small", "unet2d-medium"),
    ratio: float = 0.5,
    round_to: Sequence[int] = (1, 8),
    runtimes: Sequence[str] = ("ort", "openvino"),
    side: int = 240,
    threads: int = 2,
    rounds: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """One row per (model, round_to, runtime): MAC reduction, paired speed-up, their ratio."""
    rows: list[dict[str, Any]] = []
    for spec in models:
        torch.manual_seed(seed)
        dense = UNet(zoo.config_from_spec(spec)).eval()
        dims = dense.config.spatial_dims
        spatial = (side,) * dims
        shape = (1, dense.config.in_channels, *spatial)
        dense_macs = zoo.macs(dense.config, spatial)
        with tempfile.TemporaryDirectory(prefix="unet-compress-macs-") as tmp:
            dense_onnx = export_onnx(dense, Path(tmp) / "dense.onnx")
            for r in round_to:
                small = prune_structured(dense, ratio, round_to=r).eval()
                small_onnx = export_onnx(small, Path(tmp) / f"r{r}.onnx")
                reduction = dense_macs / zoo.macs(small.config, spatial)
                for runtime in runtimes:
                    backend = RUNTIME_BACKENDS[runtime]
                    p = paired_latency(
                        latency_call(backend, small_onnx, shape, threads=threads),
                        latency_call(backend, dense_onnx, shape, threads=threads),
                        threads=threads,
                        rounds=rounds,
                    )
                    rows.append(
                        {"model": spec, "input": "x".join(map(str, spatial)), "ratio": ratio,
                         "round_to": r, "runtime": runtime, "mac_reduction": reduction,
                         "speedup": p.speedup, "speedup_q25": p.speedup_q25,
                         "speedup_q75": p.speedup_q75, "share": p.speedup / reduction,
                         "dense_ms": p.reference.median_ms, "pruned_ms": p.candidate.median_ms}
                    )  # fmt: skip
    return {"threads": threads, "rounds": rounds, "seed": seed, "rows": rows}


def macs_table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| model | input | ratio | round_to | runtime | MAC reduction | paired speed-up [IQR] "
        "| share of MAC reduction | dense ms | pruned ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['ratio']} | {r['round_to']} | {r['runtime']} "
            f"| {r['mac_reduction']:.2f}x | {r['speedup']:.2f}x [{r['speedup_q25']:.2f}, "
            f"{r['speedup_q75']:.2f}] | {r['share']:.2f} | {r['dense_ms']:.2f} "
            f"| {r['pruned_ms']:.2f} |"
        )
    return "\n".join(lines)


def model_specs(parser: Any, text: str) -> list[str]:
    """``--models``: comma-separated zoo specs, each checked (`unet.zoo.config_from_spec`);
    a bad or empty list is one ``parser.error`` line."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        parser.error(f"--models: empty; known: {', '.join(zoo.names())}")
    for spec in models:
        try:
            zoo.config_from_spec(spec)
        except ValueError as exc:
            parser.error(f"--models: {exc}")
    return models


def add_parser(sub: Any) -> None:
    """The ``macs`` sub-command of `studies.bench`."""
    import argparse

    e = sub.add_parser(
        "macs",
        help="structured pruning: MAC reduction vs paired speed-up per runtime",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("--models", default="unet2d-small,unet2d-medium", help="zoo model specs")
    e.add_argument("--ratio", type=float, default=0.5, help="structured pruning ratio")
    e.add_argument("--round-to", default="1,auto", help="comma-separated; auto: this CPU's")
    e.add_argument("--runtimes", default="ort,openvino", help="comma-separated: ort, openvino")
    e.add_argument("--side", type=int, default=240, help="input side (pixels / voxels)")
    e.add_argument("--threads", type=int, default=2, help="intra-op threads (torch, ORT, OpenVINO)")
    e.add_argument("--rounds", type=int, default=50, help="paired rounds per row (>= 20)")
    e.add_argument("--out", default="runs/bench/macs.json", help="output file or folder")


def command(parser: Any, args: Any) -> int:
    """Validate the flags (one ``error:`` line each), run, write JSON, print the table."""
    from compress.measure import MIN_RUNS
    from compress.openvino import unavailable_reason
    from compress.simd import default_round_to
    from studies.bench_args import write_and_print

    models = model_specs(parser, args.models)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if not runtimes or (bad := [r for r in runtimes if r not in RUNTIME_BACKENDS]):
        parser.error(f"--runtimes: unknown {bad if runtimes else 'empty'}; known: ort, openvino")
    if "openvino" in runtimes and (reason := unavailable_reason()):
        parser.error(f"--runtimes openvino: {reason}")
    try:
        widths = [
            default_round_to() if w.strip() == "auto" else int(w) for w in args.round_to.split(",")
        ]
    except ValueError:
        parser.error(f"--round-to: integers or 'auto', got {args.round_to!r}")
    if not widths or min(widths) < 1:
        parser.error(f"--round-to: values must be >= 1, got {args.round_to!r}")
    if not 0 < args.ratio < 1:
        parser.error(f"--ratio must be in (0, 1), got {args.ratio}")
    if args.rounds < MIN_RUNS:
        parser.error(f"--rounds must be >= {MIN_RUNS}, got {args.rounds}")
    result = macs_vs_latency(
        models=models, ratio=args.ratio, round_to=list(dict.fromkeys(widths)),
        runtimes=runtimes, side=args.side, threads=args.threads, rounds=args.rounds,
    )  # fmt: skip
    return write_and_print(args.out, result, macs_table, args.threads)
