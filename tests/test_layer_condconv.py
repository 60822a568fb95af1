"""timm's CondConv2d: every deploy form keeps forward(x, routing_weights) and equals the reference, in
PyTorch and exported (one graph, batches 1, 2, 8); BN folding with a sigmoid routing that does not sum
to 1; conversion of a whole CondConvResidual block; the timm adapter."""
from __future__ import annotations

import collections
import functools

import onnx
import pytest
import torch
from torch import nn

from polyexport.convert import convert, forms_of, to_deploy
from polyexport.errors import BadInput
from polyexport.layers.condconv import CondConv2d, CondConvResidual, SqueezeExcite
from polyexport.testing import assert_equivalent, check_on_runtimes, randomize_
from tests.foreign import condconv as timm
from tests.layer_configs import RoutedHarness
from tests.test_layer_dynamic_conv import check_static_batch

FORMS = tuple(forms_of(CondConv2d))
#: proven side by side in one graph per configuration (see test_dynamic_batch_forms_on_runtimes for why
#: sample_conv_blocked has its own graph)
DYNAMIC_FORMS = ("bank_batched", "bank_batched_blocked", "expert_convs", "sample_conv", "output_aggregation")

# (in, out, kernel, stride, padding, dilation, groups, bias, H, W, batch, experts)
CONFIGS = [
    (8, 16, 3, 1, "", 1, 1, False, 9, 9, 4, 4),
    (8, 16, 3, 2, "", 1, 1, True, 10, 10, 4, 4),
    (16, 16, 3, 2, "same", 1, 16, False, 11, 8, 4, 3),  # depthwise, dynamic (TF) 'same' padding
    (16, 16, 5, 1, "", 2, 16, True, 12, 12, 1, 4),  # depthwise, dilated
    (12, 24, 1, 1, "", 1, 1, False, 7, 7, 4, 4),  # pointwise expansion
    (12, 6, 1, 2, "", 1, 3, True, 9, 9, 4, 2),  # strided grouped pointwise
    (8, 8, 4, 2, "same", 1, 2, True, 9, 10, 4, 4),  # even kernel, 'same'
    (8, 12, 3, 1, 0, 1, 1, True, 8, 8, 2, 8),  # no padding, 8 experts
]


def layer(cfg, seed: int = 0) -> CondConv2d:
    cin, cout, k, s, p, d, g, bias = cfg[:8]
    return randomize_(CondConv2d(cin, cout, k, s, p, d, g, bias=bias, num_experts=cfg[11]), seed=seed)


def inputs(cfg, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg[10], cfg[0], cfg[8], cfg[9], generator=gen)
    routing = torch.rand(cfg[10], cfg[11], generator=gen) * 0.9 + 0.05  # sigmoid-like values, sums ≠ 1
    return x, routing


def bn(c: int, seed: int = 5) -> nn.BatchNorm2d:
    return randomize_(nn.BatchNorm2d(c), seed=seed)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "c{}-{}k{}s{}p{!r}d{}g{}b{}_{}x{}_n{}e{}".format(*c))
def test_forms_equal_reference(cfg, form):
    ref = layer(cfg)
    x, routing = inputs(cfg)
    if cfg[10] > 1:
        assert (routing.max(0).values - routing.min(0).values).max() > 0.2, "routing must differ across the batch"
    deployed = to_deploy(ref, form)
    assert_equivalent(ref, deployed, x, routing)
    norm = bn(cfg[1])
    with torch.no_grad():
        norm.bias.add_(3.0)  # a large shift: scaling it by the routing (which does not sum to 1) would show
    assert (routing.sum(1) - 1).abs().max() > 0.3
    assert_equivalent(RoutedHarness(ref, [norm]).eval(), deployed.fuse_bn(norm), x, routing)


RUNTIME_CFGS = [CONFIGS[1], CONFIGS[2], CONFIGS[4]]


