"""round_to from the CPU's vector features: faked feature sets and faked /proc/cpuinfo files."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.simd import cpu_flags, default_round_to

ZEN4 = {"sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
ZEN3 = {"sse2", "avx", "avx2", "fma"}
ALDER_LAKE = {"sse2", "avx", "avx2", "fma", "avx_vnni"}
SAPPHIRE_RAPIDS = {"sse2", "avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16"}
SKYLAKE_X = {"sse2", "avx2", "avx512f"}
GRAVITON = {"fp", "asimd", "asimddp"}


@pytest.mark.parametrize(
    ("flags", "precision", "expected"),
    [
        (ZEN4, "fp32", 16),
        (ZEN4, "int8", 16),
        (ZEN3, "fp32", 8),
        (ZEN3, "int8", 8),  # no VNNI: the fp32 lane count
        (ALDER_LAKE, "fp32", 8),
        (ALDER_LAKE, "int8", 8),
        (SAPPHIRE_RAPIDS, "int8", 16),
        (SKYLAKE_X, "int8", 16),
        (GRAVITON, "fp32", 4),
        ({"sse2"}, "fp32", 4),
        (set(), "fp32", 1),
        ({"vme", "pse"}, "int8", 1),
    ],
)
def test_default_round_to(flags: set, precision: str, expected: int) -> None:
    assert default_round_to(flags, precision) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n\nprocessor\t: 1\nflags\t: fpu\n", 16),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm\n", 4),
        ("processor\t: 0\nmodel name\t: something\n", 1),
    ],
)
def test_cpu_flags_from_cpuinfo(tmp_path: Path, text: str, expected: int) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert default_round_to(cpu_flags(path)) == expected


def test_missing_cpuinfo_is_an_unknown_cpu(tmp_path: Path) -> None:
    assert cpu_flags(tmp_path / "nope") == frozenset()
    assert default_round_to(cpu_flags(tmp_path / "nope")) == 1
