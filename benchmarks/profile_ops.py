"""Where the time goes, op by op: one model or layer → a per-op-type time table on ONNX Runtime and OpenVINO.

Each runtime's own profiler: ONNX Runtime's `SessionOptions.enable_profiling` (the kernel time of every
node after graph optimisation, so fused and layout ops such as `ReorderInput` appear as they ran) and
OpenVINO's `PERF_COUNT` / `get_profiling_info()` (per executed node, with the implementation chosen:
`jit_avx2`, `ref_any`, …). Sessions are configured as polyexport's runners configure them (full graph
optimisation; LATENCY hint, f32 precision), with profiling on.

    python benchmarks/profile_ops.py zoo:dy_resnet18                       # deployed, dynamic batch, batch 1
    python benchmarks/profile_ops.py zoo:dy_resnet18 --variant as-is --static --batch 8
    python benchmarks/profile_ops.py zoo:cc_efficientnet_b0 --form CondConv2d=bank_batched --batch 1 8
    python benchmarks/profile_ops.py case:condconv:0 --module form:bank_batched
    python benchmarks/profile_ops.py model.onnx --markdown out.md
    python benchmarks/profile_ops.py case:condconv:0 --compare yardstick form:sample_conv form:sample_conv_blocked --then silu

`--compare` times a layer case's modules side by side instead (interleaved repeats, medians, ratios to the
first), each exported as the profile would be (dynamic batch unless --static), optionally followed by an
activation (`--then`): what a layer alone hides (a following activation, a layout change) shows there.

Profiling adds overhead per node (more on small graphs): compare shares within one table, and take
latency claims from the interleaved benchmarks (benchmarks/models.py, benchmarks/layers.py).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import machine, md_table, n_outputs, runtimes_here  # noqa: E402

from polyexport.exporter import export_onnx  # noqa: E402


@dataclass
class OpTable:
    """Per op type (as the runtime ran it): calls per run and milliseconds per run."""

    runtime: str
    runs: int
    ms: dict[str, float] = field(default_factory=dict)
    calls: dict[str, float] = field(default_factory=dict)
    wall_ms: float = 0.0  # median wall-clock latency of the profiled runs
    nodes: dict[str, tuple[str, float]] = field(default_factory=dict)  # node name -> (op type, ms per run)
    #: node name -> the nodes feeding it, as the runtime ran the graph (its own reorders included): to attribute
    #: a node the runtime added to the module it serves
    producers: dict[str, list[str]] = field(default_factory=dict)
    writes: dict[str, list[str]] = field(default_factory=dict)  # node name -> the tensors it writes (graph outputs among them)
    origins: dict[str, list[str]] = field(default_factory=dict)  # OpenVINO: executed node -> the ONNX nodes fused into it

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())

    def rows(self, top: int | None = None) -> list[tuple[str, float, float, float]]:
        total = self.total_ms or 1.0
        out = sorted(((k, self.calls[k], v, v / total) for k, v in self.ms.items()), key=lambda r: -r[2])
        return out[:top] if top else out


def _feeds(path: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input, the batch axis (named or not) set to `batch`."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in onnx.load(path, load_external_data=False).graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in inp.type.tensor_type.shape.dim]
        if dims and inp.type.tensor_type.shape.dim[0].HasField("dim_value") and dims[0] != batch:
            raise ValueError(f"{path}: input {inp.name} has a static batch {dims[0]}, not {batch}")
        feeds[inp.name] = rng.standard_normal(dims, dtype=np.float32)
    return feeds


def profile_onnxruntime(path: str, feeds: dict[str, np.ndarray], threads: int, runs: int, warmup: int) -> OpTable:
    import time

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")  # the graph as it runs, for `producers`
        sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
        producers, writes = _producers(optimized), {n.name: list(n.output) for n in optimized.node}
        for _ in range(warmup):
            sess.run(None, feeds)
        walls = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            walls.append((time.perf_counter() - t0) * 1e3)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    ms: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, float] = collections.defaultdict(float)
    # the profile holds the warm-up runs too: count only each node's last `runs` kernel events
    per_node: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_node[e["name"]].append((e["args"].get("op_name", "?"), e["dur"] / 1e3))
    nodes: dict[str, tuple[str, float]] = {}
    for name, evs in per_node.items():
        for op, dur in evs[-runs:]:
            ms[op] += dur / runs
            calls[op] += 1 / runs
        nodes[name.removesuffix("_kernel_time")] = (evs[-1][0], sum(d for _, d in evs[-runs:]) / runs)
    return OpTable("onnxruntime", runs, dict(ms), dict(calls), float(np.median(walls)), nodes, producers, writes)


def _producers(graph: onnx.GraphProto) -> dict[str, list[str]]:
    made_by = {out: n.name for n in graph.node for out in n.output}
    return {n.name: [made_by[i] for i in n.input if i in made_by] for n in graph.node}


def profile_openvino(path: str, feeds: dict[str, np.ndarray], threads: int, runs: int, warmup: int,
                     shape_bounds: tuple[int, int] | None = None) -> OpTable:
    """`shape_bounds=(lo, hi)` reshapes a dynamic batch to the bounded dimension lo..hi before compiling."""
    import time

    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    if shape_bounds is not None:
        shapes = {}
        for inp in model.inputs:
            ps = inp.get_partial_shape()
            if ps.rank.is_static and ps[0].is_dynamic:
                ps[0] = ov.Dimension(*shape_bounds)
                shapes[inp] = ps
        model.reshape(shapes)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
              "PERF_COUNT": True}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    for _ in range(warmup):
        request.infer(feeds)
    ms: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, float] = collections.defaultdict(float)
    walls = []
    nodes: dict[str, tuple[str, float]] = {}
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer(feeds)
        walls.append((time.perf_counter() - t0) * 1e3)
        for info in request.get_profiling_info():
            if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_EXECUTED"):
                key = f"{info.node_type} [{info.exec_type}]"
                t = info.real_time.total_seconds() * 1e3 / runs
                ms[key] += t
                calls[key] += 1 / runs
                nodes[info.node_name] = (key, nodes.get(info.node_name, (key, 0.0))[1] + t)
    producers, origins, writes = {}, {}, {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        name = op.get_friendly_name()
        producers[name] = [i.get_source_output().get_node().get_friendly_name() for i in op.inputs()]
        writes[name] = [n for o in op.outputs() for n in o.get_names()]
        info = op.get_rt_info()
        fused = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
        origins[name] = [n for n in fused.split(",") if n]
    return OpTable("openvino", runs, dict(ms), dict(calls), float(np.median(walls)), nodes, producers, writes, origins)


def profile(path: str, batch: int, runtimes: list[str], threads: int, runs: int, warmup: int,
            ov_bounds: tuple[int, int] | None = None) -> list[OpTable]:
    feeds = _feeds(path, batch)
    out = []
    for rt in runtimes:
        if rt == "onnxruntime":
            out.append(profile_onnxruntime(path, feeds, threads, runs, warmup))
        elif rt == "openvino":
            out.append(profile_openvino(path, feeds, threads, runs, warmup, ov_bounds))
    return out


def to_markdown(title: str, tables: list[OpTable], top: int | None = None, nodes: int = 0) -> str:
    parts = []
    for t in tables:
        body = [[op, f"{calls:.0f}", f"{ms:.3f}", f"{share * 100:.1f} %"] for op, calls, ms, share in t.rows(top)]
        parts.append(f"**{title} — {t.runtime}**: sum of op times {t.total_ms:.2f} ms/run, wall {t.wall_ms:.2f} ms "
                     f"(median of {t.runs} profiled runs)\n\n" + md_table(["op type (as run)", "calls/run", "ms/run", "share"], body))
        if nodes:
            slow = sorted(t.nodes.items(), key=lambda kv: -kv[1][1])[:nodes]
            parts.append(md_table(["slowest nodes", "op type", "ms/run"], [[n[:90], op, f"{ms:.3f}"] for n, (op, ms) in slow]))
    return "\n\n".join(parts)


# --- what to profile ------------------------------------------------------------------------------

def conv_kind(ref: torch.nn.Module) -> str:
    """"depthwise", "pointwise" or "dense": what decides the fastest form of a kernel-bank layer."""
    cin = getattr(ref, "in_channels", getattr(ref, "in_planes", 0))
    groups = getattr(ref, "groups", 1)
    k = getattr(ref, "kernel_size", 1)
    k = k[0] if isinstance(k, (tuple, list)) else k
    if groups > 1 and groups == cin:
        return "depthwise"
    return "pointwise" if k == 1 else "dense"


def forced_ranker(items: list[str]):
    """A convert() ranker putting the named form first: "TYPE=FORM" for every layer of that type,
    "TYPE:KIND=FORM" (KIND: depthwise, pointwise, dense) for those of that kind, checked against the registry."""
    from polyexport.convert import parse_form_overrides

    wanted: dict[tuple[str, str], str] = {}
    for item in items:
        key, _, form = item.partition("=")
        layer, _, kind = key.partition(":")
        parse_form_overrides([f"{layer}={form}"])  # raises on an unknown layer or form
        wanted[(layer, kind)] = form

    def rank(name, ref, forms):
        form = wanted.get((type(ref).__name__, conv_kind(ref))) or wanted.get((type(ref).__name__, ""))
        return sorted(forms, key=lambda f: f.name != form)

    return rank


def _zoo_module(name: str, variant: str, target: str, dynamic_batch: bool, forms: dict[str, str], timed: bool,
                threads: int, x: torch.Tensor, cache: str) -> torch.nn.Module:
    from polyexport import zoo
    from polyexport.convert import convert

    entry = zoo.get(name)
    if variant == "baseline":
        model = zoo.instantiate(entry.baseline, seed=0)
        return convert(model, target=target, dynamic_batch=dynamic_batch)[0]
    model = zoo.instantiate(name, seed=0)
    if variant == "as-is":
        return model
    if timed:  # the pipeline's own choice (with what follows each layer, and the whole-model check)
        from polyexport.pipeline import ExportOptions, deploy_for

        opts = ExportOptions(target=target, threads=threads, dynamic_batch=dynamic_batch, form_choice="auto", form_cache=cache)
        return deploy_for(model, [x.numpy()], opts).model
    ranker = forced_ranker(forms) if forms else None
    return convert(model, target=target, dynamic_batch=dynamic_batch, ranker=ranker)[0]


def _case_module(spec: str, module: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    from layer_cases import all_cases

    _, file, *index = spec.split(":")
    cases = all_cases([file])
    case = cases[int(index[0]) if index else 0]
    mods = {"yardstick": case.yardstick, "reference": case.reference, **{f"form:{k}": m for k, m in case.forms.items()}}
    return mods[module].eval(), tuple(case.input_shape)


class _Then(torch.nn.Module):
    """module(x) followed by an activation, as the next layer of a network would apply it."""

    ACTS = {"silu": torch.nn.SiLU, "relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "hardswish": torch.nn.Hardswish}

    def __init__(self, module: torch.nn.Module, act: str):
        super().__init__()
        self.module, self.act = module, self.ACTS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.module(x))


def compare(args) -> str:
    """A layer case's modules timed side by side per runtime and batch: medians of interleaved repeats, ratios to the first."""
    from common import load_runner

    from polyexport.bench import interleaved

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rt in runtimes_here(args.runtimes):
            for b in args.batch:
                fns = {}
                for name in args.compare:
                    module, shape = _case_module(args.spec, name)
                    if args.then:
                        module = _Then(module, args.then).eval()
                    example = torch.randn(1 if args.dynamic_batch else b, *shape[1:])
                    tag = f"{name.replace(':', '_')}-{'dyn' if args.dynamic_batch else b}"
                    runner, feeds = load_runner(rt, module, (example,), tmp, tag, args.threads, dynamic_batch=args.dynamic_batch)
                    if runner is None:
                        rows.append([name, rt, str(b), "fails: " + feeds, ""])
                        continue
                    feeds = {k: np.random.default_rng(0).standard_normal((b, *v.shape[1:]), dtype=np.float32) for k, v in feeds.items()}
                    fns[name] = (lambda r, f: lambda: r.run(f))(runner, feeds)
                stats = interleaved(fns, repeats=args.repeats, warmup=3, warmup_s=0.05, min_iters=20, min_time_s=0.1)
                first = stats[next(iter(stats))].p50 if stats else 0
                for name, st in stats.items():
                    rows.append([name, rt, str(b), f"{st.p50:.3f}", f"{st.p50 / first:.2f}×"])
    then = f", then {args.then}" if args.then else ""
    title = (f"**{args.spec}{then}: side by side, {'dynamic-batch' if args.dynamic_batch else 'static'} graphs, "
             f"{args.threads} thread(s), medians of {args.repeats} interleaved repeats**")
    return title + "\n\n" + md_table(["module", "runtime", "batch", "ms", f"vs {args.compare[0]}"], rows)


