"""MixConv (MixedConv2d): reference vs timm's, every deploy form vs the reference (PyTorch, ONNX
Runtime, OpenVINO), conversion with BN folding, fallback, the timm adapter."""
from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch
from torch import nn

import polyexport
from polyexport.convert import convert, forms_of, to_deploy
from polyexport.deploy_layers.mixconv import ALIGN, MixSplit, aligned_unfit, single_unfit
from polyexport.errors import BadInput
from polyexport.layers.mixconv import Conv2dSame, MixedConv2d
from polyexport.testing import assert_equivalent, check_on_runtimes, randomize_
from tests.foreign import mixconv as timm_mix

FORMS = list(forms_of(MixedConv2d))

# (in, out, kernels, stride, padding, dilation, depthwise, bias)
CONFIGS = {
    "dw35": (16, 16, [3, 5], 1, "", 1, True, False),
    "dw357_s2_rem": (13, 13, [3, 5, 7], 2, "", 1, True, False),
    "dw3579_bias": (24, 24, [3, 5, 7, 9], 1, "", 1, True, True),
    "dw3579_s2_rem": (30, 30, [3, 5, 7, 9], 2, "", 1, True, False),
    "dw35_mult2": (10, 20, [3, 5], 1, "", 1, True, False),
    "dw357_d2": (12, 12, [3, 5, 7], 1, "", 2, True, False),
    "dw35_s2_d2": (12, 12, [3, 5], 2, "", 2, True, False),
    "dw357_s3": (12, 12, [3, 5, 7], 3, "", 1, True, False),
    "dw53_desc": (12, 12, [5, 3], 1, "", 1, True, False),
    "dw3_one": (12, 12, 3, 2, "", 1, True, False),
    "same357_s2": (16, 16, [3, 5, 7], 2, "same", 1, True, False),
    "same3579_s1": (15, 15, [3, 5, 7, 9], 1, "same", 1, True, False),
    "same35_s2_d2": (12, 12, [3, 5], 2, "same", 2, True, True),
    "same24_even": (8, 8, [2, 4], 1, "same", 1, True, False),
    "dense35": (8, 12, [3, 5], 1, "", 1, False, False),
    "dense357_s2_bias": (9, 7, [3, 5, 7], 2, "", 1, False, True),
    "pw11": (16, 24, [1, 1], 1, "", 1, False, False),
    "pw11_same_s2": (17, 23, [1, 1], 2, "same", 1, False, False),
    "valid_k3": (12, 12, [3, 3, 3], 2, "valid", 1, True, False),
    "int_padding": (12, 12, [5, 5], 1, 1, 1, True, False),
    # configurations one conv cannot centre: the converter must fall back to "split"
    "mixed_parity": (8, 8, [3, 4], 1, "same", 1, True, False),
    "reflect": (8, 8, [3, 5], 1, "", 1, True, False, {"padding_mode": "reflect"}),
    "same_clamped": (8, 8, [1, 3], 2, "same", 1, True, False),
}
UNFIT = {"mixed_parity", "same_clamped", "reflect"}  # for "single" and "aligned"


def _expected_form(name: str) -> str:
    """What the converter picks by default: aligned (depthwise), else single, else split."""
    if name in UNFIT:
        return "split"
    return "aligned" if CONFIGS[name][6] else "single"
SIZES = [(1, (7, 7)), (4, (8, 10)), (1, (9, 6))]


def _args(cfg):
    cin, cout, ks, s, pad, d, dw, bias, *extra = cfg
    return (cin, cout, ks), dict(stride=s, padding=pad, dilation=d, depthwise=dw, bias=bias, **(extra[0] if extra else {}))


def _ref(name: str, seed: int = 0) -> MixedConv2d:
    a, kw = _args(CONFIGS[name])
    return randomize_(MixedConv2d(*a, **kw), seed)


def _timm(name: str, seed: int = 0) -> timm_mix.MixedConv2d:
    a, kw = _args(CONFIGS[name])
    return randomize_(timm_mix.MixedConv2d(*a, **kw), seed)


