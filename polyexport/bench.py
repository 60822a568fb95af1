"""One latency harness for every runner: the same warm-up, stopping rule and statistics.

Warm up (count and time), then time single calls until both a minimum count and a minimum time
are reached (or a time cap), and report median/p90/p99/mean and the coefficient of variation,
so a noisy machine shows up as a high CoV rather than as a wrong number.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class LatencyStats:
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    cov: float  # standard deviation / mean
    n: int

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def stats_from(samples_ms: list[float]) -> LatencyStats:
    a = np.asarray(samples_ms, dtype=np.float64)
    mean = float(a.mean())
    cov = float(a.std(ddof=1) / mean) if len(a) > 1 and mean > 0 else 0.0
    return LatencyStats(float(np.median(a)), float(np.percentile(a, 90)), float(np.percentile(a, 99)), mean, float(a.min()), cov, len(a))


def measure(fn: Callable[[], object], *, warmup: int = 5, warmup_s: float = 0.2, min_iters: int = 20,
            min_time_s: float = 1.0, max_time_s: float = 30.0) -> LatencyStats:
    """Latency of `fn()` in milliseconds."""
    t_end = time.perf_counter() + warmup_s
    for i in range(max(warmup, 1)):
        fn()
    while time.perf_counter() < t_end:
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start
        if (len(samples) >= min_iters and elapsed >= min_time_s) or elapsed >= max_time_s:
            return stats_from(samples)


def interleaved_medians(fns: dict[str, Callable[[], object]], *, repeats: int = 5, **kw) -> dict[str, list[float]]:
    """Time several alternatives in turns (A B C A B C …) so drift hits all alike: each one's median per
    repeat, in order, so repeat i of A and of B can be paired (their ratio shows the noise between them)."""
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            per[k].append(measure(fn, **kw).p50)
    return per


def interleaved(fns: dict[str, Callable[[], object]], *, repeats: int = 5, **kw) -> dict[str, LatencyStats]:
    """Time several alternatives in turns (A B C A B C …) so drift hits all alike; medians of repeats."""
    return {k: stats_from(v) for k, v in interleaved_medians(fns, repeats=repeats, **kw).items()}


def median(values: list[float]) -> float:
    return statistics.median(values)


def race(fns: dict[str, Callable[[], object]], *, repeats: int = 5, drop_above: float = 1.3, min_rounds: int = 2,
         drop_at_once: float = 2.0, tie: float | None = None, on_drop: Callable[[str], None] | None = None,
         **kw) -> dict[str, float]:
    """Interleaved repeats (as `interleaved`) that stop timing an alternative once it is clearly slower: after
    `min_rounds`, one whose median so far is above `drop_above` × the best's leaves the race (`on_drop(name)`,
    e.g. to free its session), and the race ends when one is left; one above `drop_at_once` × the best's
    leaves after the first round already. With `tie`, the race also ends after `min_rounds` once every one left
    is within `tie` × the best's: which of them wins then costs at most that. Returns each one's median p50
    (ms) over the rounds it ran. A choice needs the winner, not the losers' exact times: a form 3× slower is
    known after one round (the noise between two rounds here stays well under 2×), and a close pair still gets
    every repeat. Only the first round warms up (`warmup`, `warmup_s`): a session stays warm between rounds."""
    per: dict[str, list[float]] = {k: [] for k in fns}
    alive = list(fns)
    warm = {**kw, "warmup": 1, "warmup_s": 0.0}
    for round_ in range(repeats):
        for k in alive:
            per[k].append(measure(fns[k], **(kw if round_ == 0 else warm)).p50)
        done = round_ + 1 >= min_rounds
        if len(alive) > 1:
            best = min(statistics.median(per[k]) for k in alive)
            limit = (drop_above if done else drop_at_once) * best
            for k in [k for k in alive if statistics.median(per[k]) > limit]:
                alive.remove(k)
                if on_drop:
                    on_drop(k)
            if done and tie is not None and all(statistics.median(per[k]) <= tie * best for k in alive):
                break
        if len(alive) == 1 and done:
            break
    return {k: statistics.median(v) for k, v in per.items() if v}
