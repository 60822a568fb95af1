"""Compare a runtime's outputs with the PyTorch reference: one verdict per runtime.

Scale-relative error is what a user can read across models: max |got − ref| / max |ref|, beside
the absolute error and the cosine similarity. A runtime passes when, for every output of every
input batch, max_abs_err ≤ atol + max(rtol, NOISE_MULTIPLE·noise floor)·max|ref| and nothing is NaN/Inf
(in the reference either: a NaN in both is reported as such, never as agreement).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


from .precision import DEFAULT_ATOL, DEFAULT_RTOL, tolerances  # the tolerance policy lives there


#: A deep network's own fp32 rounding can exceed a fixed rtol although the rewrite is exact (DCD's official
#: MobileNetV2 is 1.3e-4 of its scale away from its own float64 copy). So each output is also judged against
#: that model's noise floor: its fp32 output vs the same model in float64 on the same input (noise_floor.py),
#: relative to the output's scale. A stage passes within atol + max(rtol, NOISE_MULTIPLE·noise)·scale.
#: Measured (`python benchmarks/precision.py --noise-floor`, results/noise_floor.md): where the floor is 1e-6
#: and more, every stage on every runtime differs from PyTorch by at most 1.9× the floor (the zoo's DCD
#: MobileNetV2: 1.35–1.87×; the official MobileNetV2-DCD: 2.3e-4 against 1.3e-4, 1.8×); near fp32's
#: resolution (floors of 1e-7) the ratio reaches 6 but counts ulps, and 4·floor is then far below rtol, so it
#: never decides. 4 is about twice the largest ratio that can decide, and low enough that a planted error of
#: 1e-3 of the scale still fails on every model whose floor is below 2.5e-4 (tests/test_reference_quality.py).
NOISE_MULTIPLE = 4.0


@dataclass
class OutputDiff:
    name: str
    max_abs_err: float
    max_rel_err: float  # relative to max |ref|
    cosine: float  # NaN where undefined (an all-zero output)
    scale: float
    passed: bool
    limit: float = float("nan")  # the absolute error allowed: atol + max(rtol, NOISE_MULTIPLE·noise)·scale
    noise: float = 0.0  # the reference model's own fp32 noise floor for this output (relative to scale)
    problem: str | None = None  # why it failed other than by size: a shape, NaN/Inf


@dataclass
class ParityResult:
    runtime: str
    atol: float
    rtol: float
    outputs: list[OutputDiff] = field(default_factory=list)
    error: str | None = None  # a runtime that failed to run at all
    precision: str = "fp32"  # what the runtime ran (precision.normalize of its own report)
    samples: int = 0  # rows of (N, C) logit-like outputs compared for top-k agreement
    top1_agree: int = 0
    top5_agree: int = 0
    noise_multiple: float = NOISE_MULTIPLE

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.outputs) and all(o.passed for o in self.outputs)

    @property
    def max_abs_err(self) -> float:
        return max((o.max_abs_err for o in self.outputs), default=float("nan"))

    @property
    def max_rel_err(self) -> float:
        return max((o.max_rel_err for o in self.outputs), default=float("nan"))

    @property
    def cosine(self) -> float:
        """The lowest cosine over the outputs where it is defined (NaN: none is, e.g. only empty or all-zero outputs)."""
        values = [o.cosine for o in self.outputs if not np.isnan(o.cosine)]
        return min(values) if values else float("nan")

    @property
    def noise_floor(self) -> float:
        return max((o.noise for o in self.outputs), default=0.0)

    @property
    def problems(self) -> list[str]:
        return list(dict.fromkeys(f"{o.name}: {o.problem}" for o in self.outputs if o.problem))

    def worst(self) -> OutputDiff | None:
        return max(self.outputs, key=lambda o: o.max_rel_err, default=None)

    def as_dict(self) -> dict:
        d = {"max_abs_err": self.max_abs_err, "max_rel_err": self.max_rel_err, "cosine": self.cosine,
             "passed": self.passed, "atol": self.atol, "rtol": self.rtol, "comparisons": len(self.outputs),
             "precision": self.precision, "noise_floor": self.noise_floor, "noise_multiple": self.noise_multiple,
             "effective_rtol": max(self.rtol, self.noise_multiple * self.noise_floor)}
        if self.samples:
            d.update(top1_agreement=self.top1_agree / self.samples, top5_agreement=self.top5_agree / self.samples,
                     topk_samples=self.samples)
        if self.problems:
            d["problems"] = self.problems[:5]
        if self.error:
            d["error"] = self.error
        return d


def compare(name: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float, noise: float = 0.0,
            noise_multiple: float = NOISE_MULTIPLE) -> OutputDiff:
    """One output against PyTorch's: passes within atol + max(rtol, noise_multiple·noise)·max|ref|, and never
    where either side has NaN/Inf (a NaN in both is a failure that says so, not agreement)."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        return OutputDiff(name, float("inf"), float("inf"), float("nan"), 0.0, False, noise=noise,
                          problem=f"shape {got.shape} where PyTorch gives {ref.shape}")
    bad_ref, bad_got = ~np.isfinite(ref), ~np.isfinite(got)
    if bad_ref.any() or bad_got.any():
        if bad_ref.any():
            same = np.array_equal(bad_ref, bad_got)
            problem = (f"the PyTorch reference itself has {int(bad_ref.sum())} NaN/Inf value(s)"
                       + (" (the runtime's output has them at the same places)" if same else ""))
        else:
            problem = f"{int(bad_got.sum())} NaN/Inf value(s) where PyTorch's output is finite"
        return OutputDiff(name, float("inf"), float("inf"), float("nan"), 0.0, False, noise=noise, problem=problem)
    max_abs = float(np.abs(got - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    a, b = ref.ravel(), got.ravel()
    # numpy's own pairwise sums, not BLAS (np.linalg.norm, @): OpenBLAS threads were seen to spin
    # forever next to the runtimes' thread pools in forked workers; float64 keeps this exact enough
    na, nb = np.sqrt(np.sum(a * a)), np.sqrt(np.sum(b * b))
    cos = float(np.sum(a * b) / (na * nb)) if na > 0 and nb > 0 else float("nan")  # undefined for a zero output
    limit = atol + max(rtol, noise_multiple * noise) * scale
    return OutputDiff(name, max_abs, rel, cos, scale, max_abs <= limit, limit, noise)


def reference_warnings(refs: dict[str, list[np.ndarray]], rtol: float = 1e-4) -> list[str]:
    """What makes the PyTorch reference a poor witness, said before any comparison: an output that is
    NaN/Inf somewhere, all zero, one constant value for every input, or the same values for every input within
    `rtol` of its scale (parity, which allows that much, then cannot tell the model from one that ignores its
    input: untrained weights whose activations die out, as default-initialised EfficientNets' do)."""
    warnings = []
    labels = list(refs)
    for i in range(len(refs[labels[0]]) if labels else 0):
        outs = [np.asarray(refs[label][i], dtype=np.float64) for label in labels]
        name = f"output {i}"
        nonfinite = sum(int((~np.isfinite(o)).sum()) for o in outs)
        if nonfinite:
            warnings.append(f"the PyTorch reference's {name} has {nonfinite} NaN/Inf value(s): parity cannot pass")
        elif all(o.size and not np.any(o) for o in outs):
            warnings.append(f"the PyTorch reference's {name} is all zeros for every input: parity proves little "
                            "(a layer that returns zeros on this machine, e.g. a CUDA-only kernel, or dead weights?)")
        elif all(o.size and np.ptp(o) == 0 for o in outs) and len({float(o.flat[0]) for o in outs}) == 1:
            warnings.append(f"the PyTorch reference's {name} is the constant {float(outs[0].flat[0]):g} for every input: "
                            "parity proves little")
        elif len(same := [o for o in outs if o.shape == outs[0].shape]) > 1:
            scale = max(float(np.abs(o).max()) for o in same)
            spread = max(float(np.abs(o - same[0]).max()) for o in same[1:])
            if scale > 0 and spread <= rtol * scale:
                warnings.append(f"the PyTorch reference's {name} barely depends on the input: {len(same)} random inputs move it by "
                                f"{spread / scale:.1g} of its scale, within the {rtol:g} tolerance, so parity cannot tell the model "
                                "from one that ignores its input (untrained weights whose activations die out? give trained ones)")
    return warnings


def topk_agreement(ref: np.ndarray, got: np.ndarray, k: int = 5) -> tuple[int, int, int]:
    """For (N, C) logit-like outputs: (rows, rows with the same top-1 class, rows with the same set of
    top-k classes). What a classifier's user reads: does the deployed model give the same answers?"""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.ndim != 2 or ref.shape != got.shape or ref.shape[1] < 2:
        return 0, 0, 0
    k = min(k, ref.shape[1])
    same1 = int(np.sum(np.argmax(ref, 1) == np.argmax(got, 1)))
    top_r = np.sort(np.argsort(-ref, 1, kind="stable")[:, :k], 1)
    top_g = np.sort(np.argsort(-got, 1, kind="stable")[:, :k], 1)
    samek = int(np.sum(np.all(top_r == top_g, 1)))
    return ref.shape[0], same1, samek


@dataclass(frozen=True)
class Tolerance:
    """How a stage is judged: atol/rtol (None: by the precision the runtime ran, precision.TOLERANCES) and the
    reference's noise floor per output, allowed NOISE_MULTIPLE times."""

    atol: float | None = DEFAULT_ATOL
    rtol: float | None = DEFAULT_RTOL
    noise: tuple[float, ...] = ()
    multiple: float = NOISE_MULTIPLE

    def resolved(self, precision: str) -> tuple[float, float]:
        by_dtype = tolerances(precision)
        return (by_dtype[0] if self.atol is None else self.atol, by_dtype[1] if self.rtol is None else self.rtol)

    def floor(self, output: int) -> float:
        return self.noise[output] if output < len(self.noise) else 0.0


def judge(result, reference: dict[str, list[np.ndarray]], tolerance: Tolerance) -> ParityResult:
    """The verdict on a RunResult (runs.run_graph) against the reference outputs of the same input sets."""
    atol, rtol = tolerance.resolved(result.precision)
    verdict = ParityResult(result.runtime, atol, rtol, error=result.error, precision=result.precision, noise_multiple=tolerance.multiple)
    for label, gots in result.outputs.items():
        refs = reference[label]
        if len(refs) != len(gots):
            verdict.error = verdict.error or f"{len(gots)} outputs where the reference has {len(refs)}"
            continue
        for i, (r, g) in enumerate(zip(refs, gots)):
            verdict.outputs.append(compare(f"{label}/output{i}", r, g, atol, rtol, tolerance.floor(i), tolerance.multiple))
            n, top1, top5 = topk_agreement(r, g)
            verdict.samples += n
            verdict.top1_agree += top1
            verdict.top5_agree += top5
    return verdict


def check_runner(runtime: str, runner, onnx_path: str, workdir: str, input_sets, refs: dict[str, list[np.ndarray]],
                 atol: float | None = DEFAULT_ATOL, rtol: float | None = DEFAULT_RTOL,
                 noise: list[float] | None = None) -> tuple[ParityResult, dict[str, str]]:
    """run_graph then judge, for callers that want (verdict, artifacts) in one call."""
    from .runs import run_graph

    result = run_graph(runtime, runner, onnx_path, workdir, input_sets)
    return judge(result, refs, Tolerance(atol, rtol, tuple(noise or ()))), result.artifacts
