"""OpenVINO as a deployment runtime: IR artifacts, explicit precision, NNCF int8, a `Forward`.

    pip install 'unet-compress[openvino]'       # openvino + nncf

    from compress.openvino import compile_ir, onnx_to_ir, ov_forward, quantize_nncf
    onnx_to_ir("runs/model.onnx", "runs/model.xml")                         # fp32 IR (+ .bin)
    quantize_nncf("runs/model.onnx", "runs/model-int8.xml", calibration)    # NNCF PTQ int8 IR
    forward = ov_forward(compile_ir("runs/model.xml", "fp32", threads=2))   # a unet Forward

The artifact is OpenVINO's IR (``model.xml`` + ``model.bin`` beside it), read from the
project's own ONNX export (`compress.export.export_onnx`). Every compile states its settings
(`compile_config`): ``INFERENCE_PRECISION_HINT`` (``f32`` or ``bf16``), ``INFERENCE_NUM_THREADS``,
``NUM_STREAMS`` 1 and ``PERFORMANCE_HINT`` LATENCY, for batch-1 latency. The precision hint is
never left to OpenVINO: on a CPU with bf16 units its default is bf16, which moves logits by
~1e-3 (FACTS.md). A recipe's precision maps to an IR and a hint (`PRECISIONS`):

* ``fp32``: fp32 weights, f32 inference;
* ``bf16``: the fp32 IR compiled with the bf16 hint (a precision of its own, with its own Dice);
* ``fp16``: weights stored as fp16 in the IR (half the size), f32 inference; this machine kind
  has no fp16 arithmetic, so fp16 is a storage format here, as it is for ONNX Runtime's CPU;
* ``int8``: NNCF post-training quantization (``nncf.quantize``, min-max ranges on
  training-split inputs, mixed preset) of the fp32 OpenVINO model; non-quantized operators in f32.

openvino and nncf are optional: importing this module works without them, and every function
that needs them raises `OpenVINOUnavailable` with the install command.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from unet.inference import Forward

# recipe precision -> (weights stored as fp16 in the IR, INFERENCE_PRECISION_HINT)
PRECISIONS: dict[str, tuple[bool, str]] = {
    "fp32": (False, "f32"),
    "fp16": (True, "f32"),
    "bf16": (False, "bf16"),
    "int8": (False, "f32"),
}
DEVICE = "CPU"
INSTALL_HINT = "pip install 'unet-compress[openvino]'"


class OpenVINOUnavailable(RuntimeError):
    """openvino (or nncf, for int8) is not installed in this environment."""


def unavailable_reason(*, int8: bool = False) -> str | None:
    """Why OpenVINO (and NNCF when ``int8``) cannot run here, or None when it can."""
    needed = ("openvino", "nncf") if int8 else ("openvino",)
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed ({INSTALL_HINT})"
    return None


def _openvino() -> ModuleType:
    reason = unavailable_reason()
    if reason:
        raise OpenVINOUnavailable(reason)
    import openvino

    return openvino


def compile_config(precision: str = "fp32", threads: int | None = None) -> dict[str, str]:
    """The CPU plugin settings for a recipe ``precision``: hint, threads, 1 stream, LATENCY."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"openvino: precision must be one of {tuple(PRECISIONS)}, got {precision!r}"
        )
    config = {
        "INFERENCE_PRECISION_HINT": PRECISIONS[precision][1],
        "NUM_STREAMS": "1",
        "PERFORMANCE_HINT": "LATENCY",
    }
    if threads is not None:
        if threads < 1:
            raise ValueError(f"openvino: threads must be >= 1, got {threads}")
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def bin_path(xml: str | os.PathLike[str]) -> Path:
    """The weights file of an IR: ``model.xml`` -> ``model.bin``."""
    return Path(xml).with_suffix(".bin")


