"""`polyexport MODEL --target …`: the main job from the command line, with rich progress and tables.

Exit codes (DESIGN.md): 0 parity held; 1 parity failed (artifacts kept); 2 bad input or usage
(nothing written); 3 target runtime not available.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
import warnings

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .targets import FORM_CHOICES, TARGETS

RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
DEVICES = ("cpu", "cuda", "tensorrt")
from .errors import BadInput, PolyexportError
from .parity import DEFAULT_ATOL, DEFAULT_RTOL
from .precision import TOLERANCES

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _finite_nonnegative(text: str) -> float:
    """A tolerance: a finite number ≥ 0 (NaN fails every comparison silently, inf passes anything)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be a finite number >= 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


#: opsets the TorchScript exporter writes and the runtimes run; below 13 ops the forms use change meaning (Split,
#: Squeeze, ReduceSum take attributes), and TensorRT 8.6 parses at most 17 (tensorrt_lint checks that)
OPSETS = range(13, 21)


def _opset(text: str) -> int:
    value = _positive_int(text)
    if value not in OPSETS:
        raise argparse.ArgumentTypeError(f"{value} is outside {OPSETS.start}..{OPSETS.stop - 1}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; make its message one line like ours."""

    def error(self, message: str):  # noqa: D401
        err_console.print(f"[bold red]error:[/] {escape(message)} (see {self.prog} --help)", soft_wrap=True)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="polyexport", description="Export a PyTorch model with exact deploy forms of research layers, prove parity on the target runtime, and time it.",
                epilog="Also: `polyexport verify BUNDLE --target RT` (check a bundle on a device, no PyTorch needed) and "
                       "`polyexport check MODEL.onnx --target tensorrt` (what TensorRT's parser will refuse). "
                       "Exit codes: 0 ok, 1 parity failed, 2 bad input, 3 runtime not installed.")
    p.add_argument("model", metavar="MODEL", help="a .pt file (state_dict or pickled module), a .safetensors state_dict, zoo:NAME, or package.module:callable")
    p.add_argument("--target", default="onnxruntime", choices=TARGETS, help=f"one of {', '.join(TARGETS)} (default onnxruntime)")
    p.add_argument("--input-shape", action="append", metavar="NxCxHxW", help="input shape, e.g. 1x3x224x224; repeat for several inputs")
    p.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch axis (parity is also checked at another batch size)")
    p.add_argument("--out", default="polyexport-out", metavar="DIR", help="where artifacts and the report go (default ./polyexport-out)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--opset", type=_opset, default=17, help=f"ONNX opset, {OPSETS.start}..{OPSETS.stop - 1} (default 17)")
    p.add_argument("--atol", type=_finite_nonnegative, help=f"absolute tolerance (default by precision: fp32 {DEFAULT_ATOL:g}, fp16 {TOLERANCES['fp16'][0]:g}, bf16 {TOLERANCES['bf16'][0]:g})")
    p.add_argument("--rtol", type=_finite_nonnegative, help=f"tolerance relative to the output's max |value| (default by precision: fp32 {DEFAULT_RTOL:g}, fp16 {TOLERANCES['fp16'][1]:g}, bf16 {TOLERANCES['bf16'][1]:g})")
    p.add_argument("--fp16", action="store_true", help="fp16 on the runtimes: an fp16 graph for ONNX Runtime, the f16 hint for OpenVINO (bf16 where the CPU "
                   "lacks fp16), an fp16 engine for TensorRT; modules that overflow or lose accuracy are found and kept in fp32 where the runtime allows")
    p.add_argument("--no-deploy", dest="deploy", action="store_false", help="export the model as it is (no layer swaps, no folding), for comparison")
    p.add_argument("--form", action="append", metavar="LAYER=FORM", help="auto (time each exact form on the target runtime: the default for onnxruntime/openvino), "
                   "thorough (auto with every form timed, the prior's too, and the whole-model check trying every plausible alternative), "
                   "preferred (the registered, measured order), or force a form for a layer type, e.g. PSConv2d=regrouped (or =reference); repeatable")
    p.add_argument("--form-cache", metavar="FILE", help="where the form timings are kept (default $POLYEXPORT_CACHE, else "
                   "~/.cache/polyexport/forms.json): keep it between runs, e.g. as a CI cache, and only the first run of a layer shape times its forms")
    p.add_argument("--strict", action="store_true", help="fail when a known layer has no exact deploy form instead of keeping it as is")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling a full module (runs code from the file)")
    p.add_argument("--arch", metavar="SPEC", help="package.module:callable (or zoo:NAME) building the model a state_dict belongs to")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE", help="import MODULE first (so pickled classes resolve); repeatable")
    p.add_argument("--threads", type=_positive_int, help="threads for every runtime and PyTorch (default: all cores)")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="cpu (default); with onnxruntime-gpu: cuda or tensorrt (ONNX Runtime's CUDA/TensorRT providers)")
    p.add_argument("--runtime", dest="extra_runtimes", action="append", default=[], choices=RUNTIMES, metavar="NAME", help="also check and time this runtime (onnxruntime, openvino)")
    p.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True, help="measure latency (default on)")
    p.add_argument("--bench-torch", action="store_true", help="also time PyTorch eager, for comparison (slow on big models)")
    p.add_argument("--iterations", type=_positive_int, default=20, help="minimum timed iterations per runtime (default 20, and at least 0.5 s)")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    p.add_argument("--simplifier", choices=["onnxsim", "onnxslim", "none"], default="onnxsim")
    p.add_argument("--explain", action="store_true", help="localise the first diverging layer even when parity holds (automatic on a parity failure)")
    p.add_argument("--batch-range", metavar="MIN,OPT,MAX", help="with --dynamic-batch: parity is checked at each, and TensorRT's profile is built "
                   "for it (default 1,BATCH,max(8,BATCH) with BATCH the input shape's)")
    p.add_argument("--workspace", type=_positive_int, default=1024, metavar="MB", help="TensorRT builder workspace (default 1024 MB)")
    p.add_argument("--bundle", action=argparse.BooleanOptionalAction, default=None,
                   help="write DIR/bundle/ (ONNX, seeded inputs, PyTorch outputs, tolerance, manifest, README.txt with the device's "
                        "commands) for `polyexport verify` on a device (default: on for --target tensorrt)")
    p.add_argument("--trt-version", dest="trt_versions", action="append", metavar="V",
                   help="with --target tensorrt: the TensorRT version(s) whose ONNX parser the graph must pass and the device "
                        "commands are for: 8.5 (JetPack 5), 8.6 (JetPack 6.0), 10 (JetPack 6.1/6.2: 10.3); repeatable "
                        "(default: 8.6 and 10)")
    p.add_argument("--version", action="version", version=f"polyexport {__version__}")
    return p


