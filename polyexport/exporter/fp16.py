"""The fp16 graph: weights and compute in fp16, I/O in fp32, chosen modules' nodes kept in fp32.

A graph rewrite, so it lives with the export stage; torch-free, so `polyexport verify --fp16` can make it on
a device. Modules are mapped to nodes by their scope names (scopes.py).
"""
from __future__ import annotations

from typing import Iterable

from ..scopes import nodes_of


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


def graph_for(runtime: str, graph: str, workdir: str, fp16: bool, keep_fp32: Iterable[str] = ()) -> tuple[str, dict[str, str]]:
    """The graph `runtime` runs for this precision: ONNX Runtime takes fp16 as an fp16 graph made here (written
    beside the others in `workdir`); the other runtimes take the fp32 graph and a precision setting of their own.
    Returns (path, artifacts written)."""
    if not fp16 or runtime != "onnxruntime":
        return graph, {}
    import os

    path = os.path.join(workdir, os.path.splitext(os.path.basename(graph))[0] + "_fp16.onnx")
    convert_fp16(graph, path, keep_fp32)
    return path, {"onnx_fp16": path}
