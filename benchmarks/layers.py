"""Layer-level benchmark: each research layer's reference export vs its deploy forms vs a plain conv.

For every case in benchmarks/layer_cases/ (a layer at a realistic shape), export (a) the reference
as it is, (b) each deploy form, (c) the yardstick nn.Conv2d; time them on ONNX Runtime and OpenVINO
in turns (interleaved, medians of several repeats, same threads), and print latency as a ratio to
the yardstick, with each module's FLOPs ratio to the yardstick beside it. For the input-dependent kernels
(CondConv, DY-Conv, DCD) it also times their floors (benchmarks/floors.py) and checks issue 15's criterion:
the fastest exact form within 1.1 × the plain conv × the FLOPs ratio × the weight-read floor.

    python benchmarks/layers.py                    # all layers, all installed runtimes
    python benchmarks/layers.py --only psconv spd_conv --repeats 3 --json benchmarks/results/layers.json
    python benchmarks/layers.py --only condconv drconv_megvii --merge benchmarks/results/layers.json --markdown benchmarks/results/layers.md
    python benchmarks/layers.py --only condconv dynamic_conv dcd --merge benchmarks/results/layers.json --markdown benchmarks/results/layers.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import flops, load_runner, machine, md_table, runtimes_here, write_outputs  # noqa: E402
from floors import KernelBankFloor, attention_floor_model, kernel_banks  # noqa: E402
from layer_cases import all_cases  # noqa: E402

from polyexport.bench import interleaved  # noqa: E402
from polyexport.pipeline import versions  # noqa: E402


def floor_modules(reference: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """For an input-dependent kernel (issue 15): its expert bank read once (`floor:aggregation`, timed alone: the
    weight-read floor is (conv + it) / conv) and the plain conv with the attention and aggregation computed unused
    (`floor:attention`). None for other layers, and no bank floor for DCD (no expert bank: its static weights are
    the conv's own)."""
    out = {}
    banks = kernel_banks(reference)
    if banks:
        out["floor:aggregation"] = KernelBankFloor(banks).eval()
    attention = attention_floor_model(reference)
    if attention is not None:
        out["floor:attention"] = attention
    return out


def run(args) -> list[dict]:
    rows = []
    cases = all_cases(args.only)
    for case in cases:
        shapes = case.input_shape if isinstance(case.input_shape[0], (tuple, list)) else [case.input_shape]  # several inputs, or one
        x = tuple(torch.randn(*s) for s in shapes)
        modules = {"yardstick": case.yardstick, "reference": case.reference, **{f"form:{k}": m for k, m in case.forms.items()},
                   **floor_modules(case.reference)}
        base_flops = flops(case.yardstick, *x)
        with tempfile.TemporaryDirectory() as tmp:
            for rt in runtimes_here(args.runtimes):
                fns, errors = {}, {}
                for tag, mod in modules.items():
                    runner, feeds = load_runner(rt, mod.eval(), x, tmp, tag.replace(":", "_"), args.threads)
                    if runner is None:
                        errors[tag] = feeds
                    else:
                        fns[tag] = (lambda r, f: lambda: r.run(f))(runner, feeds)
                stats = interleaved(fns, repeats=args.repeats, warmup=3, warmup_s=0.05, min_iters=args.iters, min_time_s=args.min_time)
                y = stats["yardstick"].p50
                for tag in modules:
                    f = flops(modules[tag], *x)
                    row = {"layer": case.layer, "config": case.config, "runtime": rt, "module": tag,
                           "flops_ratio": f / base_flops, "note": case.notes.get(tag.removeprefix("form:"), ""), "machine": machine()}
                    if tag in stats:
                        row.update(ms=stats[tag].p50, cov=stats[tag].cov, ratio=stats[tag].p50 / y)
                    else:
                        row.update(error=errors[tag])
                    rows.append(row)
                    if "ratio" in row:
                        print(f"{case.layer:12s} {case.config:28s} {rt:12s} {tag:24s} {row['ms']:8.3f} ms  ×{row['ratio']:.2f} (flops ×{row['flops_ratio']:.2f})", flush=True)
                    else:
                        print(f"{case.layer:12s} {case.config:28s} {rt:12s} {tag:24s} FAILED {row['error']}", flush=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    """One row per (layer, shape, module); a latency-ratio column per runtime."""
    rts = list(dict.fromkeys(r["runtime"] for r in rows))
    keyed: dict[tuple, dict] = {}
    for r in rows:
        k = (r["layer"], r["config"], r["module"])
        keyed.setdefault(k, {"flops": r["flops_ratio"], "note": r["note"]})[r["runtime"]] = (
            f"{r['ratio']:.2f}× ({r['ms']:.3f} ms)" if "ratio" in r else "fails: " + r["error"][:40]
        )
    body = [[l, c, m, f"{v['flops']:.2f}×", *[v.get(rt, "") for rt in rts], v["note"]] for (l, c, m), v in keyed.items()]
    return md_table(["layer", "shape", "module", "FLOPs vs conv", *[f"{rt} latency vs conv" for rt in rts], "notes"], body)


#: issue 3 (static layers) and issue 4 (input-dependent kernels): the fastest form's latency must be
#: within this factor of (plain conv latency × the layer's FLOPs ratio to the plain conv)
BOUND_STATIC, BOUND_DYNAMIC = 1.25, 1.3
DYNAMIC = {"Dynamic_conv2d", "CondConv2d", "conv_dy", "conv_basic_dy", "DYModule", "DRConv2d", "DRConv"}


def fastest_forms(rows: list[dict], layers: set[str] | None = None):
    """Per (layer, shape, runtime), in the rows' order: its modules by tag and the tag of its fastest timed form
    (the cases with no timed form or no reference left out); only `layers` where given."""
    keyed: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if layers is None or r["layer"] in layers:
            keyed.setdefault((r["layer"], r["config"], r["runtime"]), {})[r["module"]] = r
    for key, mods in keyed.items():
        forms = [k for k, v in mods.items() if k.startswith("form:") and "ratio" in v]
        if forms and "reference" in mods:
            yield key, mods, min(forms, key=lambda k: mods[k]["ratio"])


def criteria(rows: list[dict]) -> str:
    """Per layer, shape and runtime: the fastest deploy form against the plain conv, scaled by FLOPs."""
    body = []
    for (layer, config, rt), mods, best in fastest_forms(rows):
        ref = mods["reference"]
        flops = ref["flops_ratio"]
        bound = BOUND_DYNAMIC if layer in DYNAMIC else BOUND_STATIC
        as_is = f"{ref['ratio']:.2f}×" if "ratio" in ref else "fails to export"
        if flops == 0:  # pure data movement (space_to_depth alone): the FLOPs-scaled bound does not apply
            verdict = ["n/a (no FLOPs)", "", "n/a"]
        else:
            overhead = mods[best]["ratio"] / flops
            verdict = [f"{overhead:.2f}", f"{bound}", "yes" if overhead <= bound else "**no**"]
        body.append([layer, config, rt, best.removeprefix("form:"), f"{mods[best]['ratio']:.2f}×", as_is, f"{flops:.2f}×", *verdict])
    return md_table(["layer", "shape", "runtime", "fastest form", "its latency vs conv", "reference export vs conv",
                     "layer FLOPs vs conv", "latency / FLOPs ratio", "bound", "within"], body)


#: issue 15's criterion for the input-dependent kernels: the fastest exact form within this factor of (plain conv latency
#: × FLOPs ratio × weight-read floor), the floor being (conv + reading the expert bank once) / conv
BOUND_ISSUE15 = 1.1
ISSUE15 = {"CondConv2d", "Dynamic_conv2d", "conv_dy", "conv_basic_dy", "DYModule"}


def criteria_dynamic(rows: list[dict]) -> str:
    """Issue 15's criterion, per input-dependent layer, shape and runtime, with both floors measured beside the forms."""
    body = []
    for (layer, config, rt), mods, best in fastest_forms(rows, ISSUE15):
        if "ms" not in mods.get("yardstick", {}):
            continue
        flops = mods["reference"]["flops_ratio"]
        aggregation = mods.get("floor:aggregation", {})
        weight_read = 1 + aggregation["ms"] / mods["yardstick"]["ms"] if "ms" in aggregation else 1.0
        attention = mods.get("floor:attention", {})
        limit = BOUND_ISSUE15 * flops * weight_read
        ratio = mods[best]["ratio"]
        body.append([layer, config, rt, best.removeprefix("form:"), f"{ratio:.2f}×", f"{flops:.2f}×",
                     f"{weight_read:.2f}×" if "ms" in aggregation else "1 (no bank)",
                     f"{attention['ratio']:.2f}×" if "ratio" in attention else "—",
                     f"{limit:.2f}×", "yes" if ratio <= limit else "**no**"])
    return md_table(["layer", "shape", "runtime", "fastest form", "its latency vs conv", "layer FLOPs vs conv",
                     "weight-read floor", "attention + aggregation floor vs conv", f"bound: {BOUND_ISSUE15} × FLOPs × floor",
                     "within"], body)


def merge_rows(path: str, rows: list[dict], threads: int) -> list[dict]:
    """The saved rows with those of the layer types just measured replaced by `rows` (in place of the first one
    of each type, so the table keeps its order). Refused when the thread counts differ: the ratios would not
    compare."""
    with open(path) as f:
        saved = json.load(f)
    if saved["threads"] != threads:
        raise SystemExit(f"--merge: {path} was measured with {saved['threads']} thread(s), this run with {threads}")
    for r in saved["rows"]:  # rows from before rows named their machine: the file's
        r.setdefault("machine", saved.get("machine", ""))
    fresh: dict[str, list[dict]] = {}
    for r in rows:
        fresh.setdefault(r["layer"], []).append(r)
    merged: list[dict] = []
    for r in saved["rows"]:
        if r["layer"] not in fresh:
            merged.append(r)
        elif fresh[r["layer"]]:  # the first saved row of a measured type: its fresh rows go here
            merged += fresh[r["layer"]]
            fresh[r["layer"]] = []
    return merged + [r for new in fresh.values() for r in new]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="layer case files to run (e.g. psconv mixconv)")
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--threads", type=int, default=1, help="threads for every runtime (default 1: least noise on shared machines)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--json", help="write the rows here (benchmarks/results/layers.json)")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--from-json", help="render the tables from an earlier --json instead of measuring")
    ap.add_argument("--merge", help="an earlier --json: its rows of the measured layer types are replaced, the others kept; "
                                    "written back there, and the tables rendered from all rows")
    args = ap.parse_args()
    t0 = time.time()
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        rows, args.threads = saved["rows"], saved["threads"]
        for r in rows:
            r.setdefault("machine", saved.get("machine", ""))
    else:
        rows = run(args)
        if args.merge:
            rows, args.json = merge_rows(args.merge, rows, args.threads), args.json or args.merge
    md = "#### How close the fastest exact form gets (the issues' criterion)\n\n" + criteria(rows)
    dynamic = criteria_dynamic(rows)
    if dynamic.count("\n") > 1:
        md += ("\n\n#### The input-dependent kernels against their floors (issue 15's criterion)\n\n"
               "weight-read floor: (conv + the expert bank read once, `floor:aggregation`) / conv; attention + aggregation "
               "floor: the plain conv with the routing and the aggregation computed unused (`floor:attention`).\n\n" + dynamic)
    md += "\n\n#### Every module measured\n\n" + to_markdown(rows)
    print()
    print(md)
    print(f"\n{machine()}; threads={args.threads}; {time.time() - t0:.0f} s")
    if args.from_json:
        args.json = None  # re-rendering: the measured rows stay as they were
    write_outputs(args, md + f"\n\n{machines(rows)}; threads={args.threads}; latency ratios are medians of interleaved repeats ({args.repeats} in the run that wrote this)",
                  {"threads": args.threads, "versions": versions(), "rows": rows})


def machines(rows: list[dict]) -> str:
    """Which machine measured which layers (merged runs may come from several; ratios compare within a row's machine)."""
    by: dict[str, list[str]] = {}
    for r in rows:
        names = by.setdefault(r.get("machine") or machine(), [])
        if r["layer"] not in names:
            names.append(r["layer"])
    if len(by) == 1:
        return next(iter(by))
    return "; ".join(f"{', '.join(names)}: {m}" for m, names in by.items())


if __name__ == "__main__":
    main()
