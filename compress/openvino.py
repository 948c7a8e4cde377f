"""OpenVINO as a deployment runtime: explicit precision, NNCF int8, a `Forward`.

    pip install 'unet-compress[openvino]'       # openvino + nncf

    from compress.openvino import compile_ir, onnx_to_ir, ov_forward, quantize_nncf
    quantize_nncf("runs/model.onnx", "runs/model-int8.xml", calibration)    # NNCF int8 IR
    quantize_nncf("runs/model.onnx", "runs/model-int8.onnx", calibration)   # as QDQ ONNX (see below)
    onnx_to_ir("runs/model.onnx", "runs/model.xml")                         # fp32 IR (+ .bin)
    forward = ov_forward(compile_ir("runs/model.onnx", "fp32", threads=2))  # a unet Forward

OpenVINO reads the project's ONNX export (`compress.export.export_onnx`) directly, and its own
IR (``model.xml`` + ``model.bin`` beside it). The float artifacts of ``--runtime openvino`` are
ONNX (an IR stores its graph as ~50 KB of XML whatever the weights, int8 ~110 KB); the int8 one
is NNCF's IR, because OpenVINO runs NNCF's QDQ ONNX of the same quantization as fast but less
accurately (`compress.deploy`; README, "Twelfth measurement session"). Every compile states
its settings (`compile_config`): ``INFERENCE_PRECISION_HINT`` (``f32`` or ``bf16``),
``INFERENCE_NUM_THREADS``, ``NUM_STREAMS`` 1 and ``PERFORMANCE_HINT`` LATENCY, for batch-1
latency. The precision hint is never left to OpenVINO: on a CPU with bf16 units its default is
bf16, which moves logits by ~1e-3 (FACTS.md). A recipe's precision maps to a model file and a
hint (`PRECISIONS`):

* ``fp32``: fp32 weights, f32 inference;
* ``bf16``: the fp32 model compiled with the bf16 hint (a precision of its own, with its own Dice);
* ``fp16``: weights stored as fp16 (half the size), f32 inference; this machine kind has no fp16
  arithmetic, so fp16 is a storage format here, as it is for ONNX Runtime's CPU;
* ``int8``: NNCF post-training quantization (``nncf.quantize``, min-max ranges on
  training-split inputs, mixed preset; NNCF's ONNX backend for an ``.onnx`` output, its OpenVINO
  backend for an ``.xml`` one); non-quantized operators in f32. With a ``max_drop`` (recipe
  ``int8_max_drop``) NNCF's accuracy control reverts operators to f32 until the Dice on val
  samples, computed in OpenVINO, is within it.

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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from compress.sigstack import keep_signal_stack
from unet.inference import Forward
from unet.io import atomic_path
from unet.metrics import dice

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
    """The ONNX file as an OpenVINO model through ``ov.convert_model`` (the model converter's
    pipeline), not ``Core.read_model``: its transformations fold the shape arithmetic the ONNX
    frontend emits per bias (ShapeOf -> Concat -> Reshape, ~160 of the ~225 operators of
    ``unet2d-small``), so an IR's XML is a third to a half smaller (the default baseline's:
    fp32 51 KB instead of 108 KB, int8 112 KB instead of 170 KB) and runs as fast (README,
    "Thirteenth measurement session")."""
    ov = _openvino()
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    return ov.convert_model(str(onnx_path))


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
    out: str | os.PathLike[str],
    calibration: np.ndarray,
    *,
    preset: str = "mixed",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    max_drop: float = 0.0,
) -> Path:
    """NNCF post-training int8 quantization of the ONNX model, written to ``out``.

    ``out`` ending in ``.xml``: NNCF's OpenVINO backend, an IR (``.xml`` + ``.bin``; the
    deployed int8 artifact); ``.onnx``: NNCF's ONNX backend, a QDQ ONNX (int8 weights, ~20 %
    smaller) that ONNX Runtime runs as accurately as the IR but OpenVINO 3.8 points of val Dice
    worse on the default baseline (README, "Twelfth measurement session"). ``calibration`` is
    ``(n, C, *spatial)`` float32 from the training split (one sample per inference, all ``n``
    used); ``preset`` ``mixed`` (symmetric weights, asymmetric activations: ReLU outputs keep
    all 256 levels) or ``performance`` (symmetric both).

    ``max_drop > 0`` runs NNCF's accuracy-control variant (``nncf.quantize_with_accuracy_control``):
    operators are reverted to f32, most harmful first, until the `validation_dice` in OpenVINO
    of the int8 model on ``validation`` (inputs and region targets, e.g. `unet.data.sample_pairs`
    of the val split) is at most ``max_drop`` (absolute, Dice units) below the fp32 model's.
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
    if Path(out).suffix not in (".onnx", ".xml"):
        raise ValueError(f"{out}: an NNCF int8 model path must end in .onnx or .xml")
    samples = _batch("calibration", calibration)
    if not 0.0 <= max_drop < 1.0:
        raise ValueError(f"quantize_nncf: max_drop must be in [0, 1), got {max_drop}")
    if max_drop > 0 and validation is None:
        raise ValueError("quantize_nncf: max_drop > 0 needs validation (inputs, targets)")
    ov = _openvino()
    nncf.set_log_level(logging.ERROR)
    if Path(out).suffix == ".onnx":
        return _quantize_onnx(nncf, onnx_path, out, samples, presets[preset], validation, max_drop)
    model = _read_onnx(onnx_path)
    with keep_signal_stack():  # NNCF compiles on Cores of its own (compress.sigstack)
        quantized = _nncf_quantize(
            nncf, model, samples, lambda s: s[None], presets[preset], validation, max_drop,
            validation_dice,
        )  # fmt: skip
    with _atomic_ir(out) as tmp:
        ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    return Path(out)


