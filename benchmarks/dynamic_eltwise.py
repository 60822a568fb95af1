"""Why the kernel-bank forms end in a unit depthwise conv on OpenVINO (their `_blocked` variants): what an
elementwise tail costs after a batched MatMul, with a dynamic batch and without.

A pointwise layer with per-sample kernels, as `bank_batched` computes it (the kernels by `a @ bank`, then one
batched MatMul over the pixels), followed by what a network puts after it (the folded BN's shift and a SiLU) and
by the next layer (a static 1×1 conv), in three endings:
- `4-D Add+SiLU`: the MatMul's output reshaped to (B, C, H, W), then the shift added and the SiLU applied
  (`bank_batched` with its tail);
- `unit dw conv`: reshaped, then a depthwise 1×1 conv with unit weights whose bias is the shift, then the SiLU
  (`bank_batched_blocked`: the activation fuses into that conv);
- `3-D Add+SiLU`: the shift and the SiLU applied on the MatMul's (B, 1, C, H·W) output, reshaped after (not a
  form: it moves the network's activation inside the layer; shown for the cause).
Each graph is built directly in ONNX at two CondConv-EfficientNet-B0 shapes, exported with a dynamic and with a
static batch, and timed on each runtime at batches 1 and 8 in interleaved repeats (medians; ratio to
`4-D Add+SiLU` of the same graph kind). Outputs are compared between endings (same numbers up to rounding).

    python benchmarks/dynamic_eltwise.py --json benchmarks/results/dynamic_eltwise.json \
        --markdown benchmarks/results/dynamic_eltwise.md
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, md_table, runtimes_here, write_outputs  # noqa: E402

from polyexport.bench import interleaved  # noqa: E402
from polyexport.runtimes import RunnerOptions, make_runner  # noqa: E402

ENDINGS = ("4-D Add+SiLU", "unit dw conv", "3-D Add+SiLU")
#: (in, out, side): CondConv-EfficientNet-B0's expanding 1×1 layers at 14×14 and 7×7
SHAPES = ((80, 480, 14), (192, 1152, 7))
EXPERTS = 4


def layer_graph(ending: str, cin: int, cout: int, side: int, dynamic: bool, batch: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    b = "batch" if dynamic else batch
    pixels = side * side
    consts = {
        "bank": (rng.standard_normal((EXPERTS, cout * cin)) / np.sqrt(cin)).astype(np.float32),
        "shift": rng.standard_normal(cout).astype(np.float32),
        "kernels_shape": np.array([-1, 1, cout, cin], np.int64),
        "x_shape": np.array([-1, 1, cin, pixels], np.int64),
        "y_shape": np.array([-1, cout, side, side], np.int64),
        "next": (rng.standard_normal((cin, cout, 1, 1)) / np.sqrt(cout)).astype(np.float32),
    }
    nodes = [helper.make_node("MatMul", ["a", "bank"], ["flat"]), helper.make_node("Reshape", ["flat", "kernels_shape"], ["k"]),
             helper.make_node("Reshape", ["x", "x_shape"], ["xf"]), helper.make_node("MatMul", ["k", "xf"], ["mm"])]

    def silu(src: str, dst: str) -> list:
        return [helper.make_node("Sigmoid", [src], [dst + "_gate"]), helper.make_node("Mul", [src, dst + "_gate"], [dst])]

    if ending == "3-D Add+SiLU":
        consts["shift"] = consts["shift"].reshape(cout, 1)
        nodes += [helper.make_node("Add", ["mm", "shift"], ["biased"]), *silu("biased", "act"),
                  helper.make_node("Reshape", ["act", "y_shape"], ["y"])]
    elif ending == "unit dw conv":
        consts["unit"] = np.ones((cout, 1, 1, 1), np.float32)
        nodes += [helper.make_node("Reshape", ["mm", "y_shape"], ["y4"]),
                  helper.make_node("Conv", ["y4", "unit", "shift"], ["biased"], group=cout), *silu("biased", "y")]
    else:
        consts["shift"] = consts["shift"].reshape(1, cout, 1, 1)
        nodes += [helper.make_node("Reshape", ["mm", "y_shape"], ["y4"]), helper.make_node("Add", ["y4", "shift"], ["biased"]),
                  *silu("biased", "y")]
    nodes.append(helper.make_node("Conv", ["y", "next"], ["out"]))
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, cin, side, side]),
                                               helper.make_tensor_value_info("a", TensorProto.FLOAT, [b, EXPERTS])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [b, cin, side, side])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    t0, rows, table = time.perf_counter(), [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rt in runtimes_here(args.runtimes):
            for cin, cout, side in SHAPES:
                for dynamic in (True, False):
                    for batch in args.batches:
                        rng = np.random.default_rng(batch)
                        feeds = {"x": rng.standard_normal((batch, cin, side, side)).astype(np.float32),
                                 "a": rng.random((batch, EXPERTS)).astype(np.float32)}
                        fns, outs = {}, {}
                        for ending in ENDINGS:
                            path = os.path.join(tmp, f"g{len(fns)}.onnx")
                            onnx.save(layer_graph(ending, cin, cout, side, dynamic, batch), path)
                            runner = make_runner(rt, RunnerOptions(threads=args.threads))
                            runner.load(path, tmp)
                            outs[ending] = runner.run(feeds)[0]
                            fns[ending] = (lambda r: lambda: r.run(feeds))(runner)
                        scale = float(np.abs(outs[ENDINGS[0]]).max())
                        err = max(float(np.abs(o - outs[ENDINGS[0]]).max()) / scale for o in outs.values())
                        stats = interleaved(fns, repeats=args.repeats, warmup=3, min_iters=10, min_time_s=0.1)
                        ms = {e: stats[e].p50 for e in ENDINGS}
                        kind = "dynamic" if dynamic else "static"
                        rows.append({"runtime": rt, "shape": [cin, cout, side], "graph": kind, "batch": batch, "ms": ms, "max_rel_err": err})
                        table.append([rt, f"{cin}→{cout} at {side}×{side}", kind, str(batch)]
                                     + [f"{ms[e]:.3f} ({ms[e] / ms[ENDINGS[0]]:.2f}×)" for e in ENDINGS] + [f"{err:.1e}"])
                        print(table[-1], flush=True)
    header = ["runtime", "layer", "batch axis", "batch"] + [f"{e} ms (ratio)" for e in ENDINGS] + ["max rel. difference"]
    md = (md_table(header, table) + f"\n\n{machine()}; threads={args.threads}; medians of {args.repeats} interleaved repeats; "
          f"{time.perf_counter() - t0:.0f} s\n")
    print(md)
    write_outputs(args, md, {"threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
