"""The main job, as its stages in order: plan ► reference ► deploy ► export ► runtimes ► explain ► latency ► write.

`export()` reads as those stages, each one call below. Results stay typed (ParityResult, RunResult,
LatencyStats) until the report serialises them; every check goes through runs.run_graph and parity.judge.
Artifacts are written into a staging folder (outdir.OutputTransaction) and moved into place only when
the run got as far as a report (a parity failure keeps them: the report says where it failed).
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
from torch import nn

from . import __version__
from .autoform import WHOLE_MODEL_ALTERNATIVES, CheckedGraph, Deployment, FinalExport, FormTimer, capture_layer_inputs, choose_deployment
from .bench import LatencyStats, measure
from .convert import assignment, layer_tails
from .errors import BadInput, ExportFailed
from .explain import Localiser, explain_runtime_error, module_kinds
from .exporter import ExportInfo, check_export_tools, export_onnx, finish_export, first_line, flatten_outputs, output_names
from .exporter.fp16 import graph_for
from .inputs import InputSpec, make_specs, random_inputs, to_torch
from .modules import set_eval, unwrapped
from .noise_floor import NoiseFloor, measure_noise_floor
from .outdir import OutputTransaction, check_out
from .parity import ParityResult, Tolerance, judge, reference_warnings
from .precision import DEFAULT_ATOL, DEFAULT_RTOL
from .report import Report
from .runs import RunResult, run_graph
from .runtimes import RunnerOptions, available, make_runner
from .runtimes.onnxruntime import OnnxRuntimeRunner
from .runtimes.tensorrt_lint import DEFAULT_VERSIONS as DEFAULT_TRT_VERSIONS
from .runtimes.tensorrt_lint import lint_tensorrt, rules_for
from .runtimes.torch_runner import TorchRunner
from .targets import FORM_CHOICES, TARGETS

Progress = Callable[[str], ContextManager]

#: how many modules the fp16 repair may move back to fp32 before it gives up
MAX_KEPT_FP32 = 8
#: runtimes where a module can be kept in fp32 under fp16 (ONNX Runtime: in the fp16 graph; TensorRT: layer precision)
KEEPS_FP32 = ("onnxruntime", "tensorrt")


@dataclass
class ExportOptions:
    target: str = "onnxruntime"
    out: str = "polyexport-out"
    dynamic_batch: bool = False
    opset: int = 17
    atol: float | None = None  # None: by the precision each stage ran (precision.TOLERANCES)
    rtol: float | None = None
    fp16: bool = False  # reduced precision on the runtimes (what each actually ran is reported)
    deploy: bool = True
    forms: dict[str, str] = field(default_factory=dict)
    strict: bool = False
    threads: int | None = None
    device: str = "cpu"
    bench: bool = True
    bench_torch: bool = False  # also time PyTorch eager (slow on big models, and rarely the question)
    iterations: int = 20
    #: the report's latency: at least `iterations` runs and this long. 0.5 s gives a median of 60 runs of an 8 ms model;
    #: a full second was the largest phase of a warm run after the export (1.2 of 7 s, CondConv-EfficientNet-B0)
    min_time_s: float = 0.5
    parity_seeds: int = 3
    exporter: str = "torchscript"
    simplifier: str = "onnxsim"
    force: bool = False
    extra_runtimes: Sequence[str] = ()
    bundle: bool | None = None  # write DIR/bundle/ for `polyexport verify` on a device (None: for a TensorRT target)
    trt_versions: tuple[str, ...] = DEFAULT_TRT_VERSIONS  # the TensorRT parsers the graph must pass (tensorrt_lint)
    batch_range: tuple[int, int, int] | None = None  # (min, opt, max) with a dynamic batch: parity at each, TensorRT's profile
    workspace_mb: int = 1024
    explain: bool = False  # localise the first diverging layer even when parity holds (always done when it fails)
    form_choice: str | None = None  # one of targets.FORM_CHOICES; None: auto for a runtime target (onnxruntime, openvino), preferred otherwise
    form_cache: str | None = None  # the form timings' file (None: $POLYEXPORT_CACHE, else ~/.cache/polyexport/forms.json)

    @property
    def writes_bundle(self) -> bool:
        return self.target == "tensorrt" if self.bundle is None else self.bundle

    @property
    def fp32_tolerances(self) -> tuple[float, float]:
        """For the stages that run in fp32 whatever was asked (deployed PyTorch, the ONNX graph on ORT)."""
        return (DEFAULT_ATOL if self.atol is None else self.atol, DEFAULT_RTOL if self.rtol is None else self.rtol)


@dataclass
class Job:
    """What a run works with, fixed before any work: its options, runtimes, inputs and parity input sets."""

    opts: ExportOptions
    runtimes: list[str]
    specs: list[InputSpec]
    parity_sets: list[tuple[str, list[np.ndarray]]]
    batch_range: tuple[int, int, int] | None
    stand_in: str | None = None  # the runtime standing in for the target's own where that is not installed (TensorRT)
    output_axes: dict[int, str] = field(default_factory=dict)  # every output's named dynamic axes, with named input axes

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def batch(self) -> int:
        return self.specs[0].shape[0]

    @property
    def example(self) -> list[np.ndarray]:
        return self.parity_sets[0][1]

    @property
    def input_sets(self) -> list[tuple[str, dict[str, np.ndarray]]]:
        return [(label, dict(zip(self.names, arrays))) for label, arrays in self.parity_sets]

    @property
    def runner_options(self) -> RunnerOptions:
        o = self.opts
        return RunnerOptions(o.threads, o.device, fp16=o.fp16, batch_range=self.batch_range, workspace_mb=o.workspace_mb)

    @property
    def named_axes(self) -> bool:
        return any(s.axes for s in self.specs)

    def dynamic_axes(self, n_outputs: int) -> dict[str, dict[int, str]] | None:
        """export_onnx's named axes: each input's, and `output_axes` on every output."""
        if not self.named_axes:
            return None
        axes = {s.name: dict(s.axes) for s in self.specs if s.axes}
        return axes | {name: dict(self.output_axes) for name in output_names(n_outputs) if self.output_axes}

    @property
    def export_kw(self) -> dict:
        o = self.opts
        return dict(opset=o.opset, dynamic_batch=o.dynamic_batch and not self.named_axes, exporter=o.exporter, simplifier=o.simplifier)


@dataclass
class Reference:
    """PyTorch's outputs for every parity input set, what makes them a poor witness, and the model's noise floor.

    The floor costs a float64 forward, slow on CPUs (no fast float64 kernels for depthwise convs: tens of seconds
    for an EfficientNet), and only matters for a deep model whose exact rewrite exceeds the fixed rtol; so it is
    measured the first time an fp32 stage fails the fixed rule by size alone, or comes within half of it (the
    device may then need it: the bundle records it); the stages judged before passed without it."""

    model: nn.Module
    example: list[np.ndarray]
    outputs: dict[str, list[np.ndarray]]
    warnings: list[str]
    floor: NoiseFloor | None = None
    first_sample: bool = True  # measure the floor on the example's first sample (axis 0 a batch), else on all of it

    @property
    def n_outputs(self) -> int:
        return len(next(iter(self.outputs.values())))

    def tolerance(self, atol: float | None, rtol: float | None) -> Tolerance:
        return Tolerance(atol, rtol, tuple(self.floor.per_output) if self.floor else ())

    def judge(self, result: RunResult, atol: float | None, rtol: float | None) -> ParityResult:
        """parity.judge, measuring the noise floor first where this verdict needs it."""
        verdict = judge(result, self.outputs, self.tolerance(atol, rtol))
        near = verdict.error is None and not verdict.problems and verdict.precision == "fp32" and verdict.max_rel_err > verdict.rtol / 2
        if self.floor is None and near:
            self.floor = measure_noise_floor(self.model, self.example, first_sample=self.first_sample)
            verdict = judge(result, self.outputs, self.tolerance(atol, rtol))
        return verdict

    def floor_entry(self) -> dict:
        return self.floor.as_dict() if self.floor else {"per_output": [], "note": "not needed: every stage well within the fixed tolerance"}


@dataclass
class Stages:
    """What the stages found, typed, in the order they ran; the report serialises it at the end."""

    parity: dict[str, ParityResult] = field(default_factory=dict)
    runs: dict[str, RunResult] = field(default_factory=dict)  # each runtime's run, its runner still loaded for latency
    precision: dict[str, dict] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    latency: dict[str, LatencyStats] = field(default_factory=dict)
    tensorrt_check: dict[str, list[dict]] = field(default_factory=dict)  # TensorRT version -> lint findings
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase
    explain: dict | None = None

    def failed(self) -> list[str]:
        return [k for k, p in self.parity.items() if not p.passed]


class Phases:
    """The progress callback, plus each phase's wall time (report.timings)."""

    def __init__(self, progress: Progress | None, timings: dict[str, float]):
        self.progress = progress or (lambda _msg: contextlib.nullcontext())
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, phase: str, label: str | None = None):
        """Yields `tell(msg)`: what the phase is doing now, shown beside its label where the progress display can."""
        t0 = time.perf_counter()
        label = label or phase
        try:
            with self.progress(label) as shown:
                yield (lambda msg: shown.update(f"{label}: {msg}…")) if hasattr(shown, "update") else (lambda msg: None)
        finally:
            self.timings[phase] = round(self.timings.get(phase, 0.0) + time.perf_counter() - t0, 3)


