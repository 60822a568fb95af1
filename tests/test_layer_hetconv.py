"""HetConv: reference semantics, every deploy form vs the reference (PyTorch, ONNX Runtime, OpenVINO),
conversion with BN folding, the adapters for the common unofficial layouts, state_dict compatibility."""
from __future__ import annotations

import itertools
from collections import Counter

import onnx
import pytest
import torch
from torch import nn

import polyexport
from polyexport.convert import convert, forms_of, to_deploy
from polyexport.deploy_layers.hetconv import dense_weight
from polyexport.layers.hetconv import HetConv, ShiftedHetConv
from polyexport.testing import assert_equivalent, check_on_runtimes, randomize_
from tests.foreign.hetconv import (
    Efficient_HetConv2d,
    HetConv2d_v2,
    MFTHetConv,
    YoloHetConv,
)
from tests.foreign.hetconv import HetConv as IrvinxavHetConv

FORMS = list(forms_of(HetConv))  # ShiftedHetConv registers the same two

# (in, out, p, kernel, stride, dilation, bias): P in {2, 4, 8, in}, in != out, stride 2, K=5, dilation
CONFIGS = [
    (8, 8, 2, 3, 1, 1, False), (8, 16, 4, 3, 2, 1, False), (16, 8, 8, 3, 1, 1, True), (16, 16, 16, 3, 2, 1, False),
    (12, 24, 12, 3, 1, 1, True), (32, 16, 4, 3, 2, 1, True), (8, 12, 4, 5, 1, 1, False), (16, 16, 8, 5, 2, 1, True),
    (8, 8, 4, 3, 1, 2, True), (8, 16, 2, 3, 2, 2, False), (4, 4, 1, 3, 1, 1, False), (64, 64, 4, 3, 2, 1, False),
]
SIZES = [(7, 7), (8, 8), (9, 6)]


def _ref(cfg, seed=0, layer=HetConv) -> HetConv | ShiftedHetConv:
    cin, cout, p, k, s, d, b = cfg
    return randomize_(layer(cin, cout, p, k, s, dilation=d, bias=b), seed)


