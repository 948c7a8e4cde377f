"""OpenVINO runtime: IR parity with PyTorch, explicit precision, NNCF int8, atomic IR writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compress import openvino as cov
from compress.deploy import artifact_forward, write_openvino
from compress.export import export_onnx
from compress.measure import file_sizes
from unet import zoo

needs_ov = pytest.mark.skipif(
    cov.unavailable_reason(int8=True) is not None,
    reason=f"OpenVINO/NNCF: {cov.unavailable_reason(int8=True)}",
)


# `-m "not openvino"` deselects every test that loads OpenVINO / NNCF.
pytestmark = pytest.mark.openvino


def _inputs(n: int, spatial: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4, *spatial)).astype(np.float32)


@pytest.mark.parametrize(
    ("precision", "threads", "expected"),
    [
        ("fp32", 2, {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "2"}),
        ("bf16", 1, {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": "1"}),
        ("int8", None, {"INFERENCE_PRECISION_HINT": "f32"}),
        ("fp16", 4, {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "4"}),
    ],
)
def test_compile_config_is_explicit(precision: str, threads: int | None, expected: dict) -> None:
    config = cov.compile_config(precision, threads)
    assert config == {**expected, "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}


@pytest.mark.parametrize(("precision", "threads"), [("int4", 2), ("fp32", 0)])
def test_compile_config_refuses(precision: str, threads: int) -> None:
    with pytest.raises(ValueError, match="precision|threads"):
        cov.compile_config(precision, threads)


@needs_ov
@pytest.mark.parametrize(
    ("name", "spatial", "other"),
    [("unet2d-tiny", (32, 32), (2, 4, 16, 48)), ("unet3d-tiny", (16, 16, 16), (1, 4, 8, 16, 24))],
)
def test_fp32_ir_matches_pytorch(tmp_path: Path, name: str, spatial: tuple, other: tuple) -> None:
    torch.manual_seed(0)
    model = zoo.create(name).eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    xml = cov.onnx_to_ir(onnx_path, tmp_path / "m.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.onnx", "m.xml"]
    compiled = cov.compile_ir(xml, "fp32", threads=2)
    assert cov.effective_precision(compiled) == "f32"
    forward = cov.ov_forward(compiled)
    for x in (_inputs(1, spatial), np.random.default_rng(1).standard_normal(other).astype("f4")):
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        actual = forward(x)
        assert actual.shape == expected.shape  # dynamic batch and spatial axes kept
        assert np.abs(actual - expected).max() <= 1e-4


@needs_ov
def test_fp16_ir_halves_the_weights(tmp_path: Path) -> None:
    model = zoo.create("unet2d-small").eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    fp32 = file_sizes(cov.ir_files(cov.onnx_to_ir(onnx_path, tmp_path / "a.xml")))[0]
    fp16 = file_sizes(cov.ir_files(cov.onnx_to_ir(onnx_path, tmp_path / "b.xml", "fp16")))[0]
    assert 0.45 < fp16 / fp32 < 0.6


@needs_ov
@pytest.mark.parametrize(
    ("name", "spatial"), [("unet2d-tiny", (32, 32)), ("unet3d-tiny", (16, 16, 16))]
)
@pytest.mark.parametrize("suffix", [".onnx", ".xml"])
def test_nncf_int8_stays_close(tmp_path: Path, name: str, spatial: tuple, suffix: str) -> None:
    torch.manual_seed(0)
    onnx_path = export_onnx(zoo.create(name).eval(), tmp_path / "m.onnx")
    fp32 = cov.ov_forward(cov.compile_ir(onnx_path))
    out = cov.quantize_nncf(onnx_path, tmp_path / f"q{suffix}", _inputs(6, spatial))
    assert _quantized(out)
    int8 = cov.ov_forward(cov.compile_ir(out, "int8", threads=2))
    x = _inputs(2, spatial, seed=5)
    a, b = fp32(x), int8(x)
    # the tolerance test_quantize.py uses for ORT int8 of a random model
    assert np.abs(b - a).mean() < 0.1 * np.abs(a).mean()


def _quantized(path: Path) -> bool:
    """Whether an int8 model file holds quantizers: QDQ nodes (ONNX) or FakeQuantize (IR)."""
    if path.suffix == ".onnx":
        ops = {node.op_type for node in onnx.load(str(path)).graph.node}
        return {"QuantizeLinear", "DequantizeLinear"} <= ops
    text = path.read_text(encoding="utf-8")
    return "FakeQuantize" in text or "FakeConvert" in text


@needs_ov
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_ir_holds_no_shape_arithmetic(tmp_path: Path, precision: str) -> None:
    """IRs come through ``ov.convert_model``: the per-bias ShapeOf -> Concat -> Reshape chains of
    ``Core.read_model`` are folded, which is most of an IR's XML (README, thirteenth session)."""
    torch.manual_seed(0)
    model = zoo.create("unet2d-small").eval()
    for module in model.modules():  # non-zero biases after BN folding, as in a trained model
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.bias, std=0.1)
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    if precision == "int8":
        xml = cov.quantize_nncf(onnx_path, tmp_path / "q.xml", _inputs(4, (32, 32)))
    else:
        xml = cov.onnx_to_ir(onnx_path, tmp_path / "q.xml")
    text = xml.read_text(encoding="utf-8")
    assert 'type="ShapeOf"' not in text and 'type="Reshape"' not in text
    assert text.count('type="Convolution"') == 15  # every convolution is still there
    # bytes; through read_model: 106 KB (fp32) and 167 KB (int8)
    assert len(text) < {"fp32": 60_000, "int8": 120_000}[precision]
    x = _inputs(1, (48, 32), seed=3)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    actual = cov.ov_forward(cov.compile_ir(xml, precision))(x)
    tolerance = 1e-4 if precision == "fp32" else 0.1 * np.abs(expected).mean()
    assert np.abs(actual - expected).mean() <= tolerance


