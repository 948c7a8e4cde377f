"""int8 static quantization of an fp32 ONNX model with ONNX Runtime's own tools.

    from compress.quantize import logit_error, quantize_int8
    from unet.data.datasets import sample_inputs
    calibration = sample_inputs(data, "train", 16, spatial_dims=2)    # (16, 4, H, W) float32
    quantize_int8("model.onnx", "model-int8.onnx", calibration, method="minmax")
    logit_error("model.onnx", "model-int8.onnx", calibration[:4])     # how far int8 drifted

Pipeline: ``quant_pre_process`` (symbolic shape inference + ORT graph optimisation); activation
ranges from ORT's calibrator (``create_calibrator``) for the chosen method, ``minmax`` (the
default and the safe choice), ``entropy`` or ``percentile`` (settings in `CALIBRATOR_OPTIONS`);
then ``quantize_static`` on those ranges (passed as its calibration cache) with QDQ format,
per-channel int8 weights and uint8 activations (U8S8: the fastest combination measured on this
CPU; QOperator was ~7x slower and is not offered).

Notes from measurements (2 cores, onnxruntime 1.31):

* shape inference needs ``auto_merge``: the decoder concatenates the upsampled tensor
  (``2 * (s // 2)``) with the skip (``s``), two symbols that are equal only for inputs divisible
  by the divisor, which is the model's contract anyway;
* ``minmax`` keeps only per-tensor min/max per sample; ``entropy`` and ``percentile`` keep every
  activation of every calibration sample in memory to build histograms, so their memory grows
  with the number of samples times the activation size (keep ``n`` small for 3D models);
  ``unet2d-small`` with 16 slices of 128x128 took 0.3-1.7 s (minmax), 1-4 s (percentile) and
  5-11 s (entropy: ORT's KL search loops in Python) on a loaded 2-core machine;
* GroupNorm models exported by the dynamo exporter fail in ``quantize_static``; pass
  ``op_types=("Conv", "ConvTranspose", "MaxPool", "Concat")`` for those, or (the default in
  `compress.export`) use the legacy exporter;
* narrow or GroupNorm networks can run *slower* in int8 than in fp32 (Q/DQ overhead): measure
  with `compress.measure`, do not assume.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quant_pre_process,
    quantize_static,
)
from onnxruntime.quantization.calibrate import save_tensors_data

from compress.export import ort_forward, ort_session
from unet.io import atomic_path
from unet.killpoints import killpoint

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# Calibrator settings. quantize_static does not pass histogram sizes through, and ORT's entropy
# default (128 bins, 128 quantized bins) leaves a single candidate range, the min/max one:
# "entropy" would silently be "minmax" (measured: identical scales). So ranges are computed here
# with ORT's own calibrator and handed to quantize_static as a calibration cache.
# Entropy (KL) uses 256 quantized bins (the uint8 levels) over 512 histogram bins, so it may clip
# at most half of the observed range: with TensorRT's 2048 / 128 it clipped decoder activations
# to ~7% of their range and a trained unet2d-tiny lost all foreground (val Dice 0.87 -> 0.00);
# with 512 / 256 it reached 0.74, minmax and percentile 0.87. Percentile clips both tails
# (ORT's symmetric default wastes half the uint8 levels on ReLU outputs).
CALIBRATOR_OPTIONS: dict[str, dict[str, object]] = {
    "minmax": {},
    "entropy": {"num_bins": 512, "num_quantized_bins": 256},
    "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": False},
}
DEFAULT_CALIBRATION_SAMPLES = 16


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds the samples of an array ``(n, C, *spatial)`` to ORT's calibrator, ``batch_size`` at a time."""

    def __init__(self, input_name: str, samples: np.ndarray, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.input_name = input_name
        self.samples = np.ascontiguousarray(samples, dtype=np.float32)
        self.batch_size = batch_size
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.samples):
            return None
        killpoint("quantize.calibrate")
        batch = self.samples[self._next : self._next + self.batch_size]
        self._next += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._next = 0


