"""The channel multiple this CPU's vector units want: ``round_to`` for structured pruning.

    from compress.simd import cpu_flags, default_round_to
    default_round_to()                         # 16 on an AVX-512 CPU, 8 on AVX2, ...
    default_round_to(cpu_flags(), "int8")      # int8: follows the VNNI width
    default_round_to({"avx2", "fma"})          # 8: any feature set, e.g. in tests

Convolution kernels (oneDNN in ONNX Runtime and OpenVINO, PyTorch's mkldnn) block channels by
the SIMD width: a layer of 50 channels runs as 64 on AVX-512 (16 fp32 lanes), padding the last
block with zeros, so pruning 64 -> 50 buys nothing. Widths rounded to the width make the
removed MACs removed time. The rules (first match wins):

| precision | feature (``/proc/cpuinfo`` flag) | round_to | why |
|---|---|---|---|
| int8 | ``avx512_vnni`` or ``amx_int8`` | 16 | 512-bit VPDPBUSD: 16 int32 outputs of 4 uint8 x int8 products |
| int8 | ``avx_vnni`` | 8 | the same on 256-bit registers |
| any | ``avx512f`` | 16 | 16 fp32 lanes |
| any | ``avx2`` or ``avx`` | 8 | 8 fp32 lanes |
| any | ``asimd`` / ``neon`` (Arm), ``sse2`` | 4 | 4 fp32 lanes |
| any | none of these (unknown CPU) | 1 | no rounding |

Flags are read from ``/proc/cpuinfo`` (Linux); elsewhere the set is empty and the answer 1.
"""

from __future__ import annotations

from collections.abc import Iterable

from unet.amp import cpu_flags

__all__ = ["RULES", "cpu_flags", "default_round_to"]

# (precision it applies to or None for all, flags any of which match, round_to)
RULES: tuple[tuple[str | None, frozenset[str], int], ...] = (
    ("int8", frozenset({"avx512_vnni", "amx_int8"}), 16),
    ("int8", frozenset({"avx_vnni"}), 8),
    (None, frozenset({"avx512f"}), 16),
    (None, frozenset({"avx2", "avx"}), 8),
    (None, frozenset({"asimd", "neon", "sse2"}), 4),
)


def default_round_to(flags: Iterable[str] | None = None, precision: str = "fp32") -> int:
    """The channel multiple for ``precision`` on a CPU with ``flags`` (default: this CPU's)."""
    have = cpu_flags() if flags is None else frozenset(flags)
    for applies_to, needed, round_to in RULES:
        if applies_to in (None, precision) and have & needed:
            return round_to
    return 1