@needs_ov
def test_int8_onnx_is_smaller_than_the_ir_of_the_same_quantization(tmp_path: Path) -> None:
    """The reason OpenVINO's artifact is ONNX: an IR's XML graph outweighs a small int8 U-Net."""
    torch.manual_seed(0)
    onnx_path = export_onnx(zoo.create("unet2d-small").eval(), tmp_path / "m.onnx")
    calibration = _inputs(4, (32, 32))
    qdq = cov.quantize_nncf(onnx_path, tmp_path / "q.onnx", calibration)
    ir = file_sizes(cov.ir_files(cov.quantize_nncf(onnx_path, tmp_path / "q.xml", calibration)))
    assert file_sizes(qdq)[0] < 0.9 * ir[0]
    x = _inputs(1, (32, 32), seed=7)
    a = cov.ov_forward(cov.compile_ir(qdq, "int8"))(x)
    b = cov.ov_forward(cov.compile_ir(tmp_path / "q.xml", "int8"))(x)
    assert np.abs(a - b).mean() < 0.02 * np.abs(b).mean()  # the same quantization, either way


@needs_ov
def test_fp16_onnx_halves_the_weights_and_runs_in_f32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo.create("unet2d-small").eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    half = write_openvino("fp16", onnx_path, tmp_path / "h.onnx", calibration=_no_calibration)
    assert 0.45 < half.stat().st_size / onnx_path.stat().st_size < 0.6
    compiled = cov.compile_ir(half, "fp16", threads=2)
    assert cov.effective_precision(compiled) == "f32"
    x = _inputs(1, (32, 32), seed=2)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(cov.ov_forward(compiled)(x) - expected).max() <= 1e-2 * np.abs(expected).max()


@needs_ov
def test_an_ir_artifact_of_an_older_study_still_runs(tmp_path: Path) -> None:
    """Studies made before the ONNX artifact stored ``model.xml``: it loads and matches."""
    torch.manual_seed(0)
    model = zoo.create("unet2d-tiny").eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    xml = write_openvino("fp32", onnx_path, tmp_path / "model.xml", calibration=_no_calibration)
    x = _inputs(1, (32, 32), seed=3)
    old = artifact_forward("openvino", "fp32", xml, model, threads=1)(x)
    new = artifact_forward("openvino", "fp32", onnx_path, model, threads=1)(x)
    assert np.abs(old - new).max() <= 1e-5


def _no_calibration() -> np.ndarray:
    raise AssertionError("calibration is drawn for int8 only")


