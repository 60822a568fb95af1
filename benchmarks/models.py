"""Model-level benchmark: what deploying through polyexport buys, per zoo model, in one run.

For every paper model in the zoo (an entry with a `baseline`) and its plain baseline:
PyTorch eager; ONNX Runtime and OpenVINO on (a) the model exported as it is (`--no-deploy`: a
failure is recorded with its reason — that is a result too), (b) the model as
`polyexport MODEL --target RT --dynamic-batch` deploys it (dynamic-batch forms, each chosen by timing
on RT); the baseline exported the same way. One dynamic-batch graph per variant, timed at each
batch (default 1 and 8) in turns (interleaved repeats, medians), the same threads everywhere.

Options for the input-dependent-kernel models (issue 15), each timed in the same interleaved turns:
`--static` adds the same variants exported without `--dynamic-batch` (one static graph per batch:
deploy-static, baseline-static); `--floor` adds the weight-read floor of the models with kernel banks
(CondConv2d, Dynamic_conv2d): every expert read once per batch by the aggregation MatMuls alone, timed as
its own graph, reported as (baseline + aggregation) / baseline, and the model with its plain convs and every
attention branch and aggregation computed but unused (floor-attention: what any kernel-aggregating form
adds at least), and that model with each depthwise dynamic conv as the core every exact form of it runs at least
(floor-depthwise: the cheaper of K constant convs summed and one conv with a run-time kernel; see
benchmarks/dynamic_depthwise.py); with `--static` too, those floors also as static graphs (floor-*-static), against
baseline-static; `--preferred` adds the deployment in the registry's order, untimed (what `--form
preferred` ships: the per-layer timing sees a layer alone, not the layouts between layers);
`--openvino-per-batch` adds the deploy graph on OpenVINO compiled for the batch it is given (reshaped to
that static batch and cached per batch: what a runner could do with one dynamic-batch graph; polyexport's
runner compiles it dynamic).

    python benchmarks/models.py --json benchmarks/results/models.json --plot benchmarks/results/models.png
    python benchmarks/models.py --models cc_efficientnet_b0 dy_resnet18 --static --floor --openvino-per-batch \
        --threads 1 --merge benchmarks/results/models.json --markdown benchmarks/results/models.md
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import flops, machine, md_table, n_outputs, paper_models, replace_rows, runtimes_here, write_outputs  # noqa: E402
from floors import DEPTHWISE_CORES, KernelBankFloor, attention_floor_model, kernel_banks  # noqa: E402

from polyexport import zoo  # noqa: E402
from polyexport.convert import convert  # noqa: E402
from polyexport.bench import interleaved_medians, stats_from  # noqa: E402
from polyexport.exporter import export_onnx, first_line, flatten_outputs  # noqa: E402  (first_line: one-line reason)
from polyexport.parity import compare  # noqa: E402
from polyexport.pipeline import ExportOptions, versions  # noqa: E402
from polyexport.pipeline import deploy_for as pipeline_deploy_for  # noqa: E402
from polyexport.runtimes import RunnerOptions, make_runner  # noqa: E402


def export_variant(model: torch.nn.Module, x: torch.Tensor, path: str) -> dict:
    """Export with a dynamic batch axis; on failure, the reason and a static-batch fallback per batch."""
    t0 = time.perf_counter()
    try:
        export_onnx(model, (x,), path, input_names=["input"], n_outputs=n_outputs(model, x), dynamic_batch=True)
        return {"path": path, "dynamic": True, "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - recorded as a result
        return {"path": None, "dynamic": False, "error": first_line(e)[:160], "seconds": time.perf_counter() - t0}


def static_fallback(model, x, path, errors: dict | None = None) -> str | None:
    """Export at x's batch; None on failure (its one-line reason into `errors["error"]` when given)."""
    try:
        export_onnx(model, (x,), path, input_names=["input"], n_outputs=n_outputs(model, x), dynamic_batch=False)
        return path
    except Exception as e:  # noqa: BLE001
        if errors is not None:
            errors["error"] = first_line(e)[:160]
        return None