@contextlib.contextmanager
def _step(label: str):
    t0 = time.perf_counter()
    with console.status(f"{label}…") as status:
        yield status  # the pipeline updates it within a long phase (which layer, which form)
    console.print(f"[green]✓[/] {label} [dim]({time.perf_counter() - t0:.1f} s)[/]")


def _print_summary(report) -> None:
    if report.layers:
        console.print(f"deploy: {report.layer_summary()}")
        for l in [l for l in report.layers if l["form"] == "reference"]:
            console.print(f"  [yellow]kept[/] {escape(l['name'])} ({l['type']}): {escape(l.get('note', ''))}")
    for w in report.warnings:
        err_console.print(f"[bold yellow]warning:[/] {escape(w)}", soft_wrap=True)
    t = Table(title="parity with PyTorch", title_justify="left")
    for col in ("stage / runtime", "precision", "max abs err", "max err / scale", "allowed", "cosine", "top-1 / top-5", "passed"):
        t.add_column(col)
    for k, p in report.parity.items():
        ok = "[green]yes[/]" if p["passed"] else f"[bold red]NO[/] {escape('; '.join(p.get('problems') or [p.get('error', '')]))}"
        topk = f"{p['top1_agreement']:.0%} / {p['top5_agreement']:.0%}" if p.get("topk_samples") else "-"
        t.add_row(k, p.get("precision", "fp32"), f"{p['max_abs_err']:.3g}", f"{p['max_rel_err']:.3g}", f"{p.get('effective_rtol', p['rtol']):.3g}",
                  f"{p['cosine']:.8f}", topk, ok)
    console.print(t)
    floor = report.noise_floor.get("per_output") or []
    console.print(f"[dim]allowed = max(rtol, {next(iter(report.parity.values()), {}).get('noise_multiple', 0):g}× the model's own fp32 noise floor "
                  f"{max(floor) if floor else 0:.3g}) of the output's scale{'' if floor else ' (' + escape(report.noise_floor.get('note', 'not measured')) + ')'}[/]",
                  soft_wrap=True)
    for rt, d in report.precision.items():
        kept = ", ".join(f"{m['module']} ({m['reason']})" for m in d.get("kept_fp32", []))
        console.print(f"{rt}: asked {d['asked']}, ran {d['ran']}; kept in fp32: {escape(kept or d.get('note', 'none'))}", soft_wrap=True)
    if report.explain:
        e = report.explain
        if e.get("runtime_error"):
            where = f" in module [bold]{escape(e['module'])}[/] ({e.get('type', '?')})" if e.get("module") else ""
            node = f", node {escape(e['node'])}" if e.get("node") else ""
            console.print(f"[bold]stage {e['stage']} did not run[/]{where}{node}", soft_wrap=True)
            if e.get("note"):
                console.print(f"  {escape(e['note'])}", soft_wrap=True)
        elif e.get("module"):
            console.print(f"[bold]first diverging module[/] at stage {e['stage']}: [bold]{escape(e['module'])}[/] ({e['type']}, form {e['form']}), "
                          f"max error / scale {e['max_rel_err']:.3g}", soft_wrap=True)
        else:
            console.print(f"stage {e['stage']}: {escape(e.get('note') or e.get('error', ''))}", soft_wrap=True)
    if report.latency_ms:
        base = report.latency_ms.get("torch", {}).get("p50")
        t = Table(title=f"latency, batch {report.inputs[0]['shape'][0]} (ms)", title_justify="left")
        for col in ("runtime", "p50", "p90", "p99", "CoV", "vs PyTorch eager"):
            t.add_column(col)
        for k, s in report.latency_ms.items():
            ratio = "baseline" if k == "torch" else (f"{base / s['p50']:.2f}× faster" if base else "")
            t.add_row(k, f"{s['p50']:.3f}", f"{s['p90']:.3f}", f"{s['p99']:.3f}", f"{s['cov']:.1%}", ratio)
        console.print(t)
    if report.timings:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in report.timings.items())
        console.print(f"[dim]run: {sum(report.timings.values()):.1f} s ({phases}); peak memory {report.peak_rss_mb:.0f} MB[/]", soft_wrap=True)
    console.print("[italic]artifacts[/]")
    for k, v in report.artifacts.items():  # unwrapped, so paths can be copied
        console.print(f"  {k:14s} {v}", soft_wrap=True)


