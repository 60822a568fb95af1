"""Could the form choice time every form in one graph? (issue 13: the cold main job's cost)

Today each (layer signature, form) pair is exported, loaded and raced in a session of its own
(autoform.FormTimer): on OpenVINO, CondConv-EfficientNet-B0's 12 signatures × 7 forms take ~40 s.
The alternative measured here: every form of every signature side by side in one graph (one export,
one session), run under the runtime's own profiler (benchmarks/profile_ops.py), each executed node's
time attributed to the form whose module it came from (by the exporter's scope names; a node the
runtime added, such as a layout reorder, goes to the form it feeds, else to the one feeding it).

For each model and runtime, in one process: the per-session timing (the pipeline's, fresh cache) and
the one-graph profile; what each cost, and whether the one graph picks the same form. Where they pick
differently, the regret is the per-session time of the one graph's pick over the per-session best (1.00:
no loss). Per-session timings are themselves noisy (close forms swap between runs), and a form alone
runs with its weights in cache where the one graph does not: what decides is the last column, the whole
model deployed with each method's picks, timed in turns.

    python benchmarks/form_timing_one_graph.py --models cc_efficientnet_b0 mixnet_s ps_resnet50 \\
        --markdown benchmarks/results/form_timing_one_graph.md --json benchmarks/results/form_timing_one_graph.json
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import tempfile
import time

import onnx
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from common import load_runner, machine, md_table, runtimes_here, write_outputs  # noqa: E402
from profile_ops import profile_onnxruntime, profile_openvino  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.autoform import FormTimer, capture_layer_inputs, signature  # noqa: E402
from polyexport.bench import interleaved_medians  # noqa: E402
from polyexport.convert import convert, plan  # noqa: E402
from polyexport.exporter import export_onnx, flatten_outputs  # noqa: E402
from polyexport.modules import set_eval  # noqa: E402
from polyexport.runtimes import RunnerOptions  # noqa: E402


class AllForms(nn.Module):
    """Every form of every signature, side by side: module `s{j}__{form}` reads signature j's inputs."""

    def __init__(self, groups: list[tuple[int, list[tuple[str, nn.Module]]]]):
        super().__init__()
        self.layout: list[tuple[str, int, int]] = []  # (module name, first input, number of inputs)
        first = 0
        for j, (n_inputs, forms) in enumerate(groups):
            for form, module in forms:
                key = f"s{j}__{form}"
                self.add_module(key, module)
                self.layout.append((key, first, n_inputs))
            first += n_inputs

    def forward(self, *inputs: torch.Tensor):
        outs = []
        for key, first, n in self.layout:
            outs += flatten_outputs(getattr(self, key)(*inputs[first:first + n]))
        return tuple(outs)


def layer_forms(model: nn.Module, args: tuple[torch.Tensor, ...], target: str) -> dict[str, tuple[nn.Module, tuple, list]]:
    """signature -> (reference layer, its captured inputs, its usable forms): what the form timer would time."""
    inputs = capture_layer_inputs(model, args)
    found: dict[str, tuple[nn.Module, tuple, list]] = {}

    def collect(name, ref, forms):
        if name in inputs:
            found.setdefault(signature(ref, inputs[name]), (ref, inputs[name], list(forms)))
        return forms
    plan(model, target, {}, False, False, collect)
    return found


def per_session(model: nn.Module, args: tuple[torch.Tensor, ...], target: str, threads: int, cache: str) -> tuple[dict, float]:
    """The pipeline's own per-layer timing (fresh cache): signature -> {form: ms}, and the seconds it took."""
    timer = FormTimer(target, RunnerOptions(threads=threads), capture_layer_inputs(model, args), cache_path=cache,
                      prior={})  # every form, as the one graph holds every form
    t0 = time.perf_counter()
    plan(model, target, {}, False, False, timer)
    spent = time.perf_counter() - t0
    out = {}
    for c in timer.choices:
        ref = model.get_submodule(c["name"])
        out.setdefault(signature(ref, timer.inputs[c["name"]]), c["timings_ms"])
    return out, spent