def export(model: nn.Module, example_inputs: Sequence[torch.Tensor] | None = None, *, target: str = "onnxruntime",
           out: str = "polyexport-out", input_shapes: Sequence[tuple[int, ...]] | None = None, name: str | None = None,
           progress: Progress | None = None, notes: Sequence[str] = (), input_specs: Sequence[InputSpec] | None = None,
           output_axes: dict[int, str] | None = None, **options) -> Report:
    """Export `model` for `target`, prove parity and time it; write artifacts and the report to `out`.

    Returns the Report (also written as out/report.json and out/report.md). A parity failure does
    not raise: `report.passed` is False and the report says which runtime failed. `input_specs` describe
    inputs fully where shapes do not (integer indices, named dynamic axes such as a dynamic head's
    instance count; `output_axes` then names every output's); otherwise `example_inputs` or `input_shapes`.
    """
    model, unwrapping = unwrapped(model)  # DataParallel, torch.compile: the module they run is what is exported
    notes = [*notes, *unwrapping]
    opts = ExportOptions(target=target, out=out, **options)
    stages = Stages()
    phase = Phases(progress, stages.timings)
    job = plan(model, example_inputs, input_shapes, opts, input_specs, output_axes)
    with phase("reference", "reference outputs (PyTorch)"):
        reference = take_reference(model, job)
    with OutputTransaction(opts.out, opts.force) as tx:
        deployment, (graph, raw, info) = deploy_and_export_stages(model, job, reference, stages, phase, str(tx.artifacts), str(tx.scratch))
        if opts.target == "tensorrt":
            tensorrt_check_stage(graph, job, stages, phase, [n for n, _ in deployment.model.named_modules() if n])
        localiser = Localiser(model, deployment.model, deployment.records, job.example, job.names, reference.n_outputs,
                              job.export_kw, str(tx.scratch), opts.threads)
        runtime_stage(job, reference, graph, stages, phase, str(tx.artifacts), localiser)
        explain_stage(model, job, deployment, stages, phase, localiser, graph, raw)
        latency_stage(model, job, stages, phase)
        report = build_report(model, name, notes, job, reference, deployment, info, stages)
        write_stage(report, job, reference, graph, str(tx.artifacts))
        written = tx.commit()
    if written != tx.target:
        report.notes.append(f"{opts.out} appeared while this run went on: the results were written to {written} instead")
    report.out = str(written)
    report.artifacts = {k: os.path.join(str(written), v) for k, v in report.artifacts.items()}
    return report


