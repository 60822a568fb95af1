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


@pytest.mark.parametrize("name,dynamic_batch", [("mobilenetv2", True), ("cc_efficientnet_b0", False)])
def test_openvino_reads_onnx_as_convert_model_does(tmp_path, name, dynamic_batch):
    """The runner reads ONNX without openvino.convert_model's Python front end (0.3 s a call): the model must be
    the one convert_model gives, op for op and shape for shape, and compute the same numbers."""
    ov = pytest.importorskip("openvino")
    from polyexport.convert import deploy
    from polyexport.runtimes.openvino import read_onnx

    model = deploy(randomize_(get(name).build(), seed=3), "openvino")
    path = str(tmp_path / "m.onnx")
    x = torch.randn(2, 3, 64, 64)
    export_onnx(model, (x,), path, input_names=["input"], n_outputs=1, dynamic_batch=dynamic_batch)
    ours, theirs = read_onnx(ov.Core(), path), ov.convert_model(path)

    def ops(m):
        return [(op.get_type_name(), [str(op.get_output_partial_shape(i)) for i in range(op.get_output_size())]) for op in m.get_ordered_ops()]
    assert ops(ours) == ops(theirs) and len(ops(ours)) > 50
    core = ov.Core()
    outs = [core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request().infer({0: x.numpy()})
            for m in (ours, theirs)]
    assert np.array_equal(next(iter(outs[0].values())), next(iter(outs[1].values())))


def test_a_throw_away_openvino_run_writes_no_ir(tmp_path):
    pytest.importorskip("openvino")
    path = str(tmp_path / "m.onnx")
    export_onnx(randomize_(get("resnet18").build()), (torch.randn(1, 3, 32, 32),), path, input_names=["input"], n_outputs=1)
    runner = make_runner("openvino", RunnerOptions(threads=1), keep_artifacts=False)
    assert runner.load(path, str(tmp_path)) == {}
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    assert runner.run({"input": np.zeros((1, 3, 32, 32), np.float32)})[0].shape[0] == 1
