"""What the whole-model check buys, and what it costs, per model and runtime (issue 13).

The automatic form choice times each layer's forms, then checks that per-layer choice as a whole graph against a
few alternatives (autoform.choose_deployment). The check costs a cold run several seconds (exports, sessions, a
race); this measures, for every zoo model with a choice, from an empty form cache as a user's first run:
- the seconds of the per-layer timing and of the check,
- what the check decided: the per-layer choice kept, or an alternative by its own timing, and
- where it changed the choice, whether the change holds up: the per-layer choice and the check's pick re-timed
  side by side afterwards (interleaved repeats, medians; each exported afresh as the check's losers are deleted).

    python benchmarks/whole_model_check.py --markdown benchmarks/results/whole_model_check.md \
        --json benchmarks/results/whole_model_check.json
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

from common import load_runner, machine, md_table, paper_models, runtimes_here, write_outputs  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.autoform import FormTimer, capture_layer_inputs, choose_deployment  # noqa: E402
from polyexport.bench import interleaved_medians  # noqa: E402
from polyexport.convert import assignment, convert, layer_tails  # noqa: E402
from polyexport.pipeline import versions  # noqa: E402
from polyexport.runtimes import RunnerOptions  # noqa: E402


class _ClockedTimer(FormTimer):
    """The pipeline's form timer, with the wall seconds of its whole-model check kept."""

    check_s = 0.0

    def whole_models(self, candidates, args):
        t0 = time.perf_counter()
        try:
            return super().whole_models(candidates, args)
        finally:
            self.check_s += time.perf_counter() - t0


def measure(name: str, rt: str, threads: int, repeats: int, tmp: str) -> dict | None:
    """One cold choice of `name` on `rt` and, where the check changed it, the two graphs re-timed."""
    entry = zoo.get(name)
    model = zoo.instantiate(name, seed=0).eval()
    x = torch.randn(*entry.input_shape)
    cache = os.path.join(tmp, f"{name}-{rt}-forms.json")  # empty: a first run
    tails = layer_tails(model)  # what follows each layer, timed with its forms, as the pipeline does
    timer = _ClockedTimer(rt, RunnerOptions(threads=threads), capture_layer_inputs(model, (x,)), cache_path=cache, tails=tails)
    if not timer.inputs:
        return None
    t0 = time.perf_counter()
    deployment = choose_deployment(model, (x,), rt, {}, False, False, timer, lambda _label: contextlib.nullcontext())
    deploy_s = time.perf_counter() - t0
    whole = next((c for c in deployment.choices if c["type"] == "whole model"), None)
    layer_s = sum(c.get("seconds") or 0.0 for c in deployment.choices if c["type"] != "whole model")
    row = {"model": name, "runtime": rt, "deploy_s": deploy_s, "layers_s": layer_s, "check_s": timer.check_s,
           "signatures": sum(1 for c in deployment.choices if c["type"] != "whole model" and not c["cached"]),
           "checked": whole is not None}
    if whole is None:
        return row
    timings = whole["timings_ms"]
    row.update(candidates=len(timings), chosen=whole["chosen"], check_ms=timings)
    per_layer = timings.get("per-layer")
    row["check_ratio"] = (timings[whole["chosen"]] / per_layer) if per_layer and timings.get(whole["chosen"]) else None
    if whole["chosen"] != "per-layer":  # did the change hold up? the per-layer choice rebuilt from the (now warm) cache
        again = FormTimer(rt, RunnerOptions(threads=threads), timer.inputs, cache_path=cache, tails=tails)
        per_layer_model, records = convert(model, rt, {}, False, False, ranker=again)
        assert assignment(records) != assignment(deployment.records), "the per-layer choice rebuilt as the check's pick"
        fns = {}
        for tag, m in {"per-layer": per_layer_model, "chosen": deployment.model}.items():
            runner, feeds = load_runner(rt, m, (x,), tmp, f"{name}-{rt}-{tag}", threads)
            if runner is None:
                raise RuntimeError(f"{name} on {rt}: {tag} does not load again: {feeds}")
            fns[tag] = (lambda r, f: lambda: r.run(f))(runner, feeds)
        per = interleaved_medians(fns, repeats=repeats, warmup=2, warmup_s=0.1, min_iters=5, min_time_s=0.3)
        ratios = [c / p for c, p in zip(per["chosen"], per["per-layer"])]
        row.update(retimed_ratio=statistics.median(ratios), retimed_range=[min(ratios), max(ratios)])
    return row


def to_markdown(rows: list[dict]) -> str:
    body = []
    for r in rows:
        if not r["checked"]:
            body.append([r["model"], r["runtime"], str(r["signatures"]), f"{r['layers_s']:.1f}", "—", "not run", "", ""])
            continue
        retimed = (f"{r['retimed_ratio']:.2f}× ({r['retimed_range'][0]:.2f}–{r['retimed_range'][1]:.2f})"
                   if "retimed_ratio" in r else "")
        body.append([r["model"], r["runtime"], str(r["signatures"]), f"{r['layers_s']:.1f}", f"{r['check_s']:.1f}",
                     f"{r['chosen']} of {r['candidates']}", f"{r['check_ratio']:.3f}×" if r["check_ratio"] else "—", retimed])
    return md_table(["model", "runtime", "layer signatures timed", "per-layer timing (s)", "whole-model check (s)",
                     "the check's pick", "pick / per-layer choice, the check's timing", "pick / per-layer choice, re-timed"],
                    body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--threads", type=int, default=2, help="as the main job's benchmark (benchmarks/main_job.py)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats re-timing a changed choice")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or paper_models()
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for rt in runtimes_here(args.runtimes):
                row = measure(name, rt, args.threads, args.repeats, tmp)
                if row is not None:
                    rows.append(row)
                    print(to_markdown([row]).splitlines()[-1], flush=True)
    changed = [r for r in rows if r.get("chosen") not in (None, "per-layer")]
    md = to_markdown(rows)
    md += (f"\n\n{machine()}; threads={args.threads}; batch 1, static graphs; each pair from an empty form cache; the check "
           f"ran on {sum(r['checked'] for r in rows)} of {len(rows)} pairs and changed the choice on {len(changed)}; a change "
           f"re-timed: medians of {args.repeats} interleaved repeats, the ratio the median of the per-repeat ratios; "
           f"{time.time() - t0:.0f} s")
    print(md)
    write_outputs(args, md, {"threads": args.threads, "versions": versions(), "rows": rows})


if __name__ == "__main__":
    main()
