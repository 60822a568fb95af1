"""A runtime defect the fuzzer found (benchmarks/fuzz.py, SymmetricPadConv2d's `split` form), without polyexport.

OpenVINO's CPU plugin (2026.4 here) miscomputes Split → several Conv → Add at batch 1 of a dynamic-batch graph
when the convs have fewer than 8 output channels and a small output (a side of 3 or less: 3×3, 9×3 and 3×11 in
the fuzz run): the error is of the order of the output itself. The same graph at batch 3, with a static batch
of 1, each Conv output alone, 8 or more output channels, or a 4×4 output come out right, and ONNX
Runtime is right throughout, so the CPU plugin's Conv-with-sum fusion under dynamic shapes is the suspect
(FuseConvolutionSumAndConvolutionSumActivation; fixes of that kind before: openvinotoolkit/openvino#10132, #22718). The graph is built here with onnx.helper
alone, so it can go to OpenVINO's tracker as it is:

    python benchmarks/openvino_conv_sum_batch1.py

polyexport never ships it: the form timer checks each form's output on the runtime before timing it, and the
pipeline proves the whole graph at every parity batch (tests/test_runtime_defects.py).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PADS = [[0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]]  # per branch: top, left, bottom, right


def graph(cout: int, hw: int, pads=PADS, summed: bool = True) -> onnx.ModelProto:
    """x (N, 3, hw, hw) → Split into 3 single channels → Conv 2×2 (cout, asymmetric pads) each → Sum."""
    rng = np.random.default_rng(0)
    n = len(pads)
    inits = [numpy_helper.from_array(np.ones(n, np.int64), "split")]
    nodes = [helper.make_node("Split", ["x", "split"], [f"s{i}" for i in range(n)], axis=1)]
    for i, p in enumerate(pads):
        inits.append(numpy_helper.from_array(rng.standard_normal((cout, 1, 2, 2)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [f"s{i}", f"w{i}"], [f"c{i}"], kernel_shape=[2, 2], pads=p))
    outputs = ["y"] if summed else [f"c{i}" for i in range(n)]
    if summed:
        nodes.append(helper.make_node("Sum", [f"c{i}" for i in range(n)], ["y"]))
    g = helper.make_graph(nodes, "conv_sum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n, hw, hw])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def errors(model: onnx.ModelProto, batches=(1, 3, 1)) -> list[float]:
    """Max |OpenVINO − ONNX Runtime| / max |ONNX Runtime| per run, one compiled model, batches in turn."""
    import onnxruntime as ort
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        onnx.save(model, path)
        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(1)
        out = []
        hw = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:]]
        for b in batches:
            x = rng.standard_normal((b, len(PADS), *hw), dtype=np.float32)
            want, got = session.run(None, {"x": x}), compiled({0: x})
            out.append(max(float(np.abs(got[i] - w).max() / np.abs(w).max()) for i, w in enumerate(want)))
        return out


def main() -> None:
    import openvino as ov

    print(f"OpenVINO {ov.__version__}: max error / scale against ONNX Runtime at batch 1, 3, 1 (one compiled model)")
    for label, model in [("3 convs (5 out) summed, 3x3", graph(5, 3)), ("the same, 8 out", graph(8, 3)),
                         ("the same, 4x4 input", graph(5, 4)), ("the convs' outputs alone", graph(5, 3, summed=False))]:
        print(f"  {label:28s} " + "  ".join(f"{e:.2g}" for e in errors(model)))


if __name__ == "__main__":
    main()