# --- plan: everything that can be wrong with the request, found before any work ----------------

def plan(model: nn.Module, example_inputs, input_shapes, opts: ExportOptions, input_specs: Sequence[InputSpec] | None = None,
         output_axes: dict[int, str] | None = None) -> Job:
    """Runtimes (exit 3 if missing), the output folder, the input specs and the parity input sets."""
    runtimes = check_runtimes(opts.target, opts.extra_runtimes, opts.threads, opts.device)
    check_export_tools(opts.exporter, opts.simplifier)
    stand_in = "onnxruntime" if opts.target == "tensorrt" and "tensorrt" not in runtimes else None
    check_out(opts.out, opts.force)  # before any work: a bad --out costs nothing
    if opts.target == "tensorrt":
        check_trt_versions(opts.trt_versions, opts.opset)
    if input_specs:
        specs = list(input_specs)
    elif example_inputs is not None:
        specs = make_specs([tuple(t.shape) for t in example_inputs])
    elif input_shapes:
        specs = make_specs([tuple(s) for s in input_shapes])
    else:
        raise BadInput("no input shape: pass --input-shape (e.g. 1x3x224x224) or example inputs")
    set_eval(model)  # not `model = model.eval()`: many codebases' train() returns None
    parity_sets = [(f"seed{s}", random_inputs(specs, s)) for s in range(opts.parity_seeds)]
    parity_sets += named_axis_sets(specs)
    brange = batch_range(opts, specs[0].shape[0])
    if brange:  # prove the batch is not baked in: the same graph over the range (min, opt, max), and an odd batch in it
        lo, _, hi = brange
        batch = specs[0].shape[0]
        if not lo <= batch <= hi:
            raise BadInput(f"the example batch {batch} is outside the batch range {lo}..{hi}")
        for b in sorted((set(brange) | ({3} if lo < 3 < hi else set())) - {batch}):
            parity_sets.append((f"batch{b}", random_inputs(specs, 100 + b, batch=b)))
    return Job(opts, runtimes, specs, parity_sets, brange, stand_in, dict(output_axes or {}))


