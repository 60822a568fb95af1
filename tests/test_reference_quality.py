"""The reference as a witness (issues 12 and 18): a deep net's own fp32 rounding is measured and allowed for,
a planted error still fails, and a degenerate reference (NaN, all zeros) is said so, never passed quietly."""
from __future__ import annotations

import json

import torch
from torch import nn

import polyexport
from polyexport.cli import run
from polyexport.convert import Form, register_layer
from polyexport.testing import randomize_


class OffsetStack(nn.Module):
    """Convs whose outputs sit on a large offset that the BN after each removes (a big running mean), 16 deep:
    fp32 cancellation makes the model's own rounding ~1.7e-4 of its output's scale, above the fixed rtol 1e-4,
    so an exact rewrite (BN folded, another summation order) differs from it by as much."""

    def __init__(self, depth: int = 16, c: int = 16, offset: float = 3000.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 1, 1)]
        for _ in range(depth):
            layers += [nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, 10)
        self.tail = nn.Identity()

    def forward(self, x):
        return self.tail(self.head(self.body(x).mean((2, 3))))


def offset_stack(offset: float = 3000.0) -> OffsetStack:
    m = randomize_(OffsetStack(offset=offset), seed=0)
    with torch.no_grad():
        for mod in m.body[1:]:
            if isinstance(mod, nn.Conv2d):
                mod.bias.fill_(offset)
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean += offset
    return m


class Planted(nn.Identity):
    """A layer whose only deploy form is off by 1e-3 of the scale: what must fail whatever the noise floor."""


class _Off(nn.Module):
    def forward(self, x):
        return x * 1.001


register_layer(Planted, [Form("off_by_1e-3", lambda ref: _Off())])


def test_an_exact_rewrite_of_a_deep_net_passes_on_its_noise_floor(tmp_path):
    report = polyexport.export(offset_stack(), [torch.randn(2, 3, 16, 16)], target="onnxruntime", out=str(tmp_path / "o"), bench=False)
    floor = max(report.noise_floor["per_output"])
    deployed = report.parity["torch-deployed"]
    assert 1e-4 < floor < 2.5e-4, floor  # the model is what the test needs: its own rounding above the fixed rtol
    assert deployed["max_rel_err"] > deployed["rtol"], "the fixed rule alone would pass: the test proves nothing"
    assert report.passed, report.parity
    assert all(p["effective_rtol"] == p["noise_multiple"] * floor for p in report.parity.values())


def test_a_planted_error_of_1e_3_fails_although_the_floor_is_high(tmp_path):
    model = offset_stack()
    model.tail = Planted()
    report = polyexport.export(model, [torch.randn(2, 3, 16, 16)], target="onnxruntime", out=str(tmp_path / "o"), bench=False)
    assert max(report.noise_floor["per_output"]) > 1e-4
    assert not report.parity["torch-deployed"]["passed"] and report.first_failing_stage == "torch-deployed"
    assert report.explain["module"] == "tail"


class NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) * float("nan")


def nan_net() -> nn.Module:
    return NaNNet()


class ZeroNet(nn.Module):
    """What megvii's DRConv does without CUDA: its kernel returns zeros."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.zeros_like(self.conv(x))


def zero_net() -> nn.Module:
    return ZeroNet()


def test_an_all_nan_model_fails_and_says_why(tmp_path, capsys):
    code = run(["tests.test_reference_quality:nan_net", "--input-shape", "1x3x8x8", "--out", str(tmp_path / "o"), "--no-bench"])
    assert code == 1
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert not any(p["passed"] for p in report["parity"].values())
    assert all("reference itself has" in " ".join(p["problems"]) for p in report["parity"].values())
    assert any("NaN/Inf" in w for w in report["warnings"])
    err = capsys.readouterr().err
    assert "NaN/Inf" in err and "parity held" not in err


def test_an_all_zero_reference_is_warned_about(tmp_path, capsys):
    code = run(["tests.test_reference_quality:zero_net", "--input-shape", "1x3x8x8", "--out", str(tmp_path / "o"), "--no-bench"])
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert code == 0 and "all zeros for every input" in report["warnings"][0]
    assert "all zeros" in capsys.readouterr().err
    assert "## Warnings" in (tmp_path / "o" / "report.md").read_text()
