"""Staged parity and attribution: a planted error is found, at the right stage, in the right module."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from polyexport.cli import main
from polyexport.convert import Form, register_layer
from polyexport.zoo import register
from polyexport.zoo.resnet import BasicBlock, ResNet


class Scaled3x3(nn.Module):
    """A stand-in research layer: y = 2·conv3x3(x)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)

    def forward(self, x):
        return 2 * self.conv(x)


class Doubled(nn.Module):
    """The exact deploy form: one conv with the factor in its weights."""

    def __init__(self, ref: Scaled3x3, planted: str = ""):
        super().__init__()
        c = ref.conv
        self.conv = nn.Conv2d(c.in_channels, c.out_channels, 3, c.stride, 1, bias=False)
        self.conv.weight.data = 2 * c.weight.data
        self.planted = planted

    def forward(self, x):
        y = self.conv(x)
        if self.planted == "torch" or (self.planted == "onnx" and torch.onnx.is_in_onnx_export()):
            y = y * 1.001  # the planted error: 1e-3, ten times the tolerance
        return y


register_layer(Scaled3x3, [Form("exact", Doubled), Form("planted_torch", lambda r: Doubled(r, "torch")),
                           Form("planted_onnx", lambda r: Doubled(r, "onnx"))], prefer={"*": ["exact"]})


@register("test_scaled_resnet18", input_shape=(1, 3, 32, 32))
def scaled_resnet18() -> ResNet:
    """ResNet-18 whose layer3.1.conv2 is the research layer."""
    from polyexport.testing import randomize_

    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10)
    net.layer3[1].conv2 = Scaled3x3(256, 256)
    return randomize_(net, seed=11)


def run(out, *extra) -> tuple[int, dict]:
    with pytest.raises(SystemExit) as e:
        main(["zoo:test_scaled_resnet18", "--out", out, "--no-bench", "--runtime", "openvino", *extra])
    with open(os.path.join(out, "report.json")) as f:
        return e.value.code, json.load(f)


@pytest.mark.parametrize("planted, stage", [("planted_torch", "torch-deployed"), ("planted_onnx", "onnx-exported")])
def test_planted_error_is_named(out, planted, stage, capsys):
    code, r = run(out, "--form", f"Scaled3x3={planted}")
    assert code == 1 and r["first_failing_stage"] == stage
    e = r["explain"]
    assert (e["stage"], e["module"], e["type"], e["form"]) == (stage, "layer3.1.conv2", "Scaled3x3", planted)
    errors = {c["module"]: c["max_rel_err"] for c in e["checked"]}
    assert errors["layer3.0"] < 1e-4 and errors["layer3.1.conv2"] > 1e-4  # clean before it, broken from it on
    assert "first diverging module" in capsys.readouterr().out
    assert "Where it diverges" in open(os.path.join(out, "report.md")).read()


def test_ladder_and_explain_on_a_clean_model(out):
    code, r = run(out, "--explain")
    assert code == 0 and r["first_failing_stage"] is None
    assert list(r["parity"]) == ["torch-deployed", "onnx-exported", "onnx-simplified", "onnxruntime", "openvino"]
    assert r["explain"]["module"] is None and all(c["max_rel_err"] < 1e-4 for c in r["explain"]["checked"])
    assert any(c["module"] == "layer3.1.conv2" for c in r["explain"]["checked"])  # converted layers are watched


def test_code_outside_submodules_is_reported_as_such(out):
    with pytest.raises(SystemExit):
        main(["usernets:exports_differently", "--input-shape", "1x3x16x16", "--out", out, "--no-bench"])
    r = json.load(open(os.path.join(out, "report.json")))
    assert r["first_failing_stage"] == "onnx-exported" and r["explain"]["module"] is None
    assert "top-level forward of ExportsDifferently" in r["explain"]["note"]
