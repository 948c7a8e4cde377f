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
  when a GPU is present), ``ort_cuda`` (when asked for and available), ``ov_cpu`` (OpenVINO,
  explicit precision hint; `compress.openvino`). Each is the median and
  inter-quartile range (ms) of >= 20 timed runs (``time.perf_counter``) after warm-up runs, at
  batch 1 on a fixed random input, with a fixed and recorded thread count; torch's global
  thread count is restored afterwards. A backend that cannot run here is reported in
  ``unavailable`` with the reason, not silently dropped;
* ``paired``: for backends given a reference call, the speed-up vs that reference measured in
  alternating rounds (`compress.timing.paired_latency`): median and quartiles of the per-round
  ratios, and both sides' absolute latency (for information only).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.export import ProviderUnavailable, ort_session
from compress.runners import RUNTIMES, latency_call, torch_threads, unavailable_reason
from compress.timing import (
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    MIN_RUNS,
    Latency,
    PairedLatency,
    latency_stats,
    paired_latency,
    time_calls,
)
from unet.models import UNet, count_params
from unet.zoo import macs as count_macs

BACKENDS = ("ort_cpu", "ov_cpu", "torch_cpu", "torch_cuda", "ort_cuda")
DEFAULT_BACKENDS = ("ort_cpu", "torch_cpu", "torch_cuda")
DEFAULT_THREADS = 2
COMPRESSION = "zlib-6"
_CHUNK_BYTES = 1 << 22


class BackendUnavailable(RuntimeError):
    """The requested latency backend cannot run on this machine (no GPU, no provider, ...)."""


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
    paired: dict[str, PairedLatency] = field(default_factory=dict)
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
            "paired": {k: v.to_dict() for k, v in self.paired.items()},
            "unavailable": dict(self.unavailable),
        }


def file_sizes(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], level: int = 6
) -> tuple[int, int]:
    """(bytes on disk, bytes after zlib compression at ``level``) of the file at ``path``.

    A sequence of paths (an OpenVINO IR: ``.xml`` and ``.bin``) counts as one artifact: the
    sizes summed, the files compressed as one stream in the given order.
    """
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such artifact")
    compressor = zlib.compressobj(level)
    compressed = 0
    for p in paths:
        with p.open("rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                compressed += len(compressor.compress(chunk))
    compressed += len(compressor.flush())
    return sum(p.stat().st_size for p in paths), compressed


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
        session = ort_session(onnx_path, threads=threads, provider=provider, spinning=False)
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


def _paired_or_single(
    backend: str,
    candidate: Callable[[], object],
    reference: Callable[[], object] | None,
    *,
    threads: int,
    runs: int,
    warmup: int,
) -> tuple[Latency, PairedLatency | None]:
    sync = torch.cuda.synchronize if backend.endswith("_cuda") else None
    kwargs = {"warmup": warmup, "sync": sync}
    with torch_threads(threads):
        if reference is None:
            times = time_calls(candidate, runs=runs, **kwargs)
            return latency_stats(times, threads=threads, warmup=warmup), None
        paired = paired_latency(candidate, reference, threads=threads, rounds=runs, **kwargs)
    return paired.candidate, paired


def measure(
    model: UNet,
    spatial: Sequence[int],
    *,
    onnx_path: str | os.PathLike[str] | None = None,
    artifact: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    ov_path: str | os.PathLike[str] | None = None,
    precision: str = "fp32",
    backends: Sequence[str] = DEFAULT_BACKENDS,
    threads: int = DEFAULT_THREADS,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    references: Mapping[str, Callable[[], object]] | None = None,
) -> Measurement:
    """Measure ``model`` at batch 1 and ``spatial`` input size; returns numbers, prints nothing.

    ``onnx_path`` is the ONNX artifact for the ORT backends; ``ov_path`` the ONNX or IR for
    ``ov_cpu`` (default: ``onnx_path``, read by OpenVINO) compiled for the recipe
    ``precision``; ``artifact`` the file(s) whose size is reported (default: ``onnx_path``;
    None for both: sizes are None). ``backends`` picks the latency measurements (`BACKENDS`);
    an empty tuple skips timing. ``references`` maps a backend to the reference's zero-argument
    call (`compress.runners.latency_call` of the baseline, same shape and threads): those
    backends are timed paired (`compress.timing.paired_latency`) and reported in ``paired``.
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
    paired: dict[str, PairedLatency] = {}
    unavailable: dict[str, str] = {}
    references = references or {}
    for backend in backends:
        reason = unavailable_reason(backend)
        files = {"ov_cpu": ov_path or onnx_path}.get(backend, onnx_path)
        if reason is None and RUNTIMES[backend] != "torch" and files is None:
            reason = "no ONNX artifact given (onnx_path=None)"
        if reason is None and backend == "torch_cpu" and model_dtype(model) == torch.float16:
            reason = "fp16 on the CPU is emulated (~70x slower): not measured"
        if reason is not None:
            unavailable[backend] = reason
            continue
        target = model if RUNTIMES[backend] == "torch" else files
        previous_device, was_training = next(model.parameters()).device, model.training
        try:
            call = latency_call(backend, target, shape, threads=threads, precision=precision)
            latency[backend], pair = _paired_or_single(
                backend, call, references.get(backend), threads=threads, runs=runs, warmup=warmup
            )
        finally:
            model.to(previous_device).train(was_training)
        if pair is not None:
            paired[backend] = pair
    return Measurement(
        params=count_params(model),
        nonzero_params=int(sum(int(torch.count_nonzero(p)) for p in model.parameters())),
        macs=count_macs(config, spatial),
        input_shape=shape,
        size_bytes=size,
        size_compressed_bytes=compressed,
        latency=latency,
        paired=paired,
        unavailable=unavailable,
    )


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the module's first parameter (its deployed dtype after a cast)."""
    return next(model.parameters()).dtype
