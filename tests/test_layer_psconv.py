"""PSConv: the reference is the official layer (forward, state_dict, initial mask), every deploy form
equals it (alone and with a BN folded), on ONNX Runtime and OpenVINO with a dynamic batch, the
converter picks and falls back correctly, and foreign layers are recognised."""
from __future__ import annotations

import copy
from collections import Counter

import onnx
import pytest
import torch
from torch import nn

from polyexport.convert import convert, forms_of, to_deploy
from polyexport.deploy_layers.conv_bn import fuse_conv_bn
from polyexport.deploy_layers.psconv import PSConvDeploy
from polyexport.errors import BadInput
from polyexport.layers.psconv import PSConv2d, PSGConv2d
from polyexport.testing import assert_equivalent, check_on_runtimes, randomize_
from tests.foreign import psconv as foreign

FORMS = tuple(forms_of(PSConv2d))  # PSGConv2d registers the same four


def _ops(path: str) -> Counter:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def _make(cls, cin, cout, seed=0, masked=False, **kw) -> nn.Module:
    """Random weights; `masked`: `conv.weight` zero under the official mask, as official training leaves it."""
    m = randomize_(cls(cin, cout, **kw), seed=seed)
    if masked:
        with torch.no_grad():
            m.conv.weight[m.mask] = 0
    return m


# --- the reference is the official layer ------------------------------------------------------

@pytest.mark.parametrize("ours,theirs,kw", [
    (PSConv2d, foreign.PSConv2d, dict()),
    (PSConv2d, foreign.PSConv2d, dict(stride=2, parts=2, bias=True)),
    (PSGConv2d, foreign.PSGConv2d, dict(groups=2)),
    (PSGConv2d, foreign.PSGConv2d, dict(groups=2, parts=2, dilation=2, stride=2)),
])
def test_reference_is_official(ours, theirs, kw):
    """Same initial weights from the same seed (mask zeroing included), same keys, same forward."""
    torch.manual_seed(3)
    a = theirs(16, 32, **kw)
    torch.manual_seed(3)
    b = ours(16, 32, **kw)
    assert list(a.state_dict()) == list(b.state_dict())
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert (b.conv.weight == 0).any()  # the mask did zero something: the comparison above means something
    randomize_(a, seed=1)
    b.load_state_dict(a.state_dict(), strict=True)  # (e) official weights load unchanged
    x = torch.randn(2, 16, 9, 10)
    assert torch.equal(a(x), b(x))


def test_mask_is_not_saved_and_keeps_grad_zero():
    m = PSConv2d(8, 8)
    assert set(m.state_dict()) == {"gwconv.weight", "gwconv_shift.weight", "conv.weight"}
    for layer in (m, copy.deepcopy(m)):  # a copy keeps the gradient hook too
        layer(torch.randn(1, 8, 5, 5)).sum().backward()
        assert (layer.conv.weight.grad[layer.mask] == 0).all() and (layer.conv.weight.grad[~layer.mask] != 0).any()


# --- (a) every form equals the reference in PyTorch -------------------------------------------

CONFIGS = [  # cls, cin, cout, kwargs, (H, W)
    (PSConv2d, 16, 16, dict(), (8, 8)),
    (PSConv2d, 16, 32, dict(stride=2), (9, 11)),
    (PSConv2d, 32, 16, dict(stride=2, parts=2), (10, 7)),
    (PSConv2d, 24, 24, dict(parts=8, bias=True), (7, 6)),
    (PSConv2d, 16, 16, dict(dilation=2), (12, 9)),
    (PSConv2d, 16, 24, dict(dilation=2, stride=2, bias=True), (11, 12)),
    (PSConv2d, 12, 12, dict(parts=3), (6, 7)),  # odd parts: the half swap cuts groups
    (PSConv2d, 10, 10, dict(parts=2), (5, 6)),  # 5-channel groups, halves of 5 channels
    (PSConv2d, 8, 8, dict(parts=1), (6, 6)),  # parts 1: the shift conv is dense
    (PSConv2d, 8, 16, dict(stride=2, padding=(1, 1), bias=True), (8, 6)),
    (PSGConv2d, 16, 16, dict(groups=2), (8, 9)),
    (PSGConv2d, 32, 32, dict(groups=4, stride=2), (9, 9)),
    (PSGConv2d, 24, 48, dict(groups=2, parts=2, dilation=3, bias=True), (13, 10)),
    (PSGConv2d, 36, 36, dict(groups=3, parts=3), (6, 8)),  # odd parts inside each group
    (PSGConv2d, 16, 16, dict(groups=1), (7, 7)),
]


def _id(c):
    return f"{c[0].__name__}-{c[1]}-{c[2]}-" + "-".join(f"{k}{v}" for k, v in c[3].items())