def export_target(spec: str, args, batch: int, tmp: str, target: str) -> str:
    """The ONNX file to profile for `spec` (zoo:NAME, case:FILE[:INDEX], or a path)."""
    if spec.endswith(".onnx"):
        return spec
    if spec.startswith("case:"):
        module, shape = _case_module(spec, args.module)
    else:
        from polyexport import zoo

        shape = zoo.get(spec.removeprefix("zoo:")).input_shape
        module = None
    export_batch = 1 if args.dynamic_batch else batch
    x = torch.randn(export_batch, *shape[1:])
    if module is None:
        module = _zoo_module(spec.removeprefix("zoo:"), args.variant, target, args.dynamic_batch, args.form, args.timed,
                             args.threads, x, os.path.join(tmp, "forms.json"))
    path = os.path.join(tmp, f"{target}-b{export_batch}.onnx")
    if not os.path.exists(path):
        export_onnx(module, (x,), path, input_names=["input"], n_outputs=n_outputs(module, x), dynamic_batch=args.dynamic_batch)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="zoo:NAME, case:LAYER_CASE_FILE[:INDEX] (benchmarks/layer_cases), or a .onnx file")
    ap.add_argument("--variant", choices=["deploy", "as-is", "baseline"], default="deploy", help="for zoo models")
    ap.add_argument("--module", default="reference", help="for layer cases: yardstick, reference or form:NAME")
    ap.add_argument("--form", nargs="*", default=[], help="TYPE=FORM or TYPE:KIND=FORM (KIND: depthwise, pointwise, "
                                                             "dense) to force forms in the deployed zoo model")
    ap.add_argument("--timed", action="store_true", help="choose forms by timing (as benchmarks/models.py) instead of the preference order")
    ap.add_argument("--static", dest="dynamic_batch", action="store_false", help="export at the batch itself (default: dynamic batch axis)")
    ap.add_argument("--batch", nargs="*", type=int, default=[1])
    ap.add_argument("--runtimes", nargs="*")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--ov-bounds", type=int, nargs=2, metavar=("LO", "HI"), help="OpenVINO: bound the dynamic batch to LO..HI")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--nodes", type=int, default=0, help="also list the N slowest individual nodes")
    ap.add_argument("--markdown", help="append the tables to this file")
    ap.add_argument("--compare", nargs="*", help="layer cases: time these modules side by side instead of profiling")
    ap.add_argument("--then", choices=sorted(_Then.ACTS), help="with --compare: an activation after each module")
    ap.add_argument("--repeats", type=int, default=5, help="with --compare: interleaved repeats")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rts = runtimes_here(args.runtimes)
    if args.compare:
        md = compare(args)
        print(md)
        if args.markdown:
            with open(args.markdown, "a") as f:
                f.write(md + f"\n\n{machine()}\n\n")
        return
    chunks = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batch:
            for rt in rts:
                path = export_target(args.spec, args, b, tmp, rt)
                tables = profile(path, b, [rt], args.threads, args.runs, args.warmup,
                                 tuple(args.ov_bounds) if args.ov_bounds else None)
                what = args.spec if args.spec.startswith(("case:", "zoo:")) or args.spec.endswith(".onnx") else f"zoo:{args.spec}"
                label = args.module if args.spec.startswith("case:") else args.variant
                title = f"{what} ({label}{' ' + ' '.join(args.form) if args.form else ''}), batch {b}, " \
                        f"{'dynamic-batch' if args.dynamic_batch else 'static'} graph, {args.threads} thread(s)"
                chunks.append(to_markdown(title, tables, args.top, args.nodes))
                print(chunks[-1] + "\n", flush=True)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n\n".join(chunks) + f"\n\n{machine()}\n\n")


if __name__ == "__main__":
    main()
