"""Half-precision casts: PyTorch modules to fp16 / bf16, and fp32 ONNX files to fp16.

    from compress.cast import cast_forward, cast_module, onnx_to_fp16
    model = cast_module(model, "bf16")          # weights and buffers in bfloat16 (in place)
    forward = cast_forward(model)               # fp32 numpy in, fp32 logits out
    onnx_to_fp16("model.onnx", "model-fp16.onnx")   # fp16 weights, fp32 inputs/outputs kept

What each buys (measured on this machine kind, see shared FACTS.md):

* ``bf16`` is the CPU half type: native bf16 kernels, real speed-ups, half the weight size.
* ``fp16`` modules are for CUDA. On a CPU without fp16 hardware PyTorch emulates it, ~70x
  slower than fp32: `cast_module` warns when it casts a CPU model to fp16, and
  `compress.measure` refuses to time one.
* fp16 ONNX halves the file; ORT's CPU provider computes it in fp32 again (no speed-up there).
  The conversion is onnxruntime's own ``convert_float_to_float16(keep_io_types=True)``.

This differs from ``unet.inference.torch_forward(model, amp="bf16")``: autocast keeps fp32
weights (same size) and casts per op, whereas a cast module stores half-precision weights.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel
from torch import nn

from unet.inference import Forward
from unet.io import atomic_path

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cast_module(model: nn.Module, precision: str) -> nn.Module:
    """Cast every floating parameter and buffer of ``model`` to ``precision`` (in place).

    ``precision`` is ``fp32``, ``fp16`` or ``bf16``. Returns the same module, for chaining.
    """
    if precision not in DTYPES:
        raise ValueError(
            f"cast_module: precision must be one of {tuple(DTYPES)}, got {precision!r}"
        )
    param = next(model.parameters(), None)
    if precision == "fp16" and param is not None and param.device.type == "cpu":
        warnings.warn(
            "cast_module: fp16 on the CPU is emulated (~70x slower than fp32 here); "
            "use bf16 for CPU inference, fp16 on CUDA",
            RuntimeWarning,
            stacklevel=2,
        )
    return model.to(DTYPES[precision])


def module_precision(model: nn.Module) -> str:
    """Name (``fp32`` / ``fp16`` / ``bf16``) of the dtype of the model's first parameter."""
    param = next(model.parameters(), None)
    if param is None:
        return "fp32"
    for name, dtype in DTYPES.items():
        if param.dtype == dtype:
            return name
    raise ValueError(f"module_precision: unsupported parameter dtype {param.dtype}")


def cast_forward(model: nn.Module) -> Forward:
    """A `Forward` for a (possibly cast) module: fp32 numpy in, fp32 numpy logits out.

    Inputs are cast to the dtype and device of the model's parameters; eval + inference mode.
    """
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    model.eval()

    def forward(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            y = model(x.to(device=device, dtype=dtype))
        return y.float().cpu().numpy()

    return forward


def onnx_to_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write an fp16 copy of the fp32 ONNX model ``src`` to ``dst`` (fp32 inputs/outputs kept).

    The converter appends the input casts at the end of the node list; the graph is sorted
    topologically again so that ``onnx.checker`` accepts it. Written atomically.
    """
    if not Path(src).is_file():
        raise FileNotFoundError(f"{src}: no such ONNX file")
    try:
        model = onnx.load(str(src))
    except DecodeError as exc:
        raise ValueError(f"{src}: not an ONNX model: {exc}") from exc
    half = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
    half.topological_sort()
    with atomic_path(dst) as tmp:
        onnx.save(half.model, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ValueError(
                f"{src}: fp16 conversion gives an invalid graph ({exc}); "
                "export with compress.export.export_onnx(exporter='legacy')"
            ) from exc
    return Path(dst)
