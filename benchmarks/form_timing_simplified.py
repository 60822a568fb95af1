"""Does timing a form alone without onnxsim choose what timing it simplified chooses? (issue 13)

autoform.FormTimer times each exact form as a single-layer graph, as exported (`layer_simplifier =
"none"`): onnxsim took a fifth of the cold run's form choice, and the runtimes fold constants and shape
arithmetic when they load a graph. This checks that claim: for each model and runtime, every timed layer's
choice with the candidate graphs simplified and not, in turns (fresh caches, same process), and where they
differ, how far apart the two choices are in the simplified timings (a disagreement between forms within
noise of each other costs nothing).

    python benchmarks/form_timing_simplified.py --markdown benchmarks/results/form_timing_simplified.md
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from polyexport import zoo  # noqa: E402
from polyexport.autoform import FormTimer, capture_layer_inputs  # noqa: E402
from polyexport.convert import convert  # noqa: E402
from polyexport.runtimes import RunnerOptions  # noqa: E402

MODELS = ["ps_resnet50", "mixnet_s", "oct_resnet50", "het_resnet50", "cc_efficientnet_b0", "dy_resnet18", "spd_resnet18",
          "dcd_mobilenetv2", "dr_shufflenetv2_0_5x", "c2sp_resnet"]


def choices(model, x, runtime: str, simplifier: str, threads: int) -> dict[str, tuple[str, dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        timer = FormTimer(runtime, RunnerOptions(threads), capture_layer_inputs(model, (x,)), cache_path=os.path.join(tmp, "c.json"),
                          prior={})  # every form: the study compares choices among all of them
        timer.layer_simplifier = simplifier
        convert(model, runtime, ranker=timer)
    return {c["name"]: (c["chosen"], c["timings_ms"]) for c in timer.choices if not c["cached"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--runtimes", nargs="*", default=["onnxruntime", "openvino"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown")
    args = ap.parse_args()
    import torch

    rows = []
    for name in args.models:
        entry = zoo.get(name)
        model = zoo.instantiate(name)
        x = torch.randn(*entry.input_shape, generator=torch.Generator().manual_seed(0))
        for rt in args.runtimes:
            sim = choices(model, x, rt, "onnxsim", args.threads)
            raw = choices(model, x, rt, "none", args.threads)
            layers = [k for k in sim if k in raw]
            differ = [k for k in layers if sim[k][0] != raw[k][0]]
            # the cost of each disagreement, in the simplified timings: time(raw's choice) / time(sim's choice)
            costs = [(sim[k][1].get(raw[k][0]) or float("inf")) / sim[k][1][sim[k][0]] for k in differ]
            worst = max(costs, default=1.0)
            rows.append((name, rt, len(layers), len(differ), worst))
            print(f"{name:22s} {rt:12s} timed layers {len(layers):3d}  differ {len(differ):2d}  worst cost {worst:.2f}x "
                  + " ".join(f"{k}:{sim[k][0]}->{raw[k][0]}" for k in differ), flush=True)
    lines = ["| model | runtime | layers timed | choices that differ | worst: unsimplified choice / simplified choice, in simplified timings |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {rt} | {k} | {d} | {w:.2f}× |" for n, rt, k, d, w in rows]
    text = "\n".join(lines) + f"\n\nthreads={args.threads}; each layer's forms timed as bench.race does (interleaved, medians); " \
        "two timings of the same choice differ by noise alone, so a disagreement between forms within ~1.1× of each other is noise.\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