@needs_ov
@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda d: cov.onnx_to_ir(d / "missing.onnx", d / "m.xml"), FileNotFoundError),
        (lambda d: cov.onnx_to_ir(d / "m.onnx", d / "m.ir"), ValueError),
        (lambda d: cov.onnx_to_ir(d / "m.onnx", d / "m.xml", "int8"), ValueError),
        (lambda d: cov.quantize_nncf(d / "m.onnx", d / "m.xml", np.zeros((4, 4))), ValueError),
        (lambda d: cov.quantize_nncf(d / "m.onnx", d / "q.ir", _inputs(2, (8, 8))), ValueError),
        (
            lambda d: cov.quantize_nncf(d / "missing.onnx", d / "q.onnx", _inputs(2, (8, 8))),
            FileNotFoundError,
        ),
        (  # accuracy control without validation samples
            lambda d: cov.quantize_nncf(
                d / "m.onnx", d / "m.xml", _inputs(2, (8, 8)), max_drop=0.1
            ),
            ValueError,
        ),
        (  # validation targets of other samples
            lambda d: cov.quantize_nncf(
                d / "m.onnx",
                d / "q.onnx",
                _inputs(2, (8, 8)),
                validation=(_inputs(2, (8, 8)), np.zeros((3, 3, 8, 8))),
                max_drop=0.1,
            ),
            ValueError,
        ),
        (lambda d: cov.compile_ir(d / "m.onnx.bad", "fp32"), FileNotFoundError),
    ],
)
def test_bad_input_writes_nothing(tmp_path: Path, make, error: type) -> None:
    export_onnx(zoo.create("unet2d-tiny").eval(), tmp_path / "m.onnx")
    with pytest.raises(error):
        make(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_validation_dice_is_the_mean_over_samples_and_regions() -> None:
    """`validation_dice` (the metric NNCF's accuracy control holds) on a fake compiled model
    whose logits are the input's first three channels: Dice computed by hand."""
    target = np.zeros((2, 1, 3, 4, 4), dtype=np.float32)
    target[0, 0, :, :2, :] = 1  # every region: the top half (8 pixels)
    image = np.full((2, 1, 4, 4, 4), -1.0, dtype=np.float32)
    image[0, 0, 0, :2, :] = 1.0  # WT exact -> 1
    image[0, 0, 1, :1, :] = 1.0  # TC: 4 of 8 -> 2*4/12
    image[1, 0, 2, 0, 0] = 1.0  # sample 2: WT, TC empty-empty -> 1; ET one false voxel -> 0
    got = cov.validation_dice(lambda x: [x[:, :3]], zip(image, target, strict=True))
    assert got == pytest.approx((1 + 8 / 12 + 0 + 1 + 1 + 0) / 6)


@needs_ov
@pytest.mark.parametrize("suffix", [".onnx", ".xml"])
def test_accuracy_control_keeps_the_val_dice_within_max_drop(tmp_path: Path, suffix: str) -> None:
    """Targets are the fp32 model's own masks (fp32 Dice 1): plain NNCF int8 of a random model
    whose logits sit around 0 flips many of them; accuracy control must end within ``max_drop``
    of 1."""
    torch.manual_seed(0)
    model = zoo.create("unet2d-tiny").eval()
    images = _inputs(8, (32, 32), seed=3)
    with torch.no_grad():  # centre the logits on 0: half the pixels per region are positive
        logits = model(torch.from_numpy(images))
        head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        head.bias -= logits.transpose(0, 1).flatten(1).median(dim=1).values
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    fp32 = cov.ov_forward(cov.compile_ir(onnx_path))
    targets = (fp32(images) > 0).astype(np.float32)
    items = list(zip(images[:, None], targets[:, None], strict=True))

    def dice_of(path: Path) -> float:
        forward = cov.ov_forward(cov.compile_ir(path, "int8", threads=1))
        return cov.validation_dice(lambda x: [forward(x)], items)

    plain = dice_of(cov.quantize_nncf(onnx_path, tmp_path / f"p{suffix}", _inputs(6, (32, 32))))
    out = cov.quantize_nncf(
        onnx_path, tmp_path / f"ac{suffix}", _inputs(6, (32, 32)), validation=(images, targets),
        max_drop=0.002,
    )  # fmt: skip
    assert dice_of(out) >= 1 - 0.002 - 1e-6
    assert plain < 1 - 0.002  # the control had something to do
