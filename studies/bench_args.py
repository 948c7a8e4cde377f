"""Command-line arguments shared by the subcommands of `studies.bench`.

add_baseline_arguments(parser)                       # --checkpoint, --data
add_run_arguments(parser, "runs/bench/x", latency_runs=50, seed=True)
write_and_print(args.out, result, table_of, args.threads)   # JSON + Markdown table + machine
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def add_baseline_arguments(p: argparse.ArgumentParser) -> None:
    """``--checkpoint`` (the baseline) and ``--data`` (required)."""
    p.add_argument("--checkpoint", required=True, help="the baseline checkpoint (.pt)")
    p.add_argument("--data", required=True, help="canonical HDF5 data file")


def add_run_arguments(
    p: argparse.ArgumentParser,
    out: str,
    *,
    latency_runs: int | None = None,
    latency_help: str = "timed runs per backend (>= 20)",
    seed: bool = False,
) -> None:
    """``--threads`` (default 2), ``--latency-runs`` when ``latency_runs`` is given, ``--seed``
    (default 0) when ``seed``, and ``--out`` (default ``out``)."""
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (torch, ORT, OpenVINO)")
    if latency_runs is not None:
        p.add_argument("--latency-runs", type=int, default=latency_runs, help=latency_help)
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--out", default=out, help="output file or folder")


def write_and_print(
    out: str, result: dict[str, Any], table: Callable[[dict[str, Any]], str], threads: int
) -> int:
    """Record the machine (`studies.machine.machine_info`) in ``result``, write it as JSON to
    ``out`` (atomically), print ``table(result)`` and the machine as Markdown; returns 0."""
    from studies.machine import machine_info, machine_markdown
    from unet.io import write_text_atomic

    result["machine"] = machine_info(threads)
    write_text_atomic(out, json.dumps(result, indent=2))
    print(table(result))
    print(machine_markdown(result["machine"]))
    return 0