def one_graph(found: dict, target: str, threads: int, runs: int, tmp: str) -> tuple[dict, float, float]:
    """Every form in one graph, profiled: signature -> {form: ms}, the seconds it took, the unattributed share."""
    t0 = time.perf_counter()
    sigs = list(found)
    groups, flat = [], []
    with torch.no_grad():
        for sig in sigs:
            ref, args, forms = found[sig]
            groups.append((len(args), [(f.name, set_eval(f.build(ref))) for f in forms]))
            flat += list(args)
    model = AllForms(groups).eval()
    with torch.no_grad():
        n_out = len(model(*flat))
    names = [f"input_{i}" for i in range(len(flat))]
    path = os.path.join(tmp, f"all-{target}.onnx")
    export_onnx(model, tuple(flat), path, input_names=names, n_outputs=n_out, simplifier="none" if target == "onnxruntime" else "onnxsim",
                validate=False)
    feeds = {n: a.numpy() for n, a in zip(names, flat)}
    profiler = profile_onnxruntime if target == "onnxruntime" else profile_openvino
    table = profiler(path, feeds, threads, runs, warmup=3)
    spent = time.perf_counter() - t0
    outputs = [o.name for o in onnx.load(path, load_external_data=False).graph.output]
    with torch.no_grad():
        counts = [len(flatten_outputs(getattr(model, key)(*flat[first:first + n]))) for key, first, n in model.layout]
    output_keys = dict(zip(outputs, [key for (key, _, _), c in zip(model.layout, counts) for _ in range(c)]))
    owners = attribute(table, output_keys)
    ms: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    lost = 0.0
    for node, (_, t) in table.nodes.items():
        if not owners.get(node):
            lost += t
        for key in owners.get(node, ()):  # a node shared by several forms (a reorder of their common input): each pays it
            j, form = key.split("__", 1)
            ms[sigs[int(j[1:])]][form] += t
    return {s: dict(v) for s, v in ms.items()}, spent, lost / max(table.total_ms, 1e-9)


KEY = re.compile(r"(?:^|/)(s\d+__[A-Za-z0-9_]+?)(?:/|$)")


def attribute(table, output_keys: dict[str, str]) -> dict[str, set[str]]:
    """executed node -> the form modules it serves: by its scope name (or the names of the ONNX nodes fused into
    it, or the graph output it writes: ONNX Runtime renames a conv that writes one); a node without one (a
    reorder the runtime added) serves the forms it feeds, else those feeding it."""
    def own(name: str) -> set[str]:
        for n in [name, *table.origins.get(name, [])]:
            m = KEY.search(n)
            if m:
                return {m.group(1)}
        return {output_keys[t] for t in table.writes.get(name, []) + [name] if t in output_keys}
    owners = {n: k for n in table.producers if (k := own(n))}
    consumers: dict[str, list[str]] = collections.defaultdict(list)
    for n, ps in table.producers.items():
        for p in ps:
            consumers[p].append(n)
    for _ in range(6):  # reorders can chain
        for n in table.producers:
            if n in owners:
                continue
            after = set().union(*(owners[c] for c in consumers[n] if c in owners))
            before = set().union(*(owners[p] for p in table.producers[n] if p in owners))
            if after or before:
                owners[n] = after or before
    return owners


def compare(sessions: dict, profiled: dict) -> dict:
    agree, regrets, behind, forms = 0, [], [], 0
    kept = {c: 0 for c in CUTS}
    for sig, timings in sessions.items():
        ok = {f: t for f, t in timings.items() if t is not None}
        if sig not in profiled or len(ok) < 2:
            continue
        best = min(ok, key=ok.get)
        pick = min((f for f in profiled[sig] if f in ok), key=profiled[sig].get)
        agree += pick == best
        regrets.append(ok[pick] / ok[best])
        mine = {f: t for f, t in profiled[sig].items() if f in ok}
        behind.append(mine[best] / min(mine.values()))
        for cut in CUTS:
            kept[cut] += sum(t <= cut * min(mine.values()) for t in mine.values())
        forms += len(mine)
    return {"signatures": len(regrets), "same pick": agree,
            "regret median": statistics.median(regrets) if regrets else None, "regret max": max(regrets) if regrets else None,
            "best's one-graph ratio max": max(behind) if behind else None, "forms compared": forms,
            "kept by a one-graph cut": {str(c): kept[c] for c in CUTS}}


