"""Which exporter and which simplifier: measured, not assumed (feeds the defaults in polyexport/exporter).

For each zoo model: torch.onnx's TorchScript exporter vs its dynamo exporter, then onnxsim vs
onnxslim vs nothing on the TorchScript graph: export time, node count, ONNX Runtime latency.

    python benchmarks/export.py --models resnet18 mobilenetv2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import onnx
import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, md_table, n_outputs, write_outputs  # noqa: E402

from polyexport import deploy, zoo  # noqa: E402
from polyexport.bench import interleaved  # noqa: E402
from polyexport.exporter import export_onnx  # noqa: E402
from polyexport.runtimes import RunnerOptions, make_runner  # noqa: E402

VARIANTS = [("torchscript", "onnxsim"), ("torchscript", "onnxslim"), ("torchscript", "none"), ("dynamo", "onnxsim"), ("dynamo", "none")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["resnet18", "mobilenetv2"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", help="write the table (and the machine line) here (docs/results.md links it)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for name in args.models:
        entry = zoo.get(name)
        model = deploy(zoo.instantiate(name))
        x = torch.randn(*entry.input_shape)
        n_out = n_outputs(model, x)  # a detector returns one map per level
        fns, info = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for exporter, simp in VARIANTS:
                tag = f"{exporter}+{simp}"
                path = os.path.join(tmp, tag + ".onnx")
                try:
                    t0 = time.perf_counter()
                    export_onnx(model, (x,), path, input_names=["input"], n_outputs=n_out, opset=18 if exporter == "dynamo" else 17,
                                exporter=exporter, simplifier=simp)
                    info[tag] = (time.perf_counter() - t0, len(onnx.load(path).graph.node))
                    r = make_runner("onnxruntime", RunnerOptions(threads=args.threads))
                    r.load(path, tmp)
                    feeds = {"input": x.numpy()}
                    fns[tag] = (lambda r, f: lambda: r.run(f))(r, feeds)
                except Exception as e:  # noqa: BLE001 - a failing variant is a result
                    info[tag] = (float("nan"), f"fails: {type(e).__name__}")
            stats = interleaved(fns, repeats=args.repeats, warmup=3, warmup_s=0.2, min_iters=10, min_time_s=0.5)
        base = stats["torchscript+onnxsim"].p50
        for tag, (secs, nodes) in info.items():
            lat = f"{stats[tag].p50:.2f} ms ({stats[tag].p50 / base:.2f}×)" if tag in stats else "-"
            rows.append([name, tag, f"{secs:.1f} s", str(nodes), lat])
            print(rows[-1], flush=True)
    print()
    md = md_table(["model", "exporter + simplifier", "export time (incl. simplify, checks)", "nodes", "ONNX Runtime p50 (vs default)"], rows)
    md += f"\n\n{machine()}; threads={args.threads}; medians of {args.repeats} interleaved repeats"
    print(md)
    write_outputs(args, md, {})


if __name__ == "__main__":
    main()
