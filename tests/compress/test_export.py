"""ONNX export: dynamic batch and spatial axes, parity with PyTorch, one file, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compress.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    ProviderUnavailable,
    check_parity,
    export_onnx,
    ort_forward,
    ort_session,
)
from unet import zoo

# (zoo name, overrides, two (N, *spatial) input shapes that differ in batch and spatial size)
CASES = [
    ("unet2d-tiny", {}, [(1, 32, 32), (3, 16, 48)]),
    ("unet3d-tiny", {}, [(1, 16, 16, 16), (2, 8, 24, 16)]),
    ("cs231n-2d", {}, [(1, 32, 32), (2, 16, 40)]),  # GroupNorm(9) + nearest upsampling
    (
        "unet2d-tiny",
        {"norm": "instance", "upsampling": "linear", "up_widths": ()},
        [(1, 16, 16), (2, 24, 32)],
    ),
]


def _model(name: str, overrides: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = zoo.create(name, **overrides)
    # non-trivial BatchNorm statistics, so that folding them into the convs is really tested
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _input(shape: tuple[int, ...], channels: int = 4, seed: int = 0) -> np.ndarray:
    n, *spatial = shape
    return np.random.default_rng(seed).standard_normal((n, channels, *spatial)).astype(np.float32)


@pytest.mark.parametrize(("name", "overrides", "shapes"), CASES)
def test_parity_at_two_shapes(tmp_path: Path, name: str, overrides: dict, shapes: list) -> None:
    model = _model(name, overrides)
    path = export_onnx(model, tmp_path / "model.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    for shape in shapes:
        diff = check_parity(model, path, _input(shape))
        assert diff <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # one file, no temp


@pytest.mark.parametrize("dims", [2, 3])
def test_axes_are_symbolic(tmp_path: Path, dims: int) -> None:
    model = _model(f"unet{dims}d-tiny", {})
    graph = onnx.load(str(export_onnx(model, tmp_path / "m.onnx"))).graph
    spatial = ["height", "width"] if dims == 2 else ["depth", "height", "width"]
    for value, channels in ((graph.input[0], 4), (graph.output[0], 3)):
        dims_ = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims_] == ["batch", "", *spatial]
        assert dims_[1].dim_value == channels
    assert (graph.input[0].name, graph.output[0].name) == (INPUT_NAME, OUTPUT_NAME)


def test_static_export_fixes_the_shape(tmp_path: Path) -> None:
    model = _model("unet2d-tiny", {})
    path = export_onnx(model, tmp_path / "m.onnx", example_shape=(2, 4, 16, 24), dynamic=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 4, 16, 24]


@pytest.mark.slow  # the dynamo exporter takes 3-15 s even for a tiny model
def test_dynamo_exporter_is_single_file_with_parity(tmp_path: Path) -> None:
    model = _model("unet2d-tiny", {})
    path = export_onnx(model, tmp_path / "m.onnx", exporter="dynamo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    for shape in [(1, 16, 16), (2, 32, 24)]:
        assert check_parity(model, path, _input(shape)) <= 1e-4


def test_training_mode_is_restored(tmp_path: Path) -> None:
    model = _model("unet2d-tiny", {}).train()
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_failed_export_leaves_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(_Broken(), target, example_shape=(1, 4, 8, 8))
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_only_fp32_models_export(tmp_path: Path) -> None:
    model = _model("unet2d-tiny", {}).to(torch.bfloat16)
    with pytest.raises(ValueError, match="export the fp32 model"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_parity_failure_raises(tmp_path: Path) -> None:
    model = _model("unet2d-tiny", {})
    path = export_onnx(model, tmp_path / "m.onnx")
    with torch.no_grad():
        model.head.bias.add_(1e-2)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        check_parity(model, path, _input((1, 16, 16)))


def test_ort_forward_returns_float32_logits(tmp_path: Path) -> None:
    model = _model("unet2d-tiny", {})
    forward = ort_forward(ort_session(export_onnx(model, tmp_path / "m.onnx"), threads=1))
    out = forward(_input((2, 16, 16)).astype(np.float64))
    assert out.dtype == np.float32 and out.shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"provider": "tpu"}, ValueError, "provider must be one of"),
        ({"threads": 0}, ValueError, "threads must be >= 1"),
    ],
)
def test_ort_session_bad_arguments(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    path = export_onnx(_model("unet2d-tiny", {}), tmp_path / "m.onnx")
    with pytest.raises(error, match=match):
        ort_session(path, **kwargs)


def test_ort_session_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ort_session(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.onnx: not a loadable ONNX model"):
        ort_session(garbage)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
    reason="CUDA provider present",
)
def test_cuda_provider_unavailable_is_a_clear_error(tmp_path: Path) -> None:
    path = export_onnx(_model("unet2d-tiny", {}), tmp_path / "m.onnx")
    with pytest.raises(ProviderUnavailable, match="CUDAExecutionProvider is not available"):
        ort_session(path, provider="cuda")


def test_timed_ort_sessions_do_not_spin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sessions timed in alternating rounds must not busy-wait: one session's spinning
    threads took the cores from the other's run (identical models measured 0.8-1.3x apart)."""
    import compress.export
    from compress.runners import latency_call

    path = export_onnx(_model("unet2d-tiny", {}), tmp_path / "m.onnx")
    key = "session.intra_op.allow_spinning"
    assert (
        ort_session(path, threads=1, spinning=False)
        .get_session_options()
        .get_session_config_entry(key)
        == "0"
    )
    with pytest.raises(Exception, match="does not have configuration with key"):
        ort_session(path, threads=1).get_session_options().get_session_config_entry(key)
    made = []
    real = compress.export.ort_session

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(compress.export, "ort_session", spy)
    call = latency_call("ort_cpu", path, (1, 4, 16, 16), threads=1)
    call()
    assert len(made) == 1
    assert made[0].get_session_options().get_session_config_entry(key) == "0"
