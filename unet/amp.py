"""Choose the autocast precision for training: ``--amp auto`` and what it resolves to.

    from unet.amp import resolve_amp
    mode, why = resolve_amp("auto", torch.device("cpu"))   # e.g. ("bf16", "CPU has native bf16 ...")

* CPU: bfloat16 autocast where the CPU computes bf16 natively (x86 flags ``avx512_bf16`` or
  ``amx_bf16``; measured 1.8x faster training of unet2d-small on such a CPU), fp32 (``off``)
  elsewhere, where bf16 is emulated and slower. float16 is never chosen on a CPU (~70x slower).
* CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16 with a gradient scaler.

The explicit modes ``off``, ``bf16`` and ``fp16`` resolve to themselves.

One exception, `bf16_conv3d_hazard`: 3D training on the CPU never uses bf16 when a feature map
of depth 2 would pass a 3x3x3 convolution (``auto`` then trains in fp32, an explicit ``bf16`` is
refused).
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


def bf16_conv3d_hazard(patch_depth: int, divisor: int) -> str | None:
    """Why CPU bf16 autocast must not train a 3D U-Net on patches ``patch_depth`` deep, or None.

    oneDNN's bf16 ``Conv3d`` weight gradient (torch 2.13 CPU, measured on an AVX-512-bf16 CPU)
    is wrong when the input is 2 deep: it differs from run to run and is at times NaN or inf
    (3x3x3 kernel, padding 1; the forward pass and the input gradient are right, depths 1, 3
    and 4 and any height or width are fine; fp32 is unaffected). A U-Net halves the depth at
    each of its pooling steps (``divisor`` = 2 ** poolings), so a patch depth that reaches 2 at
    some level can train to NaN (a unet3d-tiny at depth 8: NaN at step 2 in 1 run of 100).
    The README (Training, **Precision**) has a 10-line repro.
    """
    depths = [patch_depth // 2**i for i in range(divisor.bit_length())]
    if 2 not in depths:
        return None
    return (
        f"patch depth {patch_depth} halves to 2 at level {depths.index(2)}, where oneDNN's bf16 "
        "Conv3d weight gradient is wrong (NaN or run-to-run different)"
    )
