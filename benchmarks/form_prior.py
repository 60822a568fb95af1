"""Which forms never come near winning, per runtime and layer type: the measured table behind the form prior (issue 13).

A cold run times every exact form of every layer signature in its own session (autoform.FormTimer); most of that
time goes to forms that lose by far. This times, from an empty form cache, every form of every layer signature of
every zoo model with a choice, as the pipeline does (framed, with what follows each layer), static at batch 1 and
with a dynamic batch, and gives per runtime, layer type and form how far behind the fastest form of its signature
it was (best and worst over the signatures; kernel-bank layers apart by kind of conv: form_prior.prior_key). With
`--write-prior`, the forms that were at least `--cut` × the fastest on every signature of their key in both contexts (and measured on at least `--min-signatures`) are written
to polyexport/form_prior.json, which the form timer then skips (`--form thorough` times them anyway).

    python benchmarks/form_prior.py --json benchmarks/results/form_prior.json \
        --markdown benchmarks/results/form_prior.md --write-prior polyexport/form_prior.json
    python benchmarks/form_prior.py --from-json benchmarks/results/form_prior.json --write-prior polyexport/form_prior.json

What the prior saves: `--compare` runs a cold form choice (per-layer timing and the whole-model check, as the
pipeline's deploy phase) with the shipped prior and without it, in turns, and prints the seconds of each and the
assignment each deployed:

    python benchmarks/form_prior.py --compare --models cc_efficientnet_b0 ps_resnet50 \
        --markdown benchmarks/results/form_prior_cost.md
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, md_table, paper_models, runtimes_here, write_outputs  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.autoform import FormTimer, capture_layer_inputs, choose_deployment  # noqa: E402
from polyexport.convert import assignment, convert, layer_tails  # noqa: E402
from polyexport.form_prior import prior_key  # noqa: E402
from polyexport.pipeline import versions  # noqa: E402
from polyexport.runtimes import RunnerOptions  # noqa: E402


def measure(name: str, rt: str, dynamic: bool, threads: int, tmp: str) -> list[dict]:
    """Every form's time on every layer signature of `name`, from an empty cache, with no prior (every form timed)."""
    entry = zoo.get(name)
    model = zoo.instantiate(name, seed=0).eval()
    x = torch.randn(*entry.input_shape)
    cache = os.path.join(tmp, f"{name}-{rt}-{dynamic}-forms.json")
    timer = FormTimer(rt, RunnerOptions(threads=threads), capture_layer_inputs(model, (x,)), cache_path=cache,
                      dynamic_batch=dynamic, tails=layer_tails(model), prior={})
    if not timer.inputs:
        return []
    convert(model, rt, {}, dynamic, False, ranker=timer)
    modules = dict(model.named_modules())
    rows = []
    for c in timer.choices:
        if c["cached"]:  # a signature seen before in this model: counted once
            continue
        times = {f: t for f, t in c["timings_ms"].items() if t is not None}
        if not times:
            continue
        best = min(times.values())
        rows.append({"model": name, "runtime": rt, "dynamic": dynamic, "layer": c["name"], "type": c["type"],
                     "key": prior_key(modules[c["name"]]),
                     "input": c["input"], "ms": c["timings_ms"],
                     "behind": {f: (t / best if t is not None else None) for f, t in c["timings_ms"].items()}})
    return rows


def cold_choice(name: str, rt: str, prior: dict | None, threads: int, tmp: str, tag: str) -> tuple[float, str, int]:
    """One cold deploy phase of `name` on `rt` (per-layer timing, whole-model check): its seconds, the assignment it
    deployed (a digest) and how many forms it timed."""
    import hashlib

    entry = zoo.get(name)
    model = zoo.instantiate(name, seed=0).eval()
    x = torch.randn(*entry.input_shape)
    timer = FormTimer(rt, RunnerOptions(threads=threads), capture_layer_inputs(model, (x,)),
                      cache_path=os.path.join(tmp, f"{tag}.json"), tails=layer_tails(model), prior=prior)
    t0 = time.perf_counter()
    deployment = choose_deployment(model, (x,), rt, {}, False, False, timer, lambda _label: contextlib.nullcontext())
    seconds = time.perf_counter() - t0
    timed = sum(len(c["timings_ms"]) for c in deployment.choices if c["type"] != "whole model" and not c["cached"])
    digest = hashlib.sha256(json.dumps(assignment(deployment.records), sort_keys=True).encode()).hexdigest()[:8]
    return seconds, digest, timed


def compare(names: list[str], runtimes: list[str], threads: int, repeats: int) -> str:
    """Cold deploy phases with the shipped prior and without, in turns, per model and runtime."""
    body = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for rt in runtimes:
                runs: dict[str, list] = {"prior": [], "every form": []}
                for i in range(repeats):
                    for label, prior in (("prior", None), ("every form", {})):
                        runs[label].append(cold_choice(name, rt, prior, threads, tmp, f"{name}-{rt}-{label}-{i}"))
                with_s = statistics.median(r[0] for r in runs["prior"])
                without_s = statistics.median(r[0] for r in runs["every form"])
                ratios = [a[0] / b[0] for a, b in zip(runs["prior"], runs["every form"])]
                same = sum(a[1] == b[1] for a, b in zip(runs["prior"], runs["every form"]))
                body.append([name, rt, f"{runs['prior'][0][2]} / {runs['every form'][0][2]}", f"{with_s:.1f}", f"{without_s:.1f}",
                             f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})", f"{same} of {repeats}"])
                print(md_table(["model", "runtime", "forms timed", "s", "s", "ratio", "same"], body[-1:]).splitlines()[-1], flush=True)
    return (md_table(["model", "runtime", "forms timed (prior / every form)", "cold deploy phase, prior (s)",
                      "every form (s)", "prior / every form (range)", "same deployed assignment"], body)
            + f"\n\n{machine()}; threads={threads}; batch 1, static graphs; each cold deploy phase from an empty form cache "
              f"(per-layer timing and the whole-model check, as the pipeline); medians of {repeats} runs in turns, the ratio the "
              "median of the paired ratios. A different assignment is not a worse one: the forms left are within noise of "
              "each other on many layers, and two cold runs of one setting differ too.")


