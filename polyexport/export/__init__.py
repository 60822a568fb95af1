"""Stage 2 of the pipeline: torch ► ONNX ► simplify ► check, and graph rewrites (fp16). Knows nothing of runtimes.

Names are loaded lazily (PEP 562): the torch-free parts (fp16.py) import on a device without PyTorch.
"""
from __future__ import annotations

import importlib

_LAZY = {"ExportInfo": "graph", "export_onnx": "graph", "first_line": "torch_onnx", "flatten_outputs": "torch_onnx",
         "output_names": "torch_onnx", "EXPORTERS": "torch_onnx", "SIMPLIFIERS": "simplify"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(__import__("types").ModuleType):
    """DESIGN.md fixes both `polyexport/export/` (this stage) and the API `polyexport.export(...)`.

    Whichever is imported first owns the attribute `polyexport.export`; calling this module
    forwards to the pipeline, so the API works in either order.
    """

    def __call__(self, *args, **kwargs):
        from ..pipeline import export

        return export(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
