"""polyexport: ship PyTorch models built with modern convolution designs to edge runtimes.

    polyexport.deploy(model, target=None) -> nn.Module      # a converted copy, original untouched
    polyexport.export(model, example_inputs, target=..., out=...) -> Report
"""
__version__ = "0.1.0"

from .convert import deploy  # noqa: E402
from .errors import BadInput, ParityFailed, PolyexportError, RuntimeMissing  # noqa: E402
from .pipeline import export  # noqa: E402  (binds the function over the `export` subpackage name)
from .report import Report  # noqa: E402

__all__ = ["deploy", "export", "Report", "PolyexportError", "BadInput", "ParityFailed", "RuntimeMissing", "__version__"]
