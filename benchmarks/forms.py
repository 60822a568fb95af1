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
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import load_runner, machine, md_table, paper_models, replace_rows, runtimes_here, write_outputs  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.bench import interleaved_medians  # noqa: E402
from polyexport.convert import assignment, convert, registered_layers  # noqa: E402
from polyexport.pipeline import ExportOptions, deploy_for  # noqa: E402


def variants(model: torch.nn.Module, x: torch.Tensor, rt: str, threads: int, cache: str) -> dict[str, tuple[torch.nn.Module, tuple]]:
    """{tag: (deployed model, assignment)} for auto, the preferred order and every single fixed form."""
    _, records = convert(model)
    entries = {t.__name__: e for t, e in registered_layers().items()}
    # an adapted layer's record names the foreign class (ultralytics' Detect): forced by its reference's name only
    types = sorted({r.type for r in records if r.form not in ("folded", "absorbed", "reference") and r.type in entries})
    os.environ["POLYEXPORT_CACHE"] = cache  # the pipeline's own automatic choice, with a fresh cache
    chosen = deploy_for(model, [x.numpy()], ExportOptions(target=rt, threads=threads, form_choice="auto"))
    auto, auto_records = chosen.model, chosen.records
    preferred, preferred_records = convert(model, target=rt)
    out = {"auto": (auto, assignment(auto_records)), "preferred": (preferred, assignment(preferred_records))}
    for t in types:
        for form in entries[t].forms:
            try:
                m, recs = convert(model, target=rt, forms={t: form})
                out[f"{t}={form}"] = (m, assignment(recs))
            except Exception as e:  # noqa: BLE001 - a form that cannot apply to this model
                print(f"  {t}={form}: {e}", flush=True)
    return out


def verdict(ratios: list[float], same_graph: bool) -> str:
    """auto vs the best fixed form, from the per-repeat ratios of interleaved timings (repeat i of both ran
    back to back, so a drift of the machine cancels in each ratio). A sign test: if the two were equally
    fast, every one of n ratios would fall on the same side of 1 with probability 2·0.5ⁿ (6% at n = 5);
    only then is one called faster or slower."""
    if same_graph:
        return "same graph"
    if max(ratios) < 1.0:
        return "faster"
    if min(ratios) > 1.0:
        return "slower"
    return "equal within noise"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--runtimes", nargs="*", help="default: every installed one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--merge", help="an earlier --json: its rows of the measured model/runtime pairs are replaced (marked --run), "
                                    "the others kept; written back there, the table rendered from all rows")
    ap.add_argument("--run", type=int, help="with --merge: this run's number (the table's last column)")
    ap.add_argument("--note", help="with --merge: what this run measured (appended to the table's foot)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or paper_models()
    rows, records = [], []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "forms.json")
        for name in names:
            entry = zoo.get(name)
            model = zoo.instantiate(name, seed=0)
            x = torch.randn(*entry.input_shape)
            for rt in runtimes_here(args.runtimes):
                fns, assigned = {}, {}
                for tag, (m, assign) in variants(model, x, rt, args.threads, cache).items():
                    runner, feeds = load_runner(rt, m, (x,), tmp, f"{name}-{rt}-{tag.replace('=', '-')}", args.threads)
                    if runner is not None:
                        fns[tag] = (lambda r, f: lambda: r.run(f))(runner, feeds)
                        assigned[tag] = assign
                if sum("=" in k for k in fns) < 2:  # nothing to choose between (one form per layer type)
                    continue
                if "auto" not in fns:  # the automatic choice failed to export or load: a result, and a bug to fix
                    rows.append([name, rt, "fails", "—", "—", "—", "—", "**auto failed to export or load**", ""])
                    records.append({"model": name, "runtime": rt, "auto_failed": True})
                    print(rows[-1], flush=True)
                    continue
                per = interleaved_medians(fns, repeats=args.repeats, warmup=2, warmup_s=0.1, min_iters=5, min_time_s=0.3)
                p50 = {k: statistics.median(v) for k, v in per.items()}
                fixed = [k for k in per if "=" in k]
                best = min(fixed, key=p50.get)
                same = [k for k in fixed if assigned[k] == assigned["auto"]]
                ratios = [a / b for a, b in zip(per["auto"], per[best])]
                rows.append([name, rt, f"{p50['auto']:.2f}", ", ".join(same) or "a per-layer mix", f"{p50['preferred']:.2f}",
                             f"{best} {p50[best]:.2f}",
                             f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})", verdict(ratios, best in same),
                             ", ".join(f"{k} {p50[k]:.2f}" for k in fixed)])
                records.append({"model": name, "runtime": rt, "ms": p50, "per_repeat_ms": per, "auto_same_as": same,
                                "best_fixed": best, "auto_over_best_per_repeat": ratios})
                print(rows[-1], flush=True)
    header = ["model", "runtime", "auto ms", "auto's assignment", "preferred order ms", "best single fixed form (ms)",
              "auto / best fixed (range over repeats)", "verdict", "every fixed form (ms)"]
    if args.merge:
        merge(args, header, rows, records)
        return
    md = md_table(header, rows)
    md += (f"\n\n{machine()}; threads={args.threads}; batch 1; medians of {args.repeats} interleaved repeats; the ratio is the median of"
           f" the per-repeat ratios (repeat i of auto and of the best fixed form ran back to back), the range their spread; {time.time() - t0:.0f} s")
    print(md)
    write_outputs(args, md, {"threads": args.threads, "rows": records})


def merge(args, header: list[str], rows: list[list[str]], records: list[dict]) -> None:
    """Replace the measured pairs' rows in the saved results (kept as their printed cells, with their run number and
    this run's records) and render the whole table, its foot extended by this run's note."""
    with open(args.merge) as f:
        saved = json.load(f)
    fresh = [{"run": args.run, "machine": machine(), "cells": dict(zip(header, r)), "record": rec} for r, rec in zip(rows, records)]
    saved["rows"] = replace_rows(saved["rows"], fresh, lambda r: (r["cells"]["model"], r["cells"]["runtime"]))
    if args.note:
        saved["runs"] = {**saved.get("runs", {}), str(args.run): args.note}
    with open(args.merge, "w") as f:
        json.dump(saved, f, indent=1)
    md = md_table(header + ["run"], [[r["cells"].get(h, "") for h in header] + [str(r["run"])] for r in saved["rows"]])
    md += "\n\n" + saved.get("foot", "") + "".join(f" Run {k}: {v}" for k, v in saved.get("runs", {}).items())
    print(md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md.rstrip() + "\n")


if __name__ == "__main__":
    main()
