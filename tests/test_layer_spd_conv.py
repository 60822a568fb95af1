"""SPD-Conv: the reference matches the official slicing, each deploy form equals it (alone, fused with
the next conv, with BN folded), on ONNX Runtime and OpenVINO too, and foreign layers are recognised."""
from __future__ import annotations

from collections import Counter, OrderedDict

import onnx
import pytest
import torch
from torch import nn

from polyexport import deploy
from polyexport.convert import convert, forms_of, to_deploy
from polyexport.deploy_layers.conv_bn import fuse_conv_bn
from polyexport.deploy_layers.spd_conv import SpaceToDepthConv, SpaceToDepthDeploy, onnx_space_to_depth
from polyexport.layers.mixconv import Conv2dSame, MixedConv2d
from polyexport.layers.spd_conv import SPDConv, space_to_depth
from polyexport.testing import assert_equivalent, check_on_runtimes, randomize_
from tests.foreign import spd_conv as foreign

FORMS = tuple(forms_of(space_to_depth))  # SPDConv registers the same two


def _ops(path: str) -> Counter:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def _fused(ref: space_to_depth, conv: nn.Conv2d, bn: nn.BatchNorm2d, form: str) -> nn.Module:
    """What the converter builds for (space_to_depth, conv, BN): the form, fused with the conv, BN folded."""
    fused = to_deploy(ref, form).fuse_next_conv(conv)
    assert fused is not None
    return fuse_conv_bn(fused, bn) if isinstance(fused, nn.Conv2d) else fused.fuse_bn(bn)


# --- the reference is the official layer ------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 3, 8, 12), (4, 5, 6, 10)])
def test_reference_is_official_slicing(shape):
    x = torch.randn(shape)
    assert torch.equal(space_to_depth()(x), foreign.space_to_depth()(x))


@pytest.mark.parametrize("shape", [(1, 3, 8, 16), (4, 2, 12, 4)])
def test_onnx_order_is_timm_and_the_op_forward(shape):
    """timm's SpaceToDepth, our order='onnx' and the forward of the exported op agree (block size 4)."""
    x = torch.randn(shape)
    want = foreign.SpaceToDepth(4)(x)
    assert torch.equal(space_to_depth(scale=4, order="onnx")(x), want)
    assert torch.equal(onnx_space_to_depth(x, 4), want)
    assert torch.equal(foreign.SpaceToDepthModule()(x), want)


def test_orders_differ():
    """The official order is not ONNX's (else the permutation folding would be untested)."""
    x = torch.randn(1, 2, 4, 4)
    assert not torch.equal(space_to_depth()(x), space_to_depth(order="onnx")(x))


@pytest.mark.parametrize("scale,shape", [(2, (1, 3, 5, 8)), (2, (1, 3, 8, 7)), (4, (1, 3, 6, 8))])
def test_reference_and_forms_reject_indivisible_sizes(scale, shape):
    """The reference only exists for H, W multiples of the block size; the forms do not invent a result."""
    x = torch.randn(shape)
    ref = space_to_depth(scale=scale)
    with pytest.raises(RuntimeError):
        ref(x)
    for form in FORMS:
        with pytest.raises(RuntimeError):
            to_deploy(ref, form)(x)


# --- (a) every form equals the reference in PyTorch -------------------------------------------

@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("scale,order", [(2, "spd"), (4, "spd"), (2, "onnx"), (4, "onnx")])
@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (4, 3, 8, 12), (1, 8, 24, 16)])
def test_alone_exact(form, scale, order, shape):
    ref = space_to_depth(scale=scale, order=order)
    x = torch.randn(shape)
    assert torch.equal(to_deploy(ref, form)(x), ref(x))  # pure data movement: bit-exact