@pytest.mark.parametrize("name", CONFIGS)
def test_reference_matches_timm(name):
    """Same state_dict keys and shapes, same conv types, same output as timm's MixedConv2d."""
    theirs = _timm(name, seed=3)
    ours = MixedConv2d(*_args(CONFIGS[name])[0], **_args(CONFIGS[name])[1])
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert [type(c).__name__ for c in ours.values()] == [type(c).__name__ for c in theirs.values()]
    assert ours.splits == theirs.splits
    for b, hw in SIZES:
        x = torch.randn(b, ours.in_channels, *hw)
        with torch.no_grad():
            torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=0)


def test_timm_padding_rules():
    """'' is symmetric at any stride; 'same' is static at stride 1 and dynamic (Conv2dSame) at stride 2."""
    m = MixedConv2d(8, 8, [3, 5, 7, 9], stride=2, depthwise=True)
    assert [c.padding for c in m.values()] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert all(type(c) is nn.Conv2d for c in m.values())
    assert all(isinstance(c, Conv2dSame) for c in MixedConv2d(8, 8, [3, 5], 2, "same", depthwise=True).values())
    assert all(type(c) is nn.Conv2d for c in MixedConv2d(8, 8, [3, 5], 1, "same", depthwise=True).values())
    assert MixedConv2d(13, 13, [3, 5, 7]).splits == [5, 4, 4]


@pytest.mark.parametrize("name", CONFIGS)
def test_forms_fit_where_expected(name):
    ref = _ref(name)
    assert (single_unfit(ref) is not None) == (name in UNFIT)
    assert (aligned_unfit(ref) is None) == (_expected_form(name) == "aligned")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", CONFIGS)
def test_form_equals_reference(name, form):
    ref = _ref(name)
    fits = {"split": True, "single": name not in UNFIT, "aligned": _expected_form(name) == "aligned"}
    if not fits[form]:
        with pytest.raises(BadInput, match=f"'{form}' is not exact"):
            to_deploy(ref, form)
        return
    dep = to_deploy(ref, form)
    for b, hw in SIZES:
        assert_equivalent(ref, dep, torch.randn(b, ref.in_channels, *hw))


def test_single_uses_the_fewest_weights():
    """Depthwise MixConv becomes one depthwise conv; equal dense splits one grouped conv."""
    dw = to_deploy(_ref("dw3579_s2_rem"), "single")
    assert dw.groups == 30 and dw.kernel_size == (9, 9) and dw.padding == (4, 4)
    assert to_deploy(_ref("pw11"), "single").groups == 2
    assert to_deploy(_ref("dense357_s2_bias"), "single").groups == 1
    assert to_deploy(_ref("dw35_mult2"), "single").groups == 10


def _ops(path: str) -> Counter:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def _conv_groups(path: str) -> list[int]:
    return [a.i for n in onnx.load(path).graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]


RUNTIME_CASES = [("dw3579_bias", "single"), ("same357_s2", "single"), ("pw11", "single"), ("dense357_s2_bias", "single"),
                 ("dw3579_s2_rem", "aligned"), ("same357_s2", "aligned"), ("dw3579_s2_rem", "split"), ("mixed_parity", "split")]


@pytest.mark.parametrize("name,form", RUNTIME_CASES)
def test_runtimes(name, form):
    ref = _ref(name)
    dep = to_deploy(ref, form)
    n = len(ref)

    def onnx_check(path):
        ops = _ops(path)
        if form == "single":
            assert ops["Conv"] == 1 and "Split" not in ops and "Concat" not in ops, ops
            assert _conv_groups(path) == [dep.groups] or (dep.groups == 1 and _conv_groups(path) in ([], [1]))
        else:
            assert ops["Conv"] == len(dep.convs) and ops["Concat"] == 1, ops
            assert form == "aligned" or len(dep.convs) == n

    check_on_runtimes(ref, dep, [(1, ref.in_channels, 11, 12)], batches=(1, 4), onnx_check=onnx_check)