def deploy_for(model: torch.nn.Module, x: torch.Tensor, rt: str, threads: int, cache: str,
               dynamic_batch: bool = True) -> tuple[torch.nn.Module, list]:
    """What `polyexport MODEL --target RT [--dynamic-batch]` deploys: the pipeline's own choice (pipeline.deploy_for:
    each layer's exact forms timed on RT with what follows them, then checked as whole graphs), and the layer records."""
    opts = ExportOptions(target=rt, threads=threads, dynamic_batch=dynamic_batch, form_choice="auto", form_cache=cache)
    deployment = pipeline_deploy_for(model, [x.numpy()], opts)
    return deployment.model, deployment.records


def form_counts(records: list) -> dict[str, int]:
    """"TYPE=FORM" -> how many layers got it (converted layers only)."""
    return dict(collections.Counter(f"{r.type}={r.form}" for r in records if r.form not in ("folded", "absorbed")))


class OpenVinoPerBatch:
    """The deploy graph on OpenVINO compiled for each batch it is given (reshaped to that static batch, cached):
    measures what a runner could do with one dynamic-batch graph (polyexport's OpenVINO runner compiles it
    dynamic). Configured as that runner: LATENCY hint, f32, the same threads."""

    def __init__(self, threads: int):
        import openvino as ov

        self.ov, self.core, self.threads, self.compiled = ov, ov.Core(), threads, {}

    def load(self, path: str, workdir: str) -> None:  # noqa: ARG002 - the runner interface
        self.model = self.core.read_model(path)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        key = tuple((k, v.shape) for k, v in feeds.items())
        if key not in self.compiled:
            model = self.model.clone()
            model.reshape({k: list(v.shape) for k, v in feeds.items()})
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": self.threads}
            self.compiled[key] = self.core.compile_model(model, "CPU", config).create_infer_request()
        request = self.compiled[key]
        result = request.infer(feeds)
        return [np.asarray(result[o]) for o in request.model_outputs]