PAIRS = [  # scale, order, c_in, c_out, conv kwargs, (H, W): SPD grid sizes even and odd
    (2, "spd", 3, 8, dict(kernel_size=3, padding=1), (8, 12)),
    (2, "spd", 4, 6, dict(kernel_size=3, padding=1), (6, 10)),
    (2, "spd", 8, 8, dict(kernel_size=1), (10, 6)),
    (2, "spd", 4, 8, dict(kernel_size=3, stride=2, padding=1), (14, 10)),
    (2, "spd", 4, 8, dict(kernel_size=3, padding=0, bias=True), (10, 10)),
    (2, "spd", 3, 5, dict(kernel_size=(1, 3), padding=(0, 1)), (6, 8)),
    (2, "onnx", 3, 8, dict(kernel_size=3, padding=1), (6, 10)),
    (4, "spd", 3, 8, dict(kernel_size=3, padding=1), (12, 8)),
    (4, "spd", 2, 8, dict(kernel_size=1), (8, 12)),
    (4, "onnx", 3, 16, dict(kernel_size=3, stride=2, padding=1), (16, 12)),
    # configurations "strided_conv" cannot make one conv of: it fuses as "space_to_depth_op"
    (2, "spd", 4, 8, dict(kernel_size=3, padding=2, dilation=2), (10, 10)),
    (2, "spd", 4, 8, dict(kernel_size=3, padding=1, padding_mode="reflect"), (6, 8)),
    (2, "spd", 3, 8, dict(kernel_size=3, padding="same"), (10, 6)),
    (2, "onnx", 4, 8, dict(kernel_size=3, padding=1, groups=2, bias=True), (6, 6)),  # ONNX order: no permutation
    (4, "onnx", 1, 16, dict(kernel_size=3, padding=1, groups=16), (8, 12)),  # depthwise
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("scale,order,cin,cout,kw,hw", PAIRS)
@pytest.mark.parametrize("batch", [1, 4])
def test_fused_with_conv_and_bn_exact(form, scale, order, cin, cout, kw, hw, batch):
    ref = space_to_depth(scale=scale, order=order)
    conv, bn = nn.Conv2d(cin * scale * scale, cout, bias=kw.pop("bias", False), **kw), nn.BatchNorm2d(cout)
    model = randomize_(nn.Sequential(ref, conv, bn), seed=cin + cout)
    assert_equivalent(model, _fused(ref, conv, bn, form), torch.randn(batch, cin, *hw))


@pytest.mark.parametrize("scale,order,cin,cout,kw,hw", PAIRS[:10])
def test_strided_conv_is_one_conv(scale, order, cin, cout, kw, hw):
    ref = space_to_depth(scale=scale, order=order)
    conv = nn.Conv2d(cin * scale * scale, cout, bias=kw.pop("bias", False), **kw)
    fused = to_deploy(ref, "strided_conv").fuse_next_conv(conv)
    assert isinstance(fused, nn.Conv2d)
    assert fused.kernel_size == tuple(scale * k for k in conv.kernel_size)
    assert fused.stride == tuple(scale * s for s in conv.stride) and fused.in_channels == cin


@pytest.mark.parametrize("scale,groups", [(2, 2), (2, 4), (2, 8), (4, 4), (4, 16)])
def test_permutation_across_groups_is_declined(scale, groups):
    """Grouped conv after the official order: the block reordering moves channels between groups, so no fold."""
    conv = nn.Conv2d(2 * scale * scale, 16, 3, padding=1, groups=groups)
    for form in FORMS:
        assert to_deploy(space_to_depth(scale=scale), form).fuse_next_conv(conv) is None


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("scale,cin,cout,k,hw,batch", [(2, 3, 8, 3, (8, 12), 1), (2, 16, 24, 1, (10, 6), 4),
                                                        (4, 3, 16, 3, (16, 8), 4)])
def test_spdconv_block_exact(form, scale, cin, cout, k, hw, batch):
    ref = randomize_(SPDConv(cin, cout, k, scale), seed=k)
    dep = to_deploy(ref, form)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dep.modules())
    assert_equivalent(ref, dep, torch.randn(batch, cin, *hw))


# --- (b) on the runtimes, one graph with a dynamic batch axis ----------------------------------

def _alone(scale, order, form):
    return space_to_depth(scale=scale, order=order), None, (1, 3, 8, 16)


def _pair(scale, order, form, cin=3, cout=8, **kw):
    ref = space_to_depth(scale=scale, order=order)
    conv, bn = nn.Conv2d(cin * scale * scale, cout, **kw), nn.BatchNorm2d(cout)
    model = randomize_(nn.Sequential(ref, conv, bn))
    return model, _fused(ref, conv, bn, form), (1, cin, 8 * scale, 6 * scale)


