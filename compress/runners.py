"""Latency backends: which ones run here, and a zero-argument timed call for each.

    from compress.runners import fastest_cpu_backend, latency_call, unavailable_reason
    backend = fastest_cpu_backend()              # "ov_cpu" if openvino + nncf import, else "ort_cpu"
    call = latency_call(backend, "runs/model.onnx", (1, 4, 128, 128), threads=2)
    call()                                               # one batch-1 forward on a fixed input

Backends and the artifact each runs (its runtime, as in `compress.recipe.Recipe.runtime`):

| backend | runtime | artifact | where |
|---|---|---|---|
| ``ort_cpu`` | ort | ONNX | ONNX Runtime, CPU provider |
| ``ort_cuda`` | ort | ONNX | ONNX Runtime, CUDA provider |
| ``ov_cpu`` | openvino | ONNX (or IR ``.xml``) | OpenVINO CPU plugin, explicit precision hint |
| ``torch_cpu`` | torch | ``nn.Module`` | PyTorch eager, inference mode |
| ``torch_cuda`` | torch | ``nn.Module`` | PyTorch eager on the GPU |

A call holds its session / compiled model / module open for as long as it lives, so a sweep
keeps its reference's call for the whole study and times every trial against it
(`compress.timing.paired_latency`). The input is a fixed random array (seed 0) of the given
shape. torch calls use torch's global thread count: wrap timing in `torch_threads`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress import openvino

RUNTIMES = {
    "ort_cpu": "ort",
    "ort_cuda": "ort",
    "ov_cpu": "openvino",
    "torch_cpu": "torch",
    "torch_cuda": "torch",
}
LATENCY_BACKENDS = ("ort_cpu", "ov_cpu", "torch_cuda", "ort_cuda")  # a sweep's deployment targets


def example_input(shape: Sequence[int]) -> np.ndarray:
    """The fixed latency input: standard normal float32 of ``shape``, seed 0."""
    return np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine (one phrase), or None when it can."""
    if backend not in RUNTIMES:
        raise ValueError(f"unknown latency backend {backend!r}; known: {tuple(RUNTIMES)}")
    if backend == "ov_cpu":
        return openvino.unavailable_reason()
    if backend.endswith("_cuda") and not torch.cuda.is_available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    if backend == "ort_cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return (
                "this onnxruntime build has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
            )
    return None


def fastest_cpu_backend() -> str:
    """The default deployment target: ``ov_cpu`` when openvino and nncf (its int8) are
    installed, else ``ort_cpu``.

    Measured on this machine kind (FACTS.md): OpenVINO f32 is on par with ONNX Runtime fp32
    and its NNCF int8 runs 3.8-4.3x faster than ORT fp32, where ORT's own int8 gives 1.3-2.3x;
    on the AVX2-only machine of the README's tables NNCF int8 is 1.54x OpenVINO f32 on
    `unet2d-medium`, ORT int8 1.20x ORT fp32.
    """
    found = all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))
    return "ov_cpu" if found else "ort_cpu"


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Set torch's CPU thread count for the block; restore the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def latency_call(
    backend: str,
    artifact: str | os.PathLike[str] | nn.Module,
    input_shape: Sequence[int],
    *,
    threads: int,
    precision: str = "fp32",
) -> Callable[[], object]:
    """A zero-argument call running ``artifact`` once on ``backend`` at ``input_shape``.

    ``artifact``: an ONNX path (``ort_*``), an ONNX or IR ``.xml`` path (``ov_cpu``), or an
    ``nn.Module`` in its deployed dtype (``torch_*``). ``precision`` picks OpenVINO's hint
    (`compress.openvino.compile_config`). Raises `RuntimeError` subclasses from the runtimes
    when the backend is unavailable (see `unavailable_reason`).
    """
    x = example_input(input_shape)
    runtime = RUNTIMES.get(backend)
    if runtime is None:
        raise ValueError(f"unknown latency backend {backend!r}; known: {tuple(RUNTIMES)}")
    if runtime == "torch":
        if not isinstance(artifact, nn.Module):
            raise TypeError(f"{backend}: the artifact must be an nn.Module, got {artifact!r}")
        device = backend.removeprefix("torch_")
        param = next(artifact.parameters())
        module = artifact.to(device).eval()
        xt = torch.from_numpy(x).to(device=device, dtype=param.dtype)

        def call_torch() -> object:
            with torch.inference_mode():
                return module(xt)

        return call_torch
    if isinstance(artifact, nn.Module):
        raise TypeError(f"{backend}: the artifact must be a model file, got a module")
    if runtime == "openvino":
        compiled = openvino.compile_ir(Path(artifact), precision, threads=threads)
        request = compiled.create_infer_request()
        return lambda: request.infer({0: x})
    from compress.export import ort_session

    # no spinning: paired rounds alternate two sessions on the same cores (see ort_session)
    session = ort_session(
        artifact, threads=threads, provider=backend.removeprefix("ort_"), spinning=False
    )
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def reference_calls(
    model: nn.Module, input_shape: Sequence[int], backends: Iterable[str], *, threads: int
) -> dict[str, Callable[[], object]]:
    """The reference's timed calls, one per backend that runs here: ``model`` in fp32 (its ONNX
    export for ``ort_*`` / ``ov_cpu`` with the f32 hint, a copy of the module for ``torch_*``).

    Keep the returned dict alive for as long as candidates are compared with it (a sweep
    worker keeps it for the whole study); the temporary ONNX file is gone when this returns.
    """
    from compress.export import export_onnx

    calls: dict[str, Callable[[], object]] = {}
    wanted = [b for b in dict.fromkeys(backends) if unavailable_reason(b) is None]
    with tempfile.TemporaryDirectory(prefix="unet-compress-reference-") as tmp:
        onnx_path = None
        for backend in wanted:
            if RUNTIMES[backend] == "torch":
                target: str | os.PathLike[str] | nn.Module = copy.deepcopy(model).float()
            else:
                onnx_path = onnx_path or export_onnx(model, Path(tmp) / "reference.onnx")
                target = onnx_path
            calls[backend] = latency_call(backend, target, input_shape, threads=threads)
    return calls
