"""Parity arithmetic and the latency harness's statistics (no timing assertions)."""
from __future__ import annotations

import numpy as np
import pytest

from polyexport.bench import measure, stats_from
from polyexport.parity import Tolerance, compare, judge
from polyexport.runs import RunResult


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


def test_judge_takes_the_worst_over_batches():
    ref = [np.ones(4), np.full(2, 10.0)]
    run = RunResult("rt", {"a": [np.ones(4), np.full(2, 10.0)], "b": [np.ones(4) * 1.5, np.full(2, 10.0)]})
    r = judge(run, {"a": ref, "b": ref}, Tolerance(0.0, 1e-3))
    assert not r.passed and r.max_abs_err == 0.5 and r.worst().name == "b/output0"
    short = judge(RunResult("rt", {"a": ref[:1]}), {"a": ref}, Tolerance())
    assert not short.passed and "outputs" in short.error
    failed = judge(RunResult("rt", error="rt failed running input a (1x4): Boom"), {"a": ref}, Tolerance())
    assert not failed.passed and failed.as_dict()["error"].endswith("Boom")


def test_tolerance_none_follows_the_precision_that_ran():
    ref = {"a": [np.linspace(1, 2, 10)]}
    off = {"a": [np.linspace(1, 2, 10) * 1.001]}  # 1e-3: too much for fp32, fine for fp16
    assert not judge(RunResult("rt", off, precision="fp32"), ref, Tolerance(None, None)).passed
    assert judge(RunResult("rt", off, precision="fp16"), ref, Tolerance(None, None)).passed