RUNTIME_CASES = {
    # name: (reference, deployed, input shape, expected op counts)
    "alone-spd-s2": (space_to_depth(), to_deploy(space_to_depth(), "space_to_depth_op"), (1, 3, 8, 10),
                     {"SpaceToDepth": 1, "Transpose": 1, "Conv": 0, "Slice_on_input": 0}),
    "alone-timm-s4": (space_to_depth(scale=4, order="onnx"), to_deploy(space_to_depth(scale=4, order="onnx"), "space_to_depth_op"),
                      (1, 3, 8, 16), {"SpaceToDepth": 1, "total": 1}),
    "pair-op-s2-k3": (*_pair(2, "spd", "space_to_depth_op", kernel_size=3, padding=1), {"SpaceToDepth": 1, "Conv": 1, "total": 2}),
    "pair-op-s4-k1": (*_pair(4, "spd", "space_to_depth_op", kernel_size=1), {"SpaceToDepth": 1, "Conv": 1, "total": 2}),
    "pair-strided-s2-k3": (*_pair(2, "spd", "strided_conv", kernel_size=3, padding=1), {"Conv": 1, "total": 1}),
    "pair-strided-s4-k3s2": (*_pair(4, "spd", "strided_conv", kernel_size=3, stride=2, padding=1), {"Conv": 1, "total": 1}),
    "pair-strided-dilated": (*_pair(2, "spd", "strided_conv", kernel_size=3, padding=2, dilation=2),
                             {"SpaceToDepth": 1, "Conv": 1, "total": 2}),
}


@pytest.mark.parametrize("case", list(RUNTIME_CASES))
def test_on_runtimes(case):
    ref, dep, shape, want = RUNTIME_CASES[case]

    def onnx_check(path):
        ops, graph = _ops(path), onnx.load(path).graph
        for op, n in want.items():
            if op == "total":
                assert sum(ops.values()) == n, ops
            elif op == "Slice_on_input":  # the reference's strided slices of the data are gone
                assert not [x for x in graph.node if x.op_type == "Slice" and graph.input[0].name in x.input], ops
            else:
                assert ops[op] == n, ops

    checks = check_on_runtimes(ref, dep, [shape], batches=(1, 4), onnx_check=onnx_check)
    assert {c.batch for c in checks} == {1, 4}


# --- (c) through the converter ------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_deploy_swaps_and_absorbs_next_conv(form):
    model = randomize_(nn.Sequential(space_to_depth(), nn.Conv2d(12, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)))
    dep, records = convert(model, forms={"space_to_depth": form})
    rec = {r.name: r for r in records}
    assert (rec["0"].type, rec["0"].form) == ("space_to_depth", form)
    assert rec["1"].form == "absorbed"
    assert isinstance(dep[0], SpaceToDepthConv if form == "space_to_depth_op" else nn.Conv2d)
    assert isinstance(model[0], space_to_depth)  # original untouched
    assert_equivalent(model, dep, torch.randn(2, 3, 8, 10))


def test_deploy_folds_bn_after_absorbed_conv():
    """The Identity left where the conv was absorbed must not hide the BN after it."""
    model = randomize_(nn.Sequential(space_to_depth(), nn.Conv2d(12, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)))
    dep = deploy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dep.modules())
    assert_equivalent(model, dep, torch.randn(2, 3, 8, 10))


@pytest.mark.parametrize("form", FORMS)
def test_deploy_spdconv_then_bn(form):
    model = randomize_(nn.Sequential(SPDConv(3, 8), nn.BatchNorm2d(8), nn.ReLU()))
    dep, records = convert(model, forms={"SPDConv": form})
    assert [(r.name, r.type, r.form) for r in records] == [("0", "SPDConv", form), ("1", "BatchNorm2d", "folded")]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dep.modules())
    assert_equivalent(model, dep, torch.randn(4, 3, 10, 6))


def test_deploy_official_resnet_block_pattern():
    """ResNet18-SPD: conv, space_to_depth, BN(4C), ReLU, conv, BN — SPD is followed by a BN, not a conv."""
    model = randomize_(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False), foreign.space_to_depth(), nn.BatchNorm2d(24),
                                     nn.ReLU(), nn.Conv2d(24, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)))
    dep, records = convert(model)
    assert ("1", "space_to_depth", "space_to_depth_op") in [(r.name, r.type, r.form) for r in records]
    assert isinstance(dep[1], SpaceToDepthDeploy)
    assert_equivalent(model, dep, torch.randn(4, 4, 8, 6))


# --- (d, e) adapters and the official state_dict ------------------------------------------------

@pytest.mark.parametrize("make", [foreign.space_to_depth, lambda: foreign.SpaceToDepth(4),
                                  foreign.SpaceToDepthModule, lambda: foreign.SpaceToDepthModule(no_jit=True)])