def _quantize_onnx(
    nncf: ModuleType,
    onnx_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    samples: np.ndarray,
    preset: Any,
    validation: tuple[np.ndarray, np.ndarray] | None,
    max_drop: float,
) -> Path:
    """`quantize_nncf` with NNCF's ONNX backend: a QDQ ``.onnx`` written atomically."""
    import onnx

    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    model = onnx.load(str(onnx_path))
    name = model.graph.input[0].name

    def validate(proto: Any, items: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
        return validation_dice(compile_ir(proto), items)  # the Dice in OpenVINO, not ORT

    with keep_signal_stack():  # validation compiles in OpenVINO (compress.sigstack)
        quantized = _nncf_quantize(
            nncf, model, samples, lambda s: {name: s[None]}, preset, validation, max_drop,
            validate,
        )  # fmt: skip
    with atomic_path(out) as tmp:
        onnx.save(quantized, str(tmp))
    return Path(out)


def _nncf_quantize(
    nncf: ModuleType,
    model: Any,
    samples: np.ndarray,
    feed: Callable[[np.ndarray], Any],
    preset: Any,
    validation: tuple[np.ndarray, np.ndarray] | None,
    max_drop: float,
    validation_fn: Callable[[Any, Iterable[tuple[np.ndarray, np.ndarray]]], float],
) -> Any:
    """`quantize_nncf`'s call into NNCF: plain PTQ on ``samples`` (``feed`` turns one into the
    backend's input), or accuracy control when ``max_drop > 0`` (``validation_fn`` gets the
    backend's model: a compiled OpenVINO model or an ONNX proto)."""
    calibration_set, subset_size = nncf.Dataset(list(samples), feed), len(samples)
    if max_drop > 0:
        assert validation is not None
        images = _batch("validation inputs", validation[0])
        targets = np.asarray(validation[1])
        if targets.shape[0] != images.shape[0] or targets.shape[2:] != images.shape[2:]:
            raise ValueError(
                f"validation: targets {targets.shape} do not match inputs {images.shape}"
            )
        return nncf.quantize_with_accuracy_control(
            model,
            calibration_set,
            nncf.Dataset(list(zip(images[:, None], targets[:, None], strict=True))),
            validation_fn,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            subset_size=subset_size,
        )
    return nncf.quantize(model, calibration_set, preset=preset, subset_size=subset_size)


def _batch(name: str, samples: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(samples, dtype=np.float32)
    if out.ndim not in (4, 5) or len(out) < 1:
        raise ValueError(f"{name}: expected (n, C, *spatial) with n >= 1, got shape {out.shape}")
    return out


def validation_dice(compiled: Any, items: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean Dice over samples and regions at logit 0 (probability 0.5) of a compiled model on
    ``(input (1, C, *spatial), target (1, 3, *spatial))`` items: the metric NNCF's accuracy
    control keeps within ``max_drop``."""
    scores = []
    for image, target in items:
        logits = np.asarray(compiled(image)[0])
        scores.extend(dice(logits[0, r] > 0, target[0, r] > 0.5) for r in range(target.shape[1]))
    return float(np.mean(scores))


def compile_ir(path: Any, precision: str = "fp32", threads: int | None = None) -> Any:
    """An OpenVINO ``CompiledModel`` on the CPU for an IR (``.xml``) or ONNX file, or an
    ``onnx.ModelProto`` in memory.

    ``precision`` is the recipe's (fp32, fp16, int8 compile with the f32 hint, bf16 with bf16);
    ``threads`` pins ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default).
    """
    ov = _openvino()
    config = compile_config(precision, threads)
    core = ov.Core()
    if hasattr(path, "SerializeToString"):  # an ONNX proto (NNCF's accuracy control)
        model = core.read_model(path.SerializeToString(), b"")
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such OpenVINO model file")
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a loadable OpenVINO / ONNX model: {exc}") from exc
    with keep_signal_stack():  # the CPU plugin's own stack would dangle (compress.sigstack)
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