def test_stats_and_measure_stopping_rule():
    s = stats_from([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.p50 == 3.0 and s.p50 <= s.p90 <= s.p99 and s.min == 1.0 and s.n == 5 and s.cov > 1
    calls = []
    out = measure(lambda: calls.append(1), warmup=2, warmup_s=0.0, min_iters=7, min_time_s=0.0)
    assert out.n == 7 and len(calls) >= 9  # warm-up calls are not timed


def test_nan_in_the_reference_or_the_runtime_never_passes():
    ref = np.ones((2, 3))
    ref[1, 2] = np.nan
    both = compare("o", ref, ref.copy(), 1e9, 1e9)
    assert not both.passed and "reference itself has 1 NaN/Inf" in both.problem and "same places" in both.problem
    got = np.ones((2, 3))
    got[0, 0] = np.inf
    only_runtime = compare("o", np.ones((2, 3)), got, 1e9, 1e9)
    assert not only_runtime.passed and "where PyTorch's output is finite" in only_runtime.problem
    r = judge(RunResult("rt", {"a": [np.full((2, 3), np.nan)]}), {"a": [np.full((2, 3), np.nan)]}, Tolerance()).as_dict()
    assert not r["passed"] and r["problems"] and np.isnan(r["cosine"])


def test_cosine_of_a_zero_output_is_undefined_not_one():
    z = np.zeros((2, 4))
    d = compare("o", z, z, 0.0, 1e-4)
    assert d.passed and np.isnan(d.cosine)


def test_noise_floor_widens_the_tolerance_only_as_far_as_the_multiple():
    from polyexport.parity import NOISE_MULTIPLE

    ref = np.linspace(-1, 1, 100)
    noise = 2e-4  # a deep net's own fp32 rounding, relative to its scale
    within = ref + 1.5 * noise  # what two exact fp32 computations of it differ by
    assert not compare("o", ref, within, 0.0, 1e-4).passed  # the fixed rule alone fails an exact rewrite
    assert compare("o", ref, within, 0.0, 1e-4, noise).passed
    assert compare("o", ref, within, 0.0, 1e-4, noise).limit == NOISE_MULTIPLE * noise
    assert not compare("o", ref, ref + 1e-3, 0.0, 1e-4, noise).passed  # a planted 1e-3 error still fails


def test_reference_warnings_name_degenerate_outputs():
    from polyexport.parity import reference_warnings

    refs = {"a": [np.zeros((2, 3)), np.full(4, 7.0), np.array([1.0, np.nan]), np.arange(3.0)],
            "b": [np.zeros((1, 3)), np.full(4, 7.0), np.array([1.0, 2.0]), np.arange(3.0) * 2]}
    w = reference_warnings(refs)
    assert len(w) == 3 and "output 0 is all zeros" in w[0] and "output 1 is the constant 7" in w[1] and "output 2 has 1 NaN/Inf" in w[2]


def test_reference_warnings_name_an_output_the_input_barely_moves():
    """Default-initialised EfficientNet-B0's logits are the same for every input (and the zoo's random one moves them by
    2e-6 of their scale): parity, allowing 1e-4, cannot tell such a model from one that ignores its input."""
    from polyexport.parity import reference_warnings

    base = np.linspace(-1.0, 1.0, 10)
    flat = reference_warnings({"a": [base], "b": [base + 2e-6], "c": [base - 1e-6]}, rtol=1e-4)
    assert len(flat) == 1 and "output 0 barely depends on the input" in flat[0] and "2e-06" in flat[0]
    assert reference_warnings({"a": [base], "b": [base + 0.05]}, rtol=1e-4) == []
    assert reference_warnings({"a": [base], "b": [base + 2e-6]}, rtol=1e-6) == []  # the tolerance asked decides
    assert reference_warnings({"a": [base], "b": [np.linspace(-1.0, 1.0, 12)]}) == []  # other batch: not compared


def test_race_drops_clear_losers_early_and_keeps_close_ones_to_the_end(monkeypatch):
    """bench.race with the measurements fixed (the timer replaced): a form over drop_at_once × the best leaves
    after round 1, one over drop_above × after min_rounds, and a close pair runs every repeat. What the form
    choice relies on to spend its time on the forms that can still win."""
    import polyexport.bench as bench

    latency = {"best": 1.0, "close": 1.1, "slower": 1.5, "far": 3.0}
    rounds = {k: 0 for k in latency}

    def fake_measure(fn, **kw):
        name = fn()
        rounds[name] += 1
        return stats_from([latency[name]] * 3)

    monkeypatch.setattr(bench, "measure", fake_measure)
    dropped = []
    out = bench.race({k: (lambda k=k: k) for k in latency}, repeats=5, drop_above=1.3, min_rounds=2, drop_at_once=2.0,
                     on_drop=dropped.append)
    assert rounds == {"best": 5, "close": 5, "slower": 2, "far": 1}, rounds
    assert dropped == ["far", "slower"] and out == latency


def test_race_ends_on_a_tie_and_warms_up_once(monkeypatch):
    """With `tie`, a race whose survivors are all within tie × the best after min_rounds ends there (which of them
    wins costs at most that), while a wider pair runs on; only each alternative's first round warms up."""
    import polyexport.bench as bench

    latency = {"a": 1.0, "b": 1.01, "c": 1.2}
    calls = []

    def fake_measure(fn, **kw):
        name = fn()
        calls.append((name, kw["warmup"], kw["warmup_s"]))
        return stats_from([latency[name]] * 3)

    monkeypatch.setattr(bench, "measure", fake_measure)
    fns = {k: (lambda k=k: k) for k in latency}
    bench.race({k: fns[k] for k in "ab"}, repeats=5, min_rounds=3, tie=1.02, warmup=4, warmup_s=0.5)
    assert [c[0] for c in calls] == list("ab" * 3), calls  # tied after round 3: no rounds 4 and 5
    assert [c[1:] for c in calls] == [(4, 0.5)] * 2 + [(1, 0.0)] * 4, calls
    calls.clear()
    bench.race({k: fns[k] for k in "ac"}, repeats=5, min_rounds=3, tie=1.02, warmup=4, warmup_s=0.5)
    assert [c[0] for c in calls] == list("ac" * 5), calls  # 1.2× apart: beyond the tie, within drop_above
