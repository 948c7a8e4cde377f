"""Choose the autocast precision for training: ``--amp auto`` and what it resolves to.

    from unet.amp import resolve_amp
    mode, why = resolve_amp("auto", torch.device("cpu"))   # e.g. ("bf16", "CPU has native bf16 ...")

* CPU: bfloat16 autocast where the CPU computes bf16 natively (x86 flags ``avx512_bf16`` or
  ``amx_bf16``; measured 1.8x faster training of unet2d-small on such a CPU), fp32 (``off``)
  elsewhere, where bf16 is emulated and slower. float16 is never chosen on a CPU (~70x slower).
* CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16 with a gradient scaler.

The explicit modes ``off``, ``bf16`` and ``fp16`` resolve to themselves.
"""

from __future__ import annotations

from pathlib import Path

import torch

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags listed in ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_amp(
    amp: str, device: torch.device, flags: frozenset[str] | None = None
) -> tuple[str, str]:
    """The concrete autocast mode (``off`` / ``bf16`` / ``fp16``) for ``amp`` and the reason.

    ``flags``: the CPU feature flags to decide on (default: this machine's, `cpu_flags`).
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp != "auto":
        return amp, "requested"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "CUDA device supports bf16"
        return "fp16", "CUDA device without bf16: fp16 with a gradient scaler"
    flags = cpu_flags() if flags is None else flags
    native = sorted(set(BF16_CPU_FLAGS) & flags)
    if native:
        return "bf16", f"CPU has native bf16 ({', '.join(native)})"
    return "off", "CPU has no native bf16 (no avx512_bf16/amx_bf16): fp32"