def run(argv: list[str] | None = None) -> int:
    """The main job: check the request before any work, load MODEL, export, print, and say how it ended."""
    from .pipeline import export

    args = build_parser().parse_args(argv)
    options = _options(args)  # every flag checked before anything is loaded or written
    loaded, notes = _load(args)
    if loaded.input_specs and not args.input_shape:  # a model with several described inputs (a zoo dynamic head)
        inputs = dict(input_specs=loaded.input_specs, output_axes=loaded.output_axes)
    else:
        inputs = dict(input_shapes=_input_shapes(args, loaded, notes))
    report = export(loaded.model, target=args.target, out=args.out, name=args.model, progress=_step, notes=notes, **inputs, **options)
    _print_summary(report)
    return _last_line(report, args, len(notes))


def _options(args: argparse.Namespace) -> dict:
    """export()'s options from the flags, each checked where it can be: the output folder, the input sizes, the batch
    range, the forms, and the runtimes (exit 3 before any work)."""
    from .convert import parse_form_overrides
    from .exporter import check_export_tools
    from .inputs import check_input_sizes, parse_shape
    from .outdir import check_out
    from .pipeline import check_runtimes

    check_out(args.out, args.force, [args.model] if os.path.exists(args.model) else [])
    check_input_sizes([parse_shape(s) for s in args.input_shape or []])
    choice = [f for f in args.form or [] if f in FORM_CHOICES]
    forms = parse_form_overrides([f for f in args.form or [] if f not in FORM_CHOICES])
    check_runtimes(args.target, args.extra_runtimes, args.threads, args.device)
    check_export_tools(args.exporter, args.simplifier)
    return dict(dynamic_batch=args.dynamic_batch, opset=args.opset, atol=args.atol, rtol=args.rtol, deploy=args.deploy, forms=forms,
                strict=args.strict, threads=args.threads, device=args.device, bench=args.bench, iterations=args.iterations,
                exporter=args.exporter, simplifier=args.simplifier, force=args.force, extra_runtimes=args.extra_runtimes,
                bundle=args.bundle, bench_torch=args.bench_torch, batch_range=_batch_range(args), workspace_mb=args.workspace,
                explain=args.explain, fp16=args.fp16, form_choice=choice[-1] if choice else None, form_cache=_form_cache(args.form_cache),
                **({"trt_versions": tuple(args.trt_versions)} if args.trt_versions else {}))


