"""The export stage's options and the runners' reported configuration."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch

from polyexport.exporter import export_onnx
from polyexport.runtimes import RunnerOptions, make_runner
from polyexport.testing import randomize_
from polyexport.zoo import get


@pytest.fixture(scope="module")
def mobilenet():
    return randomize_(get("mobilenetv2").build(), seed=7)


@pytest.mark.parametrize("simplifier", ["onnxsim", "onnxslim", "none"])
def test_export_options(mobilenet, tmp_path, simplifier):
    if simplifier == "onnxslim":
        pytest.importorskip("onnxslim")
    path = str(tmp_path / "m.onnx")
    x = torch.randn(1, 3, 64, 64)
    info = export_onnx(mobilenet, (x,), path, input_names=["input"], n_outputs=1, opset=13, dynamic_batch=True, simplifier=simplifier)
    model = onnx.load(path)
    assert model.opset_import[0].version == 13 and info.opset == 13
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert info.simplifier.startswith(simplifier if simplifier != "none" else "not simplified")
    assert info.op_counts.get("Conv") == 52
    ort = make_runner("onnxruntime", RunnerOptions(threads=1))
    ort.load(path, str(tmp_path))
    x2 = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        want = mobilenet(torch.from_numpy(x2)).numpy()
    assert np.abs(ort.run({"input": x2})[0] - want).max() <= 1e-4 * np.abs(want).max()


def test_runners_describe_what_they_used(tmp_path):
    pytest.importorskip("openvino")
    model = randomize_(get("resnet18").build())
    path = str(tmp_path / "r.onnx")
    export_onnx(model, (torch.randn(1, 3, 32, 32),), path, input_names=["input"], n_outputs=1)
    ov = make_runner("openvino", RunnerOptions(threads=1))
    artifacts = ov.load(path, str(tmp_path))
    d = ov.describe()
    assert d["threads"] == 1 and d["precision"] == "f32" and d["performance_hint"] == "LATENCY"
    assert os.path.getsize(artifacts["openvino_bin"]) >= 4 * sum(p.numel() for p in model.parameters()) * 0.99
    ort = make_runner("onnxruntime", RunnerOptions(threads=1))
    ort.load(path, str(tmp_path))
    assert ort.describe()["threads"] == 1 and ort.describe()["graph_optimization"] == "all"
