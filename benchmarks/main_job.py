"""The main job's cost (issue 13): polyexport's run against the bare job a user would do by hand.

For each model and runtime, in turns, each in its own process (so each one's peak memory is its own):
- bare: build the model, torch.onnx.export as it is, onnxsim, one runtime session, 3 parity checks
  against PyTorch, 25 timed runs — what Polygraphy's `run` or a hand-written script does;
- cold: `polyexport zoo:NAME --target RT` with an empty form cache (deploy with the timed form choice,
  the whole ladder, the noise floor, latency, the report);
- warm: the same again, the form cache filled.
Wall time of each (process start to exit, imports included), polyexport's own time per phase
(report.json `timings`) and the peak resident memory of each process; ratios to the bare job, medians
of `--repeats`. Bounds (issue 13): cold ≤ 2.5×, warm ≤ 1.5× the bare wall time; peak memory ≤ 2×.

    python benchmarks/main_job.py --threads 2 --json benchmarks/results/main_job.json --markdown benchmarks/results/main_job.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, md_table, write_outputs  # noqa: E402

MODELS = ["ps_resnet50", "resnet50", "cc_efficientnet_b0", "mixnet_s", "oct_resnet50", "spd_yolov5n"]
BOUNDS = {"cold": 2.5, "warm": 1.5, "rss": 2.0}

BARE = r"""
import resource, sys, time
import numpy as np, onnx, onnxsim, torch
from polyexport import zoo
name, runtime, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
entry = zoo.get(name)
model = zoo.instantiate(name)
x = torch.randn(*entry.input_shape)
torch.onnx.export(model, (x,), out, input_names=["input"], opset_version=17, dynamo=False)
simplified, ok = onnxsim.simplify(onnx.load(out))
onnx.save(simplified, out)
if runtime == "onnxruntime":
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = threads
    sess = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
    run = lambda a: sess.run(None, {"input": a})
else:
    import openvino as ov
    core = ov.Core()
    compiled = core.compile_model(core.read_model(out), "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    run = lambda a: [np.asarray(v) for v in req.infer({"input": a}).values()]
for seed in range(3):
    a = np.random.default_rng(seed).standard_normal(tuple(x.shape), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(a))
    ref = ref if isinstance(ref, (tuple, list)) else [ref]
    got = run(a)
    assert all(np.abs(np.asarray(g) - r.numpy()).max() <= 1e-4 * np.abs(r.numpy()).max() + 1e-5 for g, r in zip(got, ref))
for _ in range(25):
    run(a)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def bare(name: str, runtime: str, threads: int, tmp: str) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", BARE, name, runtime, str(threads), os.path.join(tmp, "bare.onnx")],
                          capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"bare job failed for {name}/{runtime}: {done.stderr[-500:]}")
    return {"wall_s": wall, "peak_rss_mb": float(done.stdout.split()[-1])}


def polyexport_run(name: str, runtime: str, threads: int, tmp: str, cache: str, tag: str) -> dict:
    out = os.path.join(tmp, f"out-{tag}")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "polyexport", f"zoo:{name}", "--target", runtime, "--threads", str(threads),
                           "--out", out, "--force"], capture_output=True, text=True,
                          env={**os.environ, "POLYEXPORT_CACHE": cache, "OPENBLAS_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"polyexport failed for {name}/{runtime}: {done.stderr[-800:]}")
    report = json.load(open(os.path.join(out, "report.json")))
    return {"wall_s": wall, "peak_rss_mb": report["peak_rss_mb"], "timings": report["timings"]}


def measure_pair(name: str, runtime: str, threads: int, repeats: int) -> dict:
    """bare, cold and warm in turns, `repeats` times; medians."""
    runs: dict[str, list[dict]] = {"bare": [], "cold": [], "warm": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "forms.json")
            runs["bare"].append(bare(name, runtime, threads, tmp))
            runs["cold"].append(polyexport_run(name, runtime, threads, tmp, cache, "cold"))
            runs["warm"].append(polyexport_run(name, runtime, threads, tmp, cache, "warm"))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "peak_rss_mb")} for k, v in runs.items()}
    phases = {k: {p: statistics.median(r["timings"].get(p, 0.0) for r in v) for p in v[0]["timings"]} for k, v in runs.items() if k != "bare"}
    return {"model": name, "runtime": runtime, "medians": med, "phases": phases,
            "cold_ratio": med["cold"]["wall_s"] / med["bare"]["wall_s"], "warm_ratio": med["warm"]["wall_s"] / med["bare"]["wall_s"],
            "rss_ratio": max(med["cold"]["peak_rss_mb"], med["warm"]["peak_rss_mb"]) / med["bare"]["peak_rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--runtimes", nargs="*", default=["onnxruntime", "openvino"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    rows, records, t0 = [], [], time.time()
    for name in args.models:
        for rt in args.runtimes:
            r = measure_pair(name, rt, args.threads, args.repeats)
            records.append(r)
            m = r["medians"]
            ok = lambda v, bound: f"{v:.2f}×" + ("" if v <= bound else " **over**")  # noqa: E731
            cold_phases = ", ".join(f"{p} {s:.0f}" for p, s in sorted(r["phases"]["cold"].items(), key=lambda kv: -kv[1])[:3])
            rows.append([name, rt, f"{m['bare']['wall_s']:.0f} s", f"{m['cold']['wall_s']:.0f} s", ok(r["cold_ratio"], BOUNDS["cold"]),
                         f"{m['warm']['wall_s']:.0f} s", ok(r["warm_ratio"], BOUNDS["warm"]),
                         f"{m['bare']['peak_rss_mb']:.0f} / {max(m['cold']['peak_rss_mb'], m['warm']['peak_rss_mb']):.0f} MB",
                         ok(r["rss_ratio"], BOUNDS["rss"]), cold_phases])
            print(" | ".join(rows[-1]), flush=True)
    header = ["model", "runtime", "bare", "cold", "cold / bare (≤ 2.5)", "warm", "warm / bare (≤ 1.5)", "peak RSS bare / polyexport",
              "RSS ratio (≤ 2)", "cold: slowest phases (s)"]
    md = (md_table(header, rows) + f"\n\n{machine()}; threads={args.threads}; each job in its own process, wall time from start to exit "
          f"(imports included), medians of {args.repeats} repeats run in turns; {time.time() - t0:.0f} s")
    print()
    print(md)
    write_outputs(args, md, {"threads": args.threads, "bounds": BOUNDS, "rows": records})


if __name__ == "__main__":
    main()
