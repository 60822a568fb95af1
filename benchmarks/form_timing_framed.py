"""Each layer's forms timed alone vs framed by identity depthwise 1×1 convs (autoform.Framed), per runtime.

For the first N layer signatures of each model, every form the form timer would time (exact and usable here) is timed as the form timer times it
(autoform._time_checked: exported, checked against the reference, raced in interleaved repeats) twice: its graph
alone (the plain layout at both edges) and framed (an identity depthwise 1×1 conv on each image input and output,
as a network's neighbours put convs there). Prints each form's time relative to the fastest of its layer, both
ways, and whether the pick differs. The whole-model answer is benchmarks/forms.py (auto vs every fixed form).

    python benchmarks/form_timing_framed.py --models dcd_mobilenetv2 cc_efficientnet_b0 --layers 4 \
        --json benchmarks/results/form_timing_framed.json --markdown benchmarks/results/form_timing_framed.md
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, md_table, runtimes_here, write_outputs  # noqa: E402

from polyexport import zoo  # noqa: E402
from form_timing_one_graph import layer_forms  # noqa: E402  (the forms the form timer would time, per signature)

from polyexport.autoform import Framed, _time_checked  # noqa: E402
from polyexport.exporter import flatten_outputs  # noqa: E402
from polyexport.modules import set_eval  # noqa: E402
from polyexport.runtimes import RunnerOptions  # noqa: E402


def timed(ref: torch.nn.Module, args: tuple, forms: list, rt: str, threads: int, framed: bool, repeats: int) -> dict[str, float]:
    with torch.no_grad():
        out = [t.numpy() for t in flatten_outputs(ref(*args))]
    frame = (Framed.channels(args), Framed.channels(out))
    wrap = (lambda m: Framed(m, *frame)) if framed else (lambda m: m)
    builds = {f.name: (lambda f: lambda: wrap(set_eval(f.build(ref))))(f) for f in forms}
    ms = _time_checked(builds, args, out, rt, RunnerOptions(threads=threads), False, repeats=repeats, warmup_s=0.05,
                       min_time_s=0.1, simplifier="none" if rt == "onnxruntime" else "onnxsim", min_rounds=repeats)
    return {k: v for k, v in ms.items() if v != float("inf")}  # a form that fails here is left out of both


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["dcd_mobilenetv2", "cc_efficientnet_b0"])
    ap.add_argument("--layers", type=int, default=4, help="distinct layer signatures per model")
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    t0 = time.time()
    rows = []
    for name in args.models:
        model = set_eval(zoo.instantiate(name, seed=0))
        x = (torch.randn(*zoo.get(name).input_shape),)
        for rt in runtimes_here(args.runtimes):
            for ref, inputs, forms in list(layer_forms(model, x, rt).values())[:args.layers]:
                layer = f"{type(ref).__name__} {'x'.join(map(str, inputs[0].shape))}"
                ms = {how: timed(ref, inputs, forms, rt, args.threads, how == "framed", args.repeats) for how in ("alone", "framed")}
                if not ms["alone"] or set(ms["alone"]) != set(ms["framed"]):
                    print(f"{name} {layer} {rt}: forms failed differently alone and framed: {ms}", flush=True)
                    continue
                rel = {how: {k: v / min(t.values()) for k, v in t.items()} for how, t in ms.items()}
                pick = {how: min(t, key=t.get) for how, t in ms.items()}
                rows.append({"model": name, "layer": layer, "type": type(ref).__name__, "runtime": rt, "ms": ms, "relative": rel,
                             "pick": pick, "machine": machine()})
                print(f"{name:20s} {layer:22s} {rt:12s} alone: {pick['alone']:22s} framed: {pick['framed']:22s} "
                      + ", ".join(f"{k} {rel['alone'][k]:.2f}/{rel['framed'][k]:.2f}" for k in ms["alone"]), flush=True)
    body = [[r["model"], r["layer"], r["runtime"], r["pick"]["alone"], r["pick"]["framed"],
             ", ".join(f"{k} {r['relative']['alone'][k]:.2f} / {r['relative']['framed'][k]:.2f}" for k in r["ms"]["alone"])]
            for r in rows]
    md = md_table(["model", "layer", "runtime", "fastest alone", "fastest framed", "each form vs its layer's fastest: alone / framed"], body)
    differ = sum(r["pick"]["alone"] != r["pick"]["framed"] for r in rows)
    foot = (f"{machine()}; threads={args.threads}; each form raced as the form timer races it ({args.repeats} interleaved rounds, "
            f"medians); the pick differs on {differ} of {len(rows)} layers; {time.time() - t0:.0f} s")
    print("\n" + md + "\n\n" + foot)
    write_outputs(args, md + "\n\n" + foot, {"threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
