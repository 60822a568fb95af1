"""Proof helpers for deploy forms, used by the tests and by anyone adding a layer.

A deploy form is proven on random weights *and* random, non-trivial BN statistics (identity BN
hides folding mistakes), in PyTorch and, exported, on every installed runtime, from one graph with
a dynamic batch axis run at several batch sizes.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .export import export_onnx, flatten_outputs
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
    return module.eval()


def max_rel_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    """max |got − ref| / max |ref| (the scale-relative error the tolerances are written in)."""
    ref, got = ref.double(), got.double()
    assert ref.shape == got.shape, f"shape {tuple(got.shape)} != reference {tuple(ref.shape)}"
    scale = ref.abs().max().item()
    return (got - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def assert_equivalent(ref: nn.Module, deployed: nn.Module, *inputs: torch.Tensor, rtol: float = RTOL) -> None:
    """In PyTorch: every output of `deployed` equals `ref`'s within rtol of the output's scale."""
    with torch.no_grad():
        a, b = flatten_outputs(ref.eval()(*inputs)), flatten_outputs(deployed.eval()(*inputs))
    assert len(a) == len(b), f"{len(b)} outputs, reference has {len(a)}"
    for i, (x, y) in enumerate(zip(a, b)):
        err = max_rel_err(x, y)
        assert err <= rtol, f"output {i}: max error / scale = {err:.3g} > {rtol:g}"


@dataclass
class RuntimeCheck:
    runtime: str
    batch: int
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
    runtimes = list(runtimes) if runtimes is not None else installed()
    runtimes = [r for r in runtimes if r != "tensorrt"]
    names = ["input"] if len(input_shapes) == 1 else [f"input_{i}" for i in range(len(input_shapes))]
    rng = np.random.default_rng(seed)
    example = tuple(torch.from_numpy(rng.standard_normal(s, dtype=np.float32)) for s in input_shapes)
    with torch.no_grad():
        n_out = len(flatten_outputs(deployed.eval()(*example)))
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(deployed, example, path, input_names=names, n_outputs=n_out, opset=opset, dynamic_batch=dynamic_batch)
        if onnx_check is not None:
            onnx_check(path)
        for rt in runtimes:
            runner = make_runner(rt, RunnerOptions(threads=1))
            runner.load(path, tmp)
            for b in batches:
                arrays = [rng.standard_normal((b, *s[1:]), dtype=np.float32) for s in input_shapes]
                with torch.no_grad():
                    want = [t.numpy() for t in flatten_outputs(ref.eval()(*(torch.from_numpy(a) for a in arrays)))]
                got = runner.run(dict(zip(names, arrays)))
                diffs = [compare(f"output{i}", w, g, ATOL, rtol) for i, (w, g) in enumerate(zip(want, got))]
                check = RuntimeCheck(rt, b, diffs)
                assert all(d.passed for d in diffs), f"{rt} batch {b}: max error / scale = {check.worst:.3g} > {rtol:g}"
                results.append(check)
            runner.close()
    return results