def _input_signature(path: Path) -> tuple[str, int, int]:
    """(name, channels, rank) of the model's first graph input."""
    graph = onnx.load(str(path), load_external_data=False).graph
    first = graph.input[0]
    dims = first.type.tensor_type.shape.dim
    return first.name, dims[1].dim_value, len(dims)


def check_calibration(calibration: np.ndarray, channels: int, rank: int) -> np.ndarray:
    """Validate a calibration array against the model input; return it as float32."""
    arr = np.asarray(calibration)
    if arr.ndim != rank:
        raise ValueError(
            f"calibration: expected an array of rank {rank} (n, C, *spatial), got {arr.shape}"
        )
    if arr.shape[0] < 1:
        raise ValueError("calibration: needs at least one sample")
    if channels and arr.shape[1] != channels:
        raise ValueError(f"calibration: the model takes {channels} channels, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise ValueError("calibration: samples must be finite floating-point values")
    return arr.astype(np.float32, copy=False)


def quantize_int8(
    onnx_in: str | os.PathLike[str],
    onnx_out: str | os.PathLike[str],
    calibration: np.ndarray,
    method: str = "minmax",
    *,
    op_types: Sequence[str] | None = None,
    per_channel: bool = True,
) -> Path:
    """Quantize the fp32 model ``onnx_in`` to int8 QDQ at ``onnx_out``, calibrated on ``calibration``.

    ``calibration`` is float32 ``(n, C, *spatial)`` (training-split slices or patches, fed one at
    a time); ``method`` is ``minmax``, ``entropy`` or ``percentile``; ``op_types`` restricts the
    quantized operator types (None: ORT's default, every supported op). The result is checked to
    run and give finite logits on the first calibration sample, then renamed into place.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"quantize_int8: method must be one of {tuple(CALIBRATION_METHODS)}, got {method!r}"
        )
    src = Path(onnx_in)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such ONNX file")
    name, channels, rank = _input_signature(src)
    samples = check_calibration(calibration, channels, rank)
    ops = list(op_types) if op_types is not None else None
    with tempfile.TemporaryDirectory(prefix="unet-quant.") as work, atomic_path(onnx_out) as tmp:
        pre, cache = Path(work) / "preprocessed.onnx", Path(work) / "calibration.json"
        quant_pre_process(src, pre, auto_merge=True)
        calibrator = create_calibrator(
            pre,
            ops,
            augmented_model_path=Path(work) / "augmented.onnx",
            calibrate_method=CALIBRATION_METHODS[method],
            extra_options=CALIBRATOR_OPTIONS[method],
        )
        # ORT's histogram calibrators print progress to stdout; keep the caller's output clean
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator.collect_data(ArrayCalibrationReader(name, samples))
            ranges = calibrator.compute_data()
        save_tensors_data(ranges, cache)
        del calibrator
        quantize_static(
            pre,
            tmp,
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
            calibration_cache_path=cache,
        )
        logits = ort_forward(ort_session(tmp))(samples[:1])
        if not np.isfinite(logits).all():
            raise ValueError(f"{src}: the int8 model gives non-finite logits on calibration data")
    return Path(onnx_out)


@dataclass(frozen=True)
class LogitError:
    """How far a candidate model's logits are from a reference's, on the same inputs."""

    mean_abs: float  # mean |candidate - reference|
    max_abs: float
    reference_mean_abs: float  # mean |reference|, the scale to read the errors against
    sign_agreement: float  # fraction of voxels where both logits have the same sign (mask at 0.5)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def logit_error(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    inputs: np.ndarray,
    *,
    threads: int | None = None,
) -> LogitError:
    """Compare two ONNX models (e.g. fp32 vs int8 or fp16) on ``inputs`` (n, C, *spatial)."""
    ref = ort_forward(ort_session(reference, threads))
    cand = ort_forward(ort_session(candidate, threads))
    a = np.concatenate([ref(x[None]) for x in inputs])
    b = np.concatenate([cand(x[None]) for x in inputs])
    diff = np.abs(b - a)
    return LogitError(
        mean_abs=float(diff.mean()),
        max_abs=float(diff.max()),
        reference_mean_abs=float(np.abs(a).mean()),
        sign_agreement=float(np.mean((a > 0) == (b > 0))),
    )