#: configurations where "masked" applies to masked weights: PSConv2d with parts 2 or 4
MASKABLE = {i for i, c in enumerate(CONFIGS) if c[0] is PSConv2d and c[3].get("parts", 4) in (2, 4)}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("batch", [1, 4])
def test_form_exact(form, cfg, masked, batch):
    cls, cin, cout, kw, hw = cfg
    ref = _make(cls, cin, cout, seed=cin + cout, masked=masked, **kw)
    odd_parts = kw.get("parts") == 3
    must_refuse = (form == "regrouped" and odd_parts) or (form == "masked" and (odd_parts or not masked))
    may_refuse = form == "masked" and CONFIGS.index(cfg) not in MASKABLE  # e.g. PSGConv2d's official mask
    try:
        dep = to_deploy(ref, form)
    except BadInput:
        assert must_refuse or may_refuse
        return
    assert not must_refuse
    assert_equivalent(ref, dep, torch.randn(batch, cin, *hw))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cfg", CONFIGS[:2] + CONFIGS[5:6] + CONFIGS[11:13], ids=_id)
def test_form_with_bn_exact(form, cfg):
    cls, cin, cout, kw, hw = cfg
    ref, bn = _make(cls, cin, cout, seed=7, masked=True, **kw), randomize_(nn.BatchNorm2d(cout), seed=8)
    model = nn.Sequential(ref, bn)
    if form == "masked" and cls is PSGConv2d:
        form = "regrouped"  # PSGConv2d's official mask (block index i + j·groups) leaves no independent groups
    dep = to_deploy(ref, form)
    fused = fuse_conv_bn(dep, bn) if isinstance(dep, nn.Conv2d) else dep.fuse_bn(bn)
    assert_equivalent(model, fused, torch.randn(2, cin, *hw))


def test_forms_have_the_intended_structure():
    ref = _make(PSConv2d, 16, 16, parts=4, masked=True)
    masked, reg, sd, dense = (to_deploy(ref, f) for f in FORMS)
    assert [c.groups for c in masked.convs] == [2, 4, 4] and masked.in_index_0 is not None
    assert masked.out_index_0 is not None and masked.out_index_2 is not None
    assert isinstance(reg, PSConvDeploy) and len(reg.convs) == 2 and reg.out_index_1 is not None
    assert reg.convs[0].groups == 1 and reg.convs[1].groups == 4 and reg.convs[1].dilation == (2, 2)
    assert not torch.equal(reg.out_index_1, torch.arange(16))  # a real permutation is folded, not skipped
    assert isinstance(sd, PSConvDeploy) and len(sd.convs) == 2 and sd.out_index_1 is None
    assert isinstance(dense, nn.Conv2d) and dense.kernel_size == (5, 5) and dense.padding == (2, 2)
    dil = to_deploy(_make(PSConv2d, 16, 16, dilation=2), "regrouped")
    assert [c.dilation for c in dil.convs] == [(1, 1), (2, 2), (4, 4)]  # cannot merge across dilations
    assert len(to_deploy(_make(PSConv2d, 16, 16, parts=2, masked=True), "masked").convs) == 2  # conv all zero


# --- (b) on the runtimes, one graph with a dynamic batch axis ----------------------------------

RUNTIME_CASES = [  # cls, cin, cout, kwargs, hw, form, expected op counts (weights masked as trained)
    (PSConv2d, 16, 16, dict(dilation=2, stride=2), (9, 10), "masked", {"Conv": 3, "Gather": 3, "Add": 2}),
    (PSConv2d, 32, 32, dict(dilation=2), (8, 7), "masked", {"Conv": 3, "Gather": 3, "Add": 2}),
    (PSConv2d, 16, 32, dict(stride=2), (9, 9), "regrouped", {"Conv": 2, "Gather": 1, "Add": 1}),
    (PSGConv2d, 32, 32, dict(groups=2, stride=2), (10, 7), "regrouped", {"Conv": 2, "Gather": 1, "Add": 1}),
    (PSConv2d, 16, 16, dict(dilation=2), (11, 10), "regrouped", {"Conv": 3, "Gather": 1, "Add": 2}),
    (PSConv2d, 16, 16, dict(stride=2), (9, 8), "shift_dense", {"Conv": 2, "Add": 1}),
    (PSConv2d, 12, 12, dict(parts=3), (7, 8), "shift_dense", {"Conv": 2, "Add": 1}),
    (PSGConv2d, 24, 24, dict(groups=2, parts=2, stride=2), (9, 10), "dense", {"Conv": 1}),
]


@pytest.mark.parametrize("cls,cin,cout,kw,hw,form,ops", RUNTIME_CASES)
def test_runtimes(cls, cin, cout, kw, hw, form, ops):
    model = nn.Sequential(_make(cls, cin, cout, seed=5, masked=True, **kw), randomize_(nn.BatchNorm2d(cout), seed=6))
    dep = convert(model, forms={cls.__name__: form})[0]

    def onnx_check(path):
        got = _ops(path)
        assert {k: got[k] for k in ops} == ops and set(got) <= {"Conv", "Gather", "Add"}, got
        graph = onnx.load(path).graph
        assert not graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # batch stays dynamic

    check_on_runtimes(model, dep, [(1, cin, *hw)], batches=(1, 4), onnx_check=onnx_check)


# --- (c) conversion: swapped, BN folded, recorded ---------------------------------------------

