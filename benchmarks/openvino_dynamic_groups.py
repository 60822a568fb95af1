"""Can OpenVINO fold a dynamic batch of per-sample depthwise kernels into one grouped conv (issue 15)?

In a static graph, `bank_grouped` runs a depthwise dynamic conv as one grouped conv with the batch folded into the
groups (B·C groups), OpenVINO's fastest exact form there. ONNX's Conv takes `group` as an attribute, so a
dynamic-batch ONNX graph cannot say B·C; OpenVINO's own GroupConvolution takes the group count from its weights'
shape, so an OpenVINO model built directly could. This probe builds that model with the openvino API (x reshaped
to (1, B·C, H, W), the per-sample kernels to (B·C, 1, 1, kh, kw), one GroupConvolution, reshaped back), with a
dynamic batch, and compiles it on the CPU plugin: if it compiles, it is checked against a static conv per sample
and timed against a static depthwise conv with a dynamic batch (interleaved repeats, medians); if not, the
plugin's reason is the result (OpenVINO 2026.4: "Doesn't support dynamic weights shape"). The same model with a
static batch is the control (it compiles: that is `bank_grouped` in a static graph).

Shapes: depthwise dynamic layers of cc_efficientnet_b0 and dy_mobilenetv3_small (channels, map, kernel).

    python benchmarks/openvino_dynamic_groups.py --markdown benchmarks/results/openvino_dynamic_groups.md
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, md_table, write_outputs  # noqa: E402

from polyexport.bench import interleaved_medians, median  # noqa: E402

SHAPES = [(480, 14, 5), (672, 14, 5), (1152, 7, 5), (120, 14, 5), (576, 7, 5)]


def _group_conv(x, weights, k: int):
    import openvino.opset13 as ops

    return ops.group_convolution(x, weights, [1, 1], [k // 2] * 2, [k // 2] * 2, [1, 1])


def static_depthwise(c: int, h: int, kernel: np.ndarray):
    """The yardstick: a depthwise conv with constant weights, dynamic batch."""
    import openvino as ov
    import openvino.opset13 as ops

    k = kernel.shape[-1]
    x = ops.parameter([-1, c, h, h], np.float32, name="x")
    return ov.Model([_group_conv(x, ops.constant(kernel.reshape(c, 1, 1, k, k)), k)], [x])


def batch_in_groups(c: int, h: int, k: int, batch: int = -1):
    """Per-sample kernels (B, C, k, k) as one GroupConvolution of B·C groups, the group count from the weights' shape;
    `batch` -1: dynamic (the question), else that static batch (the control: `bank_grouped`'s static graph)."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([batch, c, h, h], np.float32, name="x")
    kernels = ops.parameter([batch, c, k, k], np.float32, name="w")
    folded = ops.reshape(x, ops.constant(np.array([1, -1, h, h], np.int64)), False)
    weights = ops.reshape(kernels, ops.constant(np.array([-1, 1, 1, k, k], np.int64)), False)
    batch = ops.gather(ops.shape_of(x), ops.constant(np.array([0], np.int64)), ops.constant(0))
    shape = ops.concat([batch, ops.constant(np.array([c, h, h], np.int64))], 0)
    return ov.Model([ops.reshape(_group_conv(folded, weights, k), shape, False)], [x, kernels])


def main() -> None:
    import openvino as ov

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}  # as the runner
    rng = np.random.default_rng(0)
    rows, table = [], []
    for c, h, k in SHAPES:
        static = core.compile_model(static_depthwise(c, h, rng.standard_normal((c, k, k)).astype(np.float32)), "CPU", config)
        for b, graph in [(1, "dynamic"), (8, "dynamic"), (1, "static"), (8, "static")]:
            try:
                folded, error = core.compile_model(batch_in_groups(c, h, k, -1 if graph == "dynamic" else b), "CPU", config), None
            except RuntimeError as e:
                lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                folded, error = None, next((line for line in lines if line.startswith("Doesn't support")), lines[0])
            x = rng.standard_normal((b, c, h, h)).astype(np.float32)
            kernels = rng.standard_normal((b, c, k, k)).astype(np.float32)
            row = {"channels": c, "map": h, "kernel": k, "batch": b, "graph": graph, "error": error}
            if folded is not None:
                got = folded.create_infer_request().infer({"x": x, "w": kernels})[0]
                want = np.concatenate([core.compile_model(static_depthwise(c, h, kernels[i]), "CPU", config)
                                       .create_infer_request().infer({"x": x[i:i + 1]})[0] for i in range(b)])
                row["max_rel_err"] = float(np.abs(got - want).max() / np.abs(want).max())
                rs, rf = static.create_infer_request(), folded.create_infer_request()
                per = interleaved_medians({"static": lambda: rs.infer({"x": x}), "folded": lambda: rf.infer({"x": x, "w": kernels})},
                                          repeats=args.repeats, warmup=3, min_iters=10, min_time_s=0.05)
                row["static_ms"], row["ratio"] = median(per["static"]), median([f / s for f, s in zip(per["folded"], per["static"])])
            rows.append(row)
            table.append([f"{c}ch {h}×{h} k{k}", f"{graph} {b}", f"{row['static_ms']:.3f}" if "ratio" in row else "—",
                          f"{row['ratio']:.2f}× (err {row['max_rel_err']:.1e})" if "ratio" in row else f"does not compile: {error}"])
            print(" | ".join(table[-1]), flush=True)
    md = (md_table(["layer", "folded graph, batch", "static depthwise conv ms (dynamic batch)", "batch folded into B·C groups / static"], table)
          + f"\n\n{machine()}; OpenVINO {ov.get_version()}; threads={args.threads}\n")
    print(md)
    write_outputs(args, md, {"threads": args.threads, "openvino": ov.get_version(), "rows": rows})


if __name__ == "__main__":
    main()
