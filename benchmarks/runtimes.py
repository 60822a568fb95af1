"""Zoo models: PyTorch eager vs ONNX Runtime vs OpenVINO, latency ratios in one run.

Each model is deployed and exported once (static batch), then the three are timed in turns
(interleaved repeats, medians, same thread count) so machine drift hits all alike.

    python benchmarks/runtimes.py --models resnet18 mobilenetv2 --threads 2 --json benchmarks/results/runtimes.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import load_runner, machine, md_table, runtimes_here, write_outputs  # noqa: E402

from polyexport import deploy, zoo  # noqa: E402
from polyexport.bench import interleaved  # noqa: E402
from polyexport.pipeline import versions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["resnet18", "mobilenetv2", "resnet50"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", help="write the table (and the machine line) here (docs/results.md links it)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, records = [], []
    t0 = time.time()
    for name in args.models:
        entry = zoo.get(name)
        model = zoo.instantiate(name)
        x = torch.randn(args.batch, *entry.input_shape[1:])
        deployed = deploy(model)
        fns = {"torch": (lambda m: lambda: m(x))(model)}
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
            for rt in runtimes_here(None):
                runner, feeds = load_runner(rt, deployed, (x,), tmp, name, args.threads)
                if runner is not None:
                    fns[rt] = (lambda r, f: lambda: r.run(f))(runner, feeds)
            stats = interleaved(fns, repeats=args.repeats, warmup=3, warmup_s=0.2, min_iters=10, min_time_s=0.5)
        base = stats["torch"].p50
        cells = [f"{stats[k].p50:.2f} ms" + ("" if k == "torch" else f" ({base / stats[k].p50:.2f}×)") for k in fns]
        rows.append([name, "×".join(map(str, x.shape)), *cells])
        records.append({"model": name, "input": list(x.shape), **{k: stats[k].as_dict() for k in fns}})
        print(f"{name}: " + ", ".join(f"{k} {stats[k].p50:.2f} ms (CoV {stats[k].cov:.1%})" for k in fns), flush=True)
    header = ["model", "input", *[("PyTorch eager" if k == "torch" else f"{k} (speed-up vs eager)") for k in fns]]
    print()
    md = md_table(header, rows) + f"\n\n{machine()}; threads={args.threads}; medians of {args.repeats} interleaved repeats; {time.time() - t0:.0f} s"
    print(md)
    write_outputs(args, md, {"threads": args.threads, "versions": versions(), "rows": records})


if __name__ == "__main__":
    main()
