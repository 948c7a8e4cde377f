"""The deployable artifact of a recipe, per runtime: which file, how it runs, where it is timed.

    from compress.deploy import artifact_forward, latency_backends, write_openvino
    write_openvino("int8", "fp32.onnx", "out/model.xml", calibration=lambda: samples)  # NNCF IR
    forward = artifact_forward("openvino", "int8", "out/model.xml", model, threads=2)
    latency_backends("openvino", "cpu")        # ("ov_cpu", "torch_cpu")

| runtime | artifact | fp32 | fp16 | bf16 | int8 |
|---|---|---|---|---|---|
| ``ort`` | ``model.onnx`` | fp32 ONNX | fp16 weights (ORT CPU computes fp32) | the torch checkpoint (ORT's CPU has no bf16 convs) | ORT static QDQ |
| ``openvino`` | ``model.onnx`` read by OpenVINO; int8: IR ``model.xml`` + ``.bin`` | f32 hint | fp16 weights, f32 hint | fp32 ONNX, bf16 hint | NNCF PTQ IR, f32 hint |
| ``torch`` | ``checkpoint.pt`` | fp32 module | fp16 module | bf16 module | refused |

The ``ort`` row is what `compress.pipeline` always did; the others follow `compress.openvino`
and `compress.cast`. OpenVINO's float artifacts are ONNX because an IR stores its graph as
~50 KB of XML whatever the weights (int8: ~110 KB); its int8 artifact stays an IR because
OpenVINO runs NNCF's QDQ ONNX of the same quantization less accurately (3.8 points of val Dice
on the Zen 5 session's baseline, 0.5 on the AVX2 one; README, "Twelfth" and "Thirteenth
measurement session"; `studies.bench_ovformat` measures both). The
``model.xml`` float artifacts of older studies still load and run (`artifact_forward`).
Latency is timed on the artifact's own runtime (``ort_cpu``, ``ov_cpu``, ``torch_cuda`` on a
GPU...) and on eager PyTorch on the CPU for reference.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from compress import openvino
from unet.inference import Forward
from unet.io import atomic_path

ARTIFACTS = {"ort": "model.onnx", "openvino": "model.onnx", "torch": "checkpoint.pt"}
OPENVINO_INT8 = "model.xml"  # NNCF's IR: OpenVINO runs it more accurately than the QDQ ONNX
RUNTIME_BACKENDS = {"ort": "ort_cpu", "openvino": "ov_cpu", "torch": "torch_cpu"}


def artifact_name(runtime: str, precision: str) -> str:
    """The file name of the deployable artifact (``ort`` + ``bf16`` deploys the checkpoint,
    ``openvino`` + ``int8`` an IR)."""
    if runtime == "ort" and precision == "bf16":
        return ARTIFACTS["torch"]
    if runtime == "openvino" and precision == "int8":
        return OPENVINO_INT8
    return ARTIFACTS[runtime]


def artifact_files(path: str | os.PathLike[str]) -> list[Path]:
    """The file(s) that make up an artifact: an IR is its ``.xml`` and its ``.bin``."""
    p = Path(path)
    return list(openvino.ir_files(p)) if p.suffix == ".xml" else [p]


def latency_backends(runtime: str, device: str = "cpu") -> tuple[str, ...]:
    """Where a runtime's artifact is timed: its CPU backend, eager torch on the CPU, and the
    CUDA backends when ``device`` is a CUDA device (``ort_cuda`` only when asked for)."""
    backends = (RUNTIME_BACKENDS[runtime],) + (("torch_cpu",) if runtime != "torch" else ())
    return backends + (("torch_cuda",) if device.startswith("cuda") else ())


def write_float_onnx(
    precision: str, fp32_onnx: str | os.PathLike[str], path: str | os.PathLike[str]
) -> Path:
    """The fp32 / bf16 (a copy of ``fp32_onnx``) or fp16 (weights halved) ONNX at ``path``,
    written atomically: the float artifacts of both ONNX runtimes."""
    if precision == "fp16":
        from compress.cast import onnx_to_fp16

        return onnx_to_fp16(fp32_onnx, path)
    if precision not in ("fp32", "bf16"):
        raise ValueError(
            f"write_float_onnx: precision must be fp32, fp16 or bf16, got {precision!r}"
        )
    with atomic_path(path) as tmp:
        shutil.copyfile(fp32_onnx, tmp)
    return Path(path)


def write_openvino(
    precision: str,
    fp32_onnx: str | os.PathLike[str],
    path: str | os.PathLike[str],
    calibration: Callable[[], np.ndarray],
    *,
    max_drop: float = 0.0,
    validation: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """The OpenVINO artifact of ``precision`` at ``path``: ONNX (``.onnx``) or an IR (``.xml``).
    int8 is NNCF's, calibrated on ``calibration()`` (training-split inputs, drawn only for int8);
    with ``max_drop > 0``, NNCF's accuracy control on ``validation()`` (val inputs and targets)."""
    if precision == "int8":
        checked = validation() if max_drop > 0 and validation is not None else None
        return openvino.quantize_nncf(
            fp32_onnx, path, calibration(), validation=checked, max_drop=max_drop
        )
    if Path(path).suffix == ".xml":
        return openvino.onnx_to_ir(fp32_onnx, path, precision)
    return write_float_onnx(precision, fp32_onnx, path)


def artifact_forward(
    runtime: str,
    precision: str,
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    threads: int | None = None,
    device: str = "cpu",
) -> Forward:
    """A `unet.inference.Forward` running a recipe's artifact as it is deployed.

    ``model`` is the (pruned, fine-tuned) module in its deployed dtype, used by the torch
    artifacts (``torch`` runtime; ``ort`` + ``bf16``); ``path`` the artifact file.
    """
    from compress.cast import cast_forward

    name = Path(path).name
    if name.endswith(".xml") or (runtime == "openvino" and name.endswith(".onnx")):
        return openvino.ov_forward(openvino.compile_ir(path, precision, threads=threads))
    if name.endswith(".onnx"):
        from compress.export import ort_forward, ort_session

        provider = "cuda" if device.startswith("cuda") else "cpu"
        return ort_forward(ort_session(path, threads, provider))
    return cast_forward(model.to(device))
