"""Whether forms should be timed with an activation after them (autoform.Framed's `activation`), per model.

On OpenVINO an elementwise op after a MatMul's output is slow, and the default frame (identity convs) hides it; a
SiLU in the frame shows it. For each model: the pipeline's own dynamic-batch deployment on the runtime (per-layer
timing, then the whole-model check) with the default frame and with the activation frame, each from an empty cache;
the two whole graphs timed side by side at batches 1 and 8 (interleaved repeats, medians, the per-repeat ratio).

    python benchmarks/form_timing_activation.py --models cc_efficientnet_b0 dy_mobilenetv3_small \
        --markdown benchmarks/results/form_timing_activation.md
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import load_runner, machine, md_table, write_outputs  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.autoform import FormTimer, capture_layer_inputs, choose_deployment  # noqa: E402
from polyexport.bench import interleaved_medians  # noqa: E402
from polyexport.runtimes import RunnerOptions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["cc_efficientnet_b0", "dy_mobilenetv3_small"])
    ap.add_argument("--runtime", default="openvino")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    t0 = time.time()
    rows, body = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = zoo.instantiate(name, seed=0)
            x1 = torch.randn(1, *zoo.get(name).input_shape[1:])
            graphs, forms = {}, {}
            for tag, act in (("default frame", False), ("activation frame", True)):
                timer = FormTimer(args.runtime, RunnerOptions(threads=args.threads), capture_layer_inputs(model, (x1,)),
                                  cache_path=os.path.join(tmp, f"{name}-{act}.json"), dynamic_batch=True, frame_activation=act)
                deployment = choose_deployment(model, (x1,), args.runtime, {}, True, False, timer, lambda _l: contextlib.nullcontext())
                graphs[tag] = deployment.model
                forms[tag] = sorted({f"{r.type}={r.form}" for r in deployment.records if r.form not in ("folded", "absorbed")})
            for batch in args.batches:
                x = torch.randn(batch, *x1.shape[1:])
                fns = {}
                for tag, deployed in graphs.items():
                    runner, feeds = load_runner(args.runtime, deployed, (x1,), tmp, f"{name}-{tag.replace(' ', '-')}", args.threads,
                                                dynamic_batch=True)
                    if runner is None:
                        raise SystemExit(f"{name} ({tag}) does not load: {feeds}")
                    fns[tag] = (lambda r, f: lambda: r.run(f))(runner, {"input": x.numpy()})
                per = interleaved_medians(fns, repeats=args.repeats, warmup=2, warmup_s=0.1, min_iters=5, min_time_s=0.3)
                ratios = [a / b for a, b in zip(per["activation frame"], per["default frame"])]
                row = {"model": name, "batch": batch, "ms": {k: statistics.median(v) for k, v in per.items()},
                       "ratio": statistics.median(ratios), "range": [min(ratios), max(ratios)], "forms": forms}
                rows.append(row)
                body.append([name, str(batch), f"{row['ms']['default frame']:.2f}", f"{row['ms']['activation frame']:.2f}",
                             f"{row['ratio']:.2f}× ({row['range'][0]:.2f}–{row['range'][1]:.2f})",
                             "; ".join(f"{k}: {', '.join(v)}" for k, v in forms.items())])
                print(body[-1], flush=True)
    md = md_table(["model", "batch", "default frame (ms)", "activation frame (ms)", "activation / default (range)",
                   "forms shipped"], body)
    md += (f"\n\n{machine()}; {args.runtime}; threads={args.threads}; one dynamic-batch graph per frame, each the pipeline's "
           f"choice from an empty cache; medians of {args.repeats} interleaved repeats; {time.time() - t0:.0f} s")
    print(md)
    write_outputs(args, md, {"threads": args.threads, "runtime": args.runtime, "rows": rows})


if __name__ == "__main__":
    main()
