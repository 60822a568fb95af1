"""torch ► ONNX ► simplify ► check, as one call: the graph the pipeline ships, and what it took."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import onnx
import torch
from torch import nn

from ..errors import ExportFailed
from .simplify import simplify
from .torch_onnx import export_with_attribution


@dataclass
class ExportInfo:
    path: str
    exporter: str
    opset: int
    simplifier: str
    dynamic_batch: bool
    seconds: float
    nodes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    #: where the graph came from: "exported" (torch.onnx here) or "the whole-model form check" (that check exported this
    #: very model the same way; it is checked and written here, not exported twice)
    source: str = "exported"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def export_onnx(model: nn.Module, args: tuple[torch.Tensor, ...], path: str, *, input_names: list[str],
                n_outputs: int, opset: int = 17, dynamic_batch: bool = False, exporter: str = "torchscript",
                simplifier: str = "onnxsim", raw_path: str | None = None,
                dynamic_axes: dict[str, dict[int, str]] | None = None, validate: bool = True) -> ExportInfo:
    """Export, simplify, check and shape-infer; the file at `path` is the final graph.

    `raw_path`, if given, keeps the exporter's graph before simplification (for staged parity).
    `dynamic_axes` ({name: {axis: label}}, inputs and outputs) makes further axes dynamic, by name:
    e.g. the instance axis of a dynamic head's per-instance inputs and its output.
    `validate=False` skips the ONNX checker and strict shape inference: for throw-away graphs (a form timed
    alone) that a runtime loads next anyway, where they cost a tenth of the form choice.
    """
    t0 = time.perf_counter()
    exported = raw_path or path  # the exporter writes the raw graph where it is kept: not loaded and saved again
    export_with_attribution(model, args, exported, input_names=input_names, n_outputs=n_outputs, opset=opset,
                            dynamic_batch=dynamic_batch, exporter=exporter, dynamic_axes=dynamic_axes)
    return finish_export(exported, path, exporter=exporter, opset=opset, simplifier=simplifier, dynamic_batch=dynamic_batch,
                         validate=validate, started=t0)


def finish_export(exported: str, path: str, *, exporter: str, opset: int, simplifier: str, dynamic_batch: bool,
                  validate: bool = True, started: float | None = None, simplified_by: str | None = None,
                  source: str = "exported") -> ExportInfo:
    """The exporter's graph in the file `exported` ► simplify ► check and shape-infer, written to `path` (the same
    file or another). `simplified_by` (what simplify() reported) says the graph there is simplified already: it is
    checked, not simplified again (the whole-model form check's graph, reused as the final export: `source` says so)."""
    t0 = time.perf_counter() if started is None else started
    proto = onnx.load(exported)
    proto, how = (proto, simplified_by) if simplified_by else simplify(proto, simplifier)
    try:  # the checker, then strict shape inference (what check_model's full_check adds), once each
        if validate:
            onnx.checker.check_model(proto, full_check=False)
            proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as e:  # noqa: BLE001
        raise ExportFailed(f"the exported ONNX graph is invalid: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    if validate or exported != path or (simplifier != "none" and not simplified_by):  # else the file is the graph already
        onnx.save(proto, path)
    ops = Counter(n.op_type for n in proto.graph.node)
    return ExportInfo(path, exporter, opset, how, dynamic_batch, time.perf_counter() - t0, len(proto.graph.node), dict(ops.most_common()),
                      source)
