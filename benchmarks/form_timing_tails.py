"""Whether forms should be timed with what follows their layer (FormTimer's `tails`: the BN the converter folds into
the layer and the activation after it, convert.layer_tails), per model and runtime.

A form timed alone misses what its neighbours cost it: on OpenVINO a folded BN's shift and an activation after a
MatMul's output run several times slower than after a conv (CondConv 112→672 at 14×14: `bank_batched` 0.38 ms alone,
1.55 ms with a SiLU after). Timing every form with a SiLU after it helped CondConv-EfficientNet-B0 (0.76–0.87×) and
hurt DY-MobileNetV3-Small (up to 1.32×), whose layers are not all followed by one (git history: this file's earlier
version, form_timing_activation.py). Timed with their real tails, per layer: for each model, the pipeline's own
dynamic-batch deployment (per-layer timing, then the whole-model check) without and with tails, each from an empty
cache; the two whole graphs timed side by side at batches 1 and 8 (interleaved repeats, medians, per-repeat ratios).

    python benchmarks/form_timing_tails.py --markdown benchmarks/results/form_timing_tails.md \
        --json benchmarks/results/form_timing_tails.json
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
from polyexport.convert import layer_tails  # noqa: E402
from polyexport.bench import interleaved_medians  # noqa: E402
from polyexport.runtimes import RunnerOptions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["cc_efficientnet_b0", "dy_mobilenetv3_small", "dy_resnet18", "dcd_mobilenetv2",
                                                     "mixnet_s"])
    ap.add_argument("--runtimes", nargs="*", default=["openvino", "onnxruntime"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--control", action="store_true",
                    help="also a second choice with forms timed alone: how far two choices of one setting differ")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    t0 = time.time()
    rows, body = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = zoo.instantiate(name, seed=0)
            x1 = torch.randn(1, *zoo.get(name).input_shape[1:])
            for rt in args.runtimes:
                graphs, picks, seconds = {}, {}, {}
                setups = [("alone", None), ("with tails", layer_tails(model))] + ([("alone again", None)] if args.control else [])
                for tag, tails in setups:
                    timer = FormTimer(rt, RunnerOptions(threads=args.threads), capture_layer_inputs(model, (x1,)),
                                      cache_path=os.path.join(tmp, f"{name}-{rt}-{tag}.json"), dynamic_batch=True, tails=tails,
                                      prior={})  # every form: the study compares choices among all of them
                    started = time.perf_counter()
                    deployment = choose_deployment(model, (x1,), rt, {}, True, False, timer, lambda _l: contextlib.nullcontext())
                    seconds[tag] = time.perf_counter() - started
                    graphs[tag] = deployment.model
                    picks[tag] = {r.name: r.form for r in deployment.records if r.form not in ("folded", "absorbed")}
                changed = sorted({f"{picks['alone'][k]} → {picks['with tails'][k]}" for k in picks["alone"]
                                  if picks["alone"][k] != picks["with tails"].get(k)})
                n_changed = sum(picks["alone"][k] != picks["with tails"].get(k) for k in picks["alone"])
                for batch in args.batches:
                    row = {"model": name, "runtime": rt, "batch": batch, "layers": len(picks["alone"]), "changed": n_changed,
                           "changes": changed, "choice_s": seconds}
                    timed = n_changed or args.control
                    if timed:
                        x = torch.randn(batch, *x1.shape[1:])
                        fns = {}
                        for tag, deployed in graphs.items():
                            runner, feeds = load_runner(rt, deployed, (x1,), tmp, f"{name}-{rt}-{tag.replace(' ', '-')}", args.threads,
                                                        dynamic_batch=True)
                            if runner is None:
                                raise SystemExit(f"{name} ({tag}) does not load on {rt}: {feeds}")
                            fns[tag] = (lambda r, f: lambda: r.run(f))(runner, {"input": x.numpy()})
                        per = interleaved_medians(fns, repeats=args.repeats, warmup=2, warmup_s=0.1, min_iters=5, min_time_s=0.3)
                        ratios = [a / b for a, b in zip(per["with tails"], per["alone"])]
                        row.update(ms={k: statistics.median(v) for k, v in per.items()}, ratio=statistics.median(ratios),
                                   range=[min(ratios), max(ratios)])
                        if args.control:
                            again = [a / b for a, b in zip(per["alone again"], per["alone"])]
                            row.update(control=statistics.median(again), control_range=[min(again), max(again)])
                    rows.append(row)
                    body.append([name, rt, str(batch), f"{n_changed} of {len(picks['alone'])}",
                                 f"{row['ms']['alone']:.2f}" if timed else "", f"{row['ms']['with tails']:.2f}" if timed else "",
                                 f"{row['ratio']:.2f}× ({row['range'][0]:.2f}–{row['range'][1]:.2f})" if timed else "same graph",
                                 f"{seconds['alone']:.1f} / {seconds['with tails']:.1f}", "; ".join(changed)]
                                + ([f"{row['control']:.2f}× ({row['control_range'][0]:.2f}–{row['control_range'][1]:.2f})"
                                    if "control" in row else "same graph"] if args.control else []))
                    print(body[-1], flush=True)
    md = md_table(["model", "runtime", "batch", "layers whose pick changed", "alone (ms)", "with tails (ms)",
                   "with tails / alone (range)", "choice s, alone / with tails", "changes"]
                  + (["control: a second choice alone / alone (range)"] if args.control else []), body)
    md += (f"\n\n{machine()}; threads={args.threads}; one dynamic-batch graph each, the pipeline's choice (per-layer timing, "
           f"then the whole-model check) from an empty cache, its forms timed alone and with what follows their layers; "
           f"medians of {args.repeats} interleaved repeats; {time.time() - t0:.0f} s")
    print(md)
    write_outputs(args, md, {"threads": args.threads, "runtimes": args.runtimes, "rows": rows})


if __name__ == "__main__":
    main()