#: a one-graph pre-filter: keep the forms within this multiple of the one graph's fastest, then time those alone
CUTS = (1.3, 1.5, 2.0)


def picks(timings: dict[str, dict[str, float | None]]) -> dict[str, str]:
    return {sig: min((f for f, v in t.items() if v is not None), key=t.get) for sig, t in timings.items() if any(v is not None for v in t.values())}


def whole_models(model: nn.Module, x: tuple[torch.Tensor, ...], rt: str, choices: dict[str, dict[str, str]], threads: int,
                 repeats: int, tmp: str) -> dict[str, list[float]]:
    """The whole model deployed with each set of per-signature picks, timed in turns: ms per repeat."""
    inputs = capture_layer_inputs(model, x)
    fns = {}
    for label, pick in choices.items():
        def ranker(name, ref, forms, pick=pick):
            want = pick.get(signature(ref, inputs[name])) if name in inputs else None
            return sorted(forms, key=lambda f: f.name != want)
        deployed = convert(model, rt, {}, False, False, ranker=ranker)[0]
        runner, feeds = load_runner(rt, deployed, x, tmp, f"whole-{label}-{rt}", threads)
        if runner is None:
            raise RuntimeError(f"{label}: {feeds}")
        fns[label] = (lambda r, f: lambda: r.run(f))(runner, feeds)
    return interleaved_medians(fns, repeats=repeats, warmup=2, warmup_s=0.1, min_iters=5, min_time_s=0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["cc_efficientnet_b0", "mixnet_s", "ps_resnet50"])
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    rows = []
    for name in args.models:
        entry = zoo.get(name)
        model = set_eval(zoo.instantiate(name))
        x = (torch.randn(*entry.input_shape),)
        for rt in runtimes_here(args.runtimes):
            with tempfile.TemporaryDirectory() as tmp:
                found = layer_forms(model, x, rt)
                sessions, t_sessions = per_session(model, x, rt, args.threads, os.path.join(tmp, "cache.json"))
                profiled, t_graph, lost = one_graph(found, rt, args.threads, args.runs, tmp)
                per = whole_models(model, x, rt, {"per-session": picks(sessions), "one graph": picks(profiled)}, args.threads,
                                   args.repeats, tmp)
            ratios = [b / a for a, b in zip(per["per-session"], per["one graph"])]
            row = {"model": name, "runtime": rt, "forms": sum(len(f) for _, _, f in found.values()),
                   "whole ms": {k: statistics.median(v) for k, v in per.items()}, "whole ratio": statistics.median(ratios),
                   "whole ratio range": [min(ratios), max(ratios)],
                   "per-session s": round(t_sessions, 1), "one graph s": round(t_graph, 1), "unattributed": round(lost, 3),
                   **compare(sessions, profiled), "sessions": sessions, "profiled": profiled}
            rows.append(row)
            print({k: v for k, v in row.items() if k not in ("sessions", "profiled")}, flush=True)
    header = ["model", "runtime", "forms timed", "per-session s", "one graph s", "same pick", "regret median", "regret max",
              "unattributed share", "whole model: one graph's picks / per-session's (range)",
              "per-session best in the one graph, worst ratio to its fastest", "forms kept by a 1.3× / 1.5× / 2× one-graph cut"]
    body = [[r["model"], r["runtime"], str(r["forms"]), f"{r['per-session s']}", f"{r['one graph s']}",
             f"{r['same pick']} / {r['signatures']}", _x(r["regret median"]), _x(r["regret max"]), f"{r['unattributed']:.1%}",
             f"{r['whole ratio']:.2f}× ({r['whole ratio range'][0]:.2f}–{r['whole ratio range'][1]:.2f})",
             _x(r["best's one-graph ratio max"]), " / ".join(str(r["kept by a one-graph cut"][str(c)]) for c in CUTS) + f" of {r['forms compared']}"]
            for r in rows]
    md = md_table(header, body) + (f"\n\n{machine()}; threads={args.threads}; one graph: {args.runs} profiled runs; whole models: "
                                   f"medians of {args.repeats} interleaved repeats, the ratio is the median of the per-repeat ratios")
    print(md)
    write_outputs(args, md, {"threads": args.threads, "rows": rows})


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


if __name__ == "__main__":
    main()
