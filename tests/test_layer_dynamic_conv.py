"""Dynamic_conv2d (DY-Conv): every deploy form equals the reference, in PyTorch and exported, at several
batch sizes from one graph; the converter's choices (dynamic batch, TensorRT, fallback); the adapter."""
from __future__ import annotations

import collections
import os
import tempfile

import onnx
import pytest
import torch
from torch import nn

import polyexport
from polyexport.convert import convert, forms_of, registered_layers, to_deploy
from polyexport.errors import BadInput
from polyexport.layers.dynamic_conv import Dynamic_conv2d
from polyexport.exporter import export_onnx
from polyexport.testing import assert_equivalent, check_on_runtimes, max_rel_err, randomize_
from tests.foreign import dynamic_conv as upstream

BANK_FORMS = tuple(f for f in forms_of(Dynamic_conv2d) if f != "static")

# (in, out, kernel, stride, padding, dilation, groups, bias, H, W, batch)
CONFIGS = [
    (8, 16, 3, 1, 1, 1, 1, True, 9, 9, 4),
    (8, 16, 3, 2, 1, 1, 1, False, 10, 10, 4),
    (16, 16, 3, 2, 2, 2, 4, True, 11, 8, 1),
    (16, 16, 5, 1, 2, 1, 16, True, 8, 7, 4),  # depthwise
    (12, 6, 1, 2, 0, 1, 3, True, 9, 9, 4),  # strided pointwise, grouped
    (3, 8, 3, 2, 1, 1, 1, True, 13, 13, 4),  # in_planes == 3: hidden = K upstream
    (8, 8, 4, 1, 1, 1, 2, True, 10, 10, 1),  # even kernel
    (8, 12, 3, 1, 3, 3, 1, False, 12, 12, 4),  # dilation 3
    (8, 12, 3, 2, 0, 1, 1, True, 8, 8, 2),  # no padding
]


def peaked(cfg, seed: int = 0, K: int = 4) -> Dynamic_conv2d:
    """A trained-looking layer whose attention is far from uniform and differs from sample to sample."""
    cin, cout, k, s, p, d, g, bias = cfg[:8]
    ref = randomize_(Dynamic_conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias, K=K,
                                    temperature=4), seed=seed)
    with torch.no_grad():
        ref.attention.fc1.weight.mul_(30)
        ref.attention.fc2.weight.mul_(3)
    return ref


def assert_attention_varies(ref: Dynamic_conv2d, x: torch.Tensor) -> None:
    """A form that ignored the attention (or used sample 0's for all) would fail the parity checks."""
    with torch.no_grad():
        a = ref.attention(x)
    assert a.max() > 1.5 / a.shape[1], "attention is close to uniform"
    if x.shape[0] > 1:
        assert (a.max(0).values - a.min(0).values).max() > 0.2, "attention is the same for every sample"


def bn(c: int, seed: int = 5) -> nn.BatchNorm2d:
    return randomize_(nn.BatchNorm2d(c), seed=seed)


@pytest.mark.parametrize("form", BANK_FORMS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "c{}-{}k{}s{}p{}d{}g{}b{}_{}x{}_n{}".format(*c))
def test_forms_equal_reference(cfg, form):
    ref = peaked(cfg)
    x = torch.randn(cfg[-1], cfg[0], cfg[8], cfg[9], generator=torch.Generator().manual_seed(1))
    assert_attention_varies(ref, x)
    deployed = to_deploy(ref, form)
    assert_equivalent(ref, deployed, x)
    norm = bn(cfg[1])
    assert_equivalent(nn.Sequential(ref, norm).eval(), deployed.fuse_bn(norm), x)


def test_fold_keeps_attention_weighting_of_bias():
    """Σ π_k = 1 holds only for the softmax: the BN shift must not be scaled by the attention."""
    ref = peaked(CONFIGS[0])
    x = torch.randn(4, 8, 9, 9)
    norm = bn(16)
    with torch.no_grad():
        norm.bias.add_(5.0)  # a large shift: any mis-weighting of it shows
    assert_equivalent(nn.Sequential(ref, norm).eval(), to_deploy(ref, "bank_batched").fuse_bn(norm), x)


