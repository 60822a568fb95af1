"""The Python API of DESIGN.md, whatever was imported first."""
from __future__ import annotations

import subprocess
import sys

import torch


def test_export_api_works_after_the_export_stage_was_imported(tmp_path):
    code = f"""
import polyexport.exporter.simplify, polyexport, torch, sys
sys.path.insert(0, {str(__import__('os').path.join(__import__('os').path.dirname(__file__), 'userpkg'))!r})
import usernets
report = polyexport.export(usernets.build(), [torch.randn(1, 3, 16, 16)], target="onnxruntime", out={str(tmp_path / 'o')!r}, bench=False)
assert report.passed and isinstance(report, polyexport.Report), report.parity
deployed = polyexport.deploy(usernets.build())
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_export_returns_report_object(tmp_path):
    import polyexport
    import usernets

    report = polyexport.export(usernets.build(), [torch.randn(2, 3, 16, 16)], target="openvino", out=str(tmp_path / "o"),
                               bench=False, dynamic_batch=True, extra_runtimes=["onnxruntime"])
    assert report.passed and set(report.parity) == {"torch-deployed", "onnx-exported", "onnx-simplified", "openvino", "onnxruntime"}
    assert report.artifacts["openvino_xml"].endswith("model.xml") and report.inputs[0]["shape"] == [2, 3, 16, 16]


def test_runtime_side_imports_without_torch():
    """What a Jetson without PyTorch needs: the runners, parity, the lint, the CLI's verify/check."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import polyexport, polyexport.runtimes.onnxruntime, polyexport.runtimes.openvino, polyexport.parity, "
            "polyexport.bench, polyexport.runtimes.tensorrt_lint, polyexport.bundle, polyexport.cli\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None and m == 'torch']\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
