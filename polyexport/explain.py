"""Find the layer that broke: per-module comparison at the stage where parity failed.

Parity says *that* outputs differ; this says *where*. The modules watched are every converted
layer and every block down to `depth` levels, in execution order. Two comparisons:

- deploy stage: each deployed module's output against the original's counterpart (the module
  itself, or the BatchNorm folded into it: its output is what the fused module now computes);
- export/runtime stages: a diagnostic copy of the deployed model whose forward hooks return every
  watched output as an extra graph output (no reliance on the exporter's node names), exported by
  the same pipeline and run on the failing runtime, against the deployed model in PyTorch.

The first watched module whose error exceeds the tolerance is the culprit: errors propagate
downstream, so the first one is where it was introduced. (Extra outputs make a runtime keep those
tensors, which can change its fusions; the report says which graph was probed.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .convert import LayerRecord
from .export import export_onnx, flatten_outputs
from .parity import compare


@dataclass
class Divergence:
    stage: str
    module: str | None  # None: every watched module agrees
    type: str
    form: str
    max_rel_err: float
    checked: list[tuple[str, float]]  # every watched module in execution order, with its error
    kinds: dict[str, tuple[str, str]] | None = None  # module -> (type, deploy form)

    def as_dict(self) -> dict:
        kinds = self.kinds or {}
        return {"stage": self.stage, "module": self.module, "type": self.type, "form": self.form,
                "max_rel_err": self.max_rel_err,
                "checked": [{"module": m, "max_rel_err": e, "type": kinds.get(m, ("?", "?"))[0], "form": kinds.get(m, ("?", "?"))[1]}
                            for m, e in self.checked]}


def watched_modules(model: nn.Module, records: list[LayerRecord], depth: int = 2) -> list[str]:
    """Converted layers and every module down to `depth` levels (blocks), by name."""
    converted = {r.name for r in records if r.form not in ("folded", "absorbed", "reference")}
    names = [n for n, _ in model.named_modules() if n and (n in converted or n.count(".") < depth)]
    return names


def _run_watched(model: nn.Module, names: list[str], args: tuple) -> tuple[object, list[str], dict[str, list[torch.Tensor]]]:
    """Run `model`, keeping each watched module's first-call outputs and the order they finished in."""
    seen: dict[str, list[torch.Tensor]] = {}
    order: list[str] = []
    hooks = []
    for name in names:
        def hook(m, a, out, name=name):
            if name not in seen:
                seen[name] = flatten_outputs(out)
                order.append(name)
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        out = model(*args)
    finally:
        for h in hooks:
            h.remove()
    return out, order, seen


def _capture(model: nn.Module, names: list[str], args: tuple) -> tuple[list[str], dict[str, list[torch.Tensor]]]:
    with torch.no_grad():
        _, order, seen = _run_watched(model, names, args)
    return order, seen


class _Taps(nn.Module):
    """The model, returning every watched module's outputs after its own (for a diagnostic export)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        out, order, seen = _run_watched(self.model, self.names, args)
        return (*flatten_outputs(out), *[t for name in order for t in seen[name]])


def _counterparts(records: list[LayerRecord]) -> dict[str, str]:
    """deployed module name -> the original module whose output it now computes (the last merged into it)."""
    out: dict[str, str] = {}
    for r in records:
        if r.into:
            out[r.into] = r.name
    return out


def _first_over(stage, pairs, rtol, atol, kinds) -> Divergence:
    checked = []
    culprit = None
    for name, want, got in pairs:
        errs = [compare(name, w, g, atol, rtol) for w, g in zip(want, got)]
        worst = max((e.max_rel_err for e in errs), default=0.0)
        checked.append((name, worst))
        if culprit is None and not all(e.passed for e in errs):
            culprit = (name, worst)
    if culprit is None:
        return Divergence(stage, None, "", "", max((e for _, e in checked), default=0.0), checked, kinds)
    typ, form = kinds.get(culprit[0], ("?", "?"))
    return Divergence(stage, culprit[0], typ, form, culprit[1], checked, kinds)


def _kinds(model: nn.Module, records: list[LayerRecord]) -> dict[str, tuple[str, str]]:
    by_name = {r.name: r for r in records}
    return {n: (by_name[n].type if n in by_name else type(m).__name__, by_name[n].form if n in by_name else "-")
            for n, m in model.named_modules() if n}


def explain_deploy(original: nn.Module, deployed: nn.Module, records: list[LayerRecord], arrays: list[np.ndarray],
                   rtol: float, atol: float, depth: int = 2) -> Divergence:
    """The first deployed module whose output differs from the original's counterpart."""
    args = tuple(torch.from_numpy(a) for a in arrays)
    names = watched_modules(deployed, records, depth)
    order, got = _capture(deployed, names, args)
    twin = _counterparts(records)
    want_names = [twin.get(n, n) for n in order]
    _, want = _capture(original, [n for n in dict.fromkeys(want_names) if _has(original, n)], args)
    pairs = [(n, want[w], got[n]) for n, w in zip(order, want_names) if w in want]
    return _first_over("torch-deployed", pairs, rtol, atol, _kinds(original, records))


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def explain_export(deployed: nn.Module, records: list[LayerRecord], arrays: list[np.ndarray], input_names: list[str],
                   n_outputs: int, run_graph: Callable[[str, dict[str, np.ndarray]], list[np.ndarray]], workdir: str,
                   stage: str, rtol: float, atol: float, export_kw: dict, depth: int = 2) -> Divergence:
    """The first module whose output in the exported graph, run by `run_graph(path, feeds)`, differs from PyTorch's."""
    args = tuple(torch.from_numpy(a) for a in arrays)
    names = watched_modules(deployed, records, depth)
    order, want = _capture(deployed, names, args)
    taps = _Taps(deployed, names).eval()
    path = os.path.join(workdir, "diagnostic.onnx")
    n_taps = sum(len(want[n]) for n in order)
    export_onnx(taps, args, path, input_names=input_names, n_outputs=n_outputs + n_taps, **export_kw)
    outs = run_graph(path, dict(zip(input_names, arrays)))[n_outputs:]
    pairs, i = [], 0
    for n in order:
        k = len(want[n])
        pairs.append((n, [t.numpy() for t in want[n]], outs[i:i + k]))
        i += k
    return _first_over(stage, pairs, rtol, atol, _kinds(deployed, records))