def test_static_form_exact_only_for_constant_attention():
    cfg = CONFIGS[1]
    static = registered_layers()[Dynamic_conv2d].forms["static"]
    ref = peaked(cfg)
    assert "depends on the input" in static.exact_for(ref)
    with pytest.raises(BadInput, match="depends on the input"):
        to_deploy(ref, "static")
    x = torch.randn(4, 8, 10, 10)
    zero_fc2 = peaked(cfg)
    with torch.no_grad():
        zero_fc2.attention.fc2.weight.zero_()
    one_kernel = peaked(cfg, K=1)
    for r in (zero_fc2, one_kernel):
        assert static.exact_for(r) is None
        conv = to_deploy(r, "static")
        assert type(conv) is nn.Conv2d
        assert_equivalent(r, conv, x)


def _ops(path: str) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(path).graph.node)


def _conv_weights_constant(path: str) -> None:
    model = onnx.load(path)
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert node.input[1] in inits, "a Conv weight is computed at run time"


RUNTIME_CFGS = [CONFIGS[0], CONFIGS[2], CONFIGS[4]]


class SideBySide(nn.Module):
    """Several modules on the same input, their outputs as a tuple: one export and one compile per runtime
    proves them all (the suite stays fast)."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(modules)

    def forward(self, x):
        return tuple(m(x) for m in self.branches)


#: proven side by side in one graph per configuration (sample_conv_blocked in its own: see the CondConv test)
DYNAMIC_FORMS = ["bank_batched", "bank_batched_blocked", "expert_convs", "sample_conv", "output_aggregation"]


def _structure(cfg) -> callable:
    """What the dynamic-batch forms' graph holds (DYNAMIC_FORMS side by side): no batch in any attribute (one
    graph for every batch), constant Conv weights outside sample_conv's Ifs, each If a plain Conv at batch 1
    and a Loop of it otherwise, and each blocked form ending in its unit depthwise conv."""

    def check(path):
        model = onnx.load(path)
        ops = _ops(path)
        assert ops["Softmax"] >= 1  # the identical attention branches may be merged by the simplifier
        _conv_weights_constant(path)
        ifs = [n for n in model.graph.node if n.op_type == "If"]
        assert len(ifs) == 1, ops  # sample_conv
        for node in ifs:
            branches = {a.name: collections.Counter(n.op_type for n in a.g.node) for a in node.attribute}
            assert branches["then_branch"]["Conv"] == 1 and branches["else_branch"]["Loop"] == 1
        # outside the If: the bank_batched forms' patches (one, shared), expert_convs' 4, output_aggregation's 1,
        # bank_batched_blocked's tail
        assert ops["Conv"] == (0 if cfg[2] == 1 else 1) + 4 + 1 + 1, ops
        tails = [n for n in model.graph.node if n.op_type == "Conv" and n.output[0] in {o.name for o in model.graph.output}]
        assert len(tails) == 1 and dict((a.name, a.i) for a in tails[0].attribute)["group"] == cfg[1]

    return check


@pytest.mark.parametrize("cfg", RUNTIME_CFGS, ids=lambda c: f"c{c[0]}-{c[1]}k{c[2]}s{c[3]}g{c[6]}")
def test_dynamic_batch_forms_on_runtimes(cfg):
    ref = peaked(cfg)
    assert_attention_varies(ref, torch.randn(8, cfg[0], cfg[8], cfg[9]))
    norm = bn(cfg[1])
    with_bn = nn.Sequential(ref, norm).eval()
    refs = SideBySide(*[with_bn] * len(DYNAMIC_FORMS)).eval()
    forms = SideBySide(*[to_deploy(ref, f).fuse_bn(norm) for f in DYNAMIC_FORMS]).eval()
    checks = check_on_runtimes(refs, forms, [(2, cfg[0], cfg[8], cfg[9])], batches=(1, 2, 8), onnx_check=_structure(cfg))
    assert {c.batch for c in checks} == {1, 2, 8}
    check_on_runtimes(with_bn, to_deploy(ref, "sample_conv_blocked").fuse_bn(norm), [(2, cfg[0], cfg[8], cfg[9])], batches=(1, 3))


def resnet_block(form: str) -> tuple[nn.Module, nn.Module]:
    """A ResNet basic block of DY-Convs with a strided 1×1 shortcut (reference, deployed): in OpenVINO 2026.4 two
    sample_conv layers in a row with a Relu between them returned garbage while their kernel MatMuls sat outside
    the If (each layer alone was right), so this case stays."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = peaked((16, 24, 3, 2, 1, 1, 1, False, 0, 0, 0)), bn(24, 1)
            self.conv2, self.bn2 = peaked((24, 24, 3, 1, 1, 1, 1, False, 0, 0, 0), seed=1), bn(24, 2)
            self.down, self.bn3 = peaked((16, 24, 1, 2, 0, 1, 1, False, 0, 0, 0), seed=2), bn(24, 3)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.bn3(self.down(x)))

    model = Block().eval()
    return model, convert(model, dynamic_batch=True, forms={"Dynamic_conv2d": form})[0]