@pytest.mark.parametrize("name", ["dw357_s2_rem", "same357_s2", "pw11_same_s2", "mixed_parity", "same_clamped"])
def test_deploy_swaps_and_folds_bn(name):
    form = _expected_form(name)
    ref = _ref(name)
    model = randomize_(nn.Sequential(ref, nn.BatchNorm2d(ref.out_channels), nn.ReLU()), seed=1)
    deployed, records = convert(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, MixedConv2d)) for m in deployed.modules())
    assert {"name": "0", "type": "MixedConv2d", "form": form} in [r.as_dict() for r in records]
    assert any(r.form == "folded" for r in records)
    for b, hw in SIZES:
        assert_equivalent(model, deployed, torch.randn(b, ref.in_channels, *hw))
    assert_equivalent(model, polyexport.deploy(model), torch.randn(2, ref.in_channels, 9, 9))


def test_fallback_and_forced_form():
    """An unfit configuration falls back to "split" (strict too: "split" is always exact);
    forcing "single" on it is bad input."""
    model = nn.Sequential(_ref("reflect"))
    _, records = convert(model, strict=True)
    assert records[0].form == "split"
    with pytest.raises(BadInput, match="single"):
        convert(model, forms={"MixedConv2d": "single"})
    _, records = convert(nn.Sequential(_ref("dw35")), forms={"MixedConv2d": "split"})
    assert records[0].form == "split"
    _, records = convert(nn.Sequential(_ref("dense35")))  # "aligned" is depthwise only
    assert records[0].form == "single"
    with pytest.raises(BadInput, match="aligned"):
        convert(nn.Sequential(_ref("dense35")), forms={"MixedConv2d": "aligned"})


@pytest.mark.parametrize("name", ["dw3579_s2_rem", "same357_s2", "pw11_same_s2", "dense357_s2_bias", "mixed_parity", "reflect"])
def test_timm_adapter(name):
    theirs = _timm(name, seed=5)
    model = randomize_(nn.Sequential(theirs, nn.BatchNorm2d(theirs.out_channels)), seed=2)
    deployed, records = convert(model)
    rec = next(r for r in records if r.name == "0")
    assert rec.type == "MixedConv2d" and "timm_mixed_conv2d" in rec.note
    assert rec.form == _expected_form(name)
    assert not any(type(m).__name__ in ("MixedConv2d", "BatchNorm2d") for m in deployed.modules())
    for b, hw in SIZES:
        assert_equivalent(model, deployed, torch.randn(b, theirs.in_channels, *hw))


def test_adapter_ignores_other_module_dicts():
    from polyexport.adapters.mixconv import matches_timm

    class MixedConv2d(nn.ModuleDict):  # right name, wrong layout
        pass

    assert not matches_timm(MixedConv2d({"a": nn.Conv2d(2, 2, 3)}))
    assert not matches_timm(nn.ModuleDict({"0": nn.Conv2d(2, 2, 3)}))
    assert matches_timm(timm_mix.MixedConv2d(8, 8, [3, 5], depthwise=True))


def test_aligned_splits_are_aligned():
    """Boundaries move to multiples of ALIGN toward the smaller kernel; only the moved channels grow."""
    dep = to_deploy(randomize_(MixedConv2d(64, 64, [3, 5, 7], depthwise=True)), "aligned")  # splits 22/21/21
    assert all(n % ALIGN == 0 for n in dep.splits) and sum(dep.splits) == 64
    assert [c.kernel_size for c in dep.convs] == [(3, 3), (5, 5), (7, 7)]
    assert dep.splits[0] <= 22 and sum(dep.splits[:2]) <= 43
    desc = to_deploy(randomize_(MixedConv2d(44, 44, [7, 5], depthwise=True)), "aligned")  # 22/22: 7 gains channels
    assert desc.splits[0] % ALIGN == 0 and desc.splits[0] >= 22


def test_split_fuse_bn_slices_per_split():
    ref = _ref("dw357_s2_rem")
    bn = randomize_(nn.BatchNorm2d(ref.out_channels), seed=4)
    split = to_deploy(ref, "split")
    fused = split.fuse_bn(bn)
    assert isinstance(fused, MixSplit)
    x = torch.randn(2, ref.in_channels, 9, 9)
    assert_equivalent(nn.Sequential(ref, bn), fused, x)