def _mask_diagonal_pwc_(ref: HetConv) -> HetConv:
    """irvinxav's training mask: pwc is zero where gwc already has a K×K kernel."""
    per_out, per_in = ref.out_channels // ref.p, ref.in_channels // ref.p
    with torch.no_grad():
        for g in range(ref.p):
            ref.pwc.weight[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = 0
    return ref


def test_each_filter_has_kxk_kernels_on_one_pth_of_its_channels():
    """The paper's kernel count: per filter in/P K×K kernels, the other in − in/P are 1×1 (masked as irvinxav trains it)."""
    ref = _mask_diagonal_pwc_(_ref((16, 8, 4, 3, 1, 1, False)))
    w = dense_weight(ref)
    off_centre = w.clone()
    off_centre[:, :, 1, 1] = 0
    kxk = off_centre.abs().sum((2, 3)) > 0  # (out, in): which kernels are K×K
    assert (kxk.sum(1) == 16 // 4).all()
    assert ((w[:, :, 1, 1] != 0) | ~kxk).all()  # every other kernel is a (non-zero) 1×1 at the centre
    for o in range(8):  # filter o belongs to group o // 2 and sees the contiguous input block of that group
        assert kxk[o].nonzero().flatten().tolist() == list(range(o // 2 * 4, o // 2 * 4 + 4))


def test_output_size_matches_a_same_padded_conv():
    ref = HetConv(8, 8, 4, 3, stride=2)
    assert ref(torch.randn(1, 8, 9, 8)).shape == (1, 8, 5, 4)
    with pytest.raises(ValueError, match="padding"):
        HetConv(8, 8, 4, 3, padding=0)
    with pytest.raises(ValueError, match="divisible"):
        HetConv(8, 6, 4)


def test_shifted_filter_c_has_kxk_kernels_on_channels_congruent_to_c():
    """The paper's assignment: the K×K positions shift by one from filter to filter."""
    from polyexport.deploy_layers.hetconv import _shifted_dense
    w = _shifted_dense(_ref((12, 8, 4, 3, 1, 1, False), layer=ShiftedHetConv)).weight.detach()
    off_centre = w.clone()
    off_centre[:, :, 1, 1] = 0
    kxk = off_centre.abs().sum((2, 3)) > 0
    for c in range(8):
        assert kxk[c].nonzero().flatten().tolist() == list(range(c % 4, 12, 4))
    assert (w[:, :, 1, 1] != 0).all()


def test_shifted_reference_is_the_yolo_filters_layout():
    foreign = randomize_(YoloHetConv(12, 8, stride=2, p=4), seed=11)
    ref = ShiftedHetConv(12, 8, 4, stride=2).eval()
    ref.load_state_dict(foreign.state_dict(), strict=True)
    x = torch.randn(3, 12, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), foreign(x), rtol=0, atol=0)


@pytest.mark.parametrize("layer", [HetConv, ShiftedHetConv])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "c{}-{} p{} k{} s{} d{} b{}".format(*c))
def test_every_form_equals_reference(cfg, layer):
    if layer is ShiftedHetConv and cfg[2] == 1:
        pytest.skip("ShiftedHetConv needs p >= 2 (p=1 is a plain conv)")
    ref = _ref(cfg, layer=layer)
    for form, (h, w), n in itertools.product(FORMS, SIZES, (1, 4)):
        assert_equivalent(ref, to_deploy(ref, form), torch.randn(n, cfg[0], h, w))


def test_dense_form_is_not_the_grouped_conv_alone():
    """Guards the test above: dropping the 1×1 branch must be caught by assert_equivalent."""
    ref = _ref((8, 8, 4, 3, 1, 1, False))
    alone = to_deploy(ref, "grouped_plus_pointwise").gwc
    with pytest.raises(AssertionError):
        assert_equivalent(ref, alone, torch.randn(2, 8, 7, 7))


@pytest.mark.parametrize("layer", [HetConv, ShiftedHetConv])
@pytest.mark.parametrize("form", FORMS)
def test_each_form_folds_a_following_bn(form, layer):
    ref = _ref((8, 12, 4, 3, 2, 1, True), seed=3, layer=layer)
    bn = randomize_(nn.BatchNorm2d(12), seed=4)
    dep = to_deploy(ref, form)
    if form == "dense":
        from polyexport.deploy_layers.conv_bn import fuse_conv_bn
        fused = fuse_conv_bn(dep, bn)
    else:
        fused = dep.fuse_bn(bn)
    assert_equivalent(nn.Sequential(ref, bn), fused, torch.randn(3, 8, 9, 9))


# --- exported, on the installed runtimes, dynamic batch -----------------------------------------

def _convs(path: str) -> tuple[Counter, list[int]]:
    nodes = onnx.load(path).graph.node
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in nodes if n.op_type == "Conv"]
    return Counter(n.op_type for n in nodes), sorted(groups)


def _expect(n_convs: int, n_adds: int, groups: list[int], shuffles: int = 0):
    def check(path):
        ops, got_groups = _convs(path)
        assert ops["Conv"] == n_convs and ops["Add"] == n_adds and ops["Transpose"] == shuffles, ops
        assert set(ops) <= {"Conv", "Add", "Transpose", "Reshape", "Shape", "Gather", "Unsqueeze", "Concat", "Slice", "Constant"}, ops
        if not shuffles:
            assert set(ops) <= {"Conv", "Add"}, ops
        assert got_groups == sorted(groups), got_groups
    return check


RUNTIME_CASES = [
    ("grouped_plus_pointwise", (16, 16, 4, 3, 1, 1, False), (9, 9), _expect(2, 1, [1, 4])),
    ("grouped_plus_pointwise", (8, 16, 8, 3, 2, 1, True), (8, 7), _expect(2, 1, [1, 8])),
    ("grouped_plus_pointwise", (16, 8, 2, 5, 2, 2, True), (10, 11), _expect(2, 1, [1, 2])),
    ("dense", (16, 16, 4, 3, 1, 1, True), (9, 9), _expect(1, 0, [1])),
    ("dense", (8, 16, 8, 3, 2, 1, False), (8, 7), _expect(1, 0, [1])),
    ("dense", (16, 8, 2, 5, 1, 2, True), (10, 11), _expect(1, 0, [1])),
    ("shifted:grouped_plus_pointwise", (16, 8, 4, 3, 2, 1, True), (9, 8), _expect(2, 1, [1, 4], shuffles=2)),
    ("shifted:dense", (12, 12, 4, 3, 1, 1, False), (7, 8), _expect(1, 0, [1])),
]


@pytest.mark.parametrize("form,cfg,hw,check", RUNTIME_CASES, ids=[f"{f}-c{c[0]}-{c[1]} p{c[2]} k{c[3]} s{c[4]}" for f, c, _, _ in RUNTIME_CASES])
def test_forms_on_runtimes_dynamic_batch(form, cfg, hw, check, tmp_path):
    layer = ShiftedHetConv if form.startswith("shifted:") else HetConv
    form = form.removeprefix("shifted:")
    ref = _ref(cfg, seed=1, layer=layer)
    results = check_on_runtimes(ref, to_deploy(ref, form), [(1, cfg[0], *hw)], batches=(1, 4),
                                workdir=str(tmp_path), onnx_check=check)
    assert {r.batch for r in results} == {1, 4}


# --- conversion ----------------------------------------------------------------------------------

def _block() -> nn.Sequential:
    return randomize_(nn.Sequential(HetConv(8, 16, 4, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                                    HetConv(16, 16, 16, bias=True), nn.BatchNorm2d(16)), seed=2)


def test_deploy_swaps_folds_bn_and_records():
    model = _block()
    dep = polyexport.deploy(model)
    assert not any(isinstance(m, (HetConv, nn.BatchNorm2d)) for m in dep.modules())
    assert_equivalent(model, dep, torch.randn(4, 8, 11, 10))
    _, records = convert(model, strict=True)  # every configuration has an exact form: strict never raises
    by_name = {r.name: r for r in records}
    assert (by_name["0"].type, by_name["0"].form) == ("HetConv", "grouped_plus_pointwise")
    assert by_name["3"].type == "HetConv" and by_name["3"].form in FORMS
    assert by_name["1"].form == "folded" and by_name["4"].form == "folded"


@pytest.mark.parametrize("form", FORMS)
def test_forced_forms_fold_bn(form):
    model = _block()
    dep, records = convert(model, forms={"HetConv": form}, dynamic_batch=True)
    assert [(r.name, r.form) for r in records if r.type == "HetConv"] == [("0", form), ("3", form)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dep.modules())
    assert_equivalent(model, dep, torch.randn(1, 8, 9, 9))


@pytest.mark.parametrize("form", [None, *FORMS])
def test_shifted_deploy_swaps_folds_bn_and_records(form):
    model = randomize_(nn.Sequential(ShiftedHetConv(8, 16, 4, stride=2, bias=True), nn.BatchNorm2d(16), nn.ReLU()), seed=12)
    dep, records = convert(model, forms={"ShiftedHetConv": form} if form else None, dynamic_batch=True, strict=True)
    assert [(r.name, r.type, r.form) for r in records] == [("0", "ShiftedHetConv", form or "grouped_plus_pointwise"),
                                                           ("1", "BatchNorm2d", "folded")]
    assert not any(isinstance(m, (ShiftedHetConv, nn.BatchNorm2d)) for m in dep.modules())
    assert_equivalent(model, dep, torch.randn(4, 8, 9, 10))


# --- adapters and state_dicts ---------------------------------------------------------------------

@pytest.mark.parametrize("make,cin,cout,adapter", [
    (lambda: IrvinxavHetConv(8, 16, 4), 8, 16, "hetconv_gwc_pwc"),
    (lambda: MFTHetConv(16, 16, kernel_size=3, stride=2, p=4, g=8), 16, 16, "hetconv_gwc_pwc"),
    (lambda: Efficient_HetConv2d(8, 12, p=4), 8, 12, "efficient_hetconv2d"),
    (lambda: Efficient_HetConv2d(16, 8, p=8, ks=5, pad=2), 16, 8, "efficient_hetconv2d"),
    (lambda: YoloHetConv(8, 12, stride=2, p=4), 8, 12, "hetconv_filters"),
    (lambda: YoloHetConv(16, 16, stride=1, p=16), 16, 16, "hetconv_filters"),
    (lambda: HetConv2d_v2(8, 6, p=2), 8, 6, "hetconv2d_v2"),
], ids=["irvinxav", "mft", "sxpro", "edsc-k5", "yolo-filters", "yolo-filters-p=in", "sxpro-v2"])
def test_foreign_layouts_are_adapted_and_deployed(make, cin, cout, adapter):
    foreign = randomize_(make(), seed=8)
    model = nn.Sequential(foreign, randomize_(nn.BatchNorm2d(cout), seed=9))
    dep, records = convert(model)
    assert records[0].form != "reference" and adapter in records[0].note
    assert not any(isinstance(m, (type(foreign), nn.BatchNorm2d)) for m in dep.modules())
    assert_equivalent(model, dep, torch.randn(4, cin, 9, 8))
    from polyexport.convert import _adapt
    ref, _ = _adapt(foreign)
    assert isinstance(ref, ShiftedHetConv if adapter in ("hetconv_filters", "hetconv2d_v2") else HetConv)
    assert_equivalent(foreign, ref, torch.randn(2, cin, 7, 7))


def test_irvinxav_state_dict_loads_strictly():
    foreign = randomize_(IrvinxavHetConv(16, 32, 4), seed=10)
    ref = HetConv(16, 32, 4).eval()
    ref.load_state_dict(foreign.state_dict(), strict=True)
    assert_equivalent(foreign, ref, torch.randn(2, 16, 8, 8))
    with pytest.raises(RuntimeError):
        HetConv(16, 32, 4, bias=True).load_state_dict(foreign.state_dict(), strict=True)
    with pytest.raises(RuntimeError):  # another P is another layer
        HetConv(16, 32, 8).load_state_dict(foreign.state_dict(), strict=True)


def test_layouts_that_are_not_hetconv_are_left_alone():
    class NotHet(nn.Module):  # same children, other name: a user's own two-branch block
        def __init__(self):
            super().__init__()
            self.gwc, self.pwc = nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.gwc(x) * self.pwc(x)

    wrong_pad = IrvinxavHetConv(8, 8, 4)
    wrong_pad.gwc.padding = (0, 0)  # the branches would not line up: not a HetConv we can represent
    _, records = convert(nn.Sequential(NotHet(), wrong_pad))
    assert records == []
