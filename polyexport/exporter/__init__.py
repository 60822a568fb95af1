"""Stage 2 of the pipeline: torch ► ONNX ► simplify ► check, and graph rewrites (fp16). Knows nothing of runtimes.

Names are loaded lazily (PEP 562): the torch-free parts (fp16.py) import on a device without PyTorch.
"""
from __future__ import annotations

import importlib

_LAZY = {"ExportInfo": "graph", "export_onnx": "graph", "finish_export": "graph", "first_line": "torch_onnx", "flatten_outputs": "torch_onnx",
         "output_names": "torch_onnx", "EXPORTERS": "torch_onnx", "check_export_tools": "torch_onnx", "SIMPLIFIERS": "simplify"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

