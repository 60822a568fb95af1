"""Proof helpers for deploy forms, used by the tests and by anyone adding a layer.

A deploy form is proven on random weights *and* random, non-trivial BN statistics (identity BN
hides folding mistakes), in PyTorch and, exported, on every installed runtime, from one graph with
a dynamic batch axis run at several batch sizes.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from .exporter import export_onnx, flatten_outputs
from .inputs import to_torch
from .modules import set_eval
from .parity import OutputDiff, compare
from .runtimes import RunnerOptions, installed, make_runner

#: fp32 tolerance for a single layer's deploy form: max |got − ref| ≤ RTOL · max |ref|
RTOL = 1e-5
ATOL = 0.0


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights (fan-in scaled, so activations stay O(1)) and random BN statistics, in place."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.affine:
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
            if m.track_running_stats:
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            continue
        for name, p in m.named_parameters(recurse=False):
            if p.dim() > 1:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return set_eval(module)


def max_rel_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    """max |got − ref| / max |ref| (the scale-relative error the tolerances are written in)."""
    ref, got = ref.double(), got.double()
    assert ref.shape == got.shape, f"shape {tuple(got.shape)} != reference {tuple(ref.shape)}"
    if ref.numel() == 0:  # an empty output (no instances) equals an empty output of the same shape
        return 0.0
    scale = ref.abs().max().item()
    return (got - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def assert_equivalent(ref: nn.Module, deployed: nn.Module, *inputs: torch.Tensor, rtol: float = RTOL) -> None:
    """In PyTorch: every output of `deployed` equals `ref`'s within rtol of the output's scale."""
    with torch.no_grad():
        a, b = flatten_outputs(set_eval(ref)(*inputs)), flatten_outputs(set_eval(deployed)(*inputs))
    assert len(a) == len(b), f"{len(b)} outputs, reference has {len(a)}"
    for i, (x, y) in enumerate(zip(a, b)):
        err = max_rel_err(x, y)
        assert err <= rtol, f"output {i}: max error / scale = {err:.3g} > {rtol:g}"


@dataclass
class RuntimeCheck:
    runtime: str
    batch: int  # the size of the dynamic axis: batch, or instance count for check_instance_counts
    diffs: list[OutputDiff]

    @property
    def worst(self) -> float:
        return max(d.max_rel_err for d in self.diffs)


def check_on_runtimes(ref: nn.Module, deployed: nn.Module, input_shapes: Sequence[tuple[int, ...]],
                      batches: Sequence[int] = (1, 4), runtimes: Sequence[str] | None = None,
                      rtol: float = RTOL, opset: int = 17, seed: int = 0, workdir: str | None = None,
                      onnx_check=None, dynamic_batch: bool = True) -> list[RuntimeCheck]:
    """Export `deployed` once with a dynamic batch axis; on each runtime and batch, compare with `ref` in PyTorch.

    `onnx_check(path)`, if given, is called on the exported file (e.g. to assert which ops it holds).
    `dynamic_batch=False` (for static-batch forms) exports at the input shapes' own batch and runs only that.
    Raises AssertionError naming runtime, batch and error where parity fails.
    """
    if not dynamic_batch:
        batches = (input_shapes[0][0],)
    names = ["input"] if len(input_shapes) == 1 else [f"input_{i}" for i in range(len(input_shapes))]
    example, sets = drawn_inputs(input_shapes, batches, runtimes, seed)
    feeds = iter(sets)
    return _check_exported(ref, deployed, example, names, batches, lambda b: next(feeds), runtimes, rtol, opset, workdir,
                           onnx_check, "batch", dynamic_batch=dynamic_batch)


def drawn_inputs(input_shapes: Sequence[tuple[int, ...]], batches: Sequence[int], runtimes: Sequence[str] | None = None,
                 seed: int = 0) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """The inputs check_on_runtimes uses, in its order: the example it exports at, then one set per runtime
    and batch. A test that must know them (to pick a seed whose inputs keep away from a tie) asks here."""
    rng = np.random.default_rng(seed)
    example = [rng.standard_normal(s, dtype=np.float32) for s in input_shapes]
    sets = [[rng.standard_normal((b, *s[1:]), dtype=np.float32) for s in input_shapes]
            for _ in _onnx_runtimes(runtimes) for b in batches]
    return example, sets


def _onnx_runtimes(runtimes: Sequence[str] | None) -> list[str]:
    """The runtimes a check runs on: those asked (default: every installed one), TensorRT left to its own tests."""
    return [r for r in (list(runtimes) if runtimes is not None else installed()) if r != "tensorrt"]


def check_instance_counts(ref: nn.Module, deployed: nn.Module, make_inputs: Callable[[int, np.random.Generator], Sequence[np.ndarray]],
                          input_names: Sequence[str], dynamic_axes: dict[str, dict[int, str]],
                          counts: Sequence[int] = (0, 1, 7, 100), example_count: int = 3, runtimes: Sequence[str] | None = None,
                          rtol: float = RTOL, opset: int = 17, seed: int = 0, workdir: str | None = None,
                          onnx_check=None) -> list[RuntimeCheck]:
    """check_on_runtimes for a model whose inputs do not share one batch axis (a dynamic head's instances).

    `make_inputs(count, rng)` gives the inputs (any dtype) for `count` instances; `dynamic_axes` names the
    axes that vary ({name: {axis: label}}, outputs named "output" / "output_i"). The graph is exported once,
    at `example_count`, then run at every count on each runtime; an empty output must come back empty.
    """
    rng = np.random.default_rng(seed)
    example = list(make_inputs(example_count, rng))
    return _check_exported(ref, deployed, example, list(input_names), counts, lambda n: list(make_inputs(n, rng)), runtimes,
                           rtol, opset, workdir, onnx_check, "instances", dynamic_axes=dynamic_axes)


def _check_exported(ref: nn.Module, deployed: nn.Module, example: list[np.ndarray], names: list[str], sizes: Sequence[int],
                    feeds_for: Callable[[int], list[np.ndarray]], runtimes: Sequence[str] | None, rtol: float, opset: int,
                    workdir: str | None, onnx_check, what: str, **export_kwargs) -> list[RuntimeCheck]:
    """Export `deployed` once at `example`; on each runtime and size, compare its outputs with `ref`'s in PyTorch."""
    runtimes = _onnx_runtimes(runtimes)
    example_t = to_torch(example)
    with torch.no_grad():
        n_out = len(flatten_outputs(set_eval(deployed)(*example_t)))
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(deployed, example_t, path, input_names=names, n_outputs=n_out, opset=opset, **export_kwargs)
        if onnx_check is not None:
            onnx_check(path)
        graph_inputs = {i.name for i in onnx.load(path).graph.input}  # the exporter drops inputs the model ignores
        for rt in runtimes:
            runner = make_runner(rt, RunnerOptions(threads=1), keep_artifacts=False)
            runner.load(path, tmp)
            for size in sizes:
                arrays = feeds_for(size)
                with torch.no_grad():
                    want = [t.numpy() for t in flatten_outputs(set_eval(ref)(*to_torch(arrays)))]
                got = runner.run({n: a for n, a in zip(names, arrays) if n in graph_inputs})
                diffs = [compare(f"output{i}", w, g, ATOL, rtol) for i, (w, g) in enumerate(zip(want, got))]
                check = RuntimeCheck(rt, size, diffs)
                assert len(got) == len(want) and all(d.passed for d in diffs), (
                    f"{rt} {what} {size}: max error / scale = {check.worst:.3g} > {rtol:g}"
                    + "".join(f"; output{i} shape {tuple(g.shape)} vs {tuple(w.shape)}" for i, (w, g) in enumerate(zip(want, got)) if w.shape != g.shape))
                results.append(check)
            runner.close()
    return results
