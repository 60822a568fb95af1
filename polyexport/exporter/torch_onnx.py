"""torch.nn.Module -> ONNX file with torch.onnx.export.

Exporter choice, measured (benchmarks/export.py; torch 2.13, 2 cores, README "Export choices"): on
deployed models the two exporters' graphs run equally fast in ONNX Runtime (within ±6 %, noise), but
the TorchScript exporter (`dynamo=False`) exports 2–8× faster (ResNet-18 1.1 s vs 2.7 s with onnxsim,
EfficientNet-B0 0.3 s vs 2.0 s), honours opsets below 18 (dynamo exports 18 and tries to
down-convert, which fails on Reduce* ops, e.g. for TensorRT 8.6's opset 17 limit), and takes
`dynamic_axes` directly. It is the default; `exporter="dynamo"` is there for models TorchScript cannot trace.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings

import torch
from torch import nn

from ..errors import ExportFailed
from ..outputs import flatten_outputs, output_names  # noqa: F401 - the order ONNX outputs are written in

EXPORTERS = ("torchscript", "dynamo")


def check_export_tools(exporter: str, simplifier: str) -> None:
    """Before any work: the tools an asked exporter or simplifier needs beyond polyexport's own dependencies (the
    dynamo exporter writes with onnxscript; onnxslim is an extra). Without them the export failed, or went
    unsimplified with a note, only after the form choice."""
    import importlib.util

    from ..errors import RuntimeMissing

    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise RuntimeMissing("onnxscript", None, "the dynamo exporter needs it: pip install onnxscript, "
                             "or keep the default exporter (--exporter torchscript)")
    if simplifier == "onnxslim" and importlib.util.find_spec("onnxslim") is None:
        raise RuntimeMissing("onnxslim", "slim", "--simplifier onnxslim needs it")


@contextlib.contextmanager
def _quiet():
    """Keep the exporters' graph dumps and progress lines out of the user's terminal.

    The TorchScript exporter's C++ side prints a whole graph on every failure (torch 2.13's
    `setup_onnx_logging` tests the function `_jit_is_onnx_log_enabled` instead of calling it, so
    logging is always on), straight to file descriptor 1: redirect the descriptors, not sys.stdout.
    """
    saved = []
    with warnings.catch_warnings(), tempfile.TemporaryFile("w+b") as sink:
        warnings.simplefilter("ignore")
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                except OSError:  # no such descriptor (embedded interpreters): nothing to hide
                    continue
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def torch_export(model: nn.Module, args: tuple[torch.Tensor, ...], path: str, *, input_names: list[str],
                 n_outputs: int, opset: int = 17, dynamic_batch: bool = False, exporter: str = "torchscript",
                 dynamic_axes: dict[str, dict[int, str]] | None = None) -> None:
    """Write `model` to `path` as ONNX; raise the exporter's own exception on failure.

    `dynamic_axes` ({input or output name: {axis: label}}) adds dynamic axes by name, on top of the
    batch axis that `dynamic_batch` makes dynamic everywhere: for models whose inputs do not share one
    batch axis (a head's per-instance inputs beside its shared features); the label names the axis in the graph.
    """
    outs = output_names(n_outputs)
    if dynamic_axes:
        unknown = set(dynamic_axes) - {*input_names, *outs}
        if unknown:
            raise ValueError(f"dynamic_axes names {sorted(unknown)}: the graph's inputs and outputs are {[*input_names, *outs]}")
    if exporter == "torchscript":
        axes = {n: {0: "batch"} for n in [*input_names, *outs]} if dynamic_batch else None
        if dynamic_axes:
            axes = {n: {**(axes or {}).get(n, {}), **dynamic_axes.get(n, {})} for n in {*(axes or {}), *dynamic_axes}}
        if holds_script_modules(model):
            model = _traced(model, args)
        with _quiet():
            torch.onnx.export(model, args, path, dynamo=False, opset_version=opset, input_names=input_names,
                              output_names=outs, dynamic_axes=axes, do_constant_folding=True)
    elif exporter == "dynamo":
        shapes = None
        if dynamic_axes:  # torch.export specialises sizes 0 and 1, which a head's instance axis must take
            raise ValueError("dynamic_axes is supported with the torchscript exporter only")
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=4096)
            shapes = tuple({0: batch} for _ in args)
        with _quiet():
            program = torch.onnx.export(model, args, None, dynamo=True, opset_version=opset, input_names=input_names,
                                        output_names=outs, dynamic_shapes=shapes, optimize=True)
            program.save(path, external_data=False)
    else:
        raise ValueError(f"unknown exporter {exporter!r}; choose from {EXPORTERS}")


def holds_script_modules(model: nn.Module) -> bool:
    """A Python module with a compiled (torch.jit.script) submodule, as some codebases script their activations or
    heads: the TorchScript exporter cannot call one inside its trace ("... is not part of the active trace")."""
    return not isinstance(model, torch.jit.ScriptModule) and any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def _traced(model: nn.Module, args: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """The model traced by torch.jit.trace, which can call compiled submodules, and whose result the exporter takes.
    It records what torch.onnx.export's own trace would (the same tracer); strict=False keeps dict and list outputs."""
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(model, args, check_trace=False, strict=False)


def first_line(e: BaseException, limit: int = 300) -> str:
    """The exception's first paragraph on one line (torch's messages wrap a value over lines: "output 1 (3\\n[
    torch.LongTensor{} ]) of traced region ..."), at most `limit` characters."""
    text = " ".join(str(e).strip().split("\n\n")[0].split())
    return f"{type(e).__name__}: {text if len(text) <= limit else text[:limit - 1] + '…'}"


def locate_failure(model: nn.Module, args: tuple[torch.Tensor, ...], opset: int, exporter: str) -> str | None:
    """Name the deepest submodule whose own export fails, exporting each with the inputs it saw.

    Works for any exporter error (an unsupported op, data-dependent control flow) without parsing
    messages: record each module's tensor inputs in one forward pass, then descend into the first
    child that fails on its own.
    """
    seen: dict[str, tuple] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.jit.ScriptModule):  # compiled: takes no hooks, and is exported whole or not at all
            continue

        def pre(m, a, name=name):
            if name not in seen and all(isinstance(x, torch.Tensor) for x in a):
                seen[name] = tuple(x.detach() for x in a)
        hooks.append(mod.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            model(*args)
    except Exception:  # noqa: BLE001 - a forward that fails is reported by the caller
        return None
    finally:
        for h in hooks:
            h.remove()

    def fails(mod: nn.Module, a: tuple) -> bool:
        try:
            with torch.no_grad():
                n_out = len(flatten_outputs(mod(*a))) or 1
            tmp = os.devnull if exporter == "torchscript" else None
            if tmp is None:
                return False
            torch_export(mod, a, tmp, input_names=[f"i{i}" for i in range(len(a))], n_outputs=n_out, opset=opset, exporter=exporter)
            return False
        except Exception:  # noqa: BLE001
            return True

    culprit, prefix, module = None, "", model
    while True:
        for child_name, child in module.named_children():
            full = f"{prefix}{child_name}"
            if full in seen and fails(child, seen[full]):
                culprit, prefix, module = full, full + ".", child
                break
        else:
            return culprit


def export_with_attribution(model: nn.Module, args: tuple[torch.Tensor, ...], path: str, **kw) -> None:
    """torch_export, turning a failure into ExportFailed that names the module it came from."""
    try:
        torch_export(model, args, path, **kw)
    except Exception as e:  # noqa: BLE001
        where = locate_failure(model, args, kw.get("opset", 17), kw.get("exporter", "torchscript"))
        if where:
            mod = model.get_submodule(where)
            raise ExportFailed(f"ONNX export failed in module '{where}' ({type(mod).__name__}): {first_line(e)}") from e
        raise ExportFailed(f"ONNX export failed: {first_line(e)}") from e
