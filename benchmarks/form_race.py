"""What the form race's length costs and buys (issue 13): the per-layer form choice under several race settings,
against a long reference timing of the same forms.

A cold run's form choice is mostly its races (CondConv-EfficientNet-B0 on ONNX Runtime: 7.6 s of 11.8 s of per-layer
timing): every form of every layer signature warms up, then runs rounds of `min_time_s` in turns, up to `repeats`
rounds (bench.race). Shorter rounds cost less and see more noise. For each model and runtime this runs, from empty
caches, in one process:
- a reference choice with long races (9 rounds of 0.2 s), whose medians are taken as each form's true latency;
- each setting `TRIALS` times (the settings in turns), recording its seconds of per-layer timing and its picks.
A pick's regret is the reference latency of the form it chose over the reference's fastest for that layer; a
setting's regret over a model is the sum of its picks' reference latencies over the sum of the fastest ones, every
layer counted (a signature shared by five layers weighs five). The current setting's own regret shows the noise
floor: two trials of one setting do not pick alike either.

    python benchmarks/form_race.py --markdown benchmarks/results/form_race.md --json benchmarks/results/form_race.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, md_table, runtimes_here, write_outputs  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.autoform import FormTimer, capture_layer_inputs  # noqa: E402
from polyexport.convert import convert, layer_tails  # noqa: E402
from polyexport.pipeline import versions  # noqa: E402
from polyexport.runtimes import RunnerOptions  # noqa: E402

MODELS = ["cc_efficientnet_b0", "mixnet_s", "ps_resnet50", "oct_resnet50", "spd_yolov5n", "dy_mobilenetv3_small"]
#: label -> FormTimer's race settings; the first is the pipeline's
SETTINGS = {
    "current (3 × 30 ms, 20 ms warm-up)": dict(repeats=3, min_time_s=0.03, warmup_s=0.02),
    "3 × 10 ms, no warm-up": dict(repeats=3, min_time_s=0.01, warmup_s=0.0),
    "5 × 10 ms, no warm-up": dict(repeats=5, min_time_s=0.01, warmup_s=0.0),
}
REFERENCE = dict(repeats=9, min_time_s=0.2, warmup_s=0.1)
TRIALS = 2


def choose(model: torch.nn.Module, x: torch.Tensor, rt: str, threads: int, tmp: str, tag: str, **race) -> tuple[dict, float]:
    """The per-layer choice from an empty cache: ({layer: (chosen form, {form: ms})}, seconds of form timing)."""
    timer = FormTimer(rt, RunnerOptions(threads=threads), capture_layer_inputs(model, (x,)), cache_path=os.path.join(tmp, f"{tag}.json"),
                      tails=layer_tails(model), **race)
    t0 = time.perf_counter()
    convert(model, rt, {}, False, False, ranker=timer)
    seconds = time.perf_counter() - t0
    return {c["name"]: (c["chosen"], c["timings_ms"]) for c in timer.choices}, seconds


def regret(picks: dict, reference: dict) -> tuple[float, float, int]:
    """(summed regret over every layer, the worst layer's, layers whose pick is within 2 % of the fastest)."""
    chosen = fastest = 0.0
    worst, close = 1.0, 0
    for layer, (form, _) in picks.items():
        times = {k: v for k, v in reference[layer][1].items() if v is not None}
        best = min(times.values())
        got = times.get(form, float("inf"))
        chosen, fastest = chosen + got, fastest + best
        worst = max(worst, got / best)
        close += got <= 1.02 * best
    return chosen / fastest, worst, close


def measure(name: str, rt: str, threads: int, tmp: str) -> dict | None:
    model = zoo.instantiate(name, seed=0).eval()
    x = torch.randn(*zoo.get(name).input_shape)
    reference, ref_s = choose(model, x, rt, threads, tmp, f"{name}-{rt}-reference", **REFERENCE)
    if not reference:
        return None
    row = {"model": name, "runtime": rt, "layers": len(reference), "reference_s": ref_s, "settings": {}}
    for trial in range(TRIALS):
        for label, race in SETTINGS.items():
            picks, seconds = choose(model, x, rt, threads, tmp, f"{name}-{rt}-{trial}-{len(row['settings'])}-{label[:2]}", **race)
            total, worst, close = regret(picks, reference)
            row["settings"].setdefault(label, []).append({"seconds": seconds, "regret": total, "worst": worst, "close": close})
    return row


def markdown(rows: list[dict], meta: str) -> str:
    header = ["model", "runtime", "layers"]
    for label in SETTINGS:
        header += [f"{label}: s", "regret (worst layer)", "picks within 2 %"]
    out = []
    for r in rows:
        cells = [r["model"], r["runtime"], str(r["layers"])]
        for label in SETTINGS:
            trials = r["settings"][label]
            cells += [" / ".join(f"{t['seconds']:.1f}" for t in trials),
                      " / ".join(f"{t['regret']:.3f}× ({t['worst']:.2f}×)" for t in trials),
                      " / ".join(f"{t['close']}" for t in trials) + f" of {r['layers']}"]
        out.append(cells)
    totals = {label: sum(t["seconds"] for r in rows for t in r["settings"][label]) for label in SETTINGS}
    first = next(iter(SETTINGS))
    foot = "; ".join(f"{label}: {totals[label]:.0f} s in all ({totals[label] / totals[first]:.2f}× the current)" for label in SETTINGS)
    return md_table(header, out) + f"\n{meta}\n\nSeconds of per-layer form timing in all trials: {foot}.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for rt in runtimes_here(args.runtimes):
                row = measure(name, rt, args.threads, tmp)
                if row:
                    rows.append(row)
                    print(f"{name} {rt}: " + "; ".join(
                        f"{label}: {statistics.mean(t['seconds'] for t in ts):.1f} s, regret "
                        + "/".join(f"{t['regret']:.3f}" for t in ts) for label, ts in row["settings"].items()), flush=True)
    meta = (f"{machine()}; threads={args.threads}; batch 1, static graphs; each choice from an empty form cache; reference: "
            f"{REFERENCE['repeats']} rounds of {REFERENCE['min_time_s'] * 1e3:.0f} ms; {TRIALS} trials of each setting, in turns "
            f"(cells: trial 1 / trial 2); regret: the picks' reference latencies summed over every layer, over the fastest "
            f"forms' sum; {time.perf_counter() - t0:.0f} s")
    write_outputs(args, markdown(rows, meta), {"versions": versions(), "threads": args.threads, "reference": REFERENCE,
                                               "settings": SETTINGS, "rows": rows})


if __name__ == "__main__":
    main()
