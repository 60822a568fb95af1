"""Parity arithmetic and the latency harness's statistics (no timing assertions)."""
from __future__ import annotations

import numpy as np
import pytest

from polyexport.bench import measure, stats_from
from polyexport.parity import ParityCheck, compare


def test_compare_scale_relative():
    ref = np.array([[100.0, -50.0, 3.0]])
    d = compare("o", ref, ref + np.array([[0.0, 0.0009, 0.0]]), atol=0.0, rtol=1e-5)
    assert d.max_abs_err == pytest.approx(0.0009) and d.max_rel_err == pytest.approx(9e-6) and d.passed
    assert not compare("o", ref, ref + 0.002, atol=0.0, rtol=1e-5).passed
    assert compare("o", ref, ref + 0.002, atol=0.01, rtol=0.0).passed


def test_compare_rejects_shape_nan_and_sign_flip():
    ref = np.ones((2, 3))
    assert not compare("o", ref, np.ones((3, 2)), 1, 1).passed
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert not compare("o", ref, bad, 1e9, 1e9).passed
    flipped = compare("o", ref, -ref, 0.0, 1e-5)
    assert not flipped.passed and flipped.cosine < -0.99


def test_parity_check_takes_the_worst_over_batches():
    check = ParityCheck("rt", atol=0.0, rtol=1e-3)
    ref = [np.ones(4), np.full(2, 10.0)]
    check.add("a", ref, [np.ones(4), np.full(2, 10.0)])
    check.add("b", ref, [np.ones(4) * 1.5, np.full(2, 10.0)])
    r = check.result
    assert not r.passed and r.max_abs_err == 0.5 and r.worst().name == "b/output0"
    check2 = ParityCheck("rt")
    check2.add("a", ref, ref[:1])
    assert not check2.result.passed and "outputs" in check2.result.error


def test_stats_and_measure_stopping_rule():
    s = stats_from([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.p50 == 3.0 and s.p50 <= s.p90 <= s.p99 and s.min == 1.0 and s.n == 5 and s.cov > 1
    calls = []
    out = measure(lambda: calls.append(1), warmup=2, warmup_s=0.0, min_iters=7, min_time_s=0.0)
    assert out.n == 7 and len(calls) >= 9  # warm-up calls are not timed
