"""Half-precision casts: torch fp16 / bf16 modules and fp16 ONNX files with fp32 I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compress.cast import cast_forward, cast_module, module_precision, onnx_to_fp16
from compress.export import export_onnx, ort_forward, ort_session
from unet import zoo
from unet.inference import torch_forward


def _input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _weight_bytes(path: Path) -> int:
    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


def _model(name: str = "unet2d-tiny") -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.create(name).eval()


def test_bf16_module_matches_fp32_within_bf16_precision() -> None:
    model = _model()
    x = _input((2, 4, 32, 32))
    expected = torch_forward(model)(x)
    cast = cast_module(model, "bf16")
    assert all(p.dtype == torch.bfloat16 for p in cast.parameters())
    assert module_precision(cast) == "bf16"
    out = cast_forward(cast)(x)
    assert out.dtype == np.float32 and out.shape == expected.shape
    # bf16 keeps 8 bits of mantissa: a few percent of the logit range
    assert np.abs(out - expected).max() <= 5e-2 * np.abs(expected).max()


def test_fp16_on_cpu_warns_and_still_casts() -> None:
    model = _model()
    with pytest.warns(RuntimeWarning, match="fp16 on the CPU"):
        cast_module(model, "fp16")
    assert module_precision(model) == "fp16"


def test_cast_back_to_fp32() -> None:
    model = _model()
    x = _input((1, 4, 16, 16))
    expected = torch_forward(model)(x)
    cast_module(cast_module(model, "bf16"), "fp32")
    assert module_precision(model) == "fp32"
    # weights went through bf16, so compare against the precision lost there, not bit-exact
    assert np.abs(cast_forward(model)(x) - expected).max() <= 5e-2 * np.abs(expected).max()


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        cast_module(_model(), "int4")


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("unet2d-tiny", [(1, 4, 32, 32), (2, 4, 16, 48)]),
        ("cs231n-2d", [(1, 4, 16, 16), (2, 4, 32, 24)]),  # GroupNorm + nearest Resize
        ("unet3d-tiny", [(1, 4, 16, 16, 16), (1, 4, 8, 16, 24)]),
    ],
)
def test_onnx_fp16_keeps_fp32_io_and_matches(tmp_path: Path, name: str, shapes: list) -> None:
    fp32 = export_onnx(_model(name), tmp_path / "fp32.onnx")
    fp16 = onnx_to_fp16(fp32, tmp_path / "fp16.onnx")
    graph = onnx.load(str(fp16)).graph
    float_ = onnx.TensorProto.FLOAT
    assert graph.input[0].type.tensor_type.elem_type == float_
    assert graph.output[0].type.tensor_type.elem_type == float_
    weights = [i for i in graph.initializer if i.dims and len(i.dims) > 1]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert _weight_bytes(fp16) == pytest.approx(_weight_bytes(fp32) / 2, rel=0.05)
    ref, half = ort_forward(ort_session(fp32)), ort_forward(ort_session(fp16))
    for shape in shapes:
        x = _input(shape)
        a, b = ref(x), half(x)
        assert b.dtype == np.float32 and b.shape == a.shape
        assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max()


def test_onnx_fp16_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        onnx_to_fp16(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a model")
    with pytest.raises(ValueError, match="garbage.onnx: not an ONNX model"):
        onnx_to_fp16(garbage, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