def test_adapters_alone(make):
    model = nn.Sequential(make())
    dep, records = convert(model)
    assert records[0].form == "space_to_depth_op" and "adapter" in records[0].note
    assert isinstance(dep[0], SpaceToDepthDeploy)
    x = torch.randn(4, 3, 8, 16)
    assert torch.equal(dep(x), model(x))


def test_adapter_official_yolo_pattern():
    """YOLOv5-SPD backbone: Conv(k3, s1), space_to_depth, Conv — SPD absorbed into the next Conv's conv."""
    model = randomize_(nn.Sequential(foreign.Conv(3, 8, 3, 1), foreign.space_to_depth(), foreign.Conv(32, 16, 3, 1)))
    dep, records = convert(model)
    assert ("2.conv", "absorbed") in [(r.name, r.form) for r in records]
    assert isinstance(dep[1], SpaceToDepthConv)
    assert_equivalent(model, dep, torch.randn(4, 3, 12, 10))


@pytest.mark.parametrize("form", FORMS)
def test_adapter_timm_tresnet_stem(form):
    model = randomize_(nn.Sequential(OrderedDict(s2d=foreign.SpaceToDepth(4), conv1=nn.Conv2d(48, 16, 3, padding=1, bias=False))))
    dep, records = convert(model, forms={"space_to_depth": form})
    assert [r.form for r in records] == [form, "absorbed"]
    assert_equivalent(model, dep, torch.randn(4, 3, 16, 24))


def test_official_state_dict_loads_strict():
    """A block saved with the official classes loads unchanged into ours and computes the same."""
    theirs = randomize_(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), foreign.space_to_depth(), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1)))
    ours = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), space_to_depth(), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(ours(x), theirs(x))
    space_to_depth().load_state_dict(foreign.space_to_depth().state_dict(), strict=True)



def test_zoo_spd_resnet18_is_the_official_network():
    """zoo:spd_resnet18 is the official ResNet18-SPD (ResNet18-SPD/models/resnet50_spd.py `resnet18()`): the same
    tensors in the same order (an official checkpoint maps onto ours by position) and the same function, at the
    official Tiny-ImageNet input. The paper's own table could not be read here, so this is its architecture check."""
    from polyexport import zoo

    theirs = randomize_(foreign.resnet18_spd(), seed=3).eval()
    ours = zoo.get("spd_resnet18").build().eval()
    assert [p.shape for p in theirs.state_dict().values()] == [p.shape for p in ours.state_dict().values()]
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.state_dict().values())), strict=True)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want, got = theirs(x), ours(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()) == 28_043_336

def test_same_name_with_weights_is_not_adapted():
    class SpaceToDepth(nn.Module):  # a different layer that happens to share the name
        def __init__(self):
            super().__init__()
            self.bs = 2
            self.proj = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.proj(x)

    _, records = convert(nn.Sequential(SpaceToDepth()))
    assert records == []


# --- (f) fallbacks ------------------------------------------------------------------------------

def test_converter_leaves_unfoldable_pair_exact():
    """Official order then a depthwise conv: nothing folds, the permutation stays explicit, output equal."""
    model = randomize_(nn.Sequential(space_to_depth(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)))
    dep, records = convert(model, strict=True)  # every configuration has a form: strict never raises here
    assert [(r.name, r.form) for r in records] == [("0", "space_to_depth_op"), ("2", "folded")]
    assert isinstance(dep[0], SpaceToDepthDeploy)
    assert_equivalent(model, dep, torch.randn(4, 2, 6, 10))


# --- (g) holes found by tests/test_forms_property.py, kept as regression tests ------------------------

def _no_auto_pad(path: str) -> None:
    for node in onnx.load(path).graph.node:
        assert all(a.name != "auto_pad" or a.s in (b"", b"NOTSET") for a in node.attribute), node.name


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("order", ["spd", "onnx"])
def test_scale_1_is_the_identity_and_exports(form, order):
    """space_to_depth accepts scale=1; its forms crashed the exporter (IndexError: Argument passed to at()
    was not in the map) in the property test's example SPDConv(1, 1, k=1, scale=1)."""
    alone = space_to_depth(scale=1, order=order)
    x = torch.randn(3, 2, 5, 7)
    assert torch.equal(to_deploy(alone, form)(x), x)
    check_on_runtimes(alone, to_deploy(alone, form), [(1, 2, 5, 7)], batches=(1, 3))
    block = randomize_(SPDConv(1, 1, 1, scale=1))
    assert_equivalent(block, to_deploy(block, form), torch.randn(2, 1, 2, 2))
    check_on_runtimes(block, to_deploy(block, form), [(1, 1, 2, 2)], batches=(1, 2))
    model = randomize_(nn.Sequential(space_to_depth(scale=1, order=order), nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4)))
    dep, records = convert(model, forms={"space_to_depth": form})
    assert [r.form for r in records] == [form, "absorbed", "folded"]
    check_on_runtimes(model, dep, [(2, 3, 6, 6)], batches=(2, 4))