def bench_pair(name: str, args, tmp: str) -> list[dict]:
    """Rows for one paper model (exported as is, and deployed per runtime) and its baseline (deployed)."""
    entry = zoo.get(name)
    shape = entry.input_shape
    model = zoo.instantiate(name, seed=0)
    baseline = zoo.instantiate(entry.baseline, seed=0)
    x1 = torch.randn(1, *shape[1:])
    rts = runtimes_here(args.runtimes)
    cache = args.form_cache or os.path.join(tmp, "forms.json")
    t0 = time.perf_counter()
    graphs = {("as-is", rt): model for rt in rts}
    forms: dict[str, dict[str, int]] = {}
    for rt in rts:
        graphs[("deploy", rt)], records = deploy_for(model, x1, rt, args.threads, cache)
        forms[f"deploy/{rt}"] = form_counts(records)
    choose_s = time.perf_counter() - t0
    if args.preferred:  # the registry's measured order, untimed (what `--form preferred` ships)
        for rt in rts:
            graphs[("deploy-preferred", rt)], records = convert(model, target=rt, dynamic_batch=True)
            forms[f"deploy-preferred/{rt}"] = form_counts(records)
    graphs.update({("baseline", rt): convert(baseline, target=rt, dynamic_batch=True)[0] for rt in rts})
    banks = kernel_banks(model) if args.floor else []
    if banks:
        graphs.update({("floor-aggregation", rt): KernelBankFloor(banks).eval() for rt in rts})
    attention_floor = attention_floor_model(model) if args.floor else None
    if attention_floor is not None:
        graphs.update({("floor-attention", rt): attention_floor for rt in rts})
    for core in DEPTHWISE_CORES if args.floor else ():  # the depthwise floor: the cheaper of the two graphs
        depthwise_floor = attention_floor_model(model, depthwise=core)
        if depthwise_floor is not None:
            graphs.update({(f"floor-depthwise-{core}", rt): depthwise_floor for rt in rts})
    info: dict[str, dict] = {}
    paths: dict[tuple, str | None] = {}
    for (tag, rt), m in graphs.items():
        key = tag if tag not in ("deploy", "deploy-preferred") else f"{tag}-{rt}"
        if key not in info:
            info[key] = export_variant(m, x1, os.path.join(tmp, f"{name}-{key}.onnx"))
        paths[(tag, rt)] = info[key]["path"]
    if args.openvino_per_batch and "openvino" in rts:
        paths[("deploy", "openvino-per-batch")] = paths[("deploy", "openvino")]
    info["deploy-form-choice"] = {"seconds": choose_s}
    fl = {"model": flops(model, x1), "baseline": flops(baseline, x1)}
    rows = []
    for b in args.batches:
        xb = torch.randn(b, *shape[1:])
        with torch.no_grad():
            want = [t.numpy() for t in flatten_outputs(model(xb))]
        fns = {"eager": (lambda m, x: lambda: m(x))(model, xb)}
        parity = {}
        batch_paths = dict(paths)
        if args.static:  # the same bounds without --dynamic-batch: one static graph per batch, forms timed at it
            for rt in rts:
                deployed, records = deploy_for(model, xb, rt, args.threads, cache, dynamic_batch=False)
                forms[f"deploy-static/{rt}/b{b}"] = form_counts(records)
                for tag, m in (("deploy-static", deployed), ("baseline-static", convert(baseline, target=rt)[0])):
                    batch_paths[(tag, rt)] = static_fallback(m, xb, os.path.join(tmp, f"{name}-{tag}-{rt}-b{b}.onnx"),
                                                             info.setdefault(f"{tag}-{rt}-b{b}", {}))
            static_floors: dict[str, str | None] = {}  # the floors as static graphs too: one per tag (the same model on each runtime)
            for (tag, rt), m in graphs.items():
                if tag.startswith("floor-") and tag != "floor-aggregation":
                    if tag not in static_floors:
                        static_floors[tag] = static_fallback(m, xb, os.path.join(tmp, f"{name}-{tag}-static-b{b}.onnx"),
                                                             info.setdefault(f"{tag}-static-b{b}", {}))
                    batch_paths[(f"{tag}-static", rt)] = static_floors[tag]
        for (tag, rt), path in batch_paths.items():
            if path is None and tag == "as-is":
                path = static_fallback(model, xb, os.path.join(tmp, f"{name}-{tag}-b{b}.onnx"))
                info["as-is"][f"static_b{b}"] = path is not None
            if path is None:
                continue
            try:
                r = OpenVinoPerBatch(args.threads) if rt == "openvino-per-batch" else make_runner(rt, RunnerOptions(threads=args.threads))
                sub = os.path.join(tmp, f"{name}-{tag}-{rt}-b{b}")
                os.makedirs(sub, exist_ok=True)
                r.load(path, sub)
                feeds = {"input": xb.numpy()}
                outs = r.run(feeds)
                if not tag.startswith(("baseline", "floor")):  # each output on its own scale; the worst one
                    parity[f"{tag}/{rt}"] = (max(compare(f"o{i}", w, o, 0.0, 1e-4).max_rel_err for i, (w, o) in enumerate(zip(want, outs)))
                                             if len(outs) == len(want) else float("inf"))
                fns[f"{tag}/{rt}"] = (lambda r, f: lambda: r.run(f))(r, feeds)
            except Exception as e:  # noqa: BLE001
                info.setdefault(f"{tag}-{rt}", {})["error"] = first_line(e)[:160]
        with torch.inference_mode():
            per_repeat = interleaved_medians(fns, repeats=args.repeats, warmup=2, warmup_s=0.1, min_iters=args.iters,
                                             min_time_s=args.min_time)
        stats = {k: stats_from(v) for k, v in per_repeat.items()}
        row = {"model": name, "baseline": entry.baseline, "batch": b, "input": [b, *shape[1:]],
               "flops_ratio": fl["model"] / fl["baseline"], "gmacs": fl["model"] / 2e9, "baseline_gmacs": fl["baseline"] / 2e9,
               "ms": {k: s.p50 for k, s in stats.items()}, "cov": {k: s.cov for k, s in stats.items()},
               "repeats_ms": per_repeat, "parity_max_rel_err": parity, "forms": forms,
               "export": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in info.items()}}
        if banks:
            row["bank_floats"] = sum(bank.numel() for bank in banks)
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


