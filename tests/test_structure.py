"""The core's structure (issue 17): no import cycle among polyexport's modules, the runtime side imports without
PyTorch, the runtimes know nothing of export or precision policy, and the report counts what the deploy did."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "polyexport"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """polyexport module -> the polyexport modules it imports at module level (not inside functions)."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in PKG.rglob("*.py")}
    for path in PKG.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.parse(path.read_text()).body:  # top level only: function-level imports are deliberate and lazy
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    deps.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(n: str, path: list[str]) -> bool:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycle.extend(path[path.index(d):] + [n, d] if d in path else [n, d])
                return True
            if d not in state and visit(d, path + [d]):
                return True
        state[n] = 2
        return False

    for n in sorted(graph):
        if n not in state and visit(n, [n]):
            break
    assert not cycle, " -> ".join(cycle)


@pytest.mark.parametrize("module", [p for p in sorted(os.listdir(PKG / "runtimes")) if p.endswith(".py")])
def test_runtimes_know_nothing_of_export_or_precision_policy(module):
    graph = import_graph()
    name = f"polyexport.runtimes.{module[:-3]}".removesuffix(".__init__")
    forbidden = {d for d in graph[name] if d.startswith(("polyexport.exporter", "polyexport.precision", "polyexport.pipeline",
                                                           "polyexport.convert", "polyexport.autoform"))}
    source = (PKG / "runtimes" / module).read_text()
    assert not forbidden and "precision import" not in source and ".exporter import" not in source and ".exporter." not in source, forbidden


@pytest.mark.parametrize("first", ["polyexport.exporter", "polyexport.pipeline"])
def test_the_export_api_is_the_pipelines_function_whichever_is_imported_first(first):
    """`polyexport.exporter` (the stage) and `polyexport.export` (the API) no longer share a name: importing the
    subpackage, before or after the pipeline, leaves `polyexport.export` the pipeline's function."""
    other = "polyexport.pipeline" if first == "polyexport.exporter" else "polyexport.exporter"
    code = f"""
import importlib, types
import {first}
import polyexport
import {other}
import polyexport.exporter.fp16
import polyexport.pipeline as pipeline
assert polyexport.export is pipeline.export, polyexport.export
assert isinstance(polyexport.exporter, types.ModuleType) and not callable(polyexport.exporter)
assert polyexport.export is importlib.import_module("polyexport").export
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_report_counts_converted_kept_folded_and_absorbed_apart():
    from polyexport.report import Report

    r = Report("m", "onnxruntime", layers=[
        {"name": "a", "type": "PSConv2d", "form": "regrouped"}, {"name": "b", "type": "HetConv", "form": "reference"},
        {"name": "c", "type": "BatchNorm2d", "form": "folded"}, {"name": "d", "type": "Conv2d", "form": "absorbed"}])
    assert r.layer_counts() == {"converted": 1, "kept": 1, "folded": 1, "absorbed": 1}
    md = r.to_markdown()
    assert "1 layer(s) converted, 1 kept as reference, 1 BatchNorm folded, 1 conv(s) absorbed a neighbour" in md
    assert "| `d` | Conv2d | absorbed |" in md and "| `c` |" not in md


def test_fp16_forms_are_timed_in_fp16_under_their_own_cache_key(tmp_path, monkeypatch):
    import torch

    from polyexport.layers.mixconv import MixedConv2d
    from polyexport.pipeline import ExportOptions, form_timer
    from polyexport.testing import randomize_

    monkeypatch.setenv("POLYEXPORT_CACHE", str(tmp_path / "forms.json"))
    model = randomize_(torch.nn.Sequential(MixedConv2d(8, 8, [3, 5], depthwise=True)))
    arrays = [torch.randn(1, 8, 12, 12).numpy()]
    fp32 = form_timer(model, arrays, ExportOptions(form_choice="auto"))
    fp16 = form_timer(model, arrays, ExportOptions(form_choice="auto", fp16=True))
    assert fp16.options.fp16 and not fp32.options.fp16
    assert "fp16" in fp16.context.split("|") and "fp32" in fp32.context.split("|")