class _Conv2dSameLike(nn.Conv2d):
    """A conv subclass with its own forward that pads from the input size (timm's Conv2dSame) and is an fx
    leaf (as torch.nn's own classes are) without fuse_bn: the converter must not rebuild it as a plain conv."""

    __module__ = "torch.nn.modules.conv_same_like"  # what makes torch.fx keep a module whole

    def forward(self, x):
        return super().forward(nn.functional.pad(x, (0, 1, 0, 1)))


#: next convs SPD must not rebuild: ours (fuse_bn, so an fx leaf), a MixConv whose 'single' form is one
#: (the property test's example: MixedConv2d(24, 5, [3, 5, 5], s=2, 'same', d=2) after an SPD layer crashed),
#: and a leaf subclass without fuse_bn
SAME_NEIGHBOURS = {
    "Conv2dSame": lambda cin: Conv2dSame(cin, 6, 3, stride=2),
    "MixConv-same-s2": lambda cin: MixedConv2d(cin, 5, [3, 5, 5], stride=2, padding="same", dilation=2),
    "leaf-subclass": lambda cin: _Conv2dSameLike(cin, 6, 3, stride=2),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("neighbour", list(SAME_NEIGHBOURS))
@pytest.mark.parametrize("bn", [False, True])
def test_next_conv_with_its_own_forward_is_not_absorbed(form, neighbour, bn):
    model = randomize_(nn.Sequential(space_to_depth(), SAME_NEIGHBOURS[neighbour](24), *([nn.BatchNorm2d(6)] if bn else [])))
    if neighbour.startswith("MixConv") and bn:
        model[2] = randomize_(nn.BatchNorm2d(5))
    dep, records = convert(model, forms={"space_to_depth": form})
    assert not any(r.form == "absorbed" for r in records)
    if neighbour == "leaf-subclass":  # no fuse_bn and its own forward: the BN is not folded into a plain conv either
        assert not any(r.form == "folded" for r in records)
    for hw in ((10, 10), (12, 6), (6, 14)):
        assert_equivalent(model, dep, torch.randn(3, 6, *hw))
    check_on_runtimes(model, dep, [(2, 6, 10, 6)], batches=(2, 3))


def test_fuse_next_conv_declines_a_conv_with_its_own_forward():
    for form in FORMS:
        spd = to_deploy(space_to_depth(), form)
        assert spd.fuse_next_conv(Conv2dSame(12, 4, 3, stride=2)) is None
        assert spd.fuse_next_conv(_Conv2dSameLike(12, 4, 3)) is None
        assert spd.fuse_next_conv(nn.Conv2d(12, 4, 3)) is not None


#: 'same' padding with dilation on the absorbed conv (torch exports it as auto_pad, which ONNX Runtime
#: refuses with dilation): the property test's example (1×1, dilation 2), symmetric and asymmetric paddings
SAME_DILATED = [dict(kernel_size=1, dilation=2), dict(kernel_size=3, dilation=2), dict(kernel_size=2, dilation=3),
                dict(kernel_size=4, dilation=1, groups=2)]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("order", ["spd", "onnx"])
@pytest.mark.parametrize("kw", SAME_DILATED, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_absorbed_same_padding_is_written_out(form, order, kw):
    model = randomize_(nn.Sequential(space_to_depth(order=order), nn.Conv2d(8, 6, padding="same", **kw), nn.BatchNorm2d(6)))
    dep, records = convert(model, forms={"space_to_depth": form})
    absorbed = kw.get("groups", 1) == 1 or order == "onnx"  # else the block permutation crosses the groups
    if absorbed:
        assert [r.form for r in records][1:] == ["absorbed", "folded"]
        assert not any(isinstance(m, nn.Conv2d) and isinstance(m.padding, str) for m in dep.modules())
    assert_equivalent(model, dep, torch.randn(3, 2, 10, 6))
    check_on_runtimes(model, dep, [(2, 2, 10, 6)], batches=(2, 3), onnx_check=_no_auto_pad if absorbed else None)
