"""fp16, tolerances by the precision that ran, modules kept in fp32 where fp16 fails, parity over the
dynamic batch range, and top-k agreement."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import polyexport
from polyexport.bundle import verify_bundle
from polyexport.cli import main
from polyexport.errors import BadInput
from polyexport.parity import DEFAULT_RTOL, topk_agreement
from polyexport.exporter.fp16 import convert_fp16
from polyexport.precision import TOLERANCES, normalize
from polyexport.scopes import module_of_node, nodes_of, scope_path
from polyexport.runtimes import installed
from polyexport.testing import randomize_

needs_ort = pytest.mark.skipif("onnxruntime" not in installed(), reason="onnxruntime not installed")
needs_ov = pytest.mark.skipif("openvino" not in installed(), reason="openvino not installed")


def small_classifier(seed: int = 0) -> nn.Module:
    m = nn.Sequential()
    m.add_module("stem", nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()))
    m.add_module("hot", nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()))
    m.add_module("cool", nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU()))
    m.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)))
    return randomize_(m, seed).eval()


def out_of_fp16_range(seed: int = 0) -> nn.Module:
    """`hot.0`'s weights are ~1e6 (beyond fp16's 65504, as a BN folded over a dead channel makes them)
    and `cool.0`'s ~1e-7 (fp16 subnormals, 3 significant bits): both modules must stay fp32."""
    m = small_classifier(seed)
    with torch.no_grad():
        m.hot[0].weight.mul_(1e6)
        m.hot[0].bias.mul_(1e6)
        m.cool[0].weight.mul_(1e-6)
    return m


def test_normalize_reads_what_runners_report():
    assert normalize("fp16") == normalize("f16") == normalize("<Type: 'float16'>") == "fp16"
    assert normalize("<Type: 'bfloat16'>") == normalize("bf16") == "bf16"
    assert normalize("fp32 (TF32 off)") == normalize(None) == normalize("f32") == "fp32"
    assert TOLERANCES["fp32"][1] == DEFAULT_RTOL < TOLERANCES["fp16"][1] < TOLERANCES["bf16"][1]


class _Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.seq = torch.nn.Conv2d(3, 3, 1), torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU())

    def forward(self, x):
        return self.seq(self.conv(x))


class _Nested(torch.nn.Module):
    """Called and uncalled containers: a ModuleList (never called) and a Sequential (called), modules inside modules."""

    def __init__(self):
        super().__init__()
        self.inner, self.blocks = _Inner(), torch.nn.ModuleList([_Inner(), _Inner()])
        self.layers = torch.nn.Sequential(_Inner())

    def forward(self, x):
        return self.layers(self.blocks[1](self.inner(x)))


def test_node_names_map_to_modules_as_the_exporter_writes_them(tmp_path):
    """The exporter names scopes by unqualified names of the *called* modules (/layers/layers.0/conv/Conv; a
    ModuleList is skipped: /blocks.1/conv/Conv): scopes.py reads them back to the right module, and only it."""
    m = _Nested()
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(m, (torch.randn(1, 3, 8, 8),), path, dynamo=False)
    names = [n.name for n in onnx.load(path).graph.node]
    modules = [n for n, _ in m.named_modules() if n]
    assert "/blocks.1/conv/Conv" in names and "/layers/layers.0/seq/seq.1/Relu" in names
    assert nodes_of(names, ["blocks.1.conv"]) == ["/blocks.1/conv/Conv"]
    assert nodes_of(names, ["layers.0.seq"]) == ["/layers/layers.0/seq/seq.0/Conv", "/layers/layers.0/seq/seq.1/Relu"]
    assert nodes_of(names, ["inner.conv"]) == ["/inner/conv/Conv"]  # not the other blocks' convs
    assert all(module_of_node(n, modules) is not None for n in names)
    assert module_of_node("/layers/layers.0/seq/seq.1/Relu", modules) == "layers.0.seq.1"
    assert module_of_node("/model/blocks.1/seq/seq.0/Conv", modules) == "blocks.1.seq.0"  # the diagnostic graph's copy
    assert scope_path(names, "layers.0.seq") == "/layers/layers.0/seq/"


