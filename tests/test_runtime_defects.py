"""A runtime that miscomputes a valid graph never gets it shipped.

The fuzzer (benchmarks/fuzz.py) found OpenVINO's CPU plugin wrong on SymmetricPadConv2d's `split` form at batch 1
of a dynamic-batch graph for a small layer: Split → per-group Conv (fewer than 8 output channels, output ≤ 3×3) → Add. The same graph is
exact in ONNX Runtime and at batch 3 in OpenVINO; benchmarks/openvino_conv_sum_batch1.py reproduces it with a graph
built by onnx.helper alone. These tests hold while the installed OpenVINO has the defect (they skip, saying so,
once a release computes it right): forced, the form fails parity on OpenVINO with the runtime named; chosen
automatically, the form timer finds it wrong on that runtime and never picks it.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

from polyexport.layers.even_conv import SymmetricPadConv2d
from polyexport.pipeline import export
from polyexport.runtimes import installed
from polyexport.testing import randomize_

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

pytestmark = pytest.mark.skipif("openvino" not in installed() or "onnxruntime" not in installed(),
                                reason="needs OpenVINO and ONNX Runtime installed")


@pytest.fixture(scope="module")
def defect_present() -> None:
    from openvino_conv_sum_batch1 import errors, graph

    if errors(graph(5, 3), batches=(1,))[0] < 1e-3:
        import openvino

        pytest.skip(f"OpenVINO {openvino.__version__} computes Split → Conv → Add at batch 1 right: the defect is fixed")


def small_layer() -> nn.Module:
    return randomize_(nn.Sequential(SymmetricPadConv2d(3, 5, 2, 1, 1, False, corners=("br", "tl", "bl", "tr")),
                                    nn.BatchNorm2d(5)), seed=0).eval()


def test_forced_form_fails_parity_on_the_runtime_that_miscomputes_it(tmp_path, defect_present):
    report = export(small_layer(), [torch.randn(1, 3, 3, 3)], target="openvino", out=str(tmp_path / "o"), bench=False,
                    dynamic_batch=True, forms={"SymmetricPadConv2d": "split"})
    assert [r["form"] for r in report.layers if r["type"] == "SymmetricPadConv2d"] == ["split"]
    assert not report.passed and "openvino" in report.failed_runtimes(), report.parity
    exact_before = [stage for stage in ("onnx-exported", "onnx-simplified") if report.parity[stage]["passed"]]
    assert exact_before == ["onnx-exported", "onnx-simplified"], "the same graph is exact on ONNX Runtime"


def test_automatic_choice_never_picks_a_form_the_runtime_gets_wrong(tmp_path, monkeypatch, defect_present):
    monkeypatch.setenv("POLYEXPORT_CACHE", str(tmp_path / "forms.json"))
    report = export(small_layer(), [torch.randn(1, 3, 3, 3)], target="openvino", out=str(tmp_path / "o"), bench=False,
                    dynamic_batch=True)
    (choice,) = [c for c in report.form_choices if c["type"] == "SymmetricPadConv2d"]
    assert choice["timings_ms"]["split"] is None and choice["chosen"] != "split", choice
    assert report.passed, report.parity
