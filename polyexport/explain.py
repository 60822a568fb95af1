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
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .convert import LayerRecord
from .exporter import export_onnx, flatten_outputs
from .inputs import to_torch
from .noise_floor import float64_twin
from .scopes import module_of_node
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
    """Converted layers and every module down to `depth` levels (blocks), by name; not compiled (torch.jit.script)
    submodules, which take no hooks."""
    converted = {r.name for r in records if r.form not in ("folded", "absorbed", "reference")}
    names = [n for n, m in model.named_modules() if n and (n in converted or n.count(".") < depth)
             and not isinstance(m, torch.jit.ScriptModule)]
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


def _module_noise(model: nn.Module, names: list[str], args: tuple, fp32: dict[str, list[torch.Tensor]]) -> dict[str, list[float]]:
    """Each watched module's own fp32 rounding (its output against the float64 model's, relative to its scale):
    deep in a network a module's output can carry more rounding than the fixed rtol, and the first module
    over the tolerance must be where an error was introduced, not where the rounding grew (see noise_floor.py)."""
    try:
        _, exact = _capture(float64_twin(model), names, tuple(a.double() if a.is_floating_point() else a for a in args))
    except Exception:  # noqa: BLE001 - a model that cannot run in float64: the fixed tolerance alone
        return {}
    out = {}
    for n, outs in fp32.items():
        if n in exact and len(exact[n]) == len(outs):
            out[n] = [float((a.double() - e).abs().max() / e.abs().max()) if e.numel() and e.abs().max() > 0 and a.shape == e.shape else 0.0
                      for a, e in zip(outs, exact[n])]
    return out


def _first_over(stage, pairs, rtol, atol, kinds, noise: dict[str, list[float]] | None = None) -> Divergence:
    checked = []
    culprit = None
    noise = noise or {}
    for name, want, got in pairs:
        floors = noise.get(name, [])
        errs = [compare(name, w, g, atol, rtol, floors[i] if i < len(floors) else 0.0) for i, (w, g) in enumerate(zip(want, got))]
        worst = max((e.max_rel_err for e in errs), default=0.0)
        checked.append((name, worst))
        if culprit is None and not all(e.passed for e in errs):
            culprit = (name, worst)
    if culprit is None:
        return Divergence(stage, None, "", "", max((e for _, e in checked), default=0.0), checked, kinds)
    typ, form = kinds.get(culprit[0], ("?", "?"))
    return Divergence(stage, culprit[0], typ, form, culprit[1], checked, kinds)


def module_kinds(model: nn.Module, records: list[LayerRecord]) -> dict[str, tuple[str, str]]:
    by_name = {r.name: r for r in records}
    return {n: (by_name[n].type if n in by_name else type(m).__name__, by_name[n].form if n in by_name else "-")
            for n, m in model.named_modules() if n}


def explain_deploy(original: nn.Module, deployed: nn.Module, records: list[LayerRecord], arrays: list[np.ndarray],
                   rtol: float, atol: float, depth: int = 2) -> Divergence:
    """The first deployed module whose output differs from the original's counterpart."""
    names = watched_modules(deployed, records, depth)
    order, got = _capture(deployed, names, to_torch(arrays))  # fresh inputs for every run: a model may write into them
    twin = _counterparts(records)
    want_names = [twin.get(n, n) for n in order]
    watched = [n for n in dict.fromkeys(want_names) if _has(original, n)]
    _, want = _capture(original, watched, to_torch(arrays))
    floors = _module_noise(original, watched, to_torch(arrays), want)
    pairs = [(n, want[w], got[n]) for n, w in zip(order, want_names) if w in want]
    noise = {n: floors[w] for n, w in zip(order, want_names) if w in floors}
    return _first_over("torch-deployed", pairs, rtol, atol, module_kinds(original, records), noise)


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
    names = watched_modules(deployed, records, depth)
    order, want = _capture(deployed, names, to_torch(arrays))
    taps = _Taps(deployed, names).eval()
    path = os.path.join(workdir, "diagnostic.onnx")
    n_taps = sum(len(want[n]) for n in order)
    export_onnx(taps, to_torch(arrays), path, input_names=input_names, n_outputs=n_outputs + n_taps, **export_kw)
    outs = run_graph(path, dict(zip(input_names, arrays)))[n_outputs:]
    pairs, i = [], 0
    for n in order:
        k = len(want[n])
        pairs.append((n, [t.numpy() for t in want[n]], outs[i:i + k]))
        i += k
    return _first_over(stage, pairs, rtol, atol, module_kinds(deployed, records), _module_noise(deployed, names, to_torch(arrays), want))


