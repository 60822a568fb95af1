"""Whole-model latency: automatic form choice vs every single fixed form, per runtime (issue 7).

For each zoo paper model, the research layers are deployed (a) with `auto`, exactly as the pipeline
does it (each exact form timed per layer on that runtime, then that choice checked against each uniform
assignment as whole graphs: pipeline.deploy_for) and (b) with each form forced
for every layer of that type; the whole models are timed side by side (interleaved, medians).
A forced form that cannot represent some layer of the model exactly is refused by the converter
(it never approximates): that variant is left out, with the reason printed.

    python benchmarks/forms.py --models ps_resnet50 mixnet_s --markdown benchmarks/results/forms.md
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

from polyexport import zoo  # noqa: E402
from polyexport.bench import interleaved  # noqa: E402
from polyexport.convert import convert, registered_layers  # noqa: E402
from polyexport.pipeline import ExportOptions, deploy_for  # noqa: E402


def variants(model: torch.nn.Module, x: torch.Tensor, rt: str, threads: int, cache: str) -> dict[str, torch.nn.Module]:
    _, records = convert(model)
    types = sorted({r.type for r in records if r.form not in ("folded", "absorbed", "reference")})
    entries = {t.__name__: e for t, e in registered_layers().items()}
    os.environ["POLYEXPORT_CACHE"] = cache  # the pipeline's own automatic choice, with a fresh cache
    auto, _, _ = deploy_for(model, [x.numpy()], ExportOptions(target=rt, threads=threads, form_choice="auto"))
    out = {"auto": auto, "preferred": convert(model, target=rt)[0]}
    for t in types:
        for form in entries[t].forms:
            try:
                out[f"{t}={form}"] = convert(model, target=rt, forms={t: form})[0]
            except Exception as e:  # noqa: BLE001 - a form that cannot apply to this model
                print(f"  {t}={form}: {e}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or [n for n in zoo.names() if zoo.get(n).baseline and not n.startswith("test_")]
    rows, records = [], []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "forms.json")
        for name in names:
            entry = zoo.get(name)
            model = zoo.instantiate(name, seed=0)
            x = torch.randn(*entry.input_shape)
            for rt in runtimes_here(None):
                fns = {}
                for tag, m in variants(model, x, rt, args.threads, cache).items():
                    runner, feeds = load_runner(rt, m, (x,), tmp, f"{name}-{rt}-{tag.replace('=', '-')}", args.threads)
                    if runner is not None:
                        fns[tag] = (lambda r, f: lambda: r.run(f))(runner, feeds)
                if len(fns) <= 2:  # nothing to choose between (one form per layer type)
                    continue
                stats = interleaved(fns, repeats=args.repeats, warmup=2, warmup_s=0.1, min_iters=5, min_time_s=0.3)
                best_fixed = min((k for k in stats if "=" in k), key=lambda k: stats[k].p50)
                auto = stats["auto"].p50
                rows.append([name, rt, f"{auto:.2f}", f"{stats['preferred'].p50:.2f}", f"{best_fixed} {stats[best_fixed].p50:.2f}",
                             f"{auto / stats[best_fixed].p50:.2f}×", ", ".join(f"{k} {v.p50:.2f}" for k, v in stats.items() if "=" in k)])
                records.append({"model": name, "runtime": rt, "ms": {k: v.p50 for k, v in stats.items()}})
                print(rows[-1], flush=True)
    md = md_table(["model", "runtime", "auto ms", "preferred order ms", "best single fixed form (ms)", "auto / best fixed", "every fixed form (ms)"], rows)
    md += f"\n\n{machine()}; threads={args.threads}; batch 1; medians of {args.repeats} interleaved repeats; {time.time() - t0:.0f} s"
    print(md)
    write_outputs(args, md, {"threads": args.threads, "rows": records})


if __name__ == "__main__":
    main()
