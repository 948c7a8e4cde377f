"""Benchmarks: the speed and size numbers that unit tests must not time (machines are noisy).

    python -m studies.bench train --data runs/phantom.h5                     # samples/s fp32 vs bf16
    python -m studies.bench compress --checkpoint runs/unet2d-small.pt --data runs/phantom.h5
    python -m studies.bench recovery --checkpoint runs/unet2d-small.pt --data runs/phantom.h5
    python -m studies.bench ceiling                                          # see studies.ceiling
    python -m studies.bench peers --checkpoint BASELINE.pt --data DATA.h5 --recipe recipe.json
    python -m studies.bench macs                                             # see studies.bench_macs
    python -m studies.bench ovformat --checkpoint TRIAL/checkpoint.pt --data DATA.h5   # IR vs ONNX

``train`` times the same training loop with ``--amp off`` and ``--amp bf16`` in one process,
alternating, and reports samples/s and their ratio. ``compress`` runs the reference recipes on
one baseline — (a) structured 0.5 + fine-tune, (b) the same + int8, (c) unstructured 0.9 +
fine-tune — and prints size, compressed size, ORT and torch latency and val Dice per region
beside the baseline. ``recovery`` compares the recovery methods after structured pruning on
the test split with paired CIs (`studies.bench_recovery`); ``peers`` sets a recipe beside ORT's
default int8, NNCF int8 on OpenVINO and Torch-Pruning's stock pruner (`studies.bench_peers`);
``ovformat`` sets OpenVINO's IR beside the ONNX it reads, per precision (`studies.bench_ovformat`).
All write JSON next to the printed
table (``--out``). Ratios from one run are what to compare; absolute numbers move with the
machine's load.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from compress.apply import ratios
from compress.pipeline import compress_checkpoint, measure_baseline
from compress.recipe import Recipe
from studies import bench_macs, bench_ovformat, bench_recovery
from studies.bench_args import add_baseline_arguments, add_run_arguments, write_and_print
from studies.bench_peers import ROWS
from unet import zoo
from unet.checkpoint import CheckpointError, load_checkpoint
from unet.data.canonical import CanonicalDataset, DataError
from unet.io import write_text_atomic
from unet.train_loop import fit

REFERENCE_RECIPES = {
    "a: structured 0.5 + ft": Recipe(
        prune="structured", ratio=0.5, round_to=8, finetune_steps=200, threshold="per-region"
    ),
    "b: structured 0.5 + ft + int8": Recipe(
        prune="structured",
        ratio=0.5,
        round_to=8,
        finetune_steps=200,
        precision="int8",
        threshold="per-region",
    ),
    "c: unstructured 0.9 + ft": Recipe(
        prune="unstructured", ratio=0.9, finetune_steps=200, threshold="per-region"
    ),
}


def train_throughput(
    model_name: str, data: str, *, batch_size: int, steps: int, repeats: int, threads: int
) -> dict[str, Any]:
    """Samples/s of `unet.train.fit` for ``amp`` off and bf16, alternated ``repeats`` times (best kept)."""
    torch.set_num_threads(threads)
    best: dict[str, float] = {}
    for _ in range(repeats):
        for amp in ("off", "bf16"):
            model = zoo.create(model_name)
            fit(model, data, steps=2, batch_size=batch_size, amp=amp)  # warm-up: allocator, kernels
            start = time.perf_counter()
            fit(model, data, steps=steps, batch_size=batch_size, amp=amp)
            rate = steps * batch_size / (time.perf_counter() - start)
            best[amp] = max(best.get(amp, 0.0), rate)
    return {
        "model": model_name,
        "batch_size": batch_size,
        "steps": steps,
        "threads": threads,
        "samples_per_s": best,
        "bf16_speedup": best["bf16"] / best["off"],
        "cpu": platform.processor() or platform.machine(),
    }


def compress_bench(
    checkpoint: str, data: str, out: Path, *, threads: int, latency_runs: int
) -> dict[str, Any]:
    """Baseline vs the `REFERENCE_RECIPES`; returns every metrics.json and the ratios."""
    base = measure_baseline(checkpoint, data, threads=threads, latency_runs=latency_runs)
    rows: dict[str, Any] = {}
    for name, recipe in REFERENCE_RECIPES.items():
        start = time.perf_counter()
        result = compress_checkpoint(
            checkpoint,
            data,
            recipe,
            out / name.split(":")[0],
            threads=threads,
            latency_runs=latency_runs,
            baseline_metrics=base,
        )
        rows[name] = {**result, "ratios": ratios(result), "wall_s": time.perf_counter() - start}
    return {"baseline": base, "recipes": rows, "threads": threads}


def compress_table(bench: dict[str, Any]) -> str:
    """One row per model: sizes, latencies, val Dice per region."""
    head = f"{'model':<32}{'MB':>8}{'MB zlib':>9}{'ORT ms':>9}{'torch ms':>10}{'WT':>8}{'TC':>8}{'ET':>8}{'mean':>8}"
    lines = [head]

    def row(name: str, m: dict[str, Any]) -> str:
        lat = m["latency_ms"]
        d = m["val_dice"]
        return (
            f"{name:<32}{m['size_bytes'] / 1e6:>8.3f}{m['size_compressed_bytes'] / 1e6:>9.3f}"
            f"{lat['ort_cpu']['median']:>9.2f}{lat['torch_cpu']['median']:>10.2f}"
            f"{d['WT']:>8.4f}{d['TC']:>8.4f}{d['ET']:>8.4f}{d['mean']:>8.4f}"
        )

    lines.append(row("baseline", bench["baseline"]))
    for name, r in bench["recipes"].items():
        lines.append(row(name, r["compressed"]))
    lines.append("")
    for name, r in bench["recipes"].items():
        q = r["ratios"]
        lines.append(
            f"{name:<32} size {q['compression_factor']:.2f}x (zlib {q['compression_factor_zipped']:.2f}x), "
            f"ORT {q['speedup_ort']:.2f}x, torch {q['speedup_torch']:.2f}x, "
            f"MACs {r['baseline']['macs'] / r['compressed']['macs']:.2f}x, val Dice {q['dice_change']:+.4f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.bench",
        description="Benchmarks: training throughput (fp32 vs bf16), the reference compression recipes, the recovery methods.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train",
        help="training samples/s, fp32 vs --amp bf16",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--data", required=True, help="canonical HDF5 data file")
    t.add_argument("--model", default="unet2d-small", help="zoo model name")
    t.add_argument("--batch-size", type=int, default=16, help="samples per step")
    t.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    t.add_argument(
        "--repeats", type=int, default=2, help="alternating repeats; the best rate is kept"
    )
    add_run_arguments(t, "runs/bench/train.json")
    c = sub.add_parser(
        "compress",
        help="baseline vs reference recipes",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_baseline_arguments(c)
    add_run_arguments(c, "runs/bench/compress", latency_runs=50)
    bench_recovery.add_parser(sub)
    e = sub.add_parser(
        "ceiling",
        help="GFLOP/s of one large 3x3 conv per runtime/precision; zoo models as %% of it",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("--runtimes", default="ort,openvino", help="comma-separated: ort, openvino")
    e.add_argument("--precisions", default="fp32,int8", help="comma-separated: fp32, int8")
    e.add_argument(
        "--models",
        default="unet2d-medium,unet3d-small",
        help="zoo model specs NAME[:FIELD=VALUE,...], e.g. unet3d-small:upsampling=nearest",
    )
    e.add_argument("--channels", type=int, default=64, help="ceiling conv channels in and out")
    e.add_argument("--conv-2d", type=int, default=120, help="ceiling conv 2D side (pixels)")
    e.add_argument("--conv-3d", type=int, default=32, help="ceiling conv 3D side (voxels)")
    e.add_argument("--input-2d", type=int, default=240, help="2D model input side")
    e.add_argument("--input-3d", type=int, default=96, help="3D model input side")
    e.add_argument("--threads", type=int, default=2, help="intra-op threads (torch, ORT, OpenVINO)")
    e.add_argument("--runs", type=int, default=20, help="timed runs per measurement (>= 20)")
    e.add_argument("--out", default="runs/bench/ceiling.json", help="output file or folder")
    _peers_parser(sub)
    bench_macs.add_parser(sub)
    bench_ovformat.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "macs":
        return bench_macs.command(parser, args)
    if args.command == "ovformat":
        return bench_ovformat.command(parser, args)
    if args.command == "peers":
        return _peers_main(parser, args)
    if args.command == "recovery":
        return bench_recovery.command(parser, args)
    if args.command == "ceiling":
        return _ceiling_command(parser, args)
    if args.command == "train":
        result = train_throughput(
            args.model,
            args.data,
            batch_size=args.batch_size,
            steps=args.steps,
            repeats=args.repeats,
            threads=args.threads,
        )
        write_text_atomic(args.out, json.dumps(result, indent=2))
        s = result["samples_per_s"]
        print(
            f"{args.model} batch {args.batch_size}, {args.threads} threads: fp32 {s['off']:.1f} samples/s, "
            f"bf16 {s['bf16']:.1f} samples/s, bf16 speed-up {result['bf16_speedup']:.2f}x"
        )
    else:
        out = Path(args.out)
        result = compress_bench(
            args.checkpoint, args.data, out, threads=args.threads, latency_runs=args.latency_runs
        )
        write_text_atomic(out / "bench.json", json.dumps(result, indent=2))
        print(compress_table(result))
    return 0


def _peers_parser(sub: Any) -> None:
    r = sub.add_parser(
        "peers",
        help="a recipe vs ORT default int8, NNCF int8 on OpenVINO, Torch-Pruning's stock pruner",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_baseline_arguments(r)
    r.add_argument("--recipe", required=True, help="recipe.json of the project's row")
    r.add_argument(
        "--peers", default=",".join(ROWS[1:]), help=f"comma-separated, from {','.join(ROWS[1:])}"
    )
    add_run_arguments(
        r, "runs/bench/peers", latency_runs=50, latency_help="paired rounds per row", seed=True
    )


def _peers_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from compress.measure import MIN_RUNS
    from studies.bench_peers import peers_table, run_peers

    peers = [r.strip() for r in args.peers.split(",") if r.strip()]
    if not peers or (bad := sorted(set(peers) - set(ROWS[1:]))):
        parser.error(f"--peers: unknown row(s) {bad if peers else peers}; choose from {ROWS[1:]}")
    if args.latency_runs < MIN_RUNS:
        parser.error(f"--latency-runs must be >= {MIN_RUNS}, got {args.latency_runs}")
    try:
        recipe = Recipe.from_json(args.recipe)
    except ValueError as exc:
        parser.error(f"--recipe {exc}")
    try:
        load_checkpoint(args.checkpoint)
        CanonicalDataset(args.data)
    except (ValueError, CheckpointError, DataError) as exc:
        parser.error(str(exc))
    out = Path(args.out)
    result = run_peers(
        args.checkpoint, args.data, recipe, out,
        threads=args.threads, latency_runs=args.latency_runs, seed=args.seed, peers=peers,
    )  # fmt: skip
    table = peers_table(result)
    write_text_atomic(out / "peers.json", json.dumps(result, indent=2))
    write_text_atomic(out / "peers.md", table + "\n")
    print(table)
    return 0


def _ceiling_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from compress.openvino import unavailable_reason
    from studies.ceiling import PRECISIONS, RUNTIME_BACKENDS, ceiling, ceiling_table

    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    models = bench_macs.model_specs(parser, args.models)
    for flag, values, known in (
        ("--runtimes", runtimes, tuple(RUNTIME_BACKENDS)),
        ("--precisions", precisions, PRECISIONS),
    ):
        bad = [v for v in values if v not in known]
        if bad or not values:
            parser.error(f"{flag}: unknown {bad or 'empty'}; known: {', '.join(known)}")
    if "openvino" in runtimes and (reason := unavailable_reason(int8="int8" in precisions)):
        parser.error(f"--runtimes openvino: {reason}")
    result = ceiling(
        runtimes=runtimes,
        precisions=precisions,
        models=models,
        channels=args.channels,
        conv_2d=args.conv_2d,
        conv_3d=args.conv_3d,
        input_2d=args.input_2d,
        input_3d=args.input_3d,
        threads=args.threads,
        runs=args.runs,
    )
    return write_and_print(args.out, result, ceiling_table, args.threads)


if __name__ == "__main__":
    raise SystemExit(main())
