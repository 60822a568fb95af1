"""ONNX Runtime: CPU execution provider (fp16: it is given the fp16 graph, exporter/fp16.py; the CPU provider
runs most fp16 nodes through fp32 kernels between Casts it inserts, so on a CPU fp16 means fp16 weights and
rounding, not speed: the GPU providers are where it pays); CUDA (`--device cuda`, TF32 off for fp32 parity) or TensorRT
(`--device tensorrt`, engine and timing caches beside the artifacts) where onnxruntime-gpu has them.
Full graph optimisation unless asked otherwise (the parity ladder runs it with optimisations off).
The GPU providers have not been run on the machines polyexport is developed on (no GPU there)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import RuntimeMissing
from .base import Runner, RunnerOptions


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeMissing("onnxruntime", "onnxruntime") from e
    return onnxruntime


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, options: RunnerOptions | None = None, optimize: bool = True):
        super().__init__(options)
        self.ort = _ort()
        self.optimize = optimize
        self.session = None

    def _providers(self, workdir: str) -> list:
        available = self.ort.get_available_providers()
        if self.options.device == "tensorrt":
            if "TensorrtExecutionProvider" not in available:
                raise RuntimeMissing("onnxruntime", None, "this onnxruntime has no TensorrtExecutionProvider; install onnxruntime-gpu and TensorRT")
            trt = {"trt_fp16_enable": self.options.fp16, "trt_engine_cache_enable": True, "trt_engine_cache_path": workdir,
                   "trt_timing_cache_enable": True, "trt_timing_cache_path": workdir}
            return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]
        if self.options.device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise RuntimeMissing("onnxruntime", None, "this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu")
            # TF32 convolutions are ~1e-3 off fp32: keep parity honest unless fp16 was asked
            return [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]
        if self.options.device != "cpu":
            raise RuntimeMissing("onnxruntime", None, f"device '{self.options.device}' is not supported by this runner")
        return ["CPUExecutionProvider"]

    def load(self, onnx_path: str, workdir: str) -> dict[str, str]:
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.options.resolved_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = (
            self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL if self.optimize else self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        so.log_severity_level = 3
        self.session = self.ort.InferenceSession(onnx_path, sess_options=so, providers=self._providers(workdir))
        self._inputs = {i.name for i in self.session.get_inputs()}
        return {}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # an input the model does not use is dropped by the exporter (a constant output, DRConv's Alpha): not fed
        return self.session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})

    def describe(self) -> dict:
        so = self.session.get_session_options() if self.session else None
        return {
            "version": self.ort.__version__,
            "device": self.options.device,
            "providers": self.session.get_providers() if self.session else [],
            "threads": so.intra_op_num_threads if so else self.options.resolved_threads(),
            "graph_optimization": "all" if self.optimize else "disabled",
            "precision": "fp16" if self.options.fp16 else "fp32",  # fp16: the graph it was given is the fp16 one (exporter/fp16.py)
        }

    def close(self) -> None:
        self.session = None