class Localiser:
    """The first diverging module at any stage of one run, built once with what every stage needs."""

    def __init__(self, original: nn.Module, deployed: nn.Module, records: list[LayerRecord], arrays: list[np.ndarray],
                 input_names: list[str], n_outputs: int, export_kw: dict, workdir: str, threads: int | None):
        self.original, self.deployed, self.records, self.arrays = original, deployed, records, arrays
        self.input_names, self.n_outputs, self.export_kw = input_names, n_outputs, export_kw
        self.workdir, self.threads = workdir, threads

    def at(self, stage: str, tolerance: tuple[float, float], options=None, stage_failed: bool = True) -> dict:
        """The report entry for `stage` judged at `tolerance` (atol, rtol: the stage's own, an fp16 runtime at
        fp16's); `options` (RunnerOptions) for a runtime stage (its precision, modules kept in fp32)."""
        atol, rtol = tolerance
        try:
            if stage == "torch-deployed":
                found = explain_deploy(self.original, self.deployed, self.records, self.arrays, rtol, atol)
            else:
                kw = dict(self.export_kw, simplifier="none" if stage == "onnx-exported" else self.export_kw["simplifier"])
                found = explain_export(self.deployed, self.records, self.arrays, self.input_names, self.n_outputs,
                                       lambda path, feeds: self._run(stage, path, feeds, options), self.workdir, stage, rtol, atol, kw)
        except Exception as e:  # noqa: BLE001 - the diagnosis must never hide the result it explains
            return {"stage": stage, "error": f"could not localise: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        entry = found.as_dict()
        if found.module is None:  # every submodule agrees: only the top-level forward's own code is left
            entry["note"] = (f"every submodule agrees; the difference arises in the top-level forward of {type(self.original).__name__} "
                             "(its own code, outside any submodule)") if stage_failed else "every watched module agrees"
        return entry

    def _run(self, stage: str, path: str, feeds: dict, options) -> list[np.ndarray]:
        from .exporter.fp16 import graph_for
        from .runtimes import RunnerOptions, make_runner
        from .runtimes.onnxruntime import OnnxRuntimeRunner

        if stage.startswith("onnx-"):  # the ladder's graph rungs: ONNX Runtime with its optimisations off
            runner, graph = OnnxRuntimeRunner(RunnerOptions(self.threads), optimize=False), path
        else:
            options = options or RunnerOptions(self.threads)
            runner = make_runner(stage, options)
            graph, _ = graph_for(stage, path, self.workdir, options.fp16, options.keep_fp32)
        with runner:
            runner.load(graph, self.workdir)
            return runner.run(feeds)


# --- a runtime that cannot run the graph at all ----------------------------------------------
# A runtime error is not a numerical difference: the report quotes the runtime, names the node it
# stopped at and that node's module, and with a dynamic batch finds the shape operations that hold
# the export's batch as a constant (`x.view(x.data.size(0), -1)`, shapes read through `.data` or
# `int(...)`, index tensors expanded to a fixed shape), which is what makes another batch fail.

_NODE_IN_MESSAGE = re.compile(r"""(?:Name|node)[:=\s]*['"]([^'"]+)['"]""", re.IGNORECASE)
#: op -> index of its input that is a shape
_SHAPE_OPERAND = {"Reshape": 1, "Expand": 1, "Tile": 1, "ConstantOfShape": 0, "Resize": 3}


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            value = next((a for a in n.attribute if a.name == "value"), None)
            if value is not None:
                out[n.output[0]] = numpy_helper.to_array(value.t)
    return out


def frozen_batch_nodes(path: str, batch: int, modules: list[str] | None = None) -> list[dict]:
    """Shape operations whose shape is a constant starting with the export's `batch` while the tensor they
    act on has a dynamic batch axis: each freezes the batch (another batch then fails or is wrong)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    first_dim = {}
    for v in (*model.graph.input, *model.graph.value_info):
        dims = v.type.tensor_type.shape.dim
        if dims:
            first_dim[v.name] = dims[0].dim_param or (dims[0].dim_value if dims[0].HasField("dim_value") else "?")
    consts = _constants(model)
    found = []
    for n in model.graph.node:
        k = _SHAPE_OPERAND.get(n.op_type)
        if k is None or len(n.input) <= k or n.input[k] not in consts:
            continue
        shape = np.asarray(consts[n.input[k]]).ravel()
        data_dim = first_dim.get(n.input[0]) if n.op_type != "ConstantOfShape" else "?"
        if shape.size and shape.dtype.kind == "i" and int(shape[0]) == batch and isinstance(data_dim, str):
            found.append({"node": n.name, "op": n.op_type, "module": module_of_node(n.name, modules), "shape": shape.tolist()})
    return found


def explain_runtime_error(stage: str, error: str, path: str, batch: int, dynamic_batch: bool, kinds: dict[str, tuple[str, str]]) -> dict:
    """The report entry for a stage whose runtime failed: its message, the node it names and that node's
    module, and with a dynamic batch the shape operations that froze the batch (frozen_batch_nodes)."""
    entry: dict = {"stage": stage, "runtime_error": error, "module": None}
    named = _NODE_IN_MESSAGE.search(error)
    if named:
        entry["node"] = named.group(1)
        entry["module"] = module_of_node(named.group(1), list(kinds))
    frozen = frozen_batch_nodes(path, batch, list(kinds)) if dynamic_batch and os.path.isfile(path) else []
    if frozen:
        entry["frozen_batch"] = frozen
        entry["module"] = frozen[0]["module"] or entry["module"]
        where = ", ".join(f"{f['op']} '{f['node']}' (shape {f['shape']})" for f in frozen[:3])
        entry["note"] = (f"the graph holds the export's batch {batch} as a constant in {where}: the batch axis is dynamic, "
                         "but this shape is not (typically a size read through `.data`, `int()` or `.item()` in the module's forward)")
    if entry["module"]:
        entry["type"], entry["form"] = kinds.get(entry["module"], ("?", "-"))
    return entry
