"""fp16 across the zoo: the error it really costs (what precision.TOLERANCES is set from), the modules
that had to stay fp32, top-1 agreement, and fp16 vs fp32 latency on each runtime, in one run.

With --noise-floor, fp32 instead: each model's own rounding (its fp32 output against its float64 copy,
noise_floor.py) beside every stage's error, and their ratio — what parity.NOISE_MULTIPLE is set from:
an exact rewrite differs from the model by a small multiple of its floor, and the multiple allowed must
stay above the largest ratio seen while a planted error of 1e-3 still fails.

    python benchmarks/precision.py --noise-floor --threads 2 --json benchmarks/results/noise_floor.json --markdown benchmarks/results/noise_floor.md

Each model goes through the pipeline with --fp16 (deploy, export, ONNX Runtime's fp16 graph, OpenVINO's
f16 hint, which runs bf16 on CPUs without fp16 units); then fp32 and fp16 are timed in turns (interleaved
repeats, medians) on each runtime.

    python benchmarks/precision.py --threads 2 --json benchmarks/results/precision.json --markdown benchmarks/results/precision.md
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, md_table, write_outputs  # noqa: E402

import polyexport  # noqa: E402
from polyexport import zoo  # noqa: E402
from polyexport.bench import interleaved  # noqa: E402
from polyexport.inputs import make_specs, random_inputs  # noqa: E402
from polyexport.noise_floor import measure_noise_floor  # noqa: E402
from polyexport.pipeline import versions  # noqa: E402
from polyexport.runtimes import RunnerOptions, make_runner  # noqa: E402


def timed(report, threads: int, repeats: int) -> dict[str, float]:
    """fp16 latency / fp32 latency per runtime, on the artifacts the run wrote."""
    import numpy as np

    shape = report.inputs[0]["shape"]
    feeds = {report.inputs[0]["name"]: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    fns, runners = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for rt in ("onnxruntime", "openvino"):
            for fp16 in (False, True):
                runner = make_runner(rt, RunnerOptions(threads, fp16=fp16))
                sub = os.path.join(tmp, f"{rt}-{fp16}")
                os.makedirs(sub)
                runner.load(report.artifacts["onnx"], sub)
                runners.append(runner)
                fns[f"{rt}/{'fp16' if fp16 else 'fp32'}"] = (lambda r: lambda: r.run(feeds))(runner)
        stats = interleaved(fns, repeats=repeats, warmup=3, warmup_s=0.2, min_iters=10, min_time_s=0.3)
        for r in runners:
            r.close()
    return {rt: stats[f"{rt}/fp16"].p50 / stats[f"{rt}/fp32"].p50 for rt in ("onnxruntime", "openvino")} | {
        f"{k}_ms": s.p50 for k, s in stats.items()}


def noise_floor_rows(models: list[str], threads: int) -> tuple[list[list[str]], list[dict], float]:
    """Per model: its noise floor, each stage's error and error / floor; and the largest ratio."""
    rows, records, worst = [], [], 0.0
    for name in models:
        entry = zoo.get(name)
        shape = (2, *(entry.test_shape or entry.input_shape)[1:])
        model = zoo.instantiate(name, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            report = polyexport.export(model, input_shapes=[shape], target="onnxruntime", out=os.path.join(tmp, "o"), bench=False,
                                       extra_runtimes=["openvino"], parity_seeds=2, threads=threads, form_choice="preferred")
        # measured here for every model (the pipeline measures it only where a stage needs it), on the run's first input
        floor_entry = measure_noise_floor(model, [random_inputs(make_specs([shape]), 0)[0]]).as_dict()
        floor = max(floor_entry.get("per_output") or [0.0])
        ratios = {k: p["max_rel_err"] / floor if floor > 0 else float("nan") for k, p in report.parity.items()}
        worst = max([worst, *(r for r in ratios.values() if r == r)])
        records.append({"model": name, "input": list(shape), "noise_floor": floor_entry, "passed": report.passed,
                        "stages": {k: {"max_rel_err": p["max_rel_err"], "ratio": ratios[k]} for k, p in report.parity.items()}})
        cells = [f"{p['max_rel_err']:.2g} ({ratios[k]:.2f}×)" for k, p in report.parity.items()]
        rows.append([name, "×".join(map(str, shape)), f"{floor:.2g}", *cells, "yes" if report.passed else "**no**"])
        print(f"{name}: floor {floor:.2g}; " + ", ".join(f"{k} {c}" for k, c in zip(report.parity, cells)), flush=True)
    return rows, records, worst


def main_noise_floor(args) -> None:
    from polyexport.parity import NOISE_MULTIPLE

    t0 = time.time()
    rows, records, worst = noise_floor_rows(args.models, args.threads)
    # where the rule can matter (NOISE_MULTIPLE·floor above rtol 1e-4 needs floors of 1e-5 and more), two fp32
    # computations differ by a small multiple of the floor; at floors near fp32's own resolution (1e-7) the
    # ratio is of a few ulps and says nothing about the rule
    deep = [r["stages"][k]["ratio"] for r in records if (r["noise_floor"].get("per_output") or [0])[0] >= 1e-6 for k in r["stages"]]
    worst_deep = max(deep, default=float("nan"))
    header = ["model", "input", "noise floor (fp32 vs float64, of scale)", "torch-deployed", "onnx-exported", "onnx-simplified",
              "onnxruntime", "openvino", "passed"]
    md = (md_table(header, rows) + f"\n\nEach stage: max error / scale (error / noise floor). Largest ratio: {worst:.2f} overall, "
          f"{worst_deep:.2f} on models whose floor is 1e-6 or more ({len(deep) // 5} here); parity.NOISE_MULTIPLE = {NOISE_MULTIPLE:g}.\n"
          f"{machine()}; threads={args.threads}; parity over 2 seeds at batch 2 and the model's test shape; {time.time() - t0:.0f} s")
    print()
    print(md)
    write_outputs(args, md, {"threads": args.threads, "versions": versions(), "largest_ratio": worst, "largest_ratio_floor_1e-6": worst_deep,
                             "noise_multiple": NOISE_MULTIPLE,
                             "rows": records})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=[n for n in zoo.names() if not n.startswith("test_") and not zoo.get(n).inputs],
                    help="zoo models (default: every one-input model; the dynamic heads have their own benchmark, benchmarks/heads.py)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-size", action="store_true", help="the models' own input shapes (default: their test shapes)")
    ap.add_argument("--latency", nargs="*", default=["resnet18", "mobilenetv2", "ps_resnet50", "mixnet_s"],
                    help="models whose fp16/fp32 latency is also measured")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--noise-floor", action="store_true", help="fp32: each model's noise floor against every stage's error (see above)")
    ap.add_argument("--markdown")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.noise_floor:
        return main_noise_floor(args)
    rows, records = [], []
    t0 = time.time()
    for name in args.models:
        entry = zoo.get(name)
        shape = entry.input_shape if args.full_size else (entry.test_shape or entry.input_shape)
        shape = (2, *shape[1:])
        with tempfile.TemporaryDirectory() as tmp:
            report = polyexport.export(zoo.instantiate(name, seed=1), input_shapes=[shape], target="onnxruntime",
                                       out=os.path.join(tmp, "o"), bench=False, fp16=True, extra_runtimes=["openvino"],
                                       parity_seeds=2, threads=args.threads, form_choice="preferred")
            lat = timed(report, args.threads, args.repeats) if name in args.latency else {}
        rec = {"model": name, "input": list(shape), "passed": report.passed, "precision": report.precision,
               "parity": {rt: report.parity[rt] for rt in ("onnxruntime", "openvino")}, "latency_ratio": lat}
        records.append(rec)
        cells = []
        for rt in ("onnxruntime", "openvino"):
            p, d = report.parity[rt], report.precision[rt]
            kept = ", ".join(k["module"] for k in d["kept_fp32"])
            cells += [f"{p['precision']}: {p['max_rel_err']:.2g} (rtol {p['rtol']:g}){'' if p['passed'] else ' **FAILED**'}"
                      + (f"; fp32 kept: {kept}" if kept else ""),
                      f"{p['top1_agreement']:.0%}" if "top1_agreement" in p else "- (no class scores)", f"{lat[rt]:.2f}×" if rt in lat else "-"]
        rows.append([name, "×".join(map(str, shape)), *cells])
        print(f"{name}: " + " | ".join(cells), flush=True)
    header = ["model", "input"]
    for rt in ("ONNX Runtime", "OpenVINO"):
        header += [f"{rt}: ran, max error / scale (tolerance)", f"{rt}: top-1 agree", f"{rt}: fp16 / fp32 latency"]
    md = (md_table(header, rows) + f"\n\n{machine()}; threads={args.threads}; parity over 2 seeds at batch 2; latency: medians of "
          f"{args.repeats} interleaved repeats, fp16 latency divided by fp32 (below 1 is faster); {time.time() - t0:.0f} s")
    print()
    print(md)
    write_outputs(args, md, {"threads": args.threads, "versions": versions(), "rows": records})


if __name__ == "__main__":
    main()