def test_sample_conv_resnet_block_on_runtimes():
    model, plain = resnet_block("sample_conv")
    _, blocked = resnet_block("sample_conv_blocked")
    check_on_runtimes(SideBySide(model, model).eval(), SideBySide(plain, blocked).eval(), [(1, 16, 12, 12)], batches=(1, 3))


def test_sample_conv_graph_reshaped_to_a_static_batch():
    """One dynamic-batch graph compiled for a fixed batch (OpenVINO reshaped to 1 and to 8, what a runner may do
    per batch): both If branches must pass shape inference whatever the batch, and the results stay exact."""
    ov = pytest.importorskip("openvino")
    model, deployed = resnet_block("sample_conv")
    x8 = torch.randn(8, 16, 12, 12)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "block.onnx")
        export_onnx(deployed, (x8[:1],), path, input_names=["input"], n_outputs=1, dynamic_batch=True)
        core = ov.Core()
        for b in (1, 8):
            graph = core.read_model(path)
            graph.reshape({"input": [b, 16, 12, 12]})
            compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            got = torch.from_numpy(compiled({"input": x8[:b].numpy()})[0])
            with torch.no_grad():
                assert max_rel_err(model(x8[:b]), got) <= 1e-5


def check_static_batch(ref: nn.Module, deployed: nn.Module, shape: tuple[int, ...], onnx_check=None) -> None:
    """A static-batch form: exported at `shape`, run at that batch only."""
    check_on_runtimes(ref, deployed, [shape], dynamic_batch=False, onnx_check=onnx_check)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[2]], ids=["dense", "grouped-dilated"])
def test_bank_grouped_on_runtimes_at_batch_1(cfg):
    ref = peaked(cfg)

    def onnx_check(path):
        conv = [n for n in onnx.load(path).graph.node if n.op_type == "Conv"]
        assert len(conv) == 1 and [a.i for a in conv[0].attribute if a.name == "group"] == [cfg[6]]

    check_static_batch(ref, to_deploy(ref, "bank_grouped"), (1, cfg[0], cfg[8], cfg[9]), onnx_check)


