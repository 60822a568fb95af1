"""Stage 3: a runner per runtime behind one interface. Knows nothing of export or layers."""
from __future__ import annotations

import importlib.util

from ..errors import RuntimeMissing
from .base import Runner, RunnerOptions, default_threads

#: runtime -> (module that must import, pip extra)
ONNX_RUNTIMES = {"onnxruntime": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino"), "tensorrt": ("tensorrt", "tensorrt")}


def available(name: str) -> bool:
    module = ONNX_RUNTIMES[name][0]
    return importlib.util.find_spec(module) is not None


def installed() -> list[str]:
    return [n for n in ONNX_RUNTIMES if available(n)]


def make_runner(name: str, options: RunnerOptions | None = None, keep_artifacts: bool = True) -> Runner:
    """A runner for an ONNX runtime by name; RuntimeMissing (exit 3) names the extra to install.
    keep_artifacts=False: a throw-away run (a form timed alone) that need not write the runtime's own files
    (OpenVINO's IR)."""
    if name not in ONNX_RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}")
    if name == "tensorrt":
        from .tensorrt import TensorRTRunner, require_tensorrt

        require_tensorrt()  # not installable by pip on a Jetson: its own hint (JetPack)
        return TensorRTRunner(options)
    if not available(name):
        raise RuntimeMissing(name, ONNX_RUNTIMES[name][1])
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(options)
    from .openvino import OpenVinoRunner

    return OpenVinoRunner(options, save_ir=keep_artifacts)


__all__ = ["Runner", "RunnerOptions", "default_threads", "make_runner", "available", "installed", "ONNX_RUNTIMES"]
