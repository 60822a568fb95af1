"""Model-level benchmark: what deploying through polyexport buys, per zoo model, in one run.

For every paper model in the zoo (an entry with a `baseline`) and its plain baseline:
PyTorch eager; ONNX Runtime and OpenVINO on (a) the model exported as it is (`--no-deploy`: a
failure is recorded with its reason — that is a result too), (b) the model as
`polyexport MODEL --target RT --dynamic-batch` deploys it (dynamic-batch forms, each chosen by timing
on RT); the baseline exported the same way. One dynamic-batch graph per variant, timed at each
batch (default 1 and 8) in turns (interleaved repeats, medians), the same threads everywhere.

    python benchmarks/models.py --json benchmarks/results/models.json --plot benchmarks/results/models.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import flops, machine, md_table, n_outputs, runtimes_here, write_outputs  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.autoform import FormTimer, capture_layer_inputs  # noqa: E402
from polyexport.convert import convert  # noqa: E402
from polyexport.bench import interleaved  # noqa: E402
from polyexport.export import export_onnx, first_line, flatten_outputs  # noqa: E402  (first_line: one-line reason)
from polyexport.parity import compare  # noqa: E402
from polyexport.pipeline import versions  # noqa: E402
from polyexport.runtimes import RunnerOptions, make_runner  # noqa: E402


def export_variant(model: torch.nn.Module, x: torch.Tensor, path: str) -> dict:
    """Export with a dynamic batch axis; on failure, the reason and a static-batch fallback per batch."""
    t0 = time.perf_counter()
    try:
        export_onnx(model, (x,), path, input_names=["input"], n_outputs=n_outputs(model, x), dynamic_batch=True)
        return {"path": path, "dynamic": True, "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - recorded as a result
        return {"path": None, "dynamic": False, "error": first_line(e)[:160], "seconds": time.perf_counter() - t0}


def static_fallback(model, x, path) -> str | None:
    try:
        export_onnx(model, (x,), path, input_names=["input"], n_outputs=n_outputs(model, x), dynamic_batch=False)
        return path
    except Exception:  # noqa: BLE001
        return None


def deploy_for(model: torch.nn.Module, x: torch.Tensor, rt: str, threads: int, cache: str) -> torch.nn.Module:
    """What `polyexport MODEL --target RT --dynamic-batch` deploys: dynamic-batch forms, each chosen by timing on RT."""
    timer = FormTimer(rt, RunnerOptions(threads=threads), capture_layer_inputs(model, (x,)), cache_path=cache, dynamic_batch=True)
    return convert(model, target=rt, dynamic_batch=True, ranker=timer)[0]


def bench_pair(name: str, args, tmp: str) -> list[dict]:
    """Rows for one paper model (exported as is, and deployed per runtime) and its baseline (deployed)."""
    entry = zoo.get(name)
    shape = entry.input_shape
    model = zoo.instantiate(name, seed=0)
    baseline = zoo.instantiate(entry.baseline, seed=0)
    x1 = torch.randn(1, *shape[1:])
    rts = runtimes_here(args.runtimes)
    cache = os.path.join(tmp, "forms.json")
    t0 = time.perf_counter()
    graphs = {("as-is", rt): model for rt in rts}
    graphs.update({("deploy", rt): deploy_for(model, x1, rt, args.threads, cache) for rt in rts})
    choose_s = time.perf_counter() - t0
    graphs.update({("baseline", rt): convert(baseline, target=rt, dynamic_batch=True)[0] for rt in rts})
    info: dict[str, dict] = {}
    paths: dict[tuple, str | None] = {}
    for (tag, rt), m in graphs.items():
        key = tag if tag != "deploy" else f"deploy-{rt}"
        if key not in info:
            info[key] = export_variant(m, x1, os.path.join(tmp, f"{name}-{key}.onnx"))
        paths[(tag, rt)] = info[key]["path"]
    info["deploy-form-choice"] = {"seconds": choose_s}
    fl = {"model": flops(model, x1), "baseline": flops(baseline, x1)}
    rows = []
    for b in args.batches:
        xb = torch.randn(b, *shape[1:])
        with torch.no_grad():
            want = [t.numpy() for t in flatten_outputs(model(xb))]
        fns = {"eager": (lambda m, x: lambda: m(x))(model, xb)}
        parity = {}
        for (tag, rt), path in paths.items():
            if path is None and tag == "as-is":
                path = static_fallback(model, xb, os.path.join(tmp, f"{name}-{tag}-b{b}.onnx"))
                info["as-is"][f"static_b{b}"] = path is not None
            if path is None:
                continue
            try:
                r = make_runner(rt, RunnerOptions(threads=args.threads))
                sub = os.path.join(tmp, f"{name}-{tag}-{rt}-b{b}")
                os.makedirs(sub, exist_ok=True)
                r.load(path, sub)
                feeds = {"input": xb.numpy()}
                outs = r.run(feeds)
                if tag != "baseline":  # each output on its own scale; the worst one
                    parity[f"{tag}/{rt}"] = (max(compare(f"o{i}", w, o, 0.0, 1e-4).max_rel_err for i, (w, o) in enumerate(zip(want, outs)))
                                             if len(outs) == len(want) else float("inf"))
                fns[f"{tag}/{rt}"] = (lambda r, f: lambda: r.run(f))(r, feeds)
            except Exception as e:  # noqa: BLE001
                info.setdefault(f"{tag}-{rt}", {})["error"] = first_line(e)[:160]
        with torch.inference_mode():
            stats = interleaved(fns, repeats=args.repeats, warmup=2, warmup_s=0.1, min_iters=args.iters, min_time_s=args.min_time)
        row = {"model": name, "baseline": entry.baseline, "batch": b, "input": [b, *shape[1:]],
               "flops_ratio": fl["model"] / fl["baseline"], "gmacs": fl["model"] / 2e9, "baseline_gmacs": fl["baseline"] / 2e9,
               "ms": {k: s.p50 for k, s in stats.items()}, "cov": {k: s.cov for k, s in stats.items()},
               "parity_max_rel_err": parity,
               "export": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in info.items()}}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("model", "batch", "ms", "parity_max_rel_err")}, default=lambda v: round(v, 4)), flush=True)
    return rows


def fmt(ms: dict, key: str) -> str:
    return f"{ms[key]:.2f}" if key in ms else "—"


def to_markdown(rows: list[dict], rts: list[str]) -> str:
    header = ["model (batch)", "eager ms"]
    for rt in rts:
        header += [f"{rt}: as-is ms", f"{rt}: deploy ms", "speed-up of deploy over as-is", "deploy latency / baseline's (FLOPs ratio)"]
    header += ["export as-is", "parity (max err/scale)"]
    body = []
    for r in rows:
        ms = r["ms"]
        cells = [f"{r['model']} ({r['batch']})", fmt(ms, "eager")]
        for rt in rts:
            a, d, bl = ms.get(f"as-is/{rt}"), ms.get(f"deploy/{rt}"), ms.get(f"baseline/{rt}")
            cells += [fmt(ms, f"as-is/{rt}"), fmt(ms, f"deploy/{rt}"),
                      f"{a / d:.2f}×" if a and d else "—",
                      f"{d / bl:.2f}× ({r['flops_ratio']:.2f}×)" if d and bl else "—"]
        ex = r["export"]["as-is"]
        cells.append("dynamic batch" if ex.get("dynamic") else ("static batch only: " if ex.get(f"static_b{r['batch']}") else "fails: ") + ex.get("error", "")[:60])
        par = r["parity_max_rel_err"]
        cells.append(", ".join(f"{k.replace('/', ' ')} {v:.1e}" for k, v in par.items()))
        body.append(cells)
    return md_table(header, body)


def plot(rows: list[dict], rts: list[str], path: str, batch: int = 1) -> None:
    """Latency relative to each model's plain baseline (1.0 = as fast as the baseline), per runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["batch"] == batch]
    fig, axes = plt.subplots(1, len(rts), figsize=(6.5 * len(rts), 0.5 * len(rows) + 1.8), squeeze=False)
    for ax, rt in zip(axes[0], rts):
        y = np.arange(len(rows))
        for i, (tag, color, label) in enumerate((("as-is", "#c44e52", "exported as is"), ("deploy", "#4c72b0", "polyexport deploy"))):
            vals = [r["ms"].get(f"{tag}/{rt}", np.nan) / r["ms"].get(f"baseline/{rt}", np.nan) for r in rows]
            ax.barh(y + (i - 0.5) * 0.38, vals, 0.38, color=color, label=label)
            for yi, v in zip(y, vals):
                if tag == "as-is" and np.isnan(v):
                    ax.text(0.05, yi - 0.19, "exported as is: fails", va="center", fontsize=7, color="#c44e52")
        ax.axvline(1.0, color="#444", lw=1, ls="--", label="plain baseline")
        ax.set_yticks(y, [f"{r['model']} ({r['ms'].get(f'baseline/{rt}', float('nan')):.1f} ms base)" for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{rt}: latency / plain baseline's, batch {batch}")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="paper models (default: every zoo model with a baseline)")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--plot")
    ap.add_argument("--from-json", help="render the table and plot from an earlier --json instead of measuring")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or [n for n in zoo.names() if zoo.get(n).baseline and not n.startswith("test_")]
    rts = runtimes_here(args.runtimes)
    t0 = time.time()
    rows = []
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        rows, rts, args.threads, args.json = saved["rows"], saved["runtimes"], saved["threads"], None
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                rows += bench_pair(name, args, tmp)
    md = to_markdown(rows, rts)
    print()
    print(md)
    elapsed = "" if args.from_json else f"; {time.time() - t0:.0f} s"  # re-rendering measures nothing
    foot = f"{machine()}; threads={args.threads}; medians of {args.repeats} interleaved repeats{elapsed}"
    print("\n" + foot)
    write_outputs(args, md + "\n\n" + foot, {"threads": args.threads, "versions": versions(), "runtimes": rts, "rows": rows})
    if args.plot:
        plot(rows, rts, args.plot)


if __name__ == "__main__":
    main()
