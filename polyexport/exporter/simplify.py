"""Graph simplification with the ecosystem's tools: onnxsim (default) or onnxslim.

Measured in benchmarks/export.py. Both fold constants and remove identity-like nodes; a
simplifier that fails or whose own check fails leaves the model as exported, with the reason kept.
"""
from __future__ import annotations

import onnx

SIMPLIFIERS = ("onnxsim", "onnxslim", "none")


def simplify(model: onnx.ModelProto, tool: str = "onnxsim") -> tuple[onnx.ModelProto, str]:
    """(simplified model, what happened) — never raises for a simplifier's own failure."""
    if tool == "none":
        return model, "not simplified (--simplifier none)"
    try:
        if tool == "onnxsim":
            import onnxsim

            out, ok = onnxsim.simplify(model, check_n=0)
            if not ok:
                return model, "onnxsim could not validate its result: kept the exported graph"
            return out, f"onnxsim {onnxsim.__version__}"
        if tool == "onnxslim":
            import onnxslim

            return onnxslim.slim(model), f"onnxslim {onnxslim.__version__}"
    except ImportError:
        return model, f"{tool} is not installed: graph not simplified"
    except Exception as e:  # noqa: BLE001
        return model, f"{tool} failed ({type(e).__name__}: {str(e)[:120]}): kept the exported graph"
    raise ValueError(f"unknown simplifier {tool!r}; choose from {SIMPLIFIERS}")
