"""polyexport: ship PyTorch models built with modern convolution designs to edge runtimes.

    polyexport.deploy(model, target=None) -> nn.Module      # a converted copy, original untouched
    polyexport.export(model, example_inputs, target=..., out=...) -> Report

The names are loaded lazily (PEP 562) so that the runtime side (`polyexport verify`, the
runners, the TensorRT lint) works on a device where PyTorch is not installed.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import BadInput, ParityFailed, PolyexportError, RuntimeMissing  # noqa: E402  (torch-free)

_LAZY = {"deploy": ("convert", "deploy"), "export": ("pipeline", "export"), "Report": ("report", "Report")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'polyexport' has no attribute {name!r}")


__all__ = ["deploy", "export", "Report", "PolyexportError", "BadInput", "ParityFailed", "RuntimeMissing", "__version__"]
