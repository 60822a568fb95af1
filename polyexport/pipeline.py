"""The main job, end to end: deploy ► export ► run on each runtime ► parity ► latency ► report.

Artifacts are written into a temporary folder beside `out` and moved into place only when the
run got as far as a report (a parity failure keeps them: the report says where it failed).
"""
from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
from torch import nn

from . import __version__
from .bench import measure
from .convert import TARGETS, assignment, convert
from .errors import BadInput
from .export import export_onnx, flatten_outputs, output_names
from .modules import set_eval
from .outdir import OutputTransaction, check_out
from .inputs import InputSpec, make_specs, random_inputs, to_torch
from .noise_floor import measure_noise_floor
from .parity import DEFAULT_ATOL, DEFAULT_RTOL, ParityCheck, check_runner, reference_warnings
from .report import Report
from .runtimes import RunnerOptions, available, make_runner
from .runtimes.torch_runner import TorchRunner

Progress = Callable[[str], ContextManager]


@dataclass
class ExportOptions:
    target: str = "onnxruntime"
    out: str = "polyexport-out"
    dynamic_batch: bool = False
    opset: int = 17
    atol: float | None = None  # None: by the precision each stage ran (precision.TOLERANCES; fp32: parity.DEFAULT_*)
    rtol: float | None = None
    fp16: bool = False  # reduced precision on the runtimes (what each actually ran is reported)
    deploy: bool = True
    forms: dict[str, str] = field(default_factory=dict)
    strict: bool = False
    threads: int | None = None
    device: str = "cpu"
    bench: bool = True
    iterations: int = 20
    min_time_s: float = 1.0
    parity_seeds: int = 3
    exporter: str = "torchscript"
    simplifier: str = "onnxsim"
    force: bool = False
    extra_runtimes: Sequence[str] = ()
    bundle: bool = False  # also write DIR/bundle/ for `polyexport verify` on another machine
    batch_range: tuple[int, int, int] | None = None  # (min, opt, max) with a dynamic batch: parity at each, TensorRT's profile
    workspace_mb: int = 1024
    explain: bool = False  # localise the first diverging layer even when parity holds (always done when it fails)
    form_choice: str | None = None  # "auto": time each exact form on the target runtime; "preferred": the registered order.
    #                                  None: auto for a runtime target (onnxruntime, openvino), preferred otherwise

    @property
    def fp32_tolerances(self) -> tuple[float, float]:
        """For the stages that run in fp32 whatever was asked (deployed PyTorch, the ONNX graph on ORT)."""
        return (DEFAULT_ATOL if self.atol is None else self.atol, DEFAULT_RTOL if self.rtol is None else self.rtol)


#: how many modules the fp16 repair may move back to fp32 before it gives up
MAX_KEPT_FP32 = 8


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
    """The runtimes a target is proven on: its own, plus ONNX Runtime for a bare ONNX target."""
    if target not in TARGETS:
        raise BadInput(f"unknown target '{target}'; choose one of {', '.join(TARGETS)}")
    own = {"onnx": ["onnxruntime"] if available("onnxruntime") else [], "onnxruntime": ["onnxruntime"],
           "openvino": ["openvino"], "tensorrt": ["tensorrt"]}[target]
    return list(dict.fromkeys([*own, *extra]))


def check_runtimes(target: str, extra: Sequence[str] = (), threads: int | None = None, device: str = "cpu") -> list[str]:
    """The runtimes to use; RuntimeMissing (exit 3) before any work if one is not installed."""
    names = runtimes_for(target, extra)
    for rt in names:
        make_runner(rt, RunnerOptions(threads, device))
    return names


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"polyexport": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "onnx", "onnxsim", "onnxslim", "onnxruntime", "openvino", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _run_reference(model: nn.Module, arrays: list[np.ndarray], specs: list[InputSpec]) -> list[np.ndarray]:
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


def _form_timer(model: nn.Module, arrays: list[np.ndarray], opts: ExportOptions):
    """The ranker that times forms on the target runtime, when the choice is automatic (see autoform.py)."""
    choice = opts.form_choice or ("auto" if opts.target in ("onnxruntime", "openvino") else "preferred")
    if choice not in ("auto", "preferred"):
        raise BadInput(f"form choice '{choice}': use auto or preferred")
    if choice == "preferred" or opts.target not in ("onnxruntime", "openvino"):
        return None
    from .autoform import FormTimer, capture_layer_inputs

    inputs = capture_layer_inputs(model, to_torch(arrays))
    if not inputs:
        return None
    return FormTimer(opts.target, RunnerOptions(opts.threads, opts.device), inputs, dynamic_batch=opts.dynamic_batch)