class SideBySide(nn.Module):
    """Several (x, routing) modules on the same inputs, their outputs as a tuple: one export proves them all."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(modules)

    def forward(self, x, routing):
        return tuple(m(x, routing) for m in self.branches)


@pytest.mark.parametrize("cfg", RUNTIME_CFGS, ids=["dense-s2", "dw-same", "pw"])
def test_dynamic_batch_forms_on_runtimes(cfg):
    ref = layer(cfg)
    norm = bn(cfg[1])

    def onnx_check(path):
        model = onnx.load(path)
        inits = {i.name for i in model.graph.initializer}
        assert all(n.input[1] in inits for n in model.graph.node if n.op_type == "Conv"), "computed Conv weight outside an If"
        ifs = [n for n in model.graph.node if n.op_type == "If"]
        assert len(ifs) == 1  # sample_conv: the run-time kernels' Convs sit inside
        for node in ifs:
            branches = {a.name: collections.Counter(n.op_type for n in a.g.node) for a in node.attribute}
            assert branches["then_branch"]["Conv"] == 1 and branches["else_branch"]["Loop"] == 1

    with_bn = RoutedHarness(ref, [norm]).eval()
    checks = check_on_runtimes(SideBySide(*[with_bn] * len(DYNAMIC_FORMS)).eval(),
                               SideBySide(*[to_deploy(ref, f).fuse_bn(norm) for f in DYNAMIC_FORMS]).eval(),
                               [(2, cfg[0], cfg[8], cfg[9]), (2, cfg[11])], batches=(1, 2, 8), onnx_check=onnx_check)
    assert {c.batch for c in checks} == {1, 2, 8}
    # its own graph: side by side with the five above and converted by ov.convert_model (the runner's path),
    # OpenVINO 2026.4 returned garbage for sample_conv_blocked's output alone (each pair of them was right)
    check_on_runtimes(with_bn, to_deploy(ref, "sample_conv_blocked").fuse_bn(norm), [(2, cfg[0], cfg[8], cfg[9]), (2, cfg[11])],
                      batches=(1, 3))


def block(seed: int = 0, **kw) -> CondConvResidual:
    se = functools.partial(SqueezeExcite, rd_ratio=0.25)
    args = dict(in_chs=16, out_chs=16, dw_kernel_size=3, exp_ratio=2.0, se_layer=se, num_experts=4)
    m = randomize_(CondConvResidual(**{**args, **kw}), seed=seed)
    with torch.no_grad():
        m.routing_fn.weight.mul_(20)  # routing far from constant across samples
    return m


def test_block_conversion_folds_all_bns():
    model = nn.Sequential(block(), block(seed=1, stride=2, out_chs=24, pad_type="same")).eval()
    x = torch.randn(4, 16, 11, 11)
    # the preferred order (measured, _kernel_bank.preference): static graphs bank_grouped; dynamic-batch ones
    # expert_convs for the depthwise conv, bank_batched for the 1×1 ones (OpenVINO: their blocked variant)
    for kwargs, pointwise, depthwise in [({}, "bank_grouped", "bank_grouped"),
                                         ({"dynamic_batch": True}, "bank_batched", "expert_convs"),
                                         ({"dynamic_batch": True, "target": "openvino"}, "bank_batched_blocked", "expert_convs"),
                                         ({"target": "tensorrt"}, "bank_batched", "expert_convs")]:
        deployed, records = convert(model, **kwargs)
        forms = {r.name: (r.type, r.form) for r in records}
        for i in ("0", "1"):
            for conv in ("conv_pw", "conv_dw", "conv_pwl"):
                assert forms[f"{i}.{conv}"] == ("CondConv2d", depthwise if conv == "conv_dw" else pointwise)
        assert not any(isinstance(m, (nn.BatchNorm2d, CondConv2d)) for m in deployed.modules())
        assert_equivalent(model, deployed, x)
    with pytest.raises(BadInput, match=r"CondConv2d.*bank_batched, .*output_aggregation"):
        convert(model, dynamic_batch=True, forms={"CondConv2d": "bank_grouped"})


def test_a_per_sample_loop_then_a_grouped_bank_exports():
    """A mix the form choice can make (cc_efficientnet_b0 on OpenVINO did): a `sample_conv` layer, whose If the
    exporter could not type, then a `bank_grouped` one whose kernel is computed from a routing of that output.
    The If's output had no sizes, so neither had anything after it, and the later conv's run-time kernel could
    not be exported ("convolution for kernel of unknown shape")."""
    model = nn.Sequential(block(), block(seed=1)).eval()
    first = {"0.conv_dw": "sample_conv", "0.conv_pw": "bank_batched", "0.conv_pwl": "bank_batched"}

    def ranker(name: str, ref: nn.Module, forms: list) -> list:
        want = first.get(name, "bank_grouped")
        return sorted(forms, key=lambda f: f.name != want)

    deployed, records = convert(model, ranker=ranker)
    assert {r.name: r.form for r in records if r.type == "CondConv2d"} == {
        f"{i}.{c}": first.get(f"{i}.{c}", "bank_grouped") for i in "01" for c in ("conv_pw", "conv_dw", "conv_pwl")}
    check_static_batch(model, deployed, (2, 16, 9, 9))


def test_converted_block_on_runtimes():
    model = block()
    deployed, _ = convert(model, dynamic_batch=True)
    check_on_runtimes(model, deployed, [(2, 16, 9, 9)], batches=(1, 2, 8))
    grouped, _ = convert(model)
    check_static_batch(model, grouped, (1, 16, 9, 9))


def test_timm_state_dicts_load_strict():
    theirs = timm.CondConv2d(8, 16, 3, stride=2, padding="same", groups=2, bias=True, num_experts=4)
    ours = CondConv2d(8, 16, 3, stride=2, padding="same", groups=2, bias=True, num_experts=4)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x, routing = torch.randn(3, 8, 9, 9), torch.rand(3, 4)
    assert_equivalent(theirs, ours, x, routing)
    se = functools.partial(timm.SqueezeExcite, rd_ratio=0.25)
    their_block = randomize_(timm.CondConvResidual(16, 16, exp_ratio=2.0, se_layer=se, num_experts=4))
    our_block = block()
    our_block.load_state_dict(their_block.state_dict(), strict=True)
    assert_equivalent(their_block.eval(), our_block.eval(), torch.randn(3, 16, 9, 9))


def test_adapter_converts_timm_condconv():
    theirs = randomize_(timm.CondConv2d(8, 16, 3, stride=2, padding="same", bias=True, num_experts=4))
    model = RoutedHarness(theirs, [bn(16)]).eval()
    x, routing = torch.randn(4, 8, 9, 9), torch.sigmoid(3 * torch.randn(4, 4))
    deployed, records = convert(model, dynamic_batch=True)
    rec = {r.name: r for r in records}
    assert rec["layer"].form == "sample_conv" and "condconv.timm" in rec["layer"].note  # dense 3×3
    assert rec["post.0"].form == "folded"
    assert_equivalent(model, deployed, x, routing)


def test_timm_block_converted_through_adapter():
    """timm's own block: its three CondConv2d are swapped (the routing stays in the block); BatchNormAct2d
    is not a torch.nn module, so it is traced through and left unfolded, which keeps its activation."""
    se = functools.partial(timm.SqueezeExcite, rd_ratio=0.25)
    model = randomize_(timm.CondConvResidual(16, 16, exp_ratio=2.0, se_layer=se, num_experts=4))
    with torch.no_grad():
        model.routing_fn.weight.mul_(20)
    deployed, records = convert(model, dynamic_batch=True)
    assert [(r.name, r.form) for r in records] == [("conv_pw", "bank_batched"), ("conv_dw", "expert_convs"), ("conv_pwl", "bank_batched")]
    assert not any(type(m).__name__ == "CondConv2d" for m in deployed.modules())
    assert_equivalent(model, deployed, torch.randn(4, 16, 9, 9))
    check_on_runtimes(model, deployed, [(2, 16, 9, 9)], batches=(1, 8))
