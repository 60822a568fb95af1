"""`--target tensorrt` on a machine without TensorRT (issue 14): everything but the engine, here.

For every zoo model with a dynamic layer (the ones whose fastest forms on other runtimes compute conv weights
at run time, which TensorRT's parser refuses, and DCD's and DRConv's dynamic parts): exit 0, the graph passes
the parser rules of TensorRT 8.6 and 10, parity is proven on ONNX Runtime named as a stand-in, and the bundle
(written by default) verifies on ONNX Runtime in a process where PyTorch cannot be imported. The engine
itself is built on the device; nothing here claims a TensorRT result.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from polyexport.cli import main
from polyexport.runtimes.tensorrt_lint import lint_tensorrt

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                reason="TensorRT is installed here: the engine is built here instead (tests/test_tensorrt.py)")

DYNAMIC = ["cc_efficientnet_b0", "dy_mobilenetv3_small", "dy_resnet18", "dcd_mobilenetv2", "dr_shufflenetv2_0_5x"]

VERIFY_WITHOUT_TORCH = """
import sys
sys.modules['torch'] = None   # any `import torch` now raises ImportError
from polyexport.cli import main
main(sys.argv[1:])
"""


def cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return done.value.code


@pytest.mark.parametrize("name", DYNAMIC)
def test_tensorrt_target_without_tensorrt(name, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli(f"zoo:{name}", "--target", "tensorrt", "--dynamic-batch", "--input-shape", "1x3x32x32", "--batch-range", "1,1,3",
               "--no-bench", "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "onnxruntime (CPU stand-in for TensorRT)" in text and "TensorRT was not run here" in text
    report = json.loads((out / "report.json").read_text())
    assert report["stand_in"]["runtime"] == "onnxruntime" and "tensorrt" not in report["parity"] and report["passed"]
    assert all(l["form"] != "reference" for l in report["layers"])
    assert set(report["device_commands"]) == {"8.6", "10"} and "--target tensorrt" in report["device_commands"]["10"]["verify"]
    for version in ("8.6", "10"):
        errors = [f for f in lint_tensorrt(str(out / "model.onnx"), version) if f.severity == "error"]
        assert not errors, [f.as_dict() for f in errors]
    done = subprocess.run([sys.executable, "-c", VERIFY_WITHOUT_TORCH, "verify", str(out / "bundle"), "--target", "onnxruntime",
                           "--no-bench"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_asking_for_the_engine_here_needs_tensorrt(tmp_path, capsys):
    assert cli("zoo:resnet18", "--target", "tensorrt", "--runtime", "tensorrt", "--input-shape", "1x3x32x32", "--out", str(tmp_path / "o")) == 3
    assert "JetPack" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_graph_tensorrt_would_refuse_is_exit_2_naming_the_module(tmp_path, capsys):
    """CondConv forced to its batch-folded form (conv weights computed at run time) on a static batch: the
    parser rule refuses it; nothing is written."""
    assert cli("zoo:cc_efficientnet_b0", "--target", "tensorrt", "--form", "CondConv2d=bank_grouped", "--input-shape", "1x3x32x32",
               "--no-bench", "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "TensorRT 8.6's ONNX parser would refuse the graph" in err and "module blocks." in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--trt-version", "7.1"], "--trt-version 7.1"),
    (["--trt-version", "8.6", "--opset", "18"], "TensorRT 8.6's ONNX parser takes opsets 7..17"),
])
def test_trt_version_and_opset_are_checked_before_any_work(tmp_path, capsys, args, message):
    assert cli("zoo:resnet18", "--target", "tensorrt", "--input-shape", "1x3x32x32", "--out", str(tmp_path / "o"), *args) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()