#: issue 15's bounds: deploy latency / the plain baseline's, batch 1 and 8, dynamic-batch and static graphs
BOUNDS = {"cc_efficientnet_b0": 1.3, "dy_resnet18": 1.2, "dy_mobilenetv3_small": 2.0, "dcd_mobilenetv2": 1.6}


def _ratio(ms: dict, a: str, b: str) -> float | None:
    return ms[a] / ms[b] if ms.get(a) and ms.get(b) else None


def _paired(row: dict, a: str, b: str) -> tuple[float, float, float] | None:
    """a / b per repeat (repeat i of each ran in the same round): (median, min, max); None without per-repeat times."""
    per = row.get("repeats_ms", {})
    if not per.get(a) or not per.get(b):
        return None
    ratios = sorted(x / y for x, y in zip(per[a], per[b]))
    return float(np.median(ratios)), ratios[0], ratios[-1]


def _cheaper_core(row: dict, pattern: str, base: str) -> str | None:
    """The depthwise floor's key: of the graphs `pattern` names for each depthwise core, the one cheaper against `base`
    (by the paired per-repeat ratios where kept), None where none was timed."""
    ms = row["ms"]
    cores = [pattern.format(core) for core in DEPTHWISE_CORES if _ratio(ms, pattern.format(core), base)]
    return min(cores, key=lambda k: (_paired(row, k, base) or (_ratio(ms, k, base),))[0], default=None)


def _fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def dynamic_kernels_markdown(rows: list[dict], rts: list[str]) -> str:
    """The issue-15 table: per model, batch and runtime, deploy / baseline for the dynamic-batch graph and for static
    graphs, the weight-read floor, the dynamic graph against the static as-is one, and OpenVINO compiled per batch."""
    header = ["model (batch)", "runtime", "bound", "dynamic: deploy / baseline", "dynamic, preferred order / baseline",
              "static: deploy / baseline",
              "floor: (baseline + aggregation) / baseline", "floor: attention + aggregation computed, unused / baseline",
              "floor: that + depthwise core (cheaper of K static convs, one run-time kernel) / baseline",
              "static floor: attention (+ depthwise core where the model has one) / baseline",
              "dynamic deploy / static as-is", "OpenVINO per-batch compile / baseline",
              "threads"]
    body = []
    for r in rows:
        if r["model"] not in BOUNDS or not any(k.startswith(("deploy-static", "floor", "deploy-preferred")) for k in r["ms"]):
            continue
        ms, bound = r["ms"], BOUNDS[r["model"]]

        def cell(v: float | None, a: str | None = None, b: str | None = None) -> str:
            """v against the bound; with a and b timed per repeat, the median of the paired ratios and their range."""
            paired = _paired(r, a, b) if a else None
            if paired is not None:
                v = paired[0]
            if v is None:
                return "—"
            text = f"**{v:.2f}×**" if v > bound else f"{v:.2f}×"
            return text if paired is None else f"{text} ({paired[1]:.2f}–{paired[2]:.2f})"

        for rt in rts:
            floor = ((ms[f"baseline/{rt}"] + ms[f"floor-aggregation/{rt}"]) / ms[f"baseline/{rt}"]
                     if ms.get(f"floor-aggregation/{rt}") and ms.get(f"baseline/{rt}") else None)
            base = f"baseline/{rt}"
            depthwise = _cheaper_core(r, "floor-depthwise-{}/" + rt, base)
            static_base = f"baseline-static/{rt}"
            static_floor = (_cheaper_core(r, "floor-depthwise-{}-static/" + rt, static_base)
                            or (f"floor-attention-static/{rt}" if _ratio(ms, f"floor-attention-static/{rt}", static_base) else None))
            asis = _ratio(ms, f"deploy/{rt}", f"as-is/{rt}")
            per_batch = _ratio(ms, "deploy/openvino-per-batch", "baseline/openvino") if rt == "openvino" else None
            body.append([f"{r['model']} ({r['batch']})", rt, f"{bound}×",
                         cell(_ratio(ms, f"deploy/{rt}", f"baseline/{rt}"), f"deploy/{rt}", f"baseline/{rt}"),
                         cell(_ratio(ms, f"deploy-preferred/{rt}", f"baseline/{rt}")),
                         cell(_ratio(ms, f"deploy-static/{rt}", f"baseline-static/{rt}"), f"deploy-static/{rt}", f"baseline-static/{rt}"),
                         "—" if floor is None else f"{floor:.2f}×", cell(_ratio(ms, f"floor-attention/{rt}", base), f"floor-attention/{rt}", base),
                         cell(_ratio(ms, depthwise, base), depthwise, base) if depthwise else "—",
                         cell(_ratio(ms, static_floor, static_base), static_floor, static_base) if static_floor else "—",
                         "—" if asis is None else f"{asis:.2f}×",
                         cell(per_batch), str(r.get("threads", ""))])
    return md_table(header, body)