def _whole_model_alternatives(model: nn.Module, records, opts: ExportOptions, ranker) -> dict[str, tuple]:
    """What the per-layer choice is checked against as whole graphs: for each layer type and form (none
    the user forced), that form for every layer of the type with the other types (a) as timed per layer
    and (b) in the preferred order, and (c) the preferred order for all. (b) and (c) are what a forced
    form or `--form preferred` would ship, so the automatic choice is never slower than any of them but
    by timing noise. A form that failed on this runtime for some layer is never a candidate, and an
    assignment already among the candidates is not timed twice."""
    from .convert import registered_layers

    entries = {t.__name__: e for t, e in registered_layers().items()}
    chosen: dict[str, set[str]] = {}
    for r in records:
        if r.form not in ("folded", "absorbed", "reference") and r.type in entries:
            chosen.setdefault(r.type, set()).add(r.form)
    seen = {assignment(records)}
    out = {}

    def add(label: str, forms: dict[str, str], timed_per_layer: bool) -> None:
        try:
            deployed, recs = convert(model, opts.target, forms, opts.dynamic_batch, opts.strict, ranker=ranker if timed_per_layer else None)
        except BadInput:  # the form is not exact (or not usable) for some layer of this model
            return
        key = assignment(recs)
        if key not in seen:
            seen.add(key)
            out[label] = (deployed, recs)

    snapshot = list(ranker.choices)
    try:
        for typ in chosen:
            if typ in opts.forms:
                continue
            timed = [c["timings_ms"] for c in snapshot if c["type"] == typ]
            for form in entries[typ].forms:
                if not timed or any(t.get(form) is None for t in timed):
                    continue  # failed (or was not timed) on this runtime for some layer: never a candidate
                add(f"{typ}={form}", {**opts.forms, typ: form}, True)
                if len(chosen) > 1:
                    add(f"{typ}={form}, others preferred", {**opts.forms, typ: form}, False)
        add("preferred", dict(opts.forms), False)
    finally:
        ranker.choices[:] = snapshot  # the alternatives' lookups are not choices
    return out


def _whole_model_choice(exported, records, alternatives: dict[str, tuple], arrays, ranker):
    """The fastest of the per-layer choice and its alternatives (_whole_model_alternatives), timed as whole graphs (FormTimer.whole_models)."""
    candidates = {"per-layer": (exported, records), **alternatives}
    timings, cached = ranker.whole_models(candidates, to_torch(arrays))
    best = min(timings, key=lambda k: float("inf") if timings[k] is None else timings[k])
    entry = {"name": "(whole model)", "type": "whole model", "runtime": ranker.runtime, "input": [list(a.shape) for a in arrays],
             "timings_ms": timings, "chosen": best, "cached": cached}
    return (*candidates[best], entry)


def deploy_for(model: nn.Module, arrays: list[np.ndarray], opts: ExportOptions, progress: Progress | None = None):
    """The deployment the pipeline exports: (deployed model, layer records, form choices, notes on the form cache).

    With automatic choice, each layer's exact forms are timed on the target runtime (autoform.FormTimer),
    then the per-layer choice is timed as a whole graph against each single forced form and the
    preferred order, and the fastest is kept: what a layer alone shows is not always what the whole
    graph does.
    """
    step = progress or (lambda _msg: contextlib.nullcontext())
    ranker = _form_timer(model, arrays, opts)
    label = f"deploy: time each exact form on {opts.target}, swap layers, fold BatchNorm" if ranker else "deploy: swap layers, fold BatchNorm"
    with step(label):
        exported, records = convert(model, opts.target, opts.forms, opts.dynamic_batch, opts.strict, ranker=ranker)
    choices = list(ranker.choices) if ranker else []
    if ranker:
        alternatives = _whole_model_alternatives(model, records, opts, ranker)
        if alternatives:
            with step(f"whole model on {opts.target}: per-layer choice vs {len(alternatives)} other assignment(s)"):
                exported, records, entry = _whole_model_choice(exported, records, alternatives, arrays, ranker)
            choices.append(entry)
    notes = list(dict.fromkeys(ranker.notes)) if ranker else []  # the form cache's troubles: reported, never fatal
    return exported, records, choices, notes


