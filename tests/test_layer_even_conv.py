"""C2sp / C4sp (SymmetricPadConv2d): reference vs the official TF semantics, every deploy form vs
the reference (PyTorch, ONNX Runtime, OpenVINO), conversion with BN folding, fallback, adapter."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import polyexport
from polyexport.convert import convert, forms_of, registered_layers, to_deploy
from polyexport.deploy_layers.even_conv import split_unfit
from polyexport.errors import BadInput
from polyexport.layers.even_conv import C2sp, C4sp, SymmetricPadConv2d
from polyexport.testing import assert_equivalent, check_on_runtimes, randomize_
from tests.foreign.even_conv import Spconv2d

FORMS = list(forms_of(SymmetricPadConv2d))

# (in, out, kernel, stride, groups, bias): remainders of c/4, stride 2, C4sp, depthwise, grouped
CONFIGS = [
    (8, 8, 2, 1, 1, False), (8, 16, 2, 2, 1, True), (6, 10, 2, 1, 1, True), (7, 5, 2, 2, 1, False),
    (3, 4, 2, 1, 1, True), (16, 16, 4, 1, 1, False), (10, 12, 4, 2, 1, True), (8, 8, 2, 1, 8, False),
    (12, 24, 2, 2, 12, True), (16, 16, 4, 2, 16, False), (16, 32, 2, 1, 4, True), (8, 8, 2, 2, 2, False),
    (6, 6, 4, 1, 3, True),
]
SIZES = [(7, 7), (8, 8), (9, 6)]


def _ref(cfg, seed=0) -> SymmetricPadConv2d:
    cin, cout, k, s, g, b = cfg
    return randomize_(SymmetricPadConv2d(cin, cout, k, s, g, b), seed)


def _official_c2sp(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """resnet50_c2sp.py `symmetric_padding` + `conv(..., padding='VALID')`, transcribed with numpy (NCHW)."""
    zeros = [[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 1]]  # [top, bottom, left, right]
    c_in = x.shape[1]
    mod = c_in % 4
    num_split = mod * [1 + c_in // 4] + (4 - mod) * [c_in // 4]
    slides = np.split(x.numpy(), np.cumsum(num_split)[:-1], axis=1)
    padded = [np.pad(s, [(0, 0), (0, 0), tuple(z[:2]), tuple(z[2:])]) for s, z in zip(slides, zeros)]
    return F.conv2d(torch.from_numpy(np.concatenate(padded, axis=1)), weight, stride=stride)


@pytest.mark.parametrize("cin,stride,hw", [(8, 1, (6, 6)), (7, 2, (7, 5)), (5, 1, (5, 8)), (3, 2, (4, 4))])
def test_reference_is_the_official_c2sp(cin, stride, hw):
    ref = randomize_(C2sp(cin, 6, stride=stride))
    x = torch.randn(2, cin, *hw)
    with torch.no_grad():
        want = _official_c2sp(x, ref.weight, stride)
        got = ref(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.shape[-2:] == tuple((n - 1) // stride + 1 for n in hw)


def test_c4sp_pads_k_minus_1_per_axis_one_extra_toward_each_corner():
    ref = C4sp(8, 8)
    assert ref.group_pads() == [(1, 2, 1, 2), (2, 1, 2, 1), (2, 1, 1, 2), (1, 2, 2, 1)]  # F.pad (l, r, t, b)
    assert ref(torch.randn(1, 8, 9, 7)).shape == (1, 8, 9, 7)


def test_plain_conv_state_dict_loads_strictly():
    conv = nn.Conv2d(12, 20, 2, bias=True)
    ref = SymmetricPadConv2d(12, 20, 2, bias=True)
    ref.load_state_dict(conv.state_dict(), strict=True)
    assert torch.equal(ref.weight, conv.weight)
    with pytest.raises(RuntimeError):
        SymmetricPadConv2d(12, 20, 2, bias=False).load_state_dict(conv.state_dict(), strict=True)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "c{}-{} k{} s{} g{} b{}".format(*c))
def test_every_form_equals_reference(cfg):
    ref = _ref(cfg)
    checked = 0
    for form, (h, w), n in itertools.product(FORMS, SIZES, (1, 4)):
        if form == "split" and split_unfit(ref):
            continue
        dep = to_deploy(ref, form)
        assert_equivalent(ref, dep, torch.randn(n, cfg[0], h, w))
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize("form", FORMS)
def test_each_form_folds_a_following_bn(form):
    ref = _ref((8, 12, 2, 2, 1, True), seed=3)
    bn = randomize_(nn.BatchNorm2d(12), seed=4)
    fused = to_deploy(ref, form).fuse_bn(bn) if form != "single" else None
    if fused is None:  # "single" is a plain nn.Conv2d: the converter folds it with fuse_conv_bn
        from polyexport.deploy_layers.conv_bn import fuse_conv_bn
        fused = fuse_conv_bn(to_deploy(ref, form), bn)
    assert_equivalent(nn.Sequential(ref, bn), fused, torch.randn(3, 8, 9, 9))


def test_split_folds_bn_in_concatenated_mode():
    ref = _ref((12, 24, 2, 1, 12, True), seed=5)
    bn = randomize_(nn.BatchNorm2d(24), seed=6)
    dep = to_deploy(ref, "split")
    assert dep.mode == "cat"
    assert_equivalent(nn.Sequential(ref, bn), dep.fuse_bn(bn), torch.randn(2, 12, 7, 8))


def test_single_places_each_kernel_in_its_corner():
    ref = C2sp(4, 1)  # one channel per group: br, tl, bl, tr
    with torch.no_grad():
        ref.weight.copy_(torch.arange(1.0, 17.0).reshape(1, 4, 2, 2))
    w = to_deploy(ref, "single").weight[0]
    nonzero = [tuple(map(tuple, (w[c] != 0).nonzero().tolist())) for c in range(4)]
    # padded bottom-right -> kernel in the bottom-right of the 3x3 window; padded top-left -> top-left
    assert nonzero == [((1, 1), (1, 2), (2, 1), (2, 2)), ((0, 0), (0, 1), (1, 0), (1, 1)),
                       ((1, 0), (1, 1), (2, 0), (2, 1)), ((0, 1), (0, 2), (1, 1), (1, 2))]


# --- exported, on the installed runtimes, dynamic batch -----------------------------------------

def _ops(path: str) -> Counter:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def _expect_single(k):
    def check(path):
        ops = _ops(path)
        assert ops == Counter({"Conv": 1}), ops
        conv = next(n for n in onnx.load(path).graph.node if n.op_type == "Conv")
        ks = next(a.ints for a in conv.attribute if a.name == "kernel_shape")
        assert list(ks) == [k + 1, k + 1]
    return check


def _expect_split(n_convs, joined_by):
    def check(path):
        ops = _ops(path)
        assert ops["Conv"] == n_convs and ops["Pad"] <= n_convs, ops
        if joined_by == "Add":
            assert ops["Add"] == n_convs - 1 and ops["Concat"] == 0, ops
        else:
            assert ops["Concat"] == 1 and ops["Add"] == 0, ops
    return check


def _expect_padcat(path):
    ops = _ops(path)
    assert ops["Conv"] == 1 and ops["Concat"] == 1 and ops["Pad"] == 4, ops


RUNTIME_CASES = [
    ("single", (16, 16, 2, 1, 1, False), (9, 9), _expect_single(2)),
    ("single", (10, 12, 4, 2, 1, True), (9, 8), _expect_single(4)),
    ("single", (12, 12, 2, 2, 12, True), (7, 7), _expect_single(2)),
    ("split", (16, 16, 2, 1, 1, True), (8, 8), _expect_split(4, "Add")),
    ("split", (7, 8, 2, 2, 1, False), (9, 7), _expect_split(4, "Add")),
    ("split", (16, 16, 4, 2, 16, False), (8, 9), _expect_split(4, "Concat")),
    ("padcat", (6, 8, 2, 1, 1, True), (7, 7), _expect_padcat),
]


@pytest.mark.parametrize("form,cfg,hw,check", RUNTIME_CASES, ids=[f"{f}-c{c[0]} k{c[2]} s{c[3]} g{c[4]}" for f, c, _, _ in RUNTIME_CASES])
def test_forms_on_runtimes_dynamic_batch(form, cfg, hw, check, tmp_path):
    ref = _ref(cfg, seed=1)
    results = check_on_runtimes(ref, to_deploy(ref, form), [(1, cfg[0], *hw)], batches=(1, 4),
                                workdir=str(tmp_path), onnx_check=check)
    assert {r.batch for r in results} == {1, 4}


# --- conversion ----------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = C2sp(8, 16, stride=2)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = C4sp(16, 16, groups=16)
        self.bn2 = nn.BatchNorm2d(16)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def test_deploy_swaps_folds_bn_and_records():
    model = randomize_(Block(), seed=2)
    x = torch.randn(4, 8, 11, 10)
    dep = polyexport.deploy(model)
    assert not any(isinstance(m, (SymmetricPadConv2d, nn.BatchNorm2d)) for m in dep.modules())
    assert_equivalent(model, dep, x)
    _, records = convert(model)
    by_name = {r.name: r for r in records}
    assert (by_name["conv1"].type, by_name["conv1"].form) == ("SymmetricPadConv2d", "split")
    assert by_name["conv2"].form == "single"  # depthwise: the measured preference puts the one-conv form first
    assert by_name["bn1"].form == "folded" and by_name["bn2"].form == "folded"


@pytest.mark.parametrize("form", FORMS)
def test_forced_forms_fold_bn_in_a_sequential(form):
    model = randomize_(nn.Sequential(C2sp(8, 12), nn.BatchNorm2d(12), nn.ReLU()), seed=7)
    dep, records = convert(model, forms={"SymmetricPadConv2d": form})
    assert [(r.name, r.form) for r in records] == [("0", form), ("1", "folded")]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dep.modules())
    assert_equivalent(model, dep, torch.randn(4, 8, 9, 9))


def test_split_falls_back_where_conv_groups_straddle_padding_groups():
    assert registered_layers()[SymmetricPadConv2d].prefer(C2sp(8, 8, groups=2), "*")[0] == "split"
    model = randomize_(nn.Sequential(C2sp(8, 8, groups=2), C2sp(8, 8, groups=4)))
    dep, records = convert(model)
    assert [r.form for r in records] == ["padcat", "split"]
    assert_equivalent(model, dep, torch.randn(2, 8, 7, 7))
    with pytest.raises(BadInput, match="straddle"):
        convert(model, forms={"SymmetricPadConv2d": "split"}, strict=True)


# --- adapter: EL-NAS Spconv2d --------------------------------------------------------------------

def test_elnas_spconv2d_is_adapted_and_deployed():
    foreign = randomize_(Spconv2d(8, 12, 2, stride=2), seed=8)
    model = nn.Sequential(foreign, randomize_(nn.BatchNorm2d(12), seed=9))
    x = torch.randn(4, 8, 9, 8)
    dep, records = convert(model)
    assert records[0].type == "Spconv2d" and records[0].form == "split" and "elnas" in records[0].note
    assert not any(isinstance(m, (Spconv2d, nn.BatchNorm2d)) for m in dep.modules())
    assert_equivalent(model, dep, x)


def test_elnas_weights_load_into_reference_with_its_corner_order():
    foreign = randomize_(Spconv2d(8, 6, 2), seed=10)
    sd = {k.removeprefix("conv.0."): v for k, v in foreign.state_dict().items()}
    ref = SymmetricPadConv2d(8, 6, 2, bias=True, corners=("tl", "tr", "bl", "br")).eval()
    ref.load_state_dict(sd, strict=True)
    x = torch.randn(2, 8, 7, 7)
    assert_equivalent(foreign, ref, x)
    official = SymmetricPadConv2d(8, 6, 2, bias=True).eval()  # the TF order is a different function
    official.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert not torch.allclose(official(x), foreign(x), atol=1e-3)


def test_elnas_configurations_that_are_not_c2sp_are_left_alone():
    model = nn.Sequential(Spconv2d(8, 8, 3, padding=1))
    _, records = convert(model)
    assert records == []


def test_depthwise_prefers_single_dense_prefers_split():
    """The measured order depends on the configuration: depthwise gets the one-conv form."""
    from polyexport.convert import convert
    from polyexport.layers.even_conv import SymmetricPadConv2d

    dense, dw = SymmetricPadConv2d(8, 8, 2), SymmetricPadConv2d(8, 8, 2, groups=8)
    assert convert(nn.Sequential(dense))[1][0].form == "split"
    assert convert(nn.Sequential(dw))[1][0].form == "single"