@pytest.mark.parametrize("first", BANK_FORMS)
def test_bank_grouped_after_any_form_exports_static(first):
    """A timed mix puts any form before bank_grouped. Some forms pad with F.pad, whose exported Pad the exporter
    cannot size while it converts, and bank_grouped once built its kernel's shape from the input's traced size: the
    static graph did not export ("convolution for kernel of unknown shape"; dy_resnet18 on OpenVINO at batch 8)."""
    cfg = CONFIGS[0]
    a, b = peaked(cfg), peaked((16, 16, *cfg[2:]), seed=1)
    ref = nn.Sequential(a, b).eval()
    deployed = nn.Sequential(to_deploy(a, first), to_deploy(b, "bank_grouped")).eval()
    check_static_batch(ref, deployed, (3, cfg[0], cfg[8], cfg[9]))


def test_convert_swaps_and_folds_bn():
    model = peaked(CONFIGS[0])
    model = nn.Sequential(model, bn(16), nn.ReLU()).eval()
    x = torch.randn(4, 8, 9, 9)
    deployed, records = convert(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, Dynamic_conv2d)) for m in deployed.modules())
    rec = {r.name: r for r in records}
    assert (rec["0"].type, rec["0"].form) == ("Dynamic_conv2d", "bank_grouped")
    assert rec["1"].form == "folded"
    assert_equivalent(model, deployed, x)


def test_dynamic_batch_and_tensorrt_choices():
    model = nn.Sequential(peaked(CONFIGS[0]), bn(16)).eval()
    x = torch.randn(4, 8, 9, 9)
    # a dense 3×3: sample_conv (a plain Conv at batch 1, a Loop of it above) where run-time kernels are allowed,
    # OpenVINO its blocked variant, TensorRT constant conv weights only
    for kwargs, want in [({"dynamic_batch": True}, "sample_conv"), ({"dynamic_batch": True, "target": "openvino"}, "sample_conv_blocked"),
                         ({"target": "tensorrt"}, "bank_batched")]:
        deployed, records = convert(model, **kwargs)
        assert records[0].form == want
        assert_equivalent(model, deployed, x)
    with pytest.raises(BadInput, match=r"Dynamic_conv2d.*bank_batched, .*output_aggregation"):
        convert(model, dynamic_batch=True, forms={"Dynamic_conv2d": "bank_grouped"})
    deployed, records = convert(model, dynamic_batch=True, forms={"Dynamic_conv2d": "output_aggregation"})
    assert records[0].form == "output_aggregation"
    assert_equivalent(model, deployed, x)


def test_unsupported_configuration_falls_back():
    """padding='same' (accepted by F.conv2d at stride 1) has no deploy form: kept as reference, or BadInput."""
    ref = randomize_(Dynamic_conv2d(8, 8, 3, padding="same", K=4, temperature=4))
    model = nn.Sequential(ref).eval()
    deployed, records = convert(model)
    assert records[0].form == "reference" and "padding='same'" in records[0].note
    assert_equivalent(model, deployed, torch.randn(2, 8, 7, 7))
    with pytest.raises(BadInput, match="Dynamic_conv2d"):
        convert(model, strict=True)


def test_upstream_state_dict_loads_strict():
    theirs = upstream.Dynamic_conv2d(16, 32, 3, stride=2, padding=1, groups=2, K=4, temperature=31)
    ours = Dynamic_conv2d(16, 32, 3, stride=2, padding=1, groups=2, K=4, temperature=31)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 16, 9, 9)
    assert_equivalent(theirs.eval(), ours.eval(), x)
    ours.update_temperature()
    assert ours.attention.temperature == 28


def test_adapter_recognises_upstream_layer():
    theirs = randomize_(upstream.Dynamic_conv2d(8, 16, 3, padding=1, K=4, temperature=4), seed=3)
    with torch.no_grad():
        theirs.attention.fc1.weight.mul_(30)
    model = nn.Sequential(theirs, bn(16), nn.ReLU()).eval()
    x = torch.randn(4, 8, 9, 9)
    deployed, records = convert(model, dynamic_batch=True, target="tensorrt")
    assert records[0].form == "bank_batched" and "dynamic_conv.kaijieshi7" in records[0].note
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert_equivalent(model, deployed, x)
    assert_equivalent(model, polyexport.deploy(model), x)