@contextlib.contextmanager
def _atomic_ir(xml: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary ``.xml`` path; move the IR pair onto ``xml`` (bin first) on success."""
    target = Path(xml)
    if target.suffix != ".xml":
        raise ValueError(f"{target}: an OpenVINO IR path must end in .xml")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", dir=target.parent))
    try:
        yield tmp / target.name
        os.replace(bin_path(tmp / target.name), bin_path(target))
        os.replace(tmp / target.name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_onnx(onnx_path: str | os.PathLike[str]) -> Any:
    ov = _openvino()
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    return ov.Core().read_model(str(onnx_path))


def onnx_to_ir(
    onnx_path: str | os.PathLike[str], xml: str | os.PathLike[str], precision: str = "fp32"
) -> Path:
    """Convert the ONNX at ``onnx_path`` to an IR at ``xml`` for ``precision`` (fp32/fp16/bf16).

    Dynamic batch and spatial axes are kept. fp16 stores the weights as fp16; fp32 and bf16 keep
    fp32 weights (bf16 is chosen when compiling). int8 IRs come from `quantize_nncf`.
    """
    if precision not in PRECISIONS or precision == "int8":
        raise ValueError(f"onnx_to_ir: precision must be fp32, fp16 or bf16, got {precision!r}")
    ov = _openvino()
    model = _read_onnx(onnx_path)
    with _atomic_ir(xml) as tmp:
        ov.save_model(model, str(tmp), compress_to_fp16=PRECISIONS[precision][0])
    return Path(xml)


def quantize_nncf(
    onnx_path: str | os.PathLike[str],
    xml: str | os.PathLike[str],
    calibration: np.ndarray,
    *,
    preset: str = "mixed",
) -> Path:
    """NNCF post-training int8 quantization of the ONNX model, written as an IR at ``xml``.

    ``calibration`` is ``(n, C, *spatial)`` float32 from the training split (one sample per
    inference, all ``n`` used); ``preset`` ``mixed`` (symmetric weights, asymmetric
    activations: ReLU outputs keep all 256 levels) or ``performance`` (symmetric both).
    """
    reason = unavailable_reason(int8=True)
    if reason:
        raise OpenVINOUnavailable(reason)
    import nncf

    presets = {
        "mixed": nncf.QuantizationPreset.MIXED,
        "performance": nncf.QuantizationPreset.PERFORMANCE,
    }
    if preset not in presets:
        raise ValueError(f"quantize_nncf: preset must be one of {tuple(presets)}, got {preset!r}")
    samples = np.ascontiguousarray(calibration, dtype=np.float32)
    if samples.ndim not in (4, 5) or len(samples) < 1:
        raise ValueError(
            f"calibration: expected (n, C, *spatial) with n >= 1, got shape {samples.shape}"
        )
    ov = _openvino()
    model = _read_onnx(onnx_path)
    nncf.set_log_level(logging.ERROR)
    quantized = nncf.quantize(
        model,
        nncf.Dataset([s[None] for s in samples]),
        preset=presets[preset],
        subset_size=len(samples),
    )
    with _atomic_ir(xml) as tmp:
        ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    return Path(xml)


def compile_ir(
    path: str | os.PathLike[str], precision: str = "fp32", threads: int | None = None
) -> Any:
    """An OpenVINO ``CompiledModel`` on the CPU for an IR (``.xml``) or ONNX file.

    ``precision`` is the recipe's (fp32, fp16, int8 compile with the f32 hint, bf16 with bf16);
    ``threads`` pins ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default).
    """
    ov = _openvino()
    config = compile_config(precision, threads)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such OpenVINO model file")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a loadable OpenVINO / ONNX model: {exc}") from exc
    return core.compile_model(model, DEVICE, config)


def ov_forward(compiled: Any) -> Forward:
    """Wrap a compiled model as a `Forward`: float32 (N, C, *spatial) -> float32 logits."""
    request = compiled.create_infer_request()

    def forward(batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    return forward


def effective_precision(compiled: Any) -> str:
    """The inference precision OpenVINO really uses for a compiled model (``f32``, ``bf16``):
    a bf16 hint on a CPU without bf16 units runs in f32, and metrics say so."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type
    return str(value.get_type_name() if hasattr(value, "get_type_name") else value)


def ir_files(xml: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(``model.xml``, ``model.bin``) of an IR; `FileNotFoundError` if either is missing."""
    pair = (Path(xml), bin_path(xml))
    for p in pair:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file (an IR is a .xml and a .bin)")
    return pair
