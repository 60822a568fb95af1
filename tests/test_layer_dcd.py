"""DCD (liyunsheng13/dcd conv_dy / conv_basic_dy / DYModule): the decomposed form is exact, batch-dynamic,
constant-weight, folds a following BN, and the official classes are recognised."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import polyexport
from polyexport.convert import convert, to_deploy
from polyexport.deploy_layers.dcd import adaptive_pool_matrix, aggregated_exact_for
from polyexport.errors import BadInput
from polyexport.layers import dcd
from polyexport.testing import assert_equivalent, check_on_runtimes, randomize_
from tests.foreign import dcd as official


def lively(m: nn.Module, seed: int) -> nn.Module:
    """Random weights, with the pooled branch amplified so Φ(x) and Λ(x) differ clearly between samples
    (fan-in scaled weights on pooled noise would make the dynamic part almost constant)."""
    randomize_(m, seed)
    with torch.no_grad():
        m.fc[0].weight.mul_(10.0)
        m.fc_phi.weight.mul_(3.0)
    return m.eval()


def dynamic_spread(m: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """How much Λ(x) and Φ(x) vary across the batch (max over entries of max − min)."""
    with torch.no_grad():
        y = m.fc(m.avg_pool(x).flatten(1))
        scale, phi = m.hs(m.fc_scale(y)), m.fc_phi(y)
    return (scale.amax(0) - scale.amin(0)).max().item(), (phi.amax(0) - phi.amin(0)).max().item()


def in_channels(m: nn.Module) -> int:
    return m.conv.in_channels


CONFIGS = [
    lambda: dcd.conv_dy(16, 16, 3, 1, 1),
    lambda: dcd.conv_dy(16, 32, 3, 2, 1),
    lambda: dcd.conv_dy(64, 16, 1, 1, 0),
    lambda: dcd.conv_dy(36, 24, 5, 2, 2),
    lambda: dcd.conv_basic_dy(8, 8, 1),
    lambda: dcd.conv_basic_dy(8, 16, 2),
    lambda: dcd.DYModule(16, 96),  # expanding: 2×2 pooling
    lambda: dcd.DYModule(96, 24),  # projecting: global pooling
    lambda: dcd.DYModule(24, 144, fc_squeeze=4),
]


@pytest.mark.parametrize("make", CONFIGS)
@pytest.mark.parametrize("hw", [(8, 8), (9, 7), (5, 6)])
@pytest.mark.parametrize("batch", [1, 4])
def test_decomposed_equals_reference(make, hw, batch):
    ref = lively(make(), seed=hw[0] * 10 + batch)
    x = torch.randn(batch, in_channels(ref), *hw) + torch.randn(batch, in_channels(ref), 1, 1)
    if batch > 1:
        scale_spread, phi_spread = dynamic_spread(ref, x)
        assert scale_spread > 0.1 and phi_spread > 0.1, "dynamic part too flat to test anything"
    deployed = to_deploy(ref, "decomposed")
    assert_equivalent(ref, deployed, x)
    bn = randomize_(nn.BatchNorm2d(ref.conv.out_channels), seed=7)
    assert_equivalent(nn.Sequential(ref, bn).eval(), deployed.fuse_bn(bn), x)


@pytest.mark.parametrize("make", [c for i, c in enumerate(CONFIGS) if i in (2, 6, 7, 8)] + [lambda: dcd.conv_dy(16, 32, 1, 2, 0)],
                         ids=["conv_dy-1x1", "DYModule-expand", "DYModule-project", "DYModule-squeeze4", "conv_dy-1x1-s2"])
@pytest.mark.parametrize("hw", [(8, 8), (9, 7)])
def test_aggregated_equals_reference(make, hw):
    """W(x) = Λ⊙W0 + PΦ'Q' built per sample: equal to the reference, with a BN after it folded."""
    ref = lively(make(), seed=hw[0])
    x = torch.randn(4, in_channels(ref), *hw) + torch.randn(4, in_channels(ref), 1, 1)
    scale_spread, phi_spread = dynamic_spread(ref, x)
    assert scale_spread > 0.1 and phi_spread > 0.1
    deployed = to_deploy(ref, "aggregated")
    assert_equivalent(ref, deployed, x)
    bn = randomize_(nn.BatchNorm2d(ref.conv.out_channels), seed=7)
    assert_equivalent(nn.Sequential(ref, bn).eval(), deployed.fuse_bn(bn), x)


def test_aggregated_declines_kxk():
    assert "1×1" in aggregated_exact_for(dcd.conv_basic_dy(8, 8, 1))
    assert aggregated_exact_for(dcd.DYModule(16, 96)) is None
    with pytest.raises(BadInput, match="1×1"):
        to_deploy(dcd.conv_dy(16, 16, 3, 1, 1), "aggregated")


def test_aggregated_on_runtimes_without_conv():
    """One graph, batches 1, 2, 8: no Conv at all (every weight a constant or a MatMul operand: TensorRT-safe)."""
    model = nn.Sequential(lively(dcd.DYModule(16, 96), 3), randomize_(nn.BatchNorm2d(96), 1), nn.ReLU6(),
                          lively(dcd.DYModule(96, 24), 4), randomize_(nn.BatchNorm2d(24), 2)).eval()
    deployed, records = convert(model, dynamic_batch=True, forms={"DYModule": "aggregated"})
    assert [r.form for r in records if r.type == "DYModule"] == ["aggregated", "aggregated"]

    def onnx_check(path):
        ops = Counter(n.op_type for n in onnx.load(path).graph.node)
        assert ops["Conv"] == 0 and ops["BatchNormalization"] == 0 and ops["HardSigmoid"] == 4, ops

    shape = (1, 16, 9, 8)
    check_on_runtimes(model, deployed, [shape], batches=(1, 2, 8), onnx_check=onnx_check)


def test_ignoring_the_dynamic_part_would_fail():
    """Guard against a vacuous test: a form that dropped Φ(x) (kept only the shortcut) would fail."""
    ref = lively(dcd.conv_dy(16, 16, 3, 1, 1), seed=3)
    x = torch.randn(4, 16, 8, 8) + torch.randn(4, 16, 1, 1)
    with torch.no_grad():
        want = ref(x)
        d = to_deploy(ref, "decomposed")
        d.fc_phi.weight.zero_()  # Φ' = I: the shortcut alone
        assert (d(x) - want).abs().max() > 1e-2 * want.abs().max()


@pytest.mark.parametrize("h,w,o", [(7, 7, 2), (9, 6, 2), (5, 5, 3), (8, 8, 2)])
def test_adaptive_pool_matrix_matches_torch(h, w, o):
    x = torch.randn(2, 3, h, w)
    want = nn.AdaptiveAvgPool2d(o)(x).flatten(2)
    got = x.flatten(2) @ adaptive_pool_matrix(h, w, o, o)
    assert torch.allclose(got, want, atol=1e-6)


def _onnx_structure(n_conv: int):
    def check(path: str) -> None:
        g = onnx.load(path).graph
        ops = Counter(n.op_type for n in g.node)
        inits = {i.name for i in g.initializer}
        convs = [n for n in g.node if n.op_type == "Conv"]
        assert len(convs) == n_conv, ops  # static conv, q (bn1 folded), p — no per-sample kernels
        assert all(n.input[1] in inits for n in convs), "a Conv weight is computed at run time"
        assert all(dict((a.name, a.i) for a in n.attribute).get("group", 1) == 1 for n in convs)
        assert ops["BatchNormalization"] == 0 and ops["MatMul"] >= 1, ops
    return check


@pytest.mark.parametrize("make,hw", [
    (lambda: dcd.conv_dy(16, 32, 3, 2, 1), (9, 10)),
    (lambda: dcd.conv_basic_dy(8, 8, 1), (7, 9)),
    (lambda: dcd.DYModule(16, 96), (8, 8)),
])
def test_runtimes_dynamic_batch(make, hw):
    ref = lively(make(), seed=5)
    shape = (1, in_channels(ref), *hw)
    x8 = torch.from_numpy(np.random.default_rng(1).standard_normal((8, *shape[1:]), dtype=np.float32))
    assert min(dynamic_spread(ref, x8)) > 0.05, "dynamic part too flat on the runtime inputs"
    check_on_runtimes(ref, to_deploy(ref, "decomposed"), [shape], batches=(1, 2, 8), onnx_check=_onnx_structure(3))


def test_deploy_swaps_and_folds_bn():
    model = nn.Sequential(dcd.conv_dy(16, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(),
                          dcd.DYModule(16, 64), nn.BatchNorm2d(64))
    for i, m in enumerate(model):
        if isinstance(m, dcd.DCD_TYPES):
            lively(m, i)
        else:
            randomize_(m, i)
    model.eval()
    deployed, records = convert(model, dynamic_batch=True, target="tensorrt")
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) for m in deployed.modules())
    got = {(r.name, r.type, r.form) for r in records}
    assert {("0", "conv_dy", "decomposed"), ("3", "DYModule", "aggregated"), ("1", "BatchNorm2d", "folded"),
            ("4", "BatchNorm2d", "folded")} <= got
    x = torch.randn(3, 16, 9, 9) + torch.randn(3, 16, 1, 1)
    assert_equivalent(model, polyexport.deploy(model), x)
    assert_equivalent(model, deployed, x)


@pytest.mark.parametrize("make", [
    lambda m: m.conv_dy(16, 32, 3, 2, 1),
    lambda m: m.conv_basic_dy(8, 16, 2),
    lambda m: m.DYModule(16, 96),
    lambda m: m.DYModule(96, 24, 4),
])
def test_official_classes(make):
    foreign = lively(make(official), seed=2)
    ours = make(dcd)
    ours.load_state_dict(foreign.state_dict(), strict=True)  # same names and shapes
    x = torch.randn(2, in_channels(foreign), 9, 8) + torch.randn(2, in_channels(foreign), 1, 1)
    assert_equivalent(foreign, ours.eval(), x)
    model = nn.Sequential(foreign, randomize_(nn.BatchNorm2d(foreign.conv.out_channels), 4)).eval()
    deployed, records = convert(model)
    want = "aggregated" if foreign.conv.kernel_size == (1, 1) else "decomposed"  # the preferred order; 3×3: aggregated declines
    assert records[0].form == want and type(foreign).__name__ == records[0].type
    assert "adapter" in records[0].note and records[1].form == "folded"
    assert_equivalent(model, deployed, x)
