"""OpenVINO on CPU: the ONNX is converted to IR (model.xml/.bin), and the IR itself is what runs.

Compiled with the LATENCY hint and f32 inference precision (OpenVINO's CPU plugin would otherwise
pick bf16 on CPUs that have it), unless fp16 is asked. The IR is saved uncompressed: ov.save_model
compresses weights to fp16 by default, which would change the numbers. With fp16 the IR holds fp16
weights and the f16 hint is set; the CPU plugin runs bf16 instead where the CPU has bf16 and no fp16
units, and `describe` reports the precision that was compiled. Keeping chosen layers in fp32 is not
offered here: marking nodes with the `disable_fp16_compression` runtime info had no measured effect
on the CPU plugin's bf16 execution (OpenVINO 2026.4), so the report says so rather than pretend.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import RuntimeMissing
from .base import Runner, RunnerOptions


def _ov():
    try:
        import openvino
    except ImportError as e:
        raise RuntimeMissing("openvino", "openvino") from e
    return openvino


def _type_name(t) -> str:
    """ov.Type('f32') -> 'f32' (its str() is "<Type: 'float32'>")."""
    return t.to_string() if hasattr(t, "to_string") else str(t)


def read_onnx(core, onnx_path: str):
    """What `openvino.convert_model(onnx_path)` gives, without its Python front end: the ONNX frontend's model
    and the same transformations in the same order (openvino/tools/ovc/moc_frontend/moc_emit_ir.py). The
    front end cost 0.3 s per call, most of the time of loading a form timed alone; tests/test_export_runtimes.py
    checks that both give the same model. Falls back to convert_model where OpenVINO moved those functions."""
    try:
        from openvino._offline_transformations import (apply_fused_names_cleanup, apply_moc_transformations,
                                                        compress_quantize_weights_transformation)
        from openvino.tools.ovc.moc_frontend.offline_transformations import apply_moc_legacy_transformations
    except ImportError:
        return _ov().convert_model(onnx_path)
    model = core.read_model(onnx_path)
    apply_moc_transformations(model, cf=False, smart_reshape=True)
    compress_quantize_weights_transformation(model)
    apply_moc_legacy_transformations(model, [])
    apply_fused_names_cleanup(model)
    return model


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, options: RunnerOptions | None = None, save_ir: bool = True):
        super().__init__(options)
        self.ov = _ov()
        self.save_ir = save_ir
        self.compiled = None
        self.request = None

    def load(self, onnx_path: str, workdir: str) -> dict[str, str]:
        ov = self.ov
        core = ov.Core()  # one per load: a Core shared by the runners (6 ms saved a load) crashed in infer (OpenVINO 2026.4)
        device = self.options.device.upper()
        if device not in core.available_devices:
            raise RuntimeMissing("openvino", None, f"device {device} not found; OpenVINO sees {core.available_devices}")
        model = read_onnx(core, onnx_path)
        artifacts = {}
        if self.save_ir:  # named after the ONNX file: several models may share a folder (an IR may be memory-mapped)
            xml = os.path.join(workdir, os.path.splitext(os.path.basename(onnx_path))[0] + ".xml")
            ov.save_model(model, xml, compress_to_fp16=self.options.fp16)
            artifacts = {"openvino_xml": xml, "openvino_bin": xml[:-4] + ".bin"}
            model = core.read_model(xml)
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f16" if self.options.fp16 else "f32",
            "INFERENCE_NUM_THREADS": self.options.resolved_threads(),
        }
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        self._outputs = self.compiled.outputs
        self._inputs = {name for i in self.compiled.inputs for name in i.get_names()}
        return artifacts

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # an input the model does not use is dropped by the exporter: not fed (see OnnxRuntimeRunner.run). The request
        # reads the caller's arrays in place (a copy where the type or layout differs): a copy per call is overhead the
        # form choice would time as part of every small layer; outputs are still copied out
        result = self.request.infer({k: v for k, v in feeds.items() if k in self._inputs}, share_inputs=True)
        return [np.asarray(result[o]) for o in self._outputs]

    def describe(self) -> dict:
        get = self.compiled.get_property if self.compiled else (lambda k: None)
        return {
            "version": self.ov.get_version(),
            "device": self.options.device,
            "threads": get("INFERENCE_NUM_THREADS"),
            "precision": _type_name(get("INFERENCE_PRECISION_HINT")),
            "performance_hint": str(get("PERFORMANCE_HINT")),
            "streams": get("NUM_STREAMS"),
            **({"kept_fp32": "not supported on OpenVINO (no per-layer precision control that takes effect)"}
               if self.options.fp16 and self.options.keep_fp32 else {}),
        }

    def close(self) -> None:
        self.request = self.compiled = None