#: sizes a named dynamic axis is proven at, beside its example size; an axis not named here: 1 and an odd size
AXIS_SIZES = {"instances": (0, 1, 7, 100)}


def named_axis_sets(specs: Sequence[InputSpec]) -> list[tuple[str, list[np.ndarray]]]:
    """Parity input sets over each named dynamic axis (one label at a time, the others at the example's size):
    the same graph must hold at every count, a dynamic head's 0 instances included."""
    examples = {label: spec.shape[axis] for spec in specs for axis, label in spec.axes.items()}
    sets = []
    for label, size in examples.items():
        for n in AXIS_SIZES.get(label, (1, size // 2 * 2 + 1 if size > 2 else 3)):
            if n != size:
                sets.append((f"{label}{n}", random_inputs(specs, 200 + n, sizes={label: n})))
    return sets


def check_trt_versions(versions: Sequence[str], opset: int) -> None:
    """Known TensorRT versions whose parser takes the opset (tensorrt_lint.rules_for); BadInput otherwise."""
    from .runtimes.tensorrt_lint import MAX_OPSET, MIN_OPSET

    for v in versions:
        try:
            rules = rules_for(v)
        except ValueError as e:
            raise BadInput(f"--trt-version {v}: {e}") from e
        if not MIN_OPSET[rules] <= opset <= MAX_OPSET[rules]:
            raise BadInput(f"--opset {opset}: TensorRT {v}'s ONNX parser takes opsets {MIN_OPSET[rules]}..{MAX_OPSET[rules]}")


def batch_range(opts: ExportOptions, batch: int) -> tuple[int, int, int] | None:
    """The dynamic batch range parity covers (and a TensorRT profile is built for): the one asked, else
    (1, the example's batch, max(8, that batch))."""
    if not opts.dynamic_batch:
        return None
    if opts.batch_range:
        lo, opt, hi = opts.batch_range
        if not 0 < lo <= opt <= hi:
            raise BadInput(f"batch range {opts.batch_range}: expected 0 < min <= opt <= max")
        return lo, opt, hi
    return 1, batch, max(8, batch)


def runtimes_for(target: str, extra: Sequence[str] = ()) -> list[str]:
    """The runtimes a target is proven on: its own, plus ONNX Runtime for a bare ONNX target; for TensorRT where it
    is not installed (a workstation: JetPack has it, the engine is built on the device), ONNX Runtime's CPU
    provider stands in, named so in the report. Asking for TensorRT by name (`--runtime tensorrt`) still needs it."""
    if target not in TARGETS:
        raise BadInput(f"unknown target '{target}'; choose one of {', '.join(TARGETS)}")
    own = {"onnx": ["onnxruntime"] if available("onnxruntime") else [], "onnxruntime": ["onnxruntime"],
           "openvino": ["openvino"], "tensorrt": ["tensorrt"] if available("tensorrt") else ["onnxruntime"]}[target]
    return list(dict.fromkeys([*own, *extra]))


def check_runtimes(target: str, extra: Sequence[str] = (), threads: int | None = None, device: str = "cpu") -> list[str]:
    """The runtimes to use; RuntimeMissing (exit 3) before any work if one is not installed."""
    names = runtimes_for(target, extra)
    for rt in names:
        make_runner(rt, RunnerOptions(threads, device))
    return names


# --- reference ---------------------------------------------------------------------------------

def take_reference(model: nn.Module, job: Job) -> Reference:
    outputs = {label: run_reference(model, arrays) for label, arrays in job.parity_sets}
    return Reference(model, job.example, outputs, reference_warnings(outputs, job.opts.fp32_tolerances[1]), first_sample=not job.named_axes)


def run_reference(model: nn.Module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs as float32 arrays; BadInput with the model's own complaint if it rejects the input."""
    try:
        # no_grad, not inference_mode: models cache tensors made in forward (YOLOv5's Detect grids), and an
        # inference tensor cached here would break the export's trace later
        with torch.no_grad():
            outs = flatten_outputs(model(*to_torch(arrays)))
    except Exception as e:  # noqa: BLE001 - the model's own complaint is the message
        shapes = ", ".join("x".join(map(str, a.shape)) for a in arrays)
        raise BadInput(f"the model rejects input shape {shapes}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not outs:
        raise BadInput("the model returned no tensors: nothing to export")
    return [t.float().numpy() for t in outs]


# --- deploy ------------------------------------------------------------------------------------

def deploy_stage(model: nn.Module, job: Job, reference: Reference, stages: Stages, phase: Phases, scratch: str) -> Deployment:
    """Swap every known layer for its deploy form (timed on the target where the choice is automatic), and
    prove the deployed model in PyTorch: the ladder's first rung."""
    if not job.opts.deploy:
        return Deployment(model, [])
    deployment = deploy_for(model, job.example, job.opts, lambda label: phase("deploy", label), final_export(job, reference, scratch))
    torch_parity_stage(deployment, job, reference, stages, phase)
    return deployment


def final_export(job: Job, reference: Reference, scratch: str) -> FinalExport | None:
    """How export_stage will export, for the whole-model check to export its candidates the same way (None where the
    check's graphs could not be the final one: its batch axis is the form timer's, --dynamic-batch)."""
    kw = job.export_kw
    if kw["dynamic_batch"] != job.opts.dynamic_batch:
        return None
    return FinalExport(scratch, job.names, dict(opset=kw["opset"], exporter=kw["exporter"], dynamic_axes=job.dynamic_axes(reference.n_outputs)))


def torch_parity_stage(deployment: Deployment, job: Job, reference: Reference, stages: Stages, phase: Phases) -> None:
    with phase("parity", "deployed model in PyTorch"):
        torch_run = run_graph("torch-deployed", TorchRunner(deployment.model, job.names), None, "", job.input_sets)
        stages.parity["torch-deployed"] = reference.judge(torch_run, *job.opts.fp32_tolerances)


def deploy_and_export_stages(model: nn.Module, job: Job, reference: Reference, stages: Stages, phase: Phases, artifacts: str,
                             scratch: str) -> tuple[Deployment, tuple[str, str, ExportInfo]]:
    """deploy_stage, then export_stage. Each timed form exported alone, but their mix may not export as one graph (a
    form whose output sizes the exporter cannot follow, before one that needs them): then the registered preferred
    order is deployed and exported instead, with a note, rather than no graph at all."""
    deployment = deploy_stage(model, job, reference, stages, phase, scratch)
    try:
        return deployment, export_stage(deployment.model, job, reference, stages, phase, artifacts, scratch, deployment.exported)
    except ExportFailed as e:
        opts = job.opts
        if not deployment.choices:
            raise
        preferred = deploy_for(model, job.example, replace(opts, form_choice="preferred"), lambda label: phase("deploy", label))
        if assignment(preferred.records) == assignment(deployment.records):
            raise
        preferred.notes = [*deployment.notes, f"the timed choice of forms did not export as one graph ({first_line(e)}); "
                           "the registered preferred order was exported instead (please report this model)"]
        torch_parity_stage(preferred, job, reference, stages, phase)
        return preferred, export_stage(preferred.model, job, reference, stages, phase, artifacts, scratch)


def deploy_for(model: nn.Module, arrays: list[np.ndarray], opts: ExportOptions, progress: Progress | None = None,
               final: FinalExport | None = None) -> Deployment:
    """The deployment the pipeline exports for `opts` (autoform.choose_deployment with this run's form timer; with
    `final`, its whole-model check exports as the final export will, and the winner's graph comes with it)."""
    return choose_deployment(model, to_torch(arrays), opts.target, opts.forms, opts.dynamic_batch, opts.strict,
                             form_timer(model, arrays, opts, final), progress or (lambda _msg: contextlib.nullcontext()))


def form_timer(model: nn.Module, arrays: list[np.ndarray], opts: ExportOptions, final: FinalExport | None = None) -> FormTimer | None:
    """The ranker that times forms on the target runtime, when the choice is automatic (see autoform.py)."""
    choice = opts.form_choice or ("auto" if opts.target in ("onnxruntime", "openvino") else "preferred")
    if choice not in FORM_CHOICES:
        raise BadInput(f"form choice '{choice}': use {', '.join(FORM_CHOICES)}")
    if choice == "preferred" or opts.target not in ("onnxruntime", "openvino"):
        return None
    inputs = capture_layer_inputs(model, to_torch(arrays))
    if not inputs:
        return None
    return FormTimer(opts.target, RunnerOptions(opts.threads, opts.device, fp16=opts.fp16), inputs, cache_path=opts.form_cache,
                     dynamic_batch=opts.dynamic_batch, alternatives=None if choice == "thorough" else WHOLE_MODEL_ALTERNATIVES, final=final,
                     tails=layer_tails(model), prior={} if choice == "thorough" else None)


# --- export ------------------------------------------------------------------------------------

def export_stage(deployed: nn.Module, job: Job, reference: Reference, stages: Stages, phase: Phases, artifacts: str,
                 scratch: str, exported: CheckedGraph | None = None) -> tuple[str, str, ExportInfo]:
    """torch ► ONNX ► simplify ► check; then the ladder's graph rungs: the raw and the simplified graph on ONNX
    Runtime with its optimisations off. Returns (final graph, raw export, what the export did). `exported`: this model
    already exported the same way by the whole-model check (Deployment.exported), finished here instead."""
    graph, raw = os.path.join(artifacts, "model.onnx"), os.path.join(scratch, "exported.onnx")
    with phase("export", f"export to ONNX (opset {job.opts.opset})"):
        kw = job.export_kw
        if exported is not None:  # from its raw graph, or from the simplified one where it was simplified as asked
            raw, done = exported.raw, exported.simplifier == kw["simplifier"]
            info = finish_export(exported.info.path if done else raw, graph, exporter=kw["exporter"], opset=kw["opset"],
                                 simplifier=kw["simplifier"], dynamic_batch=kw["dynamic_batch"],
                                 simplified_by=exported.info.simplifier if done else None, source="the whole-model form check")
        else:
            info = export_onnx(deployed, to_torch(job.example), graph, input_names=job.names, n_outputs=reference.n_outputs, raw_path=raw,
                               dynamic_axes=job.dynamic_axes(reference.n_outputs), **kw)
    stages.artifacts["onnx"] = "model.onnx"
    if available("onnxruntime"):
        with phase("parity", "ONNX graph parity (ONNX Runtime, optimisations off)"):
            for stage, path in (("onnx-exported", raw), ("onnx-simplified", graph)):
                result = run_graph(stage, OnnxRuntimeRunner(RunnerOptions(job.opts.threads), optimize=False), path, scratch, job.input_sets)
                result.runner.close()
                stages.parity[stage] = reference.judge(result, *job.opts.fp32_tolerances)
    return graph, raw, info


# --- the TensorRT parser's rules ----------------------------------------------------------------

def tensorrt_check_stage(graph: str, job: Job, stages: Stages, phase: Phases, modules: list[str]) -> None:
    """The written graph against each asked TensorRT version's ONNX parser (tensorrt_lint): an error is a graph
    the device would refuse, so the run stops here (exit 2, nothing written), naming the node and its module
    (among the deployed model's `modules`)."""
    import onnx

    from .scopes import module_of_node

    with phase("tensorrt check", f"TensorRT parser rules ({', '.join(job.opts.trt_versions)})"):
        model = onnx.load(graph, load_external_data=False)
        stages.tensorrt_check = {v: [{**f.as_dict(), "module": module_of_node(f.node, modules) or f.module} for f in lint_tensorrt(model, v)]
                                 for v in job.opts.trt_versions}
    for v, findings in stages.tensorrt_check.items():
        errors = [f for f in findings if f["severity"] == "error"]
        if errors:
            f = errors[0]
            where = f"node {f['node']} ({f['op']}" + (f", module {f['module']})" if f.get("module") else ")")
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise BadInput(f"TensorRT {v}'s ONNX parser would refuse the graph: {f['message']} at {where}{more}; "
                           "`polyexport check` lists every finding")


# --- runtimes ----------------------------------------------------------------------------------

def runtime_stage(job: Job, reference: Reference, graph: str, stages: Stages, phase: Phases, workdir: str, localiser: Localiser) -> None:
    """Each runtime: load the graph (in the precision asked), run every parity input set, judge; with fp16,
    keep the modules that fail in fp32 where the runtime allows it."""
    for rt in job.runtimes:
        with phase("runtimes", f"{rt}: load, check parity"):
            result, verdict = check_on(rt, job, reference, graph, workdir)
        if job.opts.fp16:
            kept: list[dict] = []
            graph_ok = stages.parity["onnx-simplified"].passed if "onnx-simplified" in stages.parity else True  # else not precision
            if not verdict.passed and verdict.error is None and rt in KEEPS_FP32 and graph_ok:
                with phase("fp16 repair", f"{rt}: keep the modules that fail in {verdict.precision} in fp32"):
                    result, verdict, kept = repair_fp16(rt, job, reference, graph, workdir, localiser, result, verdict)
            stages.precision[rt] = {"asked": "fp16", "ran": verdict.precision, "kept_fp32": kept}
            if rt not in KEEPS_FP32:
                stages.precision[rt]["note"] = f"none: {rt} offers no per-layer precision control here"
        stages.runs[rt], stages.parity[rt] = result, verdict
        stages.artifacts.update({key: os.path.relpath(path, workdir) for key, path in result.artifacts.items()})


def check_on(rt: str, job: Job, reference: Reference, graph: str, workdir: str, keep: Sequence[str] = ()) -> tuple[RunResult, ParityResult]:
    """`graph` on runtime `rt` in the precision asked (the modules `keep` in fp32), judged against the reference."""
    options = replace(job.runner_options, keep_fp32=tuple(keep))
    path, written = graph_for(rt, graph, workdir, options.fp16, keep)
    result = run_graph(rt, make_runner(rt, options), path, workdir, job.input_sets)
    result.artifacts.update(written)
    if options.fp16 and rt in KEEPS_FP32:
        result.description.setdefault("kept_fp32", list(keep))
    return result, reference.judge(result, job.opts.atol, job.opts.rtol)


def repair_fp16(rt: str, job: Job, reference: Reference, graph: str, workdir: str, localiser: Localiser, result: RunResult,
                verdict: ParityResult) -> tuple[RunResult, ParityResult, list[dict]]:
    """Move the module the attribution blames back to fp32, rebuild, recheck; until parity holds, the attribution
    finds no new module, or MAX_KEPT_FP32 modules are kept. Returns the final run, verdict and the modules kept."""
    kept: list[dict] = []
    while not verdict.passed and verdict.error is None and len(kept) < MAX_KEPT_FP32:
        keep = tuple(k["module"] for k in kept)
        checked = localiser.at(rt, (verdict.atol, verdict.rtol), replace(job.runner_options, keep_fp32=keep), False).get("checked", [])
        # the first module over the tolerance that is not fp32 already: a kept module's own taps can still read
        # inf (its fp32 output is cast to fp16 for the next node), and a value out of fp16's range overflows
        # again in the module after it, which is then kept too, until the values are back in range
        still = [c for c in checked if c["module"] in keep and c["max_rel_err"] > verdict.rtol]
        if still:  # wrong in fp32 too: not a precision problem, and keeping more in fp32 will not fix it
            for k in kept:
                if k["module"] == still[0]["module"]:
                    k["reason"] += f"; still off in fp32 ({still[0]['max_rel_err']:.3g}): not a precision problem"
            break
        over = [c for c in checked if c["max_rel_err"] > verdict.rtol and not any(c["module"] == k or c["module"].startswith(k + ".") for k in keep)]
        if not over:
            break
        err = over[0]["max_rel_err"]
        kept.append({"module": over[0]["module"], "type": over[0]["type"], "form": over[0]["form"], "max_rel_err": err,
                     "reason": "overflow (inf/NaN)" if err == float("inf") else f"error above the {verdict.precision} tolerance"})
        result.runner.close()
        result, verdict = check_on(rt, job, reference, graph, workdir, [k["module"] for k in kept])
    return result, verdict, kept


# --- explain, latency --------------------------------------------------------------------------

def explain_stage(model: nn.Module, job: Job, deployment: Deployment, stages: Stages, phase: Phases, localiser: Localiser,
                  graph: str, raw: str) -> None:
    """Where the first failing stage (or, with --explain, the last one) diverges: the first module over the
    tolerance, or for a runtime that did not run at all its message and the module that froze the batch."""
    failed = stages.failed()
    if failed and stages.parity[failed[0]].error:
        stage = failed[0]
        stages.explain = explain_runtime_error(stage, stages.parity[stage].error, raw if stage == "onnx-exported" else graph,
                                               job.batch, job.opts.dynamic_batch, module_kinds(model, deployment.records))
    elif failed or job.opts.explain:
        stage = failed[0] if failed else (job.runtimes[-1] if job.runtimes else "onnx-simplified")
        verdict = stages.parity[stage]
        keep = tuple(k["module"] for k in stages.precision.get(stage, {}).get("kept_fp32", []))
        with phase("explain", f"locate the first diverging layer ({stage})"):
            stages.explain = localiser.at(stage, (verdict.atol, verdict.rtol), replace(job.runner_options, keep_fp32=keep), bool(failed))


def latency_stage(model: nn.Module, job: Job, stages: Stages, phase: Phases) -> None:
    """Each runtime that ran, on the first parity input (and PyTorch eager only if asked); then free the sessions."""
    feeds = job.input_sets[0][1]
    fns = {rt: (lambda r: lambda: r.run(feeds))(run.runner) for rt, run in stages.runs.items() if run.ok}
    if job.opts.bench_torch:
        fns = {"torch": (lambda r: lambda: r.run(feeds))(TorchRunner(model, job.names, job.runner_options)), **fns}
    if job.opts.bench:
        for rt, fn in fns.items():
            with phase("latency", f"latency: {rt}"):
                stages.latency[rt] = measure(fn, min_iters=job.opts.iterations, min_time_s=job.opts.min_time_s)
    for run in stages.runs.values():
        run.runner.close()


# --- report and artifacts ----------------------------------------------------------------------

def build_report(model: nn.Module, name: str | None, notes: Sequence[str], job: Job, reference: Reference, deployment: Deployment,
                 info: ExportInfo, stages: Stages) -> Report:
    """The run's record: here the typed results become the report's plain data."""
    failed = stages.failed()
    runtimes = {rt: run.description for rt, run in stages.runs.items()}
    if job.opts.bench_torch:
        runtimes = {"torch": TorchRunner(model, job.names, job.runner_options).describe(), **runtimes}
    report = Report(model=name or type(model).__name__, target=job.opts.target, deploy=job.opts.deploy, versions=versions(),
                    inputs=[s.as_dict() for s in job.specs], notes=[*notes, *deployment.notes], warnings=reference.warnings,
                    noise_floor=reference.floor_entry(), layers=[r.as_dict() for r in deployment.records],
                    form_choices=deployment.choices, parity={k: p.as_dict() for k, p in stages.parity.items()},
                    latency_ms={k: s.as_dict() for k, s in stages.latency.items()}, runtimes=runtimes,
                    export={k: v for k, v in info.as_dict().items() if k != "path"}, precision=stages.precision,
                    first_failing_stage=failed[0] if failed else None, explain=stages.explain, timings=dict(stages.timings),
                    peak_rss_mb=peak_rss_mb(), tensorrt_check=stages.tensorrt_check, stand_in=stand_in_entry(job),
                    parity_sets=[{"label": label, "shapes": [list(a.shape) for a in arrays]} for label, arrays in job.parity_sets])
    report.artifacts = {**stages.artifacts, "report_json": "report.json", "report_md": "report.md",
                        **({"bundle": "bundle"} if job.opts.writes_bundle else {})}
    return report


def stand_in_entry(job: Job) -> dict | None:
    """What stood in for the target's own runtime, said in the report and the last line; never a TensorRT result."""
    if not job.stand_in:
        return None
    return {"target": job.opts.target, "runtime": job.stand_in,
            "why": "TensorRT is not installed here (JetPack provides it on the device)",
            "forms": "the TensorRT-safe forms (constant conv weights) in the registered order: not measured here",
            "next": "copy the bundle to the device and run `polyexport verify bundle --target tensorrt` there (see bundle/README.txt)"}


def write_stage(report: Report, job: Job, reference: Reference, graph: str, folder: str) -> None:
    """The bundle (with the device's command lines in the report, for a TensorRT target), then report.json and .md."""
    if job.opts.writes_bundle:
        from .bundle import write_bundle
        from .trtexec import device_commands

        kept = sorted({k["module"] for d in report.precision.values() for k in d.get("kept_fp32", [])})
        bundle = os.path.join(folder, "bundle")
        write_bundle(bundle, graph, report.inputs, output_names(reference.n_outputs), job.parity_sets, reference.outputs,
                     job.opts.atol, job.opts.rtol, report.to_json(), job.opts.dynamic_batch, report.model, kept,
                     reference.floor.per_output if reference.floor else [],
                     fp16=job.opts.fp16, batch_range=job.batch_range, workspace_mb=job.opts.workspace_mb, trt_versions=job.opts.trt_versions)
        if job.opts.target == "tensorrt":  # run from the output folder
            report.device_commands = {v: device_commands(bundle, v, bundle_dir="bundle") for v in job.opts.trt_versions}
    with open(os.path.join(folder, "report.json"), "w") as f:
        f.write(report.to_json())
    with open(os.path.join(folder, "report.md"), "w") as f:
        f.write(report.to_markdown())


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"polyexport": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "onnx", "onnxsim", "onnxslim", "onnxruntime", "openvino", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