def with_keys(rows: list[dict]) -> list[dict]:
    """Each row with its layer's prior key (form_prior.prior_key), looked up in its model where a saved run lacks it."""
    models: dict[str, dict] = {}
    for r in rows:
        if "key" not in r:
            if r["model"] not in models:
                models[r["model"]] = dict(zoo.instantiate(r["model"], seed=0).named_modules())
            r["key"] = prior_key(models[r["model"]][r["layer"]])
    return rows


def summary(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    """(runtime, prior key, form) -> the signatures measured, and the form's best and worst ratio to the fastest,
    per context (static, dynamic)."""
    out: dict[tuple[str, str, str], dict] = collections.defaultdict(lambda: {"static": [], "dynamic": []})
    for r in with_keys(rows):
        for form, behind in r["behind"].items():
            out[(r["runtime"], r["key"], form)]["dynamic" if r["dynamic"] else "static"].append(
                float("inf") if behind is None else behind)
    return out


def prior_from(rows: list[dict], cut: float, min_signatures: int) -> dict[str, dict[str, list[str]]]:
    """runtime -> prior key -> forms at least `cut` × the fastest on every signature measured, in both contexts, over at
    least `min_signatures` signatures in each."""
    prior: dict[str, dict[str, list[str]]] = {}
    for (rt, typ, form), ctx in sorted(summary(rows).items()):
        if all(len(v) >= min_signatures and min(v) >= cut for v in ctx.values()):
            prior.setdefault(rt, {}).setdefault(typ, []).append(form)
    return prior


def to_markdown(rows: list[dict], cut: float, min_signatures: int) -> str:
    body = []
    prior = prior_from(rows, cut, min_signatures)
    for (rt, typ, form), ctx in sorted(summary(rows).items()):
        cells = []
        for k in ("static", "dynamic"):
            v = ctx[k]
            cells.append(f"{min(v):.2f}–{max(v):.2f}× ({len(v)})".replace("inf", "fails") if v else "—")
        skipped = form in prior.get(rt, {}).get(typ, [])
        body.append([rt, typ, form, *cells, "**skipped**" if skipped else ""])
    return md_table(["runtime", "layer type (/ kind of conv)", "form", "behind the fastest, static batch 1 (signatures)",
                     "behind the fastest, dynamic batch (signatures)", f"prior (≥ {cut}× everywhere)"], body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--threads", type=int, default=2, help="as the main job's benchmark (benchmarks/main_job.py)")
    ap.add_argument("--cut", type=float, default=1.5,
                    help="a form this far behind the fastest on every signature is skipped (whole-graph effects moved a "
                         "model by at most 1.16x: autoform.WHOLE_MODEL_MARGIN)")
    ap.add_argument("--min-signatures", type=int, default=3)
    ap.add_argument("--from-json", help="re-derive the table and the prior from a saved run")
    ap.add_argument("--compare", action="store_true", help="time cold deploy phases with the shipped prior and without")
    ap.add_argument("--repeats", type=int, default=3, help="cold runs of each setting with --compare")
    ap.add_argument("--write-prior", help="write the prior (polyexport/form_prior.json)")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    if args.compare:
        torch.set_num_threads(args.threads)
        md = compare(args.models or ["cc_efficientnet_b0", "ps_resnet50"], runtimes_here(args.runtimes), args.threads, args.repeats)
        print(md)
        write_outputs(args, md, {"threads": args.threads, "versions": versions()})
        return
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        rows, note = saved["rows"], saved["note"]
    else:
        torch.set_num_threads(args.threads)
        names = args.models or paper_models()
        rows = []
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                for rt in runtimes_here(args.runtimes):
                    for dynamic in (False, True):
                        got = measure(name, rt, dynamic, args.threads, tmp)
                        rows += got
                        print(f"{name} {rt} dynamic={dynamic}: {len(got)} signatures", flush=True)
        note = (f"{machine()}; threads={args.threads}; every zoo model with a choice, each from an empty form cache, "
                f"forms timed as the pipeline times them (framed, with what follows each layer; a dynamic batch at "
                f"batches 1 and 8); {time.time() - t0:.0f} s")
    md = to_markdown(rows, args.cut, args.min_signatures) + "\n\n" + note
    print(md)
    if args.write_prior:
        prior = prior_from(rows, args.cut, args.min_signatures)
        with open(args.write_prior, "w") as f:
            json.dump({"cut": args.cut, "min_signatures": args.min_signatures, "measured": note,
                       "generated_by": "python benchmarks/form_prior.py --write-prior", "skip": prior}, f, indent=1)
            f.write("\n")
    if args.from_json:  # re-derived: the table only, the measurements stay as saved
        write_outputs(argparse.Namespace(markdown=args.markdown), md, {})
    else:
        write_outputs(args, md, {"threads": args.threads, "versions": versions(), "note": note, "rows": rows})


if __name__ == "__main__":
    main()
