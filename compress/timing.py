"""Timing core: run statistics, timed calls, and paired rounds of a candidate and its reference.

    from compress.timing import paired_latency, time_calls, latency_stats
    times = time_calls(call, runs=30, warmup=5)                   # seconds per run
    latency_stats(times, threads=2, warmup=5).median_ms
    p = paired_latency(candidate_call, reference_call, threads=2, rounds=30, warmup=5)
    p.speedup, p.speedup_iqr        # median and IQR of the per-round ratios reference / candidate
    p.candidate.median_ms           # absolute medians, for information only

**Paired latency.** Timings taken minutes apart on a shared machine cannot carry a speed-up: a
background job that starts between the two measurements moves one side only (the default
sweep once timed a model structurally identical to its baseline at 16 ms against 6.9 ms).
`paired_latency` runs both sides inside every round, back to back, with the same input and
thread count, so load that lasts longer than one round slows both and cancels in their ratio.
The order inside a round alternates (candidate first in even rounds, reference first in odd
rounds: ABBA...), so neither side profits systematically from caches the other warmed or
from a frequency ramp. The speed-up is the median of the per-round ratios, with its quartiles.

Everything here takes zero-argument calls and knows nothing about backends; the calls for ONNX
Runtime sessions, OpenVINO compiled models and PyTorch modules come from `compress.runners`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np

MIN_RUNS = 20
DEFAULT_RUNS = 30
DEFAULT_WARMUP = 5


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
    _check_counts("time_calls", "runs", runs, warmup)
    for _ in range(warmup):
        fn()
    return [_timed(fn, clock, sync) for _ in range(runs)]


def _check_counts(where: str, name: str, runs: int, warmup: int) -> None:
    if runs < MIN_RUNS:
        raise ValueError(f"{where}: {name} must be >= {MIN_RUNS}, got {runs}")
    if warmup < 0:
        raise ValueError(f"{where}: warmup must be >= 0, got {warmup}")


def _timed(
    fn: Callable[[], object], clock: Callable[[], float], sync: Callable[[], None] | None
) -> float:
    """Seconds one call of ``fn`` takes; ``sync`` before each clock read (asynchronous work)."""
    if sync:
        sync()
    start = clock()
    fn()
    if sync:
        sync()
    return clock() - start


@dataclass(frozen=True)
class PairedLatency:
    """A paired comparison: speed-up = median over rounds of reference time / candidate time."""

    speedup: float
    speedup_q25: float
    speedup_q75: float
    candidate: Latency
    reference: Latency

    @property
    def speedup_iqr(self) -> float:
        """Inter-quartile range of the per-round ratios (75th - 25th percentile)."""
        return self.speedup_q75 - self.speedup_q25

    @property
    def rounds(self) -> int:
        return self.candidate.runs

    def to_dict(self) -> dict[str, Any]:
        """The ``paired`` entry of ``metrics.json``: ratio statistics plus both sides' latency."""
        return {
            "speedup": self.speedup,
            "speedup_iqr": self.speedup_iqr,
            "speedup_q25": self.speedup_q25,
            "speedup_q75": self.speedup_q75,
            "rounds": self.rounds,
            "candidate_ms": self.candidate.to_dict(),
            "reference_ms": self.reference.to_dict(),
        }


def paired_times(
    candidate: Callable[[], object],
    reference: Callable[[], object],
    *,
    rounds: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    clock: Callable[[], float] = perf_counter,
    sync: Callable[[], None] | None = None,
) -> tuple[list[float], list[float]]:
    """(candidate, reference) durations in seconds of ``rounds`` alternating rounds.

    Both calls run ``warmup`` times untimed first (interleaved too). In round ``i`` the
    candidate runs first when ``i`` is even, the reference first when it is odd. ``sync``
    (e.g. ``torch.cuda.synchronize``) runs before each clock read of asynchronous work.
    """
    _check_counts("paired_times", "rounds", rounds, warmup)
    for _ in range(warmup):
        candidate()
        reference()

    cand, ref = [], []
    for i in range(rounds):
        if i % 2 == 0:
            cand.append(_timed(candidate, clock, sync))
            ref.append(_timed(reference, clock, sync))
        else:
            ref.append(_timed(reference, clock, sync))
            cand.append(_timed(candidate, clock, sync))
    return cand, ref


def paired_stats(
    candidate_s: list[float], reference_s: list[float], *, threads: int, warmup: int
) -> PairedLatency:
    """Statistics of paired durations (seconds): per-round ratio quartiles, both sides' latency."""
    if len(candidate_s) != len(reference_s) or not candidate_s:
        raise ValueError(
            f"paired_stats: need equally many timings, got {len(candidate_s)} and "
            f"{len(reference_s)}"
        )
    cand = np.asarray(candidate_s, dtype=np.float64)
    ref = np.asarray(reference_s, dtype=np.float64)
    if np.any(cand <= 0):
        raise ValueError("paired_stats: candidate timings must be > 0 s")
    q25, q50, q75 = np.percentile(ref / cand, [25, 50, 75])
    return PairedLatency(
        speedup=float(q50),
        speedup_q25=float(q25),
        speedup_q75=float(q75),
        candidate=latency_stats(candidate_s, threads=threads, warmup=warmup),
        reference=latency_stats(reference_s, threads=threads, warmup=warmup),
    )


def paired_latency(
    candidate: Callable[[], object],
    reference: Callable[[], object],
    *,
    threads: int,
    rounds: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    clock: Callable[[], float] = perf_counter,
    sync: Callable[[], None] | None = None,
) -> PairedLatency:
    """Time ``candidate`` against ``reference`` in alternating rounds; see `paired_times`.

    ``threads`` is recorded, not set: build both calls with the same thread count
    (`compress.runners.latency_call` does).
    """
    cand, ref = paired_times(
        candidate, reference, rounds=rounds, warmup=warmup, clock=clock, sync=sync
    )
    return paired_stats(cand, ref, threads=threads, warmup=warmup)