def merge_rows(path: str, rows: list[dict], note: str | None) -> dict:
    """The saved benchmark with `rows` replacing those of the same (model, batch), the others kept in order."""
    with open(path) as f:
        saved = json.load(f)
    for r in saved["rows"]:  # rows from before rows named their machine: the file's
        r.setdefault("machine", saved.get("machine", ""))
    saved["rows"] = replace_rows(saved["rows"], [{**r, "machine": machine()} for r in rows], lambda r: (r["model"], r["batch"]))
    if note:
        saved["notes"] = [n for n in saved.get("notes", []) if not n.startswith(note.split(":")[0])] + [note]
    return saved


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
    ap.add_argument("--static", action="store_true", help="also the static-batch graphs (deploy and baseline, one per batch)")
    ap.add_argument("--floor", action="store_true", help="also the weight-read floor (kernel-bank models)")
    ap.add_argument("--openvino-per-batch", action="store_true", help="also the deploy graph on OpenVINO compiled per batch")
    ap.add_argument("--form-cache", help="the form timer's cache file (default: a fresh one per run)")
    ap.add_argument("--preferred", action="store_true", help="also the deployment in the registry's preferred order (untimed)")
    ap.add_argument("--merge", help="an earlier --json: its rows of the measured models are replaced, the others kept; "
                                    "written back there, and the tables rendered from all rows")
    ap.add_argument("--note", help="with --merge: a note on these rows kept in the JSON (replacing one with the same first words)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or paper_models()
    rts = runtimes_here(args.runtimes)
    t0 = time.time()
    rows = []
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        rows, rts, args.threads, args.json = saved["rows"], saved["runtimes"], saved["threads"], None
        args.repeats = saved.get("repeats", args.repeats)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                rows += bench_pair(name, args, tmp)
        for r in rows:
            r["threads"] = args.threads
    record = {"threads": args.threads, "repeats": args.repeats, "versions": versions(), "runtimes": rts, "rows": rows}
    if args.merge and not args.from_json:
        record = merge_rows(args.merge, rows, args.note)
        rows, args.json = record["rows"], args.json or args.merge
    md = to_markdown(rows, rts)
    issue15 = dynamic_kernels_markdown(rows, rts)
    if issue15.count("\n") > 1:
        md += ("\n\n#### Input-dependent kernels (issue 15): deploy / baseline against the bound (**bold**: above it), "
               "dynamic-batch and static graphs; where each repeat's times were kept, the deploy / baseline cells are the median "
               "of the per-repeat ratios (repeat i of both ran in the same round), their range in brackets\n\n" + issue15)
    print()
    print(md)
    elapsed = "" if args.from_json else f"; {time.time() - t0:.0f} s"  # re-rendering measures nothing
    foot = f"{machine()}; threads={args.threads}; medians of {args.repeats} interleaved repeats{elapsed}"
    if args.merge and not args.from_json:
        foot += (f" (rows of {', '.join(names)}: this run; the other rows from the earlier runs in models.json, "
                 f"threads={record['threads']} unless a row says otherwise)")
    print("\n" + foot)
    write_outputs(args, md + "\n\n" + foot, record)
    if args.plot:
        plot(rows, rts, args.plot)


if __name__ == "__main__":
    main()
