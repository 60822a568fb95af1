"""Compare a runtime's outputs with the PyTorch reference: one verdict per runtime.

Scale-relative error is what a user can read across models: max |got − ref| / max |ref|, beside
the absolute error and the cosine similarity. A runtime passes when, for every output of every
input batch, max_abs_err ≤ atol + rtol·max|ref| and nothing is NaN/Inf where the reference is finite.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import PolyexportError

#: fp32 defaults. rtol is relative to the output's scale (max |ref|): whole networks through
#: another runtime's kernels (Winograd, fused ops, other summation orders) measured here at
#: ≤ 2e-6 on the zoo; 1e-4 leaves room for deeper models without hiding a real error (a wrong
#: weight or layout is off by 1e-1 and more). atol guards outputs that are all near zero.
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5


@dataclass
class OutputDiff:
    name: str
    max_abs_err: float
    max_rel_err: float  # relative to max |ref|
    cosine: float
    scale: float
    passed: bool


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
        return min((o.cosine for o in self.outputs), default=float("nan"))

    def worst(self) -> OutputDiff | None:
        return max(self.outputs, key=lambda o: o.max_rel_err, default=None)

    def as_dict(self) -> dict:
        d = {"max_abs_err": self.max_abs_err, "max_rel_err": self.max_rel_err, "cosine": self.cosine,
             "passed": self.passed, "atol": self.atol, "rtol": self.rtol, "comparisons": len(self.outputs),
             "precision": self.precision}
        if self.samples:
            d.update(top1_agreement=self.top1_agree / self.samples, top5_agreement=self.top5_agree / self.samples,
                     topk_samples=self.samples)
        if self.error:
            d["error"] = self.error
        return d


def compare(name: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> OutputDiff:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        return OutputDiff(name, float("inf"), float("inf"), float("nan"), 0.0, False)
    finite = np.isfinite(ref)
    if not np.array_equal(finite, np.isfinite(got)):
        return OutputDiff(name, float("inf"), float("inf"), float("nan"), 0.0, False)
    diff = np.abs(got - ref)[finite]
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref[finite]).max()) if diff.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    a, b = ref[finite].ravel(), got[finite].ravel()
    # numpy's own pairwise sums, not BLAS (np.linalg.norm, @): OpenBLAS threads were seen to spin
    # forever next to the runtimes' thread pools in forked workers; float64 keeps this exact enough
    na, nb = np.sqrt(np.sum(a * a)), np.sqrt(np.sum(b * b))
    cos = float(np.sum(a * b) / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
    return OutputDiff(name, max_abs, rel, cos, scale, max_abs <= atol + rtol * scale)


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


class ParityCheck:
    """Accumulates comparisons for one runtime over several input batches."""

    def __init__(self, runtime: str, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL):
        self.result = ParityResult(runtime, atol, rtol)

    def add(self, label: str, refs: list[np.ndarray], gots: list[np.ndarray]) -> None:
        if len(refs) != len(gots):
            self.result.error = f"{len(gots)} outputs where the reference has {len(refs)}"
            return
        for i, (r, g) in enumerate(zip(refs, gots)):
            self.result.outputs.append(compare(f"{label}/output{i}", r, g, self.result.atol, self.result.rtol))
            n, top1, top5 = topk_agreement(r, g)
            self.result.samples += n
            self.result.top1_agree += top1
            self.result.top5_agree += top5

    def fail(self, error: str) -> None:
        self.result.error = error


def check_runner(runtime: str, runner, onnx_path: str, workdir: str, input_sets: list[tuple[str, dict[str, np.ndarray]]],
                 refs: dict[str, list[np.ndarray]], atol: float | None = DEFAULT_ATOL, rtol: float | None = DEFAULT_RTOL) -> tuple[ParityResult, dict[str, str]]:
    """Load `onnx_path` on `runner`, run every input set, compare with `refs`: (result, artifacts written).

    A tolerance given as None follows the precision the runner reports it ran (precision.TOLERANCES).
    A runtime that cannot load or run the graph fails the check with its error (that is a parity
    result); polyexport's own errors (a runtime not installed, a bad input) still propagate.
    """
    from .precision import normalize, tolerances

    check = ParityCheck(runtime, DEFAULT_ATOL if atol is None else atol, DEFAULT_RTOL if rtol is None else rtol)
    artifacts: dict[str, str] = {}
    try:
        artifacts = runner.load(onnx_path, workdir)
        precision = normalize(runner.describe().get("precision"))
        by_dtype = tolerances(precision)
        check.result.precision = precision
        check.result.atol = by_dtype[0] if atol is None else atol
        check.result.rtol = by_dtype[1] if rtol is None else rtol
        for label, feeds in input_sets:
            check.add(label, refs[label], runner.run(feeds))
    except PolyexportError:
        raise
    except Exception as e:  # noqa: BLE001
        text = str(e).strip()
        check.fail(f"{type(e).__name__}: {text.splitlines()[0] if text else ''}")
    return check.result, artifacts
