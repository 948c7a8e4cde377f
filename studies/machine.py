"""What machine a measurement ran on: CPU model, cores, threads, GPU, library versions.

    python -m studies.machine          # prints the Markdown block that reports embed

Latencies mean nothing without it, so every sweep stores it in its study and `studies.report`
prints it.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "torch",
    "torch-pruning",
    "onnx",
    "onnxruntime",
    "openvino",
    "nncf",
    "optuna",
    "numpy",
    "scipy",
    "h5py",
    "unet-compress",
)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide speed and results."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """A JSON-able description of this machine; ``threads`` = the thread count used."""
    import torch

    from compress.simd import cpu_flags, default_round_to

    flags = cpu_flags()
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("asimd", "sve"))
    return {
        "cpu": cpu_model(),
        "cpu_vector_flags": vector,
        "round_to": {"fp32": default_round_to(flags), "int8": default_round_to(flags, "int8")},
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


def machine_markdown(info: dict[str, Any]) -> str:
    """A short Markdown list of `machine_info`."""
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    lines = [
        f"- CPU: {info['cpu']} ({info['cores']} logical cores), "
        f"{info['threads']} thread(s) per worker for PyTorch and ONNX Runtime",
        f"- Vector units: {' '.join(info.get('cpu_vector_flags', [])) or 'not recorded'}"
        + (
            f" (default round_to fp32 {info['round_to']['fp32']}, int8 {info['round_to']['int8']})"
            if "round_to" in info
            else ""
        ),
        f"- GPU: {info['gpu'] or 'none'}",
        f"- OS: {info['os']}, Python {info['python']}",
        f"- Libraries: {libs}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(machine_markdown(machine_info()))
