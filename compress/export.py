"""ONNX export with dynamic batch and spatial axes, a parity check, and ONNX Runtime sessions.

    from compress.export import check_parity, export_onnx, ort_forward, ort_session
    path = export_onnx(model, "runs/model.onnx")             # one file, checked by onnx.checker
    check_parity(model, path, np.random.randn(1, 4, 64, 64).astype("float32"))  # raises if > 1e-4
    forward = ort_forward(ort_session(path, threads=2))      # a `unet.inference.Forward`

The exporter is a deliberate choice (``exporter="legacy"`` by default). Measured on this machine
(2 cores, torch 2.13, onnxruntime 1.31), export + parity of ``unet2d-small`` / ``cs231n-2d``:

* time: the legacy TorchScript exporter took 0.1-1 s per model, the dynamo exporter 3-17 s
  (10-30x slower; the spread is machine load); a sweep exports ~30 models, so dynamo would
  cost minutes of a 15 minute budget;
* both give the same ORT latency (ORT folds BatchNorm itself) and parity ~1e-7 (BatchNorm)
  to ~4e-6 (GroupNorm);
* dynamo-exported GroupNorm models make ``quantize_static`` fail ("Quantization parameter shared
  mode is not supported for weight yet") and their fp16 conversion breaks SSA form; legacy
  exports of the same models quantize and convert cleanly.

So the legacy exporter at opset 17 is the default; ``exporter="dynamo"`` (opset >= 18) stays
available and is tested too (switch the default if a later torch drops the legacy exporter).
Its ``DeprecationWarning`` is silenced inside `export_onnx` only, since using it is this
module's documented decision.

Inputs are named ``image`` (N, C, *spatial) and outputs ``logits``; the batch axis and every
spatial axis are dynamic, so any size divisible by the model's divisor runs. The file is one
self-contained ``.onnx`` (no external data), written to a temporary name and renamed only after
``onnx.checker`` accepted it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf
from torch import nn

from unet.inference import Forward
from unet.io import atomic_path
from unet.killpoints import killpoint

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
EXPORTERS = ("legacy", "dynamo")
DEFAULT_OPSET = 17
DYNAMO_MIN_OPSET = 18
PARITY_ATOL = 1e-4
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_AXIS_NAMES = {2: ("height", "width"), 3: ("depth", "height", "width")}


class ExportError(RuntimeError):
    """The exported graph is invalid or does not reproduce the PyTorch model."""


class ProviderUnavailable(RuntimeError):
    """The requested ONNX Runtime execution provider is not in this build / on this machine."""


def _default_shape(model: nn.Module) -> tuple[int, ...]:
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("export_onnx: example_shape is required for a model without .config")
    return (1, config.in_channels, *([2 * config.divisor] * config.spatial_dims))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    example_shape: tuple[int, ...] | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    exporter: str = "legacy",
) -> Path:
    """Export ``model`` (fp32, eval mode) to one ONNX file at ``path`` and return the path.

    ``example_shape`` (N, C, *spatial) is the traced input (default: batch 1, the model's input
    channels, twice its divisor per spatial axis); with ``dynamic`` the batch and spatial axes
    are symbolic, otherwise the graph is fixed to ``example_shape``. The model's train/eval mode
    is restored afterwards.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"export_onnx: exporter must be one of {EXPORTERS}, got {exporter!r}")
    shape = tuple(int(s) for s in (example_shape or _default_shape(model)))
    if len(shape) not in (4, 5):
        raise ValueError(f"export_onnx: example_shape must be (N, C, *spatial) 2D/3D, got {shape}")
    param = next(model.parameters(), None)
    if param is not None and param.dtype != torch.float32:
        raise ValueError(
            f"export_onnx: export the fp32 model (got {param.dtype} parameters); "
            "make fp16 files with compress.cast.onnx_to_fp16"
        )
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros(shape, device=device)
    axes = {0: "batch"} | dict(enumerate(_AXIS_NAMES[len(shape) - 2], start=2))
    dynamic_axes = {INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                if exporter == "legacy":
                    warnings.simplefilter("ignore", DeprecationWarning)  # deliberate, see above
                    # torch's own input checks in GroupNorm/InstanceNorm become trace constants
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    torch.onnx.export(
                        model,
                        (example,),
                        str(tmp),
                        opset_version=opset,
                        dynamic_axes=dynamic_axes,
                        dynamo=False,
                        **names,
                    )
                else:
                    # torch converts the named dynamic_axes to dynamic_shapes and says so
                    warnings.filterwarnings("ignore", ".*dynamic_axes.*", UserWarning)
                    warnings.filterwarnings("ignore", ".*from_dynamic_axes.*", DeprecationWarning)
                    torch.onnx.export(
                        model,
                        (example,),
                        str(tmp),
                        opset_version=max(opset, DYNAMO_MIN_OPSET),
                        dynamic_axes=dynamic_axes,
                        dynamo=True,
                        external_data=False,
                        verbose=False,
                        **names,
                    )
            killpoint("export.onnx")
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except onnx.checker.ValidationError as exc:
                raise ExportError(f"{path}: exported graph fails onnx.checker: {exc}") from exc
    finally:
        model.train(was_training)
    return Path(path)


def ort_session(
    path: str | os.PathLike[str],
    threads: int | None = None,
    provider: str = "cpu",
    *,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An ONNX Runtime session on ``provider`` (``cpu`` or ``cuda``).

    ``threads`` fixes the intra-op thread count (None: ORT's default, one per physical core);
    inter-op parallelism is off (sequential execution), as for latency measurement.
    ``spinning=False`` stops the intra-op threads from busy-waiting for work after a run
    (``session.intra_op.allow_spinning``): timed sessions need it when two of them alternate
    (`compress.runners.latency_call`), since one session's spinning threads otherwise take the
    cores from the other's run.
    """
    if provider not in PROVIDERS:
        raise ValueError(
            f"ort_session: provider must be one of {tuple(PROVIDERS)}, got {provider!r}"
        )
    name = PROVIDERS[provider]
    available = ort.get_available_providers()
    if name not in available:
        raise ProviderUnavailable(
            f"ort_session: {name} is not available in this onnxruntime build "
            f"(available: {', '.join(available)})"
        )
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise ValueError(f"ort_session: threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [name] if provider == "cpu" else [name, PROVIDERS["cpu"]]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except (InvalidProtobuf, InvalidGraph, Fail) as exc:
        raise ValueError(f"{path}: not a loadable ONNX model: {exc}") from exc


def ort_forward(session: ort.InferenceSession) -> Forward:
    """Wrap a session as a `Forward`: float32 (N, C, *spatial) -> float32 logits."""
    input_name = session.get_inputs()[0].name

    def forward(batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(session.run(None, {input_name: x})[0], dtype=np.float32)

    return forward


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    input: np.ndarray | torch.Tensor,
    *,
    atol: float = PARITY_ATOL,
) -> float:
    """Max abs difference of fp32 logits, PyTorch vs ONNX Runtime (CPU) on ``input``.

    Raises `ExportError` when it exceeds ``atol`` (1e-4 by default).
    """
    x = input.detach().cpu().numpy() if isinstance(input, torch.Tensor) else np.asarray(input)
    x = np.ascontiguousarray(x, dtype=np.float32)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
    finally:
        model.train(was_training)
    actual = ort_forward(ort_session(onnx_path))(x)
    if actual.shape != expected.shape:
        raise ExportError(f"{onnx_path}: output shape {actual.shape} != PyTorch {expected.shape}")
    diff = float(np.max(np.abs(actual - expected)))
    if not diff <= atol:  # also catches NaN
        raise ExportError(
            f"{onnx_path}: ONNX Runtime logits differ from PyTorch by {diff:.3g} > {atol:g}"
        )
    return diff