def _form_cache(path: str | None) -> str | None:
    """An asked cache file must be one this run can write: the default location only costs a note when it cannot be
    written (a cache is an optimisation), but a file the user named and the run ignored would cost every later run."""
    if path is None:
        return None
    if os.path.isdir(path):
        raise BadInput(f"--form-cache {path}: a folder; name a file, e.g. {os.path.join(path, 'forms.json')}")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.isdir(existing):  # the nearest folder that exists must let us create the rest
        existing = os.path.dirname(existing)
    target = path if os.path.exists(path) else existing
    if not os.access(target, os.W_OK):
        raise BadInput(f"--form-cache {path}: {'the file' if target == path else existing} is not writable")
    return path


def _batch_range(args: argparse.Namespace) -> tuple[int, int, int] | None:
    if not args.batch_range:
        return None
    if not args.dynamic_batch:
        raise BadInput("--batch-range needs --dynamic-batch (a static graph has one batch size)")
    try:
        values = tuple(int(v) for v in args.batch_range.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not 0 < values[0] <= values[1] <= values[2]:
        raise BadInput(f"--batch-range '{args.batch_range}': expected MIN,OPT,MAX with 0 < MIN <= OPT <= MAX, e.g. 1,4,16")
    return values


def _load(args: argparse.Namespace):
    from .load import load_model

    with _step(f"load {args.model}"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(args.model, arch=args.arch, trust_pickle=args.trust_pickle, imports=args.imports)
    for n in loaded.notes:
        console.print(f"  [yellow]note[/] {escape(n)}")
    return loaded, list(loaded.notes)


def _input_shapes(args: argparse.Namespace, loaded, notes: list[str]) -> list[tuple[int, ...]]:
    """--input-shape, else the zoo entry's, else one inferred from the first layer (said so, in `notes` too)."""
    from .inputs import infer_shape, parse_shape

    if args.input_shape:
        return [parse_shape(s) for s in args.input_shape]
    if loaded.default_input_shape:
        return [tuple(loaded.default_input_shape)]
    guess = infer_shape(loaded.model)
    if guess is None:
        raise BadInput("no --input-shape given and none can be inferred from the model's first layer: pass --input-shape, e.g. 1x3x224x224")
    msg = f"input shape {'x'.join(map(str, guess[0]))} inferred from {guess[1]}; pass --input-shape to override"
    console.print(f"  [yellow]note[/] {escape(msg)}")
    notes.append(msg)
    return [guess[0]]


def _last_line(report, args: argparse.Namespace, shown_notes: int) -> int:
    """How it ended, in the exit code and the last line(s): the first failing stage and why, or where to find the
    report (and for TensorRT without TensorRT, what to run on the device)."""
    out = report.out or args.out
    if not report.passed:
        first, *later = report.failed_runtimes()
        also = f" (and after it: {', '.join(later)})" if later else ""
        tol = report.parity[first]
        why = (f"it did not run: {tol['error']}" if tol.get("error") else "; ".join(tol["problems"]) if tol.get("problems") else
               f"outputs differ from PyTorch beyond atol {tol['atol']:g} + {tol.get('effective_rtol', tol['rtol']):.3g}·scale ({tol.get('precision', 'fp32')})")
        err_console.print(f"[bold red]parity failed[/] first at {first}{also}: {escape(why)}; artifacts kept in {out} (see report.md)", soft_wrap=True)
        return 1
    for n in report.notes[shown_notes:]:
        console.print(f"[yellow]note[/] {escape(n)}", soft_wrap=True)
    stand_in = report.stand_in["runtime"] if report.stand_in else None
    stages = ", ".join(f"{k} (CPU stand-in for TensorRT)" if k == stand_in else k for k in report.parity)
    console.print(f"[bold green]parity held[/] on {stages}; report: {out}/report.md", soft_wrap=True)
    if report.stand_in:
        latest = next(reversed(report.device_commands.values()), {})
        console.print(f"[bold]TensorRT was not run here[/] ({report.stand_in['why']}): {report.stand_in['runtime']} stood in on the CPU. "
                      f"Build and check the engine on the device: copy {out}/bundle there and run "
                      f"`{latest.get('verify', 'polyexport verify bundle --target tensorrt')}` (trtexec lines in bundle/README.txt)",
                      soft_wrap=True)
    return 0


def verify_main(argv: list[str]) -> int:
    """`polyexport verify BUNDLE --target RT`: torch-free, Python 3.8+; what a user runs on the Jetson."""
    p = _Parser(prog="polyexport verify", description="Check a bundle written with --bundle on this machine's runtime: parity with the PyTorch outputs it holds, and latency.")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--target", required=True, choices=["onnxruntime", "openvino", "tensorrt"])
    p.add_argument("--threads", type=_positive_int)
    p.add_argument("--device", default="cpu", choices=DEVICES, help="for onnxruntime: cpu, cuda or tensorrt (its providers)")
    p.add_argument("--bench", dest="bench", action="store_true", default=True, help="time it (default)")
    p.add_argument("--no-bench", dest="bench", action="store_false", help="check parity only")  # no BooleanOptionalAction: Python 3.8
    p.add_argument("--iterations", type=_positive_int, default=20)
    p.add_argument("--fp16", action="store_true", help="run in fp16 (the tolerance follows the precision the runtime reports); "
                   "a bundle whose export asked for fp16 runs so without it")
    p.add_argument("--rebuild-engine", action="store_true", help="tensorrt: build the engine even when BUNDLE/tensorrt/ has a matching one")
    p.add_argument("--atol", type=_finite_nonnegative, help="override the bundle's tolerance")
    p.add_argument("--rtol", type=_finite_nonnegative, help="override the bundle's tolerance")
    p.add_argument("--json", metavar="FILE", help="write the result here")
    args = p.parse_args(argv)
    from .bundle import verify_bundle

    with _step(f"verify {args.bundle} on {args.target}"):
        result = verify_bundle(args.bundle, args.target, args.threads, args.device, args.bench, args.iterations, args.atol, args.rtol,
                               args.fp16, rebuild=args.rebuild_engine)
    pr = result["parity"][args.target]
    tol = result["tolerance"]
    line = (f"tolerance: atol {tol['atol']:g}, rtol {tol['rtol']:g} (allowed error / scale {tol['effective_rtol']:.3g}, "
            f"with the model's noise floor), from the {tol['source']}")
    if "looser" in tol["source"]:
        err_console.print(f"[bold yellow]warning:[/] {escape(line)}", soft_wrap=True)
    else:
        console.print(escape(line), soft_wrap=True)
    if result["precision"]["fp16"]:
        console.print(f"precision: fp16, asked by the {result['precision']['source']}", soft_wrap=True)
    rt = result.get("runtime", {})
    if args.target == "tensorrt" and rt.get("engine"):
        how = f"built in {rt['build_s']:.1f} s" if rt["engine"] == "built" and rt.get("build_s") is not None else rt["engine"]
        console.print(f"engine: TensorRT {rt.get('version')} on {rt.get('device')}, {how}: {escape(str(rt.get('engine_path')))} "
                      f"(timing cache {escape(str(rt.get('timing_cache')))})", soft_wrap=True)
    for n in [*result.get("notes", []), *rt.get("notes", [])]:
        console.print(f"[yellow]note[/] {escape(n)}", soft_wrap=True)
    console.print(f"parity on {args.target}: max abs err {pr['max_abs_err']:.3g}, max err / scale {pr['max_rel_err']:.3g}, "
                  f"cosine {pr['cosine']:.8f} over {pr['comparisons']} outputs: " + ("[green]passed[/]" if pr["passed"] else f"[bold red]FAILED[/] {escape(pr.get('error', ''))}"))
    for name, s in result.get("latency_ms", {}).items():
        console.print(f"latency on {name}: p50 {s['p50']:.3f} ms, p90 {s['p90']:.3f}, p99 {s['p99']:.3f}, CoV {s['cov']:.1%}, n {s['n']}")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return 0 if result["passed"] else 1


def _trt_version(text: str) -> str:
    """A TensorRT version `check` knows rules for: 8.5, 8.6, 10, 10.3, 8.6.2…"""
    from .runtimes.tensorrt_lint import rules_for

    try:
        rules_for(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def check_main(argv: list[str]) -> int:
    """`polyexport check MODEL.onnx --target tensorrt [--trt-version V]…`: the static TensorRT parser check."""
    from .runtimes.tensorrt_lint import DEFAULT_VERSIONS

    p = _Parser(prog="polyexport check", description="Report what TensorRT's ONNX parser will refuse in an ONNX file, before any build.")
    p.add_argument("onnx", metavar="MODEL.onnx")
    p.add_argument("--target", default="tensorrt", choices=["tensorrt"])
    p.add_argument("--trt-version", action="append", type=_trt_version, metavar="V",
                   help=f"TensorRT version to check against: 8.5 (JetPack 5.1), 8.6 (JetPack 6.0), 10 or 10.3 (JetPack 6.1/6.2); "
                        f"repeatable (default {' and '.join(DEFAULT_VERSIONS)})")
    args = p.parse_args(argv)
    import os

    import onnx

    from .runtimes.tensorrt_lint import lint_tensorrt

    if not os.path.isfile(args.onnx):
        raise BadInput(f"{args.onnx}: no such file")
    try:
        model = onnx.load(args.onnx)
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"{args.onnx} is not a readable ONNX file: {type(e).__name__}") from e
    errors = 0
    for version in args.trt_version or list(DEFAULT_VERSIONS):
        findings = lint_tensorrt(model, version)
        errors += sum(f.severity == "error" for f in findings)
        n_err, n_warn = sum(f.severity == "error" for f in findings), sum(f.severity == "warning" for f in findings)
        console.print(f"[bold]TensorRT {version}[/]: {n_err} error(s), {n_warn} warning(s)")
        for f in findings:  # one unwrapped line each: node names, modules and messages stay greppable
            color = {"error": "red", "warning": "yellow"}.get(f.severity, "dim")
            console.print(f"  [{color}]{f.severity:7s}[/] {escape(f.where())}: {escape(f.message)}", soft_wrap=True)
    return 1 if errors else 0


def layers_main(argv: list[str]) -> int:
    """`polyexport layers [--markdown]`: every known layer, its exact deploy forms and what each gives."""
    p = _Parser(prog="polyexport layers", description="List the research layers polyexport converts and their deploy forms.")
    p.add_argument("--markdown", action="store_true", help="print a markdown table (the README's is generated this way)")
    args = p.parse_args(argv)
    from .convert import plugin_errors, registered_layers

    rows = []
    for ref_type, entry in sorted(registered_layers().items(), key=lambda kv: (kv[0].__module__, kv[0].__name__)):
        order = entry.prefer(None, None) if callable(entry.prefer) else (entry.prefer.get("*") or list(entry.forms))
        for name, form in entry.forms.items():
            rows.append((ref_type.__module__.rsplit(".", 1)[-1], ref_type.__name__, name, "yes" if form.dynamic_batch else "**no**",
                         "yes" if form.constant_weights else "**no**", str(order.index(name) + 1) if name in order else "-", form.note))
    if args.markdown:
        print("| paper file | layer | form | dynamic batch | constant conv weights (TensorRT-safe) | default rank | what it is |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    else:
        for r in rows:
            console.print(f"{r[1]:20s} {r[2]:20s} dynamic batch: {r[3]:6s} constant weights: {r[4]:6s} {escape(r[6])}", soft_wrap=True)
    for name, err in plugin_errors().items():
        err_console.print(f"[red]plugin {name} failed to import:[/] {escape(err)}")
    return 0


SUBCOMMANDS = {"verify": verify_main, "check": check_main, "layers": layers_main}


class Terminated(BaseException):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C, so every `with` and `finally` cleans up on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame) -> None:
    raise Terminated(signum)


def without_working_directory() -> None:
    """Drop the working directory from sys.path, where `python -m polyexport` (or an empty entry) put it
    first, before polyexport imports its dependencies; load.user_code_paths adds it back, last, when needed."""
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]


def main(argv: list[str] | None = None) -> None:
    without_working_directory()  # `python -m polyexport` put it first: nothing there may shadow a dependency
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _terminate)
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = SUBCOMMANDS[argv[0]](argv[1:]) if argv and argv[0] in SUBCOMMANDS else run(argv)
    except PolyexportError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        code = e.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted; nothing written")
        code = 128 + signal.SIGINT
    except Terminated as t:
        err_console.print(f"terminated by {signal.Signals(t.signum).name}; nothing written")
        code = 128 + t.signum
    except MemoryError:
        err_console.print("[bold red]error:[/] out of memory (a smaller --input-shape or batch range may fit)")
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