def _graph_parity(stage: str, path: str, input_sets, refs, opts: ExportOptions, noise: list[float]):
    """A middle rung of the ladder: the graph itself on ONNX Runtime with its optimisations off."""
    from .runtimes.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(RunnerOptions(opts.threads), optimize=False) as runner:
        return check_runner(stage, runner, path, os.path.dirname(path), input_sets, refs, *opts.fp32_tolerances, noise)[0]


def _explain(stage: str, original, deployed, records, arrays, names, n_outputs, opts: ExportOptions, export_kw, workdir, runner_opts,
             report_passed: Callable[[str], bool], tolerance: tuple[float, float]) -> dict:
    """The first watched module that diverges at `stage` (see explain.py), as a report entry; `tolerance`
    (atol, rtol) is the stage's own (an fp16 runtime is judged at fp16's)."""
    from .explain import explain_deploy, explain_export

    atol, rtol = tolerance
    try:
        if stage == "torch-deployed":
            found = explain_deploy(original, deployed, records, arrays, rtol, atol)
        else:
            def run_graph(path: str, feeds: dict) -> list:
                if stage.startswith("onnx-"):
                    from .runtimes.onnxruntime import OnnxRuntimeRunner

                    runner = OnnxRuntimeRunner(RunnerOptions(opts.threads), optimize=False)
                else:
                    runner = make_runner(stage, runner_opts)
                with runner:
                    runner.load(path, workdir)
                    return runner.run(feeds)

            kw = dict(export_kw, simplifier="none" if stage == "onnx-exported" else export_kw["simplifier"])
            found = explain_export(deployed, records, arrays, names, n_outputs, run_graph, workdir, stage, rtol, atol, kw)
    except Exception as e:  # noqa: BLE001 - the diagnosis must never hide the result it explains
        return {"stage": stage, "error": f"could not localise: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    result = found.as_dict()
    if found.module is None:  # every submodule agrees: only the top-level forward's own code is left
        stage_failed = not report_passed(stage)
        result["note"] = (f"every submodule agrees; the difference arises in the top-level forward of {type(original).__name__} "
                          "(its own code, outside any submodule)") if stage_failed else "every watched module agrees"
    return result


def _repair_fp16(rt: str, runner, result, artifacts, onnx_path, workdir, input_sets, refs, runner_opts: RunnerOptions,
                 opts: ExportOptions, explain: Callable[[str, RunnerOptions, tuple[float, float]], dict], noise: list[float]):
    """Move the module the attribution blames back to fp32, rebuild, recheck; until parity holds, the
    attribution finds no new module, or MAX_KEPT_FP32 modules are kept. Returns the final runner,
    result and artifacts, and the modules kept with why."""
    kept: list[dict] = []
    while not result.passed and result.error is None and len(kept) < MAX_KEPT_FP32:
        ropts = replace(runner_opts, keep_fp32=tuple(k["module"] for k in kept))
        found = explain(rt, ropts, (result.atol, result.rtol))
        # the first module over the tolerance that is not fp32 already: a kept module's own taps can still
        # read inf (its fp32 output is cast to fp16 for the next node), and a value out of fp16's range
        # overflows again in the module after it, which is then kept too, until the values are back in range
        checked = found.get("checked", [])
        still = [c for c in checked if c["module"] in ropts.keep_fp32 and c["max_rel_err"] > result.rtol]
        if still:  # wrong in fp32 too: not a precision problem, and keeping more in fp32 will not fix it
            for k in kept:
                if k["module"] == still[0]["module"]:
                    k["reason"] += f"; still off in fp32 ({still[0]['max_rel_err']:.3g}): not a precision problem"
            break
        over = [c for c in checked if c["max_rel_err"] > result.rtol
                and not any(c["module"] == k or c["module"].startswith(k + ".") for k in ropts.keep_fp32)]
        if not over:
            break
        module, err = over[0]["module"], over[0]["max_rel_err"]
        kept.append({"module": module, "type": over[0]["type"], "form": over[0]["form"], "max_rel_err": err,
                     "reason": "overflow (inf/NaN)" if err == float("inf") else f"error above the {result.precision} tolerance"})
        runner.close()
        runner = make_runner(rt, replace(runner_opts, keep_fp32=tuple(k["module"] for k in kept)))
        result, artifacts = check_runner(rt, runner, onnx_path, workdir, input_sets, refs, opts.atol, opts.rtol, noise)
    return runner, result, artifacts, kept


def export(model: nn.Module, example_inputs: Sequence[torch.Tensor] | None = None, *, target: str = "onnxruntime",
           out: str = "polyexport-out", input_shapes: Sequence[tuple[int, ...]] | None = None, name: str | None = None,
           progress: Progress | None = None, notes: Sequence[str] = (), **options) -> Report:
    """Export `model` for `target`, prove parity and time it; write artifacts and the report to `out`.

    Returns the Report (also written as out/report.json and out/report.md). A parity failure does
    not raise: `report.passed` is False and the report says which runtime failed.
    """
    opts = ExportOptions(target=target, out=out, **options)
    step = progress or (lambda _msg: contextlib.nullcontext())
    runtime_names = check_runtimes(opts.target, opts.extra_runtimes, opts.threads, opts.device)
    check_out(opts.out, opts.force)  # before any work: a bad --out costs nothing

    if example_inputs is not None:
        shapes = [tuple(t.shape) for t in example_inputs]
    elif input_shapes:
        shapes = [tuple(s) for s in input_shapes]
    else:
        raise BadInput("no input shape: pass --input-shape (e.g. 1x3x224x224) or example inputs")
    specs = make_specs(shapes)
    names = [s.name for s in specs]
    batch = specs[0].shape[0]

    set_eval(model)  # not `model = model.eval()`: many codebases' train() returns None
    seeds = list(range(opts.parity_seeds))
    parity_sets = [(f"seed{s}", random_inputs(specs, s)) for s in seeds]
    brange = batch_range(opts, batch)
    if brange:  # prove the batch is not baked in: the same graph over the range (min, opt, max), and an odd batch in it
        lo, _, hi = brange
        if not lo <= batch <= hi:
            raise BadInput(f"the example batch {batch} is outside the batch range {lo}..{hi}")
        for b in sorted((set(brange) | ({3} if lo < 3 < hi else set())) - {batch}):
            parity_sets.append((f"batch{b}", random_inputs(specs, 100 + b, batch=b)))
    with step("reference outputs (PyTorch)"):
        refs = {label: _run_reference(model, arrays, specs) for label, arrays in parity_sets}
    n_outputs = len(next(iter(refs.values())))
    warnings = reference_warnings(refs)
    with step("noise floor: the model's own fp32 rounding, against float64"):
        floor = measure_noise_floor(model, parity_sets[0][1])
    noise = floor.per_output

    report = Report(model=name or type(model).__name__, target=opts.target, deploy=opts.deploy, versions=versions(),
                    inputs=[s.as_dict() for s in specs], notes=list(notes), warnings=warnings, noise_floor=floor.as_dict())
    transaction = OutputTransaction(opts.out, opts.force)
    tmp, diag = str(transaction.artifacts), str(transaction.scratch)  # diag: what is not an artifact (raw export, diagnostic graphs)
    with transaction:
        exported, records = model, []
        if opts.deploy:
            exported, records, report.form_choices, form_notes = deploy_for(model, parity_sets[0][1], opts, step)
            report.notes += form_notes
            report.layers = [r.as_dict() for r in records]
            check = ParityCheck("torch-deployed", *opts.fp32_tolerances, noise)
            for label, arrays in parity_sets:
                check.add(label, refs[label], _run_reference(exported, arrays, specs))
            report.parity["torch-deployed"] = check.result.as_dict()

        onnx_path = os.path.join(tmp, "model.onnx")
        input_sets = [(label, dict(zip(names, arrays))) for label, arrays in parity_sets]
        raw_path = os.path.join(diag, "exported.onnx")
        export_kw = dict(opset=opts.opset, dynamic_batch=opts.dynamic_batch, exporter=opts.exporter, simplifier=opts.simplifier)
        with step(f"export to ONNX (opset {opts.opset})"):
            example = to_torch(parity_sets[0][1])
            info = export_onnx(exported, example, onnx_path, input_names=names, n_outputs=n_outputs, raw_path=raw_path, **export_kw)
        report.export = {k: v for k, v in info.as_dict().items() if k != "path"}
        report.artifacts["onnx"] = "model.onnx"
        if available("onnxruntime"):  # the ladder's middle rungs: the graph itself, no runtime optimisation
            with step("ONNX graph parity (ONNX Runtime, optimisations off)"):
                for stage, path in (("onnx-exported", raw_path), ("onnx-simplified", onnx_path)):
                    report.parity[stage] = _graph_parity(stage, path, input_sets, refs, opts, noise).as_dict()

        runner_opts = RunnerOptions(opts.threads, opts.device, fp16=opts.fp16, batch_range=brange, workspace_mb=opts.workspace_mb)
        latency_fns: dict[str, Callable[[], object]] = {}
        bench_feeds = dict(zip(names, parity_sets[0][1]))
        torch_runner = TorchRunner(model, names, runner_opts)
        report.runtimes["torch"] = torch_runner.describe()
        latency_fns["torch"] = lambda: torch_runner.run(bench_feeds)
        runners = []
        for rt in runtime_names:
            with step(f"{rt}: load, check parity"):
                runner = make_runner(rt, runner_opts)
                result, artifacts = check_runner(rt, runner, onnx_path, tmp, input_sets, refs, opts.atol, opts.rtol, noise)
            if opts.fp16:
                kept: list[dict] = []
                fp32_graph_ok = report.parity.get("onnx-simplified", {}).get("passed", True)  # else not a precision problem
                if not result.passed and result.error is None and runner.keeps_fp32_modules and fp32_graph_ok:
                    with step(f"{rt}: keep the modules that fail in {result.precision} in fp32"):
                        runner, result, artifacts, kept = _repair_fp16(
                            rt, runner, result, artifacts, onnx_path, tmp, input_sets, refs, runner_opts, opts,
                            lambda stage, ropts, tol: _explain(stage, model, exported, records, parity_sets[0][1], names, n_outputs, opts,
                                                              export_kw, diag, ropts, lambda k: False, tol), noise)
                report.precision[rt] = {"asked": "fp16", "ran": result.precision, "kept_fp32": kept}
                if not runner.keeps_fp32_modules:
                    report.precision[rt]["note"] = f"none: {rt} offers no per-layer precision control here"
            runners.append(runner)
            report.artifacts.update({key: os.path.relpath(path, tmp) for key, path in artifacts.items()})
            report.parity[rt] = result.as_dict()
            report.runtimes[rt] = runner.describe()
            if result.error is None:
                latency_fns[rt] = (lambda r: lambda: r.run(bench_feeds))(runner)
        failed = [k for k, p in report.parity.items() if not p["passed"]]
        report.first_failing_stage = failed[0] if failed else None
        if failed and report.parity[failed[0]].get("error"):  # the runtime did not run: quote it, find a frozen batch
            from .explain import module_kinds, explain_runtime_error

            stage = failed[0]
            report.explain = explain_runtime_error(stage, report.parity[stage]["error"], raw_path if stage == "onnx-exported" else onnx_path,
                                                   batch, opts.dynamic_batch, module_kinds(model, records))
        elif failed or opts.explain:
            stage = failed[0] if failed else (runtime_names[-1] if runtime_names else "onnx-simplified")
            with step(f"locate the first diverging layer ({stage})"):
                kept_here = tuple(k["module"] for k in report.precision.get(stage, {}).get("kept_fp32", []))
                report.explain = _explain(stage, model, exported, records, parity_sets[0][1], names, n_outputs, opts, export_kw,
                                          diag, replace(runner_opts, keep_fp32=kept_here), lambda k: report.parity[k]["passed"],
                                          (report.parity[stage]["atol"], report.parity[stage]["rtol"]))
        if opts.bench:
            for rt, fn in latency_fns.items():
                with step(f"latency: {rt}"):
                    report.latency_ms[rt] = measure(fn, min_iters=opts.iterations, min_time_s=opts.min_time_s).as_dict()
        for r in runners:
            r.close()
        report.artifacts["report_json"] = "report.json"
        report.artifacts["report_md"] = "report.md"
        if opts.bundle:
            report.artifacts["bundle"] = "bundle"
        with open(os.path.join(tmp, "report.json"), "w") as f:
            f.write(report.to_json())
        with open(os.path.join(tmp, "report.md"), "w") as f:
            f.write(report.to_markdown())
        if opts.bundle:
            from .bundle import write_bundle

            write_bundle(os.path.join(tmp, "bundle"), onnx_path, report.inputs, output_names(n_outputs), parity_sets, refs,
                         opts.atol, opts.rtol, report.to_json(), opts.dynamic_batch, report.model,
                         sorted({k["module"] for d in report.precision.values() for k in d.get("kept_fp32", [])}), noise)
        written = transaction.commit()
    if written != transaction.target:
        report.notes.append(f"{opts.out} appeared while this run went on: the results were written to {written} instead")
    report.out = str(written)
    report.artifacts = {k: os.path.join(str(written), v) for k, v in report.artifacts.items()}
    return report
