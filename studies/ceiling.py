"""This machine's compute ceiling per runtime, and how close the zoo models get to it.

    python -m studies.bench ceiling                               # 2 threads, ORT and OpenVINO
    python -m studies.bench ceiling --models unet2d-medium,unet3d-small --precisions fp32,int8
    python -m studies.bench ceiling --runtimes ort --models unet3d-small,unet3d-small:upsampling=nearest

Models are zoo specs (`unet.zoo.parse_spec`): ``unet3d-small:upsampling=nearest`` is the 3D
model with its transposed convolutions replaced by nearest resize (the decoder's convolution
then mixes the channels), which ONNX Runtime's int8 path can quantize end to end.

The ceiling is the rate of one large 3x3 convolution (``--channels`` in and out, "same"
padding) at batch 1: 2D on ``--conv-2d`` pixels square, 3D on ``--conv-3d`` voxels cubed, per
runtime (ONNX Runtime CPU, OpenVINO CPU) and precision (fp32; int8 = ORT static QDQ / NNCF),
in GFLOP/s (int8: GOP/s) with FLOPs = 2 x MACs. A single wide convolution is what the CPU's
convolution kernels do best, so it is the honest upper bound for a U-Net made of them (a
matmul is not: MKL's reached only ~40% of it on this AMD CPU, FACTS.md). Each zoo model is
then timed at its typical input (2D: 1x4x240x240; 3D: a ``--input-3d`` cube) with random
weights, and its achieved rate is reported as a percentage of the ceiling of the same
runtime, precision and dimensionality.

Medians of ``--runs`` timed runs after warm-up, ``--threads`` threads; the machine and the
library versions are recorded with the numbers (`studies.machine`). Ratios from one run are
what to compare; absolute rates move with the machine and its load.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.export import export_onnx
from compress.quantize import quantize_int8
from compress.runners import latency_call
from compress.timing import latency_stats, time_calls
from unet import zoo
from unet.models import UNet

RUNTIME_BACKENDS = {"ort": "ort_cpu", "openvino": "ov_cpu"}
PRECISIONS = ("fp32", "int8")
CALIBRATION_SAMPLES = 4


def conv_macs(channels: int, spatial: Sequence[int], kernel: int = 3) -> int:
    """MACs of one ``channels`` -> ``channels`` convolution with a ``kernel``-wide cube, "same"
    padding, over ``spatial``."""
    return int(channels * channels * kernel ** len(spatial) * np.prod(spatial))


def _artifact(
    module: nn.Module, shape: tuple[int, ...], runtime: str, precision: str, folder: Path
) -> Path:
    """The runtime's artifact of ``module`` at a fixed ``shape`` (fp32 or int8)."""
    fp32 = export_onnx(module.eval(), folder / "fp32.onnx", example_shape=shape, dynamic=False)
    if precision == "fp32":
        return fp32
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((CALIBRATION_SAMPLES, *shape[1:])).astype(np.float32)
    if runtime == "openvino":
        from compress.openvino import quantize_nncf

        return quantize_nncf(fp32, folder / "int8.xml", calibration)
    return quantize_int8(fp32, folder / "int8.onnx", calibration)


def rate_gflops(
    module: nn.Module,
    shape: tuple[int, ...],
    macs: int,
    runtime: str,
    precision: str,
    *,
    threads: int,
    runs: int,
    warmup: int = 3,
) -> dict[str, float]:
    """Median latency (ms) and rate (GFLOP/s, 2 x MACs) of ``module`` at ``shape``."""
    with tempfile.TemporaryDirectory(prefix="unet-compress-ceiling-") as tmp:
        path = _artifact(module, shape, runtime, precision, Path(tmp))
        call = latency_call(
            RUNTIME_BACKENDS[runtime], path, shape, threads=threads, precision=precision
        )
        stats = latency_stats(
            time_calls(call, runs=runs, warmup=warmup), threads=threads, warmup=warmup
        )
    return {"median_ms": stats.median_ms, "gflops": 2 * macs / (stats.median_ms / 1e3) / 1e9}


def ceiling(
    *,
    runtimes: Sequence[str] = ("ort", "openvino"),
    precisions: Sequence[str] = PRECISIONS,
    models: Sequence[str] = ("unet2d-medium", "unet3d-small"),
    channels: int = 64,
    conv_2d: int = 120,
    conv_3d: int = 32,
    input_2d: int = 240,
    input_3d: int = 96,
    threads: int = 2,
    runs: int = 20,
) -> dict[str, Any]:
    """The ceiling per (runtime, precision, dims) and each model's rate as % of it."""
    torch.manual_seed(0)
    # the ceilings the models need (both without models)
    dims_needed = sorted({zoo.config_from_spec(m).spatial_dims for m in models}) or [2, 3]
    make = {2: nn.Conv2d, 3: nn.Conv3d}
    convs = {d: make[d](channels, channels, 3, padding=1) for d in dims_needed}
    conv_spatial = {2: (conv_2d, conv_2d), 3: (conv_3d,) * 3}
    rows: list[dict[str, Any]] = []
    ceilings: dict[tuple[str, str, int], float] = {}
    for runtime in runtimes:
        for precision in precisions:
            for dims, conv in convs.items():
                spatial = conv_spatial[dims]
                r = rate_gflops(
                    conv,
                    (1, channels, *spatial),
                    conv_macs(channels, spatial),
                    runtime,
                    precision,
                    threads=threads,
                    runs=runs,
                )
                ceilings[(runtime, precision, dims)] = r["gflops"]
                rows.append(
                    {"what": f"conv3x3 {channels}ch {'x'.join(map(str, spatial))}",
                     "runtime": runtime, "precision": precision, "dims": dims, **r,
                     "percent_of_ceiling": 100.0}
                )  # fmt: skip
            for name in models:
                model = UNet(zoo.config_from_spec(name))
                dims = model.config.spatial_dims
                spatial = (input_2d,) * 2 if dims == 2 else (input_3d,) * 3
                r = rate_gflops(
                    model,
                    (1, model.config.in_channels, *spatial),
                    zoo.macs(model.config, spatial),
                    runtime,
                    precision,
                    threads=threads,
                    runs=runs,
                )
                rows.append(
                    {"what": f"{name} {'x'.join(map(str, spatial))}", "runtime": runtime,
                     "precision": precision, "dims": dims, **r,
                     "percent_of_ceiling": 100.0 * r["gflops"] / ceilings[(runtime, precision, dims)]}
                )  # fmt: skip
    return {"threads": threads, "runs": runs, "rows": rows}


def ceiling_table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table (GFLOP/s; GOP/s for int8)."""
    lines = [
        "| what | runtime | precision | median ms | GFLOP/s | % of ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['what']} | {r['runtime']} | {r['precision']} | {r['median_ms']:.2f} "
            f"| {r['gflops']:.1f} | {r['percent_of_ceiling']:.0f} |"
        )
    return "\n".join(lines)