def test_topk_agreement_counts_rows():
    ref = np.array([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert topk_agreement(ref, ref.copy()) == (2, 2, 2)
    swapped_top = ref.copy()
    swapped_top[0, :2] = [4, 5]  # top-1 changes, the top-5 set does not
    assert topk_agreement(ref, swapped_top) == (2, 1, 2)
    new_member = ref.copy()
    new_member[1, 0] = 9  # a class from outside the top-5 becomes top-1
    assert topk_agreement(ref, new_member) == (2, 1, 1)
    assert topk_agreement(np.zeros((2, 3, 4)), np.zeros((2, 3, 4))) == (0, 0, 0)  # not logits


@needs_ort
def test_convert_fp16_keeps_chosen_modules_fp32_without_a_round_trip(tmp_path):
    m = small_classifier()
    src, dst = str(tmp_path / "m.onnx"), str(tmp_path / "m16.onnx")
    torch.onnx.export(m, (torch.randn(1, 3, 8, 8),), src, input_names=["input"], dynamo=False)
    info = convert_fp16(src, dst, ["hot"])
    g = onnx.load(dst).graph
    by_name = {t.name: t.data_type for t in g.initializer}
    convs = {n.name: by_name[n.input[1]] for n in g.node if n.op_type == "Conv"}
    assert convs["/hot/hot.0/Conv"] == onnx.TensorProto.FLOAT
    assert convs["/stem/stem.0/Conv"] == convs["/cool/cool.0/Conv"] == onnx.TensorProto.FLOAT16
    assert info["nodes_fp32"] == 2  # hot.0's Conv and hot.1's Relu
    # inside the fp32 island (hot.0 → hot.1) no value passes through fp16
    relu = next(n for n in g.node if n.name == "/hot/hot.1/Relu")
    producer = {o: n for n in g.node for o in n.output}
    path, node = [], producer[relu.input[0]]
    while node.name != "/hot/hot.0/Conv":
        path.append(node)
        node = producer[node.input[0]]
    assert all(n.op_type == "Identity" for n in path), [(n.op_type, n.name) for n in path]
    with pytest.raises(ValueError, match="no ONNX node belongs"):
        convert_fp16(src, dst, ["nonexistent"])


@needs_ort
def test_fp16_on_onnxruntime_passes_at_fp16_tolerance(tmp_path):
    m = small_classifier()
    report = polyexport.export(m, [torch.randn(2, 3, 16, 16)], target="onnxruntime", out=str(tmp_path / "o"), bench=False, fp16=True)
    p = report.parity["onnxruntime"]
    assert report.passed and p["precision"] == "fp16" and (p["atol"], p["rtol"]) == TOLERANCES["fp16"]
    assert report.parity["onnx-simplified"]["rtol"] == DEFAULT_RTOL  # the graph rung stays fp32
    assert DEFAULT_RTOL < p["max_rel_err"] < p["rtol"]  # it really ran in reduced precision
    assert p["top1_agreement"] == 1.0 and p["topk_samples"] == 2 * 3
    assert report.precision["onnxruntime"] == {"asked": "fp16", "ran": "fp16", "kept_fp32": []}
    g = onnx.load(report.artifacts["onnx_fp16"]).graph
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer if len(t.dims) == 4)


@needs_ort
def test_fp16_failures_are_attributed_and_kept_in_fp32(tmp_path):
    """Without the repair this model fails in fp16 (clamped and subnormal weights); with it, exactly the
    two modules at fault are kept in fp32 and parity holds at the fp16 tolerance."""
    m = out_of_fp16_range()
    x = torch.randn(1, 3, 16, 16)
    report = polyexport.export(m, [x], target="onnxruntime", out=str(tmp_path / "o"), bench=False, fp16=True)
    kept = report.precision["onnxruntime"]["kept_fp32"]
    assert [k["module"] for k in kept] == ["hot.0", "cool.0"], kept
    assert all(k["max_rel_err"] > TOLERANCES["fp16"][1] for k in kept)
    assert report.passed, report.parity["onnxruntime"]
    assert report.runtimes["onnxruntime"]["kept_fp32"] == ["hot.0", "cool.0"]
    # the same graph converted with nothing kept does fail: the repair was needed
    plain = str(tmp_path / "plain16.onnx")
    convert_fp16(os.path.join(report.artifacts["onnx"]), plain)
    import onnxruntime as ort

    got = ort.InferenceSession(plain, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    want = m(x).detach().numpy()
    assert np.abs(got - want).max() > TOLERANCES["fp16"][1] * np.abs(want).max()


@needs_ort
def test_fp16_does_not_hide_a_real_error(tmp_path):
    """A 10% error in one layer's weights is beyond the fp16 tolerance, and keeping layers in fp32 does not
    'repair' it: the fp32 graph rung already fails, so no module is blamed on fp16."""
    from tests.test_explain import Doubled, Scaled3x3

    class Off(Doubled):
        def forward(self, x):
            y = self.conv(x)
            return y * 1.1 if torch.onnx.is_in_onnx_export() else y

    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Scaled3x3(8, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    randomize_(m, 3).eval()
    from polyexport.convert import Form, register_layer, registered_layers

    entry = registered_layers()[Scaled3x3]
    try:
        register_layer(Scaled3x3, [Form("off", Off)])
        report = polyexport.export(m, [torch.randn(1, 3, 12, 12)], target="onnxruntime", out=str(tmp_path / "o"), bench=False, fp16=True)
    finally:
        register_layer(Scaled3x3, entry.forms.values(), entry.prefer)
    assert not report.passed
    assert not report.parity["onnx-simplified"]["passed"] and not report.parity["onnxruntime"]["passed"]
    assert report.precision["onnxruntime"]["kept_fp32"] == []
    assert report.explain["module"] == "1"


@needs_ov
def test_fp16_on_openvino_is_judged_by_what_it_ran(tmp_path):
    report = polyexport.export(small_classifier(), [torch.randn(1, 3, 16, 16)], target="openvino", out=str(tmp_path / "o"),
                               bench=False, fp16=True)
    p = report.parity["openvino"]
    ran = normalize(report.runtimes["openvino"]["precision"])
    assert ran in ("fp16", "bf16") and p["precision"] == ran and (p["atol"], p["rtol"]) == TOLERANCES[ran]
    assert report.passed and p["max_rel_err"] > DEFAULT_RTOL
    assert report.precision["openvino"]["ran"] == ran


@needs_ort
def test_dynamic_batch_parity_covers_the_range(tmp_path):
    m = small_classifier()
    report = polyexport.export(m, [torch.randn(2, 3, 8, 8)], target="onnxruntime", out=str(tmp_path / "a"), bench=False,
                               dynamic_batch=True, parity_seeds=1)
    assert report.parity["onnxruntime"]["topk_samples"] == 2 + 1 + 3 + 8  # seed0 at batch 2, then 1, 3 and 8
    report = polyexport.export(m, [torch.randn(4, 3, 8, 8)], target="onnxruntime", out=str(tmp_path / "b"), bench=False,
                               dynamic_batch=True, parity_seeds=1, batch_range=(2, 4, 6))
    assert report.parity["onnxruntime"]["topk_samples"] == 4 + 2 + 3 + 6
    with pytest.raises(BadInput, match="outside the batch range"):
        polyexport.export(m, [torch.randn(8, 3, 8, 8)], target="onnxruntime", out=str(tmp_path / "c"), bench=False,
                          dynamic_batch=True, batch_range=(1, 2, 4))
    assert not os.path.exists(tmp_path / "c")


class BakedBatch(nn.Module):
    """Reshapes with a batch read at export time: right at the example's batch only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y.reshape(int(y.shape[0]), -1).mean(1, keepdim=True).expand(-1, 3) * torch.arange(1.0, 4.0)


@needs_ort
def test_a_batch_baked_in_fails_at_the_range_ends(tmp_path):
    report = polyexport.export(BakedBatch().eval(), [torch.randn(2, 3, 8, 8)], target="onnxruntime", out=str(tmp_path / "o"),
                               bench=False, dynamic_batch=True, parity_seeds=1)
    assert not report.passed


@needs_ort
def test_cli_fp16_bundle_and_verify(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        main(["zoo:resnet18", "--input-shape", "1x3x32x32", "--fp16", "--no-bench", "--bundle", "--out", str(out)])
    assert e.value.code == 0
    md = (out / "report.md").read_text()
    assert "## Precision" in md and "| onnxruntime | fp16 | fp16 |" in md
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    tolerance = json.loads((out / "bundle" / "tolerance.json").read_text())
    assert (tolerance["atol"], tolerance["rtol"]) == (None, None) and manifest["fp16_keep_fp32"] == []
    assert manifest["fp16"] is True  # the export asked for fp16: verify runs it so unless told otherwise
    default = verify_bundle(str(out / "bundle"), "onnxruntime", bench=False)
    r16 = verify_bundle(str(out / "bundle"), "onnxruntime", bench=False, fp16=True)
    for r in (default, r16):
        p = r["parity"]["onnxruntime"]
        assert r["passed"] and p["precision"] == "fp16" and p["rtol"] == TOLERANCES["fp16"][1] > DEFAULT_RTOL
        assert p["max_rel_err"] > 1e-4  # really fp16: an fp32 run of resnet18 is ~1e-6 off
