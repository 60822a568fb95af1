"""OpenVINO's dynamic-shape cost (issue 15): one dynamic-batch graph compiled three ways, timed side by side.

For each zoo model, the graph `polyexport MODEL --target openvino --dynamic-batch` ships (the pipeline's own
form choice, timed on OpenVINO), compiled by OpenVINO with its batch axis
- dynamic: as written (what a runner that loads the IR gets, and what polyexport's OpenVINO runner compiles);
- bounded 1..N: the batch reshaped to the interval [1, N] (N the largest batch timed), the cheaper dynamic
  shape the issue asks about;
- static B: reshaped to the one batch it is run at (compiled once per batch: what a runner that knows its batch
  could do with the same file);
and each timed at batch 1 and 8 in interleaved repeats (same threads, LATENCY hint, f32), outputs compared to the
dynamic compile's. Ratios are to the dynamic compile.

    python benchmarks/openvino_batch_shapes.py --models cc_efficientnet_b0 dy_resnet18 dy_mobilenetv3_small \
        --json benchmarks/results/openvino_batch_shapes.json --markdown benchmarks/results/openvino_batch_shapes.md
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, md_table, n_outputs, write_outputs  # noqa: E402
from models import deploy_for  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.bench import interleaved  # noqa: E402
from polyexport.exporter import export_onnx  # noqa: E402
from polyexport.runtimes.openvino import read_onnx  # noqa: E402


def compile_as(core, path: str, shape, threads: int):
    """The graph at `path` with its (one) input reshaped to `shape` (None: as written), compiled as polyexport's runner does."""
    model = read_onnx(core, path)
    if shape is not None:
        model.reshape({model.inputs[0].get_any_name(): shape})
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    return core.compile_model(model, "CPU", config)


def bench_model(name: str, args, tmp: str) -> list[dict]:
    import openvino as ov

    entry = zoo.get(name)
    model = zoo.instantiate(name, seed=0)
    x1 = torch.randn(1, *entry.input_shape[1:])
    deployed, _ = deploy_for(model, x1, "openvino", args.threads, os.path.join(tmp, "forms.json"))
    path = os.path.join(tmp, f"{name}.onnx")
    export_onnx(deployed, (x1,), path, input_names=["input"], n_outputs=n_outputs(deployed, x1), dynamic_batch=True)
    core, rest = ov.Core(), list(entry.input_shape[1:])
    top = max(args.batches)
    shared = {"dynamic": compile_as(core, path, None, args.threads),
              f"bounded 1..{top}": compile_as(core, path, ov.PartialShape([ov.Dimension(1, top), *rest]), args.threads)}
    rows = []
    for b in args.batches:
        x = np.random.default_rng(b).standard_normal((b, *rest)).astype(np.float32)
        compiled = {**shared, f"static {b}": compile_as(core, path, ov.PartialShape([b, *rest]), args.threads)}
        # a request per batch: OpenVINO 2026.4 keeps a bounded-shape request's first input buffer and refuses a larger batch in it
        requests = {k: c.create_infer_request() for k, c in compiled.items()}
        outs = {k: r.infer({0: x})[0].copy() for k, r in requests.items()}
        scale = float(np.abs(outs["dynamic"]).max()) or 1.0
        fns = {k: (lambda r: lambda: r.infer({0: x}, share_inputs=True))(r) for k, r in requests.items()}
        stats = interleaved(fns, repeats=args.repeats, warmup=3, warmup_s=0.2, min_iters=10, min_time_s=args.min_time)
        base = stats["dynamic"].p50
        for k, s in stats.items():
            rows.append({"model": name, "batch": b, "compiled": k.split(" ")[0], "ms": s.p50, "cov": s.cov,
                         "ratio": s.p50 / base, "max_err_rel": float(np.abs(outs[k] - outs["dynamic"]).max()) / scale,
                         "machine": machine()})
            print(f"{name:22s} b{b} {k:14s} {s.p50:9.2f} ms  x{s.p50 / base:.2f}", flush=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        keyed.setdefault((r["model"], r["batch"]), {})[r["compiled"]] = r
    body = []
    for (name, b), v in keyed.items():
        cell = {k: f"{r['ms']:.2f} ms ({r['ratio']:.2f}×)" for k, r in v.items()}
        worst = max(r["max_err_rel"] for r in v.values())
        body.append([name, str(b), cell.get("dynamic", ""), cell.get("bounded", ""), cell.get("static", ""), f"{worst:.1e}"])
    return md_table(["model", "batch", "dynamic (as written)", "bounded 1..N", "static (reshaped to the batch)",
                     "max |diff| / scale vs dynamic"], body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["cc_efficientnet_b0", "dy_resnet18", "dy_mobilenetv3_small"])
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += bench_model(name, args, tmp)
    md = to_markdown(rows)
    foot = (f"{machine()}; threads={args.threads}; medians of {args.repeats} interleaved repeats; each model's graph is the one "
            f"`--target openvino --dynamic-batch` deploys (its forms timed on OpenVINO); {time.time() - t0:.0f} s")
    print("\n" + md + "\n\n" + foot)
    write_outputs(args, md + "\n\n" + foot, {"threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
