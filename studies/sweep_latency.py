"""The latency target of a sweep: its backend, its runtime's precisions, the paired objective.

    python -m studies.prune_sweep --latency-backend ov_cpu     # OpenVINO trials (NNCF int8 IR)
    python -m studies.prune_sweep --latency-backend ort_cpu --round-to 16

* ``--latency-backend`` ``ort_cpu | ov_cpu | torch_cuda | ort_cuda`` (`compress.runners`);
  default: the fastest CPU runtime installed (``ov_cpu`` when openvino imports, else
  ``ort_cpu``). Each trial's artifact is built for the backend's runtime, so the objective is
  the deployed latency. A backend that cannot run here stops the command with one ``error:``
  line before any work. The CUDA backends are wired and their error paths tested, but this
  project's machines have no GPU: they were not run on one.
* ``--round-to`` ``auto`` (default): this CPU's SIMD width (`compress.simd.default_round_to`);
  the search picks between unrounded widths and that multiple.
* The objective (`objective_values`): the baseline's median on the backend, measured once when
  the study is prepared, divided by the trial's paired speed-up against the baseline's call
  that the worker keeps open (`worker_references`, `compress.timing.paired_latency`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from studies.pareto import dice_objective, latency_objective_ms

# the precisions searched per deployment runtime (`compress.deploy`): OpenVINO runs bf16 itself
# (a precision of its own, on CPUs with bf16 units); PyTorch has no int8 path here
RUNTIME_PRECISIONS = {
    "ort": ("fp32", "fp16", "int8"),  # ORT's CPU provider has no bf16 convolutions
    "openvino": ("fp32", "fp16", "bf16", "int8"),
    "torch": ("fp32", "fp16", "bf16"),
}


def searched_precisions(backend: str, flags: frozenset[str] | None = None) -> tuple[str, ...]:
    """The precisions the sweep searches for ``backend``: its runtime's (`RUNTIME_PRECISIONS`),
    on a CPU without fp16, and without bf16 where the CPU has no bf16 units (``flags``: the CPU
    feature flags, default `unet.amp.cpu_flags`; native bf16 = `unet.amp.BF16_CPU_FLAGS`).

    CPUs without native fp16 arithmetic compute fp16 models in fp32 after converting (ORT CPU:
    0.78-0.90x of fp32's speed in the default run), so fp16 there only halves the file, which
    int8 does better; the trials it took were lost to the search. OpenVINO given a bf16 hint on a
    CPU without bf16 units runs f32 (`compress.openvino` records it): a bf16 trial there is the
    fp32 trial again.
    """
    from compress.runners import RUNTIMES
    from unet.amp import BF16_CPU_FLAGS, cpu_flags

    precisions = RUNTIME_PRECISIONS[RUNTIMES[backend]]
    if backend.endswith("_cpu"):
        precisions = tuple(p for p in precisions if p != "fp16")
        flags = cpu_flags() if flags is None else flags
        if not flags.intersection(BF16_CPU_FLAGS):
            precisions = tuple(p for p in precisions if p != "bf16")
    return precisions


def objective_values(
    metrics: dict[str, Any],
    backend: str = "ort_cpu",
    reference_ms: float | None = None,
    *,
    paired: dict[str, Any] | None = None,
    reference_dice: float = 0.0,
) -> tuple[float, float, float]:
    """(Dice objective, deployable size in bytes, latency in ms on ``backend``) of an M dict.

    The Dice objective is `studies.pareto.dice_objective`: the lower end of the ``paired`` val
    comparison's 95% CI of the mean-Dice change (else the point change vs ``reference_dice``).
    The latency is the baseline's median ``reference_ms`` (measured once per study) divided by
    the trial's paired speed-up on that backend (`studies.pareto.latency_objective_ms`).
    """
    return (
        dice_objective(metrics, paired, reference_dice),
        float(metrics["size_bytes"]),
        latency_objective_ms(metrics, backend, reference_ms),
    )


def worker_references(
    baseline: str, data: str, backends: Sequence[str], threads: int
) -> dict[str, Callable[[], object]]:
    """The ``baseline`` checkpoint's fp32 timed calls on ``backends``, at the sweep's input size
    on ``data``: opened once per worker and kept for the whole study
    (`compress.runners.reference_calls`)."""
    from compress.pipeline import measure_spatial
    from compress.runners import reference_calls
    from unet.checkpoint import load_checkpoint
    from unet.data.canonical import CanonicalDataset

    model, meta = load_checkpoint(baseline)
    spatial = measure_spatial(model, CanonicalDataset(data), meta)
    shape = (1, model.config.in_channels, *spatial)
    return reference_calls(model, shape, backends, threads=threads)


def resolve_latency_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--latency-backend`` (default: the fastest CPU runtime installed; one ``error:`` line
    when it cannot run here) and ``--round-to`` (``auto``: `compress.simd.default_round_to`)."""
    from compress import openvino
    from compress.runners import fastest_cpu_backend, unavailable_reason
    from compress.simd import default_round_to

    if args.latency_backend is None:
        args.latency_backend = fastest_cpu_backend()
    backend = args.latency_backend
    # ov_cpu trials may be int8: NNCF is needed as well as openvino
    reason = openvino.unavailable_reason(int8=True) if backend == "ov_cpu" else None
    reason = reason or unavailable_reason(backend)
    if reason:
        parser.error(f"--latency-backend {backend}: {reason}")
    if args.round_to == "auto":
        args.round_to = default_round_to()
    else:
        try:
            args.round_to = int(args.round_to)
        except ValueError:
            parser.error(f"--round-to must be an integer >= 1 or 'auto', got {args.round_to!r}")
        if args.round_to < 1:
            parser.error(f"--round-to must be an integer >= 1 or 'auto', got {args.round_to}")
