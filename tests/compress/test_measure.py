"""Measurement: statistics on fake clocks, sizes, params/MACs, backends that cannot run here.

No test asserts a measured time: machines are noisy. Timing logic is tested with fake clocks.
"""

from __future__ import annotations

import itertools
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.cast import cast_module
from compress.export import export_onnx
from compress.measure import (
    BackendUnavailable,
    Latency,
    file_sizes,
    latency_stats,
    measure,
    time_calls,
    torch_latency,
)
from unet import zoo
from unet.models import count_params


@pytest.mark.parametrize(
    ("times_ms", "median", "iqr"),
    [
        (list(range(1, 21)), 10.5, 9.5),  # percentiles (linear): 25th 5.75, 75th 15.25
        ([4.0] * 25, 4.0, 0.0),
        ([1, 2, 3, 4, 100] * 4, 3.0, 2.0),  # one slow outlier per five runs: median unmoved
    ],
)
def test_latency_stats(times_ms: list, median: float, iqr: float) -> None:
    stats = latency_stats([t / 1e3 for t in times_ms], threads=2, warmup=3)
    assert stats.median_ms == pytest.approx(median)
    assert stats.iqr_ms == pytest.approx(iqr)
    assert (stats.runs, stats.threads, stats.warmup) == (len(times_ms), 2, 3)
    assert stats.to_dict() == {
        "median": stats.median_ms,
        "iqr": stats.iqr_ms,
        "runs": len(times_ms),
        "threads": 2,
        "warmup": 3,
    }


def test_time_calls_warms_up_untimed_then_times_each_run() -> None:
    durations = [0.001 * (i + 1) for i in range(20)]
    ticks = list(
        itertools.accumulate(d for pair in zip([0.5] * 20, durations, strict=True) for d in pair)
    )
    clock = iter(ticks).__next__  # start, end, start, end, ... with 0.5 s between runs
    calls = []
    syncs = []
    times = time_calls(
        lambda: calls.append(1), runs=20, warmup=4, clock=clock, sync=lambda: syncs.append(1)
    )
    assert len(calls) == 24
    assert times == pytest.approx(durations)
    assert len(syncs) == 40  # before and after every timed run


@pytest.mark.parametrize(("runs", "warmup"), [(19, 0), (20, -1)])
def test_time_calls_refuses_too_few_runs(runs: int, warmup: int) -> None:
    with pytest.raises(ValueError, match="must be >= "):
        time_calls(lambda: None, runs=runs, warmup=warmup)


@pytest.mark.parametrize(
    "data",
    [b"\x00" * 1_000_000, np.random.default_rng(0).bytes(300_000), b"", b"abc" * 3_000_000],
)
def test_file_sizes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "artifact.bin"
    path.write_bytes(data)
    size, compressed = file_sizes(path)
    assert size == len(data)
    # streamed compression gives the same bytes as one-shot zlib at level 6
    assert compressed == len(zlib.compress(data, 6))


def test_file_sizes_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        file_sizes(tmp_path / "nope.onnx")


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = zoo.create("unet2d-tiny").eval()
    return model, export_onnx(model, tmp_path / "m.onnx")


def test_measure_numbers_without_timing(tiny: tuple) -> None:
    model, onnx_path = tiny
    dense = measure(model, (32, 32), backends=())
    with torch.no_grad():
        model.encoders[0].convs[0][0].weight[:2] = 0.0
    zeros = model.encoders[0].convs[0][0].weight[:2].numel()
    m = measure(model, (32, 32), onnx_path=onnx_path, backends=())
    assert m.params == dense.params == count_params(model)
    assert m.nonzero_params == dense.nonzero_params - zeros
    assert m.macs == zoo.macs(model.config, (32, 32))
    assert m.input_shape == (1, 4, 32, 32)
    assert m.size_bytes == onnx_path.stat().st_size
    assert m.size_compressed_bytes == len(zlib.compress(onnx_path.read_bytes(), 6))
    assert m.latency == {} and m.unavailable == {}
    d = json.loads(json.dumps(m.to_dict()))
    assert d["compression"] == "zlib-6" and d["latency_ms"] == {}


def test_measure_sizes_the_given_artifact(tiny: tuple, tmp_path: Path) -> None:
    model, onnx_path = tiny
    other = tmp_path / "checkpoint.pt"
    other.write_bytes(b"\x01" * 1234)
    m = measure(model, (16, 16), onnx_path=onnx_path, artifact=other, backends=())
    assert m.size_bytes == 1234
    no_files = measure(model, (16, 16), backends=())
    assert (no_files.size_bytes, no_files.size_compressed_bytes) == (None, None)


def test_measure_times_cpu_backends_and_restores_threads(tiny: tuple) -> None:
    model, onnx_path = tiny
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = measure(
            model,
            (16, 16),
            onnx_path=onnx_path,
            backends=("ort_cpu", "torch_cpu"),
            runs=20,
            warmup=1,
            threads=2,
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert set(m.latency) == {"ort_cpu", "torch_cpu"}
    for lat in m.latency.values():
        assert isinstance(lat, Latency)
        assert (lat.runs, lat.threads, lat.warmup) == (20, 2, 1)
        assert lat.median_ms > 0 and lat.iqr_ms >= 0
    assert set(m.to_dict()["latency_ms"]["ort_cpu"]) == {
        "median",
        "iqr",
        "runs",
        "threads",
        "warmup",
    }


def test_unavailable_backends_are_reported(tiny: tuple) -> None:
    model, _ = tiny
    m = measure(
        model,
        (16, 16),
        backends=("ort_cpu",) + (() if torch.cuda.is_available() else ("torch_cuda",)),
    )
    assert m.latency == {}
    assert "no ONNX artifact" in m.unavailable["ort_cpu"]
    if not torch.cuda.is_available():
        assert "CUDA is not available" in m.unavailable["torch_cuda"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_latency_unavailable_raises_cleanly(tiny: tuple) -> None:
    model, _ = tiny
    with pytest.raises(BackendUnavailable, match="CUDA is not available"):
        torch_latency(model, (1, 4, 16, 16), device="cuda")


def test_fp16_torch_cpu_latency_is_refused(tiny: tuple) -> None:
    model, _ = tiny
    with pytest.warns(RuntimeWarning):
        cast_module(model, "fp16")
    m = measure(model, (16, 16), backends=("torch_cpu",))
    assert "fp16 on the CPU" in m.unavailable["torch_cpu"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial": (30, 32)}, "divisible by 4"),
        ({"spatial": (32, 32, 32)}, "must have 2 sizes"),
        ({"spatial": (32, 32), "backends": ("tpu",)}, "unknown backend"),
        ({"spatial": (32, 32), "runs": 5}, "runs must be >= 20"),
    ],
)
def test_measure_bad_arguments(tiny: tuple, kwargs: dict, match: str) -> None:
    model, _ = tiny
    with pytest.raises(ValueError, match=match):
        measure(model, **kwargs)
