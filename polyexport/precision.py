"""Reduced precision: tolerances per dtype, and fp16 graphs with chosen modules kept in fp32.

Which precision ran is read back from the runner (OpenVINO's CPU plugin, asked for f16, runs bf16
where the CPU has bf16 but no fp16 units), and the tolerance follows what ran, not what was asked.

Modules are mapped to ONNX nodes by the exporter's scope names: the TorchScript exporter names a
node of module `a.b` "/a/a.b/<Op>...", so a module's nodes are the nodes under its scope prefix.
That is how a module the attribution blames (explain.py) is kept in fp32.
"""
from __future__ import annotations

from typing import Iterable

from .parity import DEFAULT_ATOL, DEFAULT_RTOL

#: (atol, rtol); rtol is relative to the output's max |value| (see parity.py). Measured with
#: benchmarks/precision.py on every zoo model (benchmarks/results/precision.md):
#: - fp32: see parity.py.
#: - fp16 (unit roundoff 4.9e-4): ONNX Runtime's fp16 graphs on this CPU give 2.7e-4 to 6.2e-3 (DCD's
#:   MobileNetV2 the worst); 2e-2 is 3× that, and still fails a 10% error in one layer
#:   (tests/test_precision.py). True fp16 compute on a GPU was not available to measure.
#: - bf16 (unit roundoff 3.9e-3, 8× coarser): OpenVINO's bf16 gives 2.3e-3 to 1e-2 on 23 of the 25
#:   models; 6e-2 is 6× that. The two it fails are real: DCD's MobileNetV2 (6.8e-2) and DRConv's
#:   ShuffleNetV2 (0.11: bf16 rounding flips the per-pixel region argmax, so whole regions change kernels).
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (DEFAULT_ATOL, DEFAULT_RTOL),
    "fp16": (1e-3, 2e-2),
    "bf16": (1e-2, 6e-2),
}

_ALIASES = {"f32": "fp32", "float32": "fp32", "fp32": "fp32", "f16": "fp16", "float16": "fp16", "fp16": "fp16",
            "half": "fp16", "bf16": "bf16", "bfloat16": "bf16"}


def normalize(precision: str | None) -> str:
    """'f16', "<Type: 'bfloat16'>", 'fp32 (TF32 off)'… -> 'fp16' / 'bf16' / 'fp32' (fp32 when unknown)."""
    text = (precision or "fp32").lower()
    for token in sorted(_ALIASES, key=len, reverse=True):  # 'bfloat16' before 'float16', 'bf16' before 'f16'
        if token in text:
            return _ALIASES[token]
    return "fp32"


def tolerances(precision: str | None) -> tuple[float, float]:
    return TOLERANCES[normalize(precision)]


def scope_prefixes(module: str) -> tuple[str, ...]:
    """The node-name prefixes of module `a.b`'s nodes: in the model's graph, and in the diagnostic graph
    (explain.py), where the model sits under the attribute `model`."""
    parts = module.split(".")
    own = "/" + "/".join(".".join(parts[: i + 1]) for i in range(len(parts))) + "/"
    return own, "/model" + own


def nodes_of(node_names: Iterable[str], modules: Iterable[str]) -> list[str]:
    """The names of the nodes that belong to any of `modules`."""
    prefixes = tuple(p for m in modules for p in scope_prefixes(m))
    return [n for n in node_names if prefixes and n.startswith(prefixes)]


def convert_fp16(src: str, dst: str, keep_fp32: Iterable[str] = ()) -> dict:
    """Write `src` with fp16 weights and compute to `dst`, I/O kept fp32, the nodes of `keep_fp32` in fp32.

    Uses ONNX Runtime's own converter (onnxruntime.transformers.float16, the onnxconverter-common one
    it ships), which inserts the Casts at the borders of the fp32 islands.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(src)
    for i, node in enumerate(model.graph.node):  # the block list is by name: every node needs one
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    keep = list(keep_fp32)
    names = [n.name for n in model.graph.node]
    blocked = nodes_of(names, keep)
    missing = [m for m in keep if not nodes_of(blocked, [m])]
    if missing:
        raise ValueError(f"no ONNX node belongs to module(s) {missing}: cannot keep them in fp32")
    converted = _join_fp32_islands(convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked))
    onnx.save(converted, dst)
    fp16_inits = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return {"nodes_fp32": len(blocked), "nodes": len(model.graph.node), "fp16_initializers": fp16_inits}


def _join_fp32_islands(model):
    """Remove the fp32 → fp16 → fp32 round trips the converter leaves between two fp32 nodes.

    The converter wraps each blocked node in its own Casts, so a value kept in fp32 because it is out of
    fp16's range (an overflow) would still pass through fp16 on its way to the next fp32 node. Each
    Cast(to=FLOAT) fed by a Cast(to=FLOAT16) of an fp32 tensor becomes an Identity of that tensor
    (names kept, graph outputs included); a Cast(to=FLOAT16) left without consumers goes.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    dtype = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    dtype.update({t.name: t.data_type for t in model.graph.initializer})
    nodes = list(model.graph.node)

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producer = {o: n for n in nodes for o in n.output}
    for node in nodes:
        up = producer.get(node.input[0]) if node.input else None
        if (cast_to(node) == onnx.TensorProto.FLOAT and up is not None and cast_to(up) == onnx.TensorProto.FLOAT16
                and dtype.get(up.input[0]) == onnx.TensorProto.FLOAT):
            node.op_type, node.input[0] = "Identity", up.input[0]
            del node.attribute[:]
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [n for n in model.graph.node if not (cast_to(n) == onnx.TensorProto.FLOAT16 and not any(o in used for o in n.output))]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model