class _Block(nn.Module):
    """The official PS-ResNet bottleneck's 3×3 (PSConv2d, padding 1, dilation 2, parts 4, here stride 2), BN,
    ReLU, then a 1×1 conv and BN."""

    def __init__(self):
        super().__init__()
        self.conv2 = PSConv2d(16, 16, 3, stride=2, padding=1, dilation=2, parts=4)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 32, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)

    def forward(self, x):
        return self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(x)))))


@pytest.mark.parametrize("target", [None, "onnxruntime", "openvino", "tensorrt"])
@pytest.mark.parametrize("masked", [True, False])
def test_convert_swaps_and_folds(target, masked):
    """Masked (trained) weights get the 1.0×-FLOPs form; any other weights fall back to "regrouped"."""
    model = randomize_(_Block(), seed=2)
    if masked:
        with torch.no_grad():
            model.conv2.conv.weight[model.conv2.mask] = 0
    dep, records = convert(model, target=target)
    assert not any(isinstance(m, (nn.BatchNorm2d, PSConv2d)) for m in dep.modules())
    assert isinstance(model.conv2, PSConv2d)  # the original is untouched
    rec = {r.name: r for r in records}
    assert rec["conv2"].type == "PSConv2d" and rec["conv2"].form == ("masked" if masked else "regrouped")
    assert rec["bn2"].form == "folded"
    assert_equivalent(model, dep, torch.randn(4, 16, 13, 12))


@pytest.mark.parametrize("form", FORMS)
def test_form_override(form):
    model = nn.Sequential(_make(PSConv2d, 16, 16, seed=4, masked=True), randomize_(nn.BatchNorm2d(16), seed=5))
    dep, records = convert(model, forms={"PSConv2d": form})
    assert records[0].form == form and records[0].type == "PSConv2d"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dep.modules())
    assert_equivalent(model, dep, torch.randn(2, 16, 7, 9))


# --- (f) fallbacks --------------------------------------------------------------------------

def test_odd_parts_fall_back_to_shift_dense():
    model = randomize_(nn.Sequential(PSConv2d(12, 12, parts=3), nn.BatchNorm2d(12)), seed=6)
    dep, records = convert(model)
    assert records[0].form == "shift_dense"
    assert_equivalent(model, dep, torch.randn(2, 12, 7, 7))
    with pytest.raises(BadInput, match="cuts the shift conv's groups"):
        convert(model, forms={"PSConv2d": "regrouped"})


def test_unmasked_weights_refuse_masked_form():
    model = nn.Sequential(_make(PSConv2d, 16, 16, dilation=2))
    assert convert(model)[1][0].form == "regrouped"
    with pytest.raises(BadInput, match="independent equal groups"):
        convert(model, forms={"PSConv2d": "masked"})


def test_inconsistent_padding_keeps_reference():
    """padding 0 with a 3×3 kernel: the branches' output sizes differ; no form claims it."""
    model = randomize_(nn.Sequential(PSConv2d(8, 8, padding=0)))
    dep, records = convert(model)
    assert records[0].form == "reference" and isinstance(dep[0], PSConv2d)
    with pytest.raises(BadInput):
        convert(model, strict=True)


# --- (d) adapters -----------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kw", [(foreign.PSConv2d, dict(stride=2)), (foreign.PSConv2d, dict(dilation=2, parts=2)),
                                    (foreign.PSGConv2d, dict(groups=2, bias=True)), (foreign.PSGConv2d, dict(groups=4, stride=2))])
def test_foreign_layers_are_adapted(cls, kw):
    model = randomize_(nn.Sequential(cls(32, 32, **kw), nn.BatchNorm2d(32)), seed=8)
    dep, records = convert(model)
    assert records[0].type == cls.__name__ and records[0].form == "regrouped"
    assert "adapter d-li14/PSConv" in records[0].note
    assert not any(type(m).__name__ in ("PSConv2d", "PSGConv2d", "BatchNorm2d") for m in dep.modules())
    assert_equivalent(model, dep, torch.randn(2, 32, 9, 10))


def test_unrelated_same_name_is_not_adapted():
    class PSConv2d(nn.Module):  # same name, other structure
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    _, records = convert(nn.Sequential(PSConv2d()))
    assert all(r.type != "PSConv2d" for r in records)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cls,kw", [(PSConv2d, dict(parts=4, dilation=2)), (PSGConv2d, dict(groups=2, parts=2))])
def test_same_padding_is_read_as_its_numbers(form, cls, kw):
    """padding='same' (1 for conv's 3×3) was declined as a string padding; it is the official padding=1."""
    ref = _make(cls, 16, 16, seed=3, masked=True, padding="same", **kw)
    if form == "masked" and cls is PSGConv2d:
        form = "regrouped"  # PSGConv2d's official mask leaves no independent groups (see test_form_with_bn_exact)
    dep = to_deploy(ref, form)
    assert not any(isinstance(m, nn.Conv2d) and isinstance(m.padding, str) for m in dep.modules())
    assert isinstance(ref.conv.padding, str)  # the layer itself is untouched
    assert_equivalent(ref, dep, torch.randn(3, 16, 9, 6))
    check_on_runtimes(ref, dep, [(2, 16, 7, 10)], batches=(2, 3))
