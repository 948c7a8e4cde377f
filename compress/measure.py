"""Honest measurement of a model and its artifact: params, MACs, size, compressed size, latency.

    from compress.measure import measure
    m = measure(model, (128, 128), onnx_path="runs/model.onnx", threads=2)
    m.to_dict()   # {"params", "macs", "size_bytes", "size_compressed_bytes", "latency_ms": {...}}

* ``params`` (all parameters) and ``nonzero_params`` (what unstructured pruning changes);
* ``macs`` for one batch-1 forward at the stated spatial input (`unet.zoo.macs`);
* ``size_bytes``: the artifact's size on disk; ``size_compressed_bytes``: the size of its bytes
  compressed with zlib (DEFLATE) at level 6, which is what unstructured zeros can save;
* latency per backend: ``ort_cpu`` (ONNX Runtime, CPU provider), ``torch_cpu`` (PyTorch eager,
  inference mode, the module's own dtype: fp32 or a bf16 cast), ``torch_cuda`` (CUDA events,
  when a GPU is present), ``ort_cuda`` (when asked for and available). Each is the median and
  inter-quartile range (ms) of >= 20 timed runs (``time.perf_counter``) after warm-up runs, at
  batch 1 on a fixed random input, with a fixed and recorded thread count; torch's global
  thread count is restored afterwards. A backend that cannot run here is reported in
  ``unavailable`` with the reason, not silently dropped.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.export import ProviderUnavailable, ort_session
from unet.models import UNet, count_params
from unet.zoo import macs as count_macs

BACKENDS = ("ort_cpu", "torch_cpu", "torch_cuda", "ort_cuda")
DEFAULT_BACKENDS = ("ort_cpu", "torch_cpu", "torch_cuda")
MIN_RUNS = 20
DEFAULT_RUNS = 30
DEFAULT_WARMUP = 5
DEFAULT_THREADS = 2
COMPRESSION = "zlib-6"
_CHUNK_BYTES = 1 << 22


class BackendUnavailable(RuntimeError):
    """The requested latency backend cannot run on this machine (no GPU, no provider, ...)."""


@dataclass(frozen=True)
class Latency:
    """Latency statistics of one backend (milliseconds) and how they were taken."""

    median_ms: float
    iqr_ms: float
    runs: int
    threads: int
    warmup: int

    def to_dict(self) -> dict[str, float | int]:
        """The ``latency_ms`` entry of ``metrics.json``: ``median``/``iqr`` plus the setup."""
        return {
            "median": self.median_ms,
            "iqr": self.iqr_ms,
            "runs": self.runs,
            "threads": self.threads,
            "warmup": self.warmup,
        }


@dataclass(frozen=True)
class Measurement:
    """Everything `measure` found; primitives only, ``to_dict`` for JSON."""

    params: int
    nonzero_params: int
    macs: int
    input_shape: tuple[int, ...]
    size_bytes: int | None
    size_compressed_bytes: int | None
    latency: dict[str, Latency] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    compression: str = COMPRESSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "macs": self.macs,
            "input_shape": list(self.input_shape),
            "size_bytes": self.size_bytes,
            "size_compressed_bytes": self.size_compressed_bytes,
            "compression": self.compression,
            "latency_ms": {k: v.to_dict() for k, v in self.latency.items()},
            "unavailable": dict(self.unavailable),
        }


def latency_stats(times_s: Sequence[float], *, threads: int, warmup: int) -> Latency:
    """Median and inter-quartile range (75th - 25th percentile, linear) in ms of run times in s."""
    if len(times_s) < 1:
        raise ValueError("latency_stats: no timings")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return Latency(float(q50), float(q75 - q25), len(ms), threads, warmup)


def time_calls(
    fn: Callable[[], object],
    *,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    clock: Callable[[], float] = perf_counter,
    sync: Callable[[], None] | None = None,
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed; durations in seconds.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock read of asynchronous work.
    """
    if runs < MIN_RUNS:
        raise ValueError(f"time_calls: runs must be >= {MIN_RUNS}, got {runs}")
    if warmup < 0:
        raise ValueError(f"time_calls: warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if sync:
            sync()
        start = clock()
        fn()
        if sync:
            sync()
        times.append(clock() - start)
    return times


def file_sizes(path: str | os.PathLike[str], level: int = 6) -> tuple[int, int]:
    """(bytes on disk, bytes after zlib compression at ``level``) of the file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such artifact")
    compressor = zlib.compressobj(level)
    compressed = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            compressed += len(compressor.compress(chunk))
    compressed += len(compressor.flush())
    return path.stat().st_size, compressed


def _example(shape: Sequence[int]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)


def ort_latency(
    onnx_path: str | os.PathLike[str],
    input_shape: Sequence[int],
    *,
    threads: int = DEFAULT_THREADS,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    provider: str = "cpu",
) -> Latency:
    """ONNX Runtime latency of ``onnx_path`` at ``input_shape`` with ``threads`` intra-op threads."""
    try:
        session = ort_session(onnx_path, threads=threads, provider=provider)
    except ProviderUnavailable as exc:
        raise BackendUnavailable(str(exc)) from exc
    feed = {session.get_inputs()[0].name: _example(input_shape)}
    times = time_calls(lambda: session.run(None, feed), runs=runs, warmup=warmup)
    return latency_stats(times, threads=threads, warmup=warmup)


def torch_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    threads: int = DEFAULT_THREADS,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    device: str = "cpu",
) -> Latency:
    """PyTorch eager latency (inference mode, the module's dtype) on ``device`` (cpu or cuda).

    CUDA runs are timed with CUDA events; ``threads`` sets torch's CPU thread count for the
    measurement and the previous count is restored. fp16 modules are refused on the CPU.
    """
    param = next(model.parameters())
    dtype = param.dtype
    if device == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable("CUDA is not available (torch.cuda.is_available() is False)")
    elif device != "cpu":
        raise ValueError(f"torch_latency: device must be cpu or cuda, got {device!r}")
    elif dtype == torch.float16:
        raise BackendUnavailable("fp16 on the CPU is emulated (~70x slower): not measured")
    previous_threads = torch.get_num_threads()
    previous_device = param.device
    was_training = model.training
    torch.set_num_threads(threads)
    try:
        model.to(device).eval()
        x = torch.from_numpy(_example(input_shape)).to(device=device, dtype=dtype)
        with torch.inference_mode():
            if device == "cuda":
                times = _cuda_times(lambda: model(x), runs=runs, warmup=warmup)
            else:
                times = time_calls(lambda: model(x), runs=runs, warmup=warmup)
    finally:
        torch.set_num_threads(previous_threads)
        model.to(previous_device).train(was_training)
    return latency_stats(times, threads=threads, warmup=warmup)


def _cuda_times(fn: Callable[[], object], *, runs: int, warmup: int) -> list[float]:
    """Durations in seconds of ``fn`` on the current CUDA stream, from CUDA event pairs."""
    if runs < MIN_RUNS:
        raise ValueError(f"runs must be >= {MIN_RUNS}, got {runs}")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(runs)
    ]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def measure(
    model: UNet,
    spatial: Sequence[int],
    *,
    onnx_path: str | os.PathLike[str] | None = None,
    artifact: str | os.PathLike[str] | None = None,
    backends: Sequence[str] = DEFAULT_BACKENDS,
    threads: int = DEFAULT_THREADS,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
) -> Measurement:
    """Measure ``model`` at batch 1 and ``spatial`` input size; returns numbers, prints nothing.

    ``onnx_path`` is the ONNX artifact for the ORT backends; ``artifact`` the file whose size
    is reported (default: ``onnx_path``; None for both: sizes are None). ``backends`` picks the
    latency measurements (`BACKENDS`); an empty tuple skips timing.
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"measure: unknown backend(s) {unknown}; known: {BACKENDS}")
    if runs < MIN_RUNS:
        raise ValueError(f"measure: runs must be >= {MIN_RUNS}, got {runs}")
    config = model.config
    spatial = tuple(int(s) for s in spatial)
    if len(spatial) != config.spatial_dims or any(s % config.divisor for s in spatial):
        raise ValueError(
            f"measure: spatial {spatial} must have {config.spatial_dims} sizes divisible by "
            f"{config.divisor}"
        )
    shape = (1, config.in_channels, *spatial)
    sized = artifact if artifact is not None else onnx_path
    size, compressed = file_sizes(sized) if sized is not None else (None, None)
    latency: dict[str, Latency] = {}
    unavailable: dict[str, str] = {}
    for backend in backends:
        kwargs = {"threads": threads, "runs": runs, "warmup": warmup}
        try:
            if backend.startswith("ort_"):
                if onnx_path is None:
                    raise BackendUnavailable("no ONNX artifact given (onnx_path=None)")
                provider = backend.removeprefix("ort_")
                latency[backend] = ort_latency(onnx_path, shape, provider=provider, **kwargs)
            else:
                device = backend.removeprefix("torch_")
                latency[backend] = torch_latency(model, shape, device=device, **kwargs)
        except BackendUnavailable as exc:
            unavailable[backend] = str(exc)
    return Measurement(
        params=count_params(model),
        nonzero_params=int(sum(int(torch.count_nonzero(p)) for p in model.parameters())),
        macs=count_macs(config, spatial),
        input_shape=shape,
        size_bytes=size,
        size_compressed_bytes=compressed,
        latency=latency,
        unavailable=unavailable,
    )
