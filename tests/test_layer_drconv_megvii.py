"""The authors' DRConv (megvii-research/DRConv): every form equals the reference for every geometry, with the
mask at the output size or resized (nearest, odd sizes), BN folded; the reference's backward is the CUDA
kernel's; the forms run from one dynamic-batch graph on the runtimes; the converter swaps upstream's layers
(via the adapter) and folds BN; the paper's model converts with no DRConv left as reference."""
from __future__ import annotations

import copy
from collections import Counter

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polyexport import zoo
from polyexport.adapters import drconv as shallowtoil_adapter
from polyexport.adapters import drconv_megvii as adapter
from polyexport.convert import convert, forms_of, to_deploy
from polyexport.deploy_layers.drconv_megvii import nearest_indices, resize_mask
from polyexport.errors import BadInput
from polyexport.layers.drconv import DRConv2d
from polyexport.layers.drconv_megvii import DRConv, deformable_matmul
from polyexport.testing import assert_equivalent, check_on_runtimes, drawn_inputs, max_rel_err, randomize_
from polyexport.zoo.shufflenetv2 import conv_bn_relu
from tests.foreign import drconv_megvii as upstream

FORMS = tuple(forms_of(DRConv))


def lively(m: nn.Module, seed: int) -> nn.Module:
    """Random weights; every routing_fc amplified so that the regions' kernels differ clearly between samples."""
    randomize_(m, seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (DRConv, upstream.DRConv)):
                mod.routing_fc.weight.mul_(8.0)
    return m.eval()


def inputs(batch: int, cin: int, hw: tuple[int, int]) -> torch.Tensor:
    """Random maps with a per-sample offset, so that the spatial means (the routing's input) differ per sample."""
    return torch.randn(batch, cin, *hw) + 0.5 * torch.randn(batch, cin, 1, 1)


def routing_spread(m: DRConv, x: torch.Tensor) -> float:
    """How much the routing coefficients differ between the samples, relative to their scale."""
    with torch.no_grad():
        a = torch.sigmoid(m.routing_fc(x.mean((2, 3))))
    return ((a.amax(0) - a.amin(0)).max() / a.abs().max()).item()


class WithBN(nn.Module):
    def __init__(self, layer: nn.Module, *bns: nn.BatchNorm2d) -> None:
        super().__init__()
        self.layer, self.bns = layer, nn.Sequential(*bns)

    def forward(self, x, mask, alpha=None):
        return self.bns(self.layer(x, mask, alpha))


CONFIGS = [  # (in, out, k, stride, padding, dilation, groups_num, num_W, bias, input hw)
    (8, 8, 1, 1, 0, 1, 8, 8, False, (8, 8)),  # the paper's units: 1×1, 8 regions, 8 bases
    (6, 10, 1, 1, 0, 1, 4, 3, True, (9, 7)),
    (6, 10, 3, 1, 1, 1, 4, 8, True, (9, 8)),
    (5, 7, 3, 2, 1, 1, 8, 4, False, (7, 7)),  # 7 → 4
    (4, 6, 3, 2, 1, 1, 3, 2, True, (15, 10)),  # 15 → 8
    (4, 6, 3, 1, 2, 2, 3, 5, True, (8, 9)),
    (6, 4, 1, 2, 0, 1, 2, 8, True, (9, 10)),  # 1×1 stride 2
    (4, 5, 1, 1, 1, 1, 4, 4, True, (6, 7)),  # 1×1 with padding: upstream takes the im2col path
    (3, 5, 5, 2, 2, 1, 5, 2, True, (11, 9)),
]


def _out_size(cfg) -> tuple[int, int]:
    _, _, k, s, p, d, *_, (h, w) = cfg
    return (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1


def _mask_size(cfg, where: str) -> tuple[int, int]:
    oh, ow = _out_size(cfg)
    return {"output": (oh, ow), "input": cfg[-1], "down": (2 * oh + 1, 2 * ow - 1), "up": ((oh + 1) // 2, (ow + 1) // 2)}[where]


def _layer(cfg, seed: int) -> DRConv:
    cin, cout, k, s, p, d, g, w, bias, _ = cfg
    return lively(DRConv(cin, cout, k, s, p, bias=bias, dilation=d, groups_num=g, num_W=w), seed)


def _mask_and_alpha(batch: int, groups: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = torch.softmax(3 * torch.randn(batch, groups, *size), 1)
    return alpha.argmax(1), alpha


FORM_CASES = [(f, i) for i, c in enumerate(CONFIGS) for f in FORMS if f != "prescaled" or c[2] == 1]  # prescaled: 1×1


@pytest.mark.parametrize("form,i", FORM_CASES, ids=[f"{f}-c{i}" for f, i in FORM_CASES])
@pytest.mark.parametrize("where", ["output", "input", "down", "up"])
@pytest.mark.parametrize("batch", [1, 4])
def test_forms_equal_reference(form, i, where, batch):
    cfg = CONFIGS[i]
    ref = _layer(cfg, seed=batch + len(where))
    x = inputs(batch, cfg[0], cfg[-1])
    mask, alpha = _mask_and_alpha(batch, ref.groups_num, _mask_size(cfg, where))
    resized = resize_mask(mask, _out_size(cfg))
    assert all(len(torch.unique(m)) >= 2 for m in resized), "a sample uses a single region: the selection is untested"
    if batch > 1:
        assert routing_spread(ref, x) > 0.1, "the routing hardly depends on the input"
    deployed = to_deploy(ref, form)
    assert_equivalent(ref, deployed, x, mask, alpha)
    assert_equivalent(ref, deployed, x, mask)  # Alpha only shapes gradients: the forms ignore it
    bn = randomize_(nn.BatchNorm2d(cfg[1]), seed=9)
    assert_equivalent(WithBN(ref, bn).eval(), deployed.fuse_bn(bn), x, mask, alpha)


def test_fuse_bn_twice():
    cfg = CONFIGS[1]
    ref = _layer(cfg, seed=1)
    bn1, bn2 = randomize_(nn.BatchNorm2d(cfg[1]), 1), randomize_(nn.BatchNorm2d(cfg[1]), 2)
    x, (mask, alpha) = inputs(2, cfg[0], cfg[-1]), _mask_and_alpha(2, ref.groups_num, cfg[-1])
    for form in FORMS:
        assert_equivalent(WithBN(ref, bn1, bn2).eval(), to_deploy(ref, form).fuse_bn(bn1).fuse_bn(bn2), x, mask, alpha)


@pytest.mark.parametrize("src,dst", [((7, 7), (4, 4)), ((15, 8), (8, 4)), ((8, 8), (4, 4)), ((5, 3), (9, 7)),
                                     ((13, 6), (6, 13)), ((4, 4), (4, 4)), ((28, 28), (14, 14)), ((7, 1), (4, 1))])
def test_mask_resize_is_upstreams_nearest_interpolate(src, dst):
    mask = torch.randint(0, 8, (3, *src))
    want = F.interpolate(mask.float().unsqueeze(1), dst).squeeze(1).long()
    assert torch.equal(resize_mask(mask, dst), want)


def test_mask_resize_is_not_a_plain_stride():
    """7 → 4 takes rows 0, 1, 3, 5 (not 0, 2, 4, 6): a form subsampling by the stride would pick other regions."""
    assert nearest_indices((7, 7), (4, 4)) == ((0, 1, 3, 5), (0, 1, 3, 5))
    assert nearest_indices((15, 15), (8, 8))[0] == (0, 1, 3, 5, 7, 9, 11, 13)
    mask = torch.randint(0, 8, (2, 7, 7))
    assert not torch.equal(resize_mask(mask, (4, 4)), mask[:, ::2, ::2])


def test_a_form_ignoring_the_mask_or_the_sample_would_fail():
    """Guards against vacuous parity: region 0 everywhere, another sample's routing, or the mask subsampled
    instead of resized as upstream does, each changes the output well beyond the tolerance."""
    cfg = CONFIGS[3]  # 3×3 stride 2, 7 → 4
    ref = _layer(cfg, seed=2)
    x = inputs(4, cfg[0], cfg[-1])
    mask, alpha = _mask_and_alpha(4, ref.groups_num, cfg[-1])
    with torch.no_grad():
        want = ref(x, mask, alpha)
        cols = F.unfold(x, 3, padding=1, stride=2).reshape(4, -1, 4, 4)
        kernels = ref.kernels(x)
        assert max_rel_err(want, deformable_matmul(cols, kernels, resize_mask(mask, (4, 4)))) < 1e-6
        wrong = {
            "region 0 everywhere": deformable_matmul(cols, kernels, torch.zeros(4, 4, 4, dtype=torch.long)),
            "another sample's routing": deformable_matmul(cols, ref.kernels(x.roll(1, 0)), resize_mask(mask, (4, 4))),
            "mask subsampled by the stride": deformable_matmul(cols, kernels, mask[:, ::2, ::2]),
            "another sample's mask": deformable_matmul(cols, kernels, resize_mask(mask.roll(1, 0), (4, 4))),
        }
    for what, got in wrong.items():
        assert max_rel_err(want, got) > 0.05, what


def test_prescaled_declines_kxk_with_a_reason():
    ref = _layer(CONFIGS[2], seed=3)
    for cfg in CONFIGS:
        if cfg[2] != 1:
            with pytest.raises(BadInput, match="1×1 kernels only"):
                to_deploy(_layer(cfg, seed=3), "prescaled")
    deployed, records = convert(WithBN(ref, randomize_(nn.BatchNorm2d(10), 1)), forms=None)
    assert records[0].form in ("basis", "candidates")
    with pytest.raises(BadInput, match="1×1 kernels only"):
        convert(WithBN(ref, randomize_(nn.BatchNorm2d(10), 1)), forms={"DRConv": "prescaled"})


# --- the reference's backward is upstream's CUDA backward -----------------------------------------------------

def _straight_through(ref: DRConv, x, mask, alpha, use_alpha: bool, beta: float):
    """An independent autograd expression with the CUDA kernel's gradients: the hard selection (upstream's
    forward, by the re-creation's loop) for x; for the kernels the selected one (use_alpha=False) or the
    Alpha-weighted candidates (use_alpha=True); beta·Σ_j candidate_j for Alpha. Its value is the hard one."""
    kernels = ref.kernels(x)
    oh, ow = ref.output_size(*x.shape[-2:])
    cols = F.unfold(x, ref.kernel_size, ref.dilation, ref.padding, ref.stride).reshape(x.shape[0], -1, oh, ow)
    if mask.shape[-2:] != (oh, ow):
        mask = F.interpolate(mask.float().unsqueeze(1), (oh, ow)).squeeze(1)
        alpha = F.interpolate(alpha, (oh, ow))
    cand = torch.einsum("nocj,ncp->njop", kernels, cols.flatten(2))  # every region's output
    if use_alpha:
        out = upstream.deformable_matmul3_loop(cols, kernels.detach(), mask)
        soft = (alpha.detach().flatten(2).unsqueeze(2) * torch.einsum("nocj,ncp->njop", kernels, cols.detach().flatten(2))).sum(1)
        out = out + (soft - soft.detach()).reshape(out.shape)
    else:
        out = upstream.deformable_matmul3_loop(cols, kernels, mask)
    st = beta * ((alpha - alpha.detach()).flatten(2).unsqueeze(2) * cand.detach()).sum(1)
    out = out + st.reshape(out.shape)
    return out if ref.bias is None else out + ref.bias.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("use_alpha", [False, True])
@pytest.mark.parametrize("cfg", [CONFIGS[3], CONFIGS[0]], ids=["k3s2-resized", "1x1"])
def test_backward_is_the_cuda_kernels(cfg, use_alpha):
    ref = _layer(cfg, seed=5).train()
    x = inputs(3, cfg[0], cfg[-1]).requires_grad_()
    logits = torch.randn(3, ref.groups_num, *cfg[-1], requires_grad=True)  # the mask at the input size (resized for stride 2)
    mask = logits.detach().argmax(1)
    weights = torch.randn(3, cfg[1], *_out_size(cfg))
    beta = 0.5

    def grads(fn):
        for t in (x, logits, *ref.parameters()):
            t.grad = None
        out = fn(torch.softmax(logits, 1))
        (out * weights).sum().backward()
        return out.detach(), [t.grad.clone() for t in (x, logits, *ref.parameters())]

    out, ours = grads(lambda alpha: ref(x, mask, alpha, use_alpha, beta))
    out_st, theirs = grads(lambda alpha: _straight_through(ref, x, mask, alpha, use_alpha, beta))
    assert max_rel_err(out_st, out) < 1e-6
    names = ["x", "Alpha logits", *[n for n, _ in ref.named_parameters()]]
    for name, a, b in zip(names, ours, theirs):
        assert a.abs().max() > 0, f"no gradient for {name}"
        assert max_rel_err(b, a) < 1e-5, name
    if use_alpha:  # the Alpha-weighted bank gradient is not the one-hot one
        _, plain = grads(lambda alpha: ref(x, mask, alpha, False, beta))
        assert max_rel_err(plain[2], ours[2]) > 0.05


# --- ONNX runtimes: one dynamic-batch graph at batches 1, 2, 8 -----------------------------------------------

class Unit(nn.Module):
    """The paper's unit's right branch: masknet → softmax → argmax shared by a 1×1 DRConv at the mask's
    resolution and one after a (strided) depthwise conv; or, with k=3, a single k×k strided DRConv."""

    def __init__(self, cin: int, cmid: int, cout: int, stride: int, k: int = 1, groups: int = 8, num_w: int = 8):
        super().__init__()
        self.k = k
        self.masknet = nn.Conv2d(cin, groups, 1, bias=False)
        if k == 1:
            self.a = DRConv(cin, cmid, 1, bias=False, groups_num=groups, num_W=num_w)
            self.bn = nn.BatchNorm2d(cmid)
            self.dw = nn.Conv2d(cmid, cmid, 3, stride, 1, groups=cmid, bias=False)
            self.c = DRConv(cmid, cout, 1, groups_num=groups, num_W=num_w)
        else:
            self.c = DRConv(cin, cout, k, stride, k // 2, groups_num=groups, num_W=num_w)

    def forward(self, x):
        alpha = torch.softmax(self.masknet(x), 1)
        mask = alpha.argmax(1)
        if self.k == 1:
            x = self.dw(torch.relu(self.bn(self.a(x, mask, alpha))))
        return self.c(x, mask, alpha)


def top2_margin(unit: Unit, x: torch.Tensor) -> float:
    with torch.no_grad():
        g = unit.masknet(x)
    top = g.topk(2, dim=1).values
    return ((top[:, 0] - top[:, 1]).min() / g.abs().max()).item()


def _runtime_inputs(shape: tuple[int, ...], batches: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    """The inputs check_on_runtimes will use, to check their guide margins."""
    example, sets = drawn_inputs([shape], batches, seed=seed)
    return [torch.from_numpy(a) for (a,) in [example, *sets]]


def _structure(form: str, resized: bool, layers: int):
    def check(path: str) -> None:
        g = onnx.load(path).graph
        ops = Counter(n.op_type for n in g.node)
        consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
        convs = [n for n in g.node if n.op_type == "Conv"]
        assert all(n.input[1] in consts for n in convs), f"{form}: a Conv weight is computed at run time"
        assert not ops["Resize"] and not ops["Upsample"], ops
        assert ops["Equal"] >= 1 and ops["ArgMax"] == 1, ops  # the one-hot of the (single) mask
        assert not ops["Einsum"] and not ops["GatherND"] and not ops["ScatterND"], ops
        gathers = [n for n in g.node if n.op_type == "Gather" and n.input[0] not in consts]
        if resized:  # odd sizes: rows/columns taken by a Gather with constant indices
            assert any(n.input[1] in consts for n in gathers), "the resized mask's indices are not constants"
        # per layer: candidates a @ bank and kernels @ columns; basis and prescaled the coefficients aᵀ @ one-hot
        assert ops["MatMul"] == layers * (2 if form == "candidates" else 1), ops
    return check


RUNTIME_CASES = [  # (cin, cmid, cout, stride, k, input hw, mask resized at odd size)
    (8, 8, 8, 2, 1, (7, 9), True),  # the strided unit: 7×9 → 4×5 in the second DRConv
    (8, 12, 8, 1, 1, (6, 6), False),
    (6, 0, 8, 2, 3, (15, 10), True),  # one 3×3 stride-2 DRConv, mask 15×10 → 8×5
]


@pytest.mark.parametrize("form,case", [(f, c) for c in RUNTIME_CASES for f in FORMS if f != "prescaled" or c[4] == 1],
                         ids=[f"{n}-{f}" for c, n in zip(RUNTIME_CASES, ["unit-s2", "unit-s1", "k3s2"])
                              for f in FORMS if f != "prescaled" or c[4] == 1])
def test_runtimes_one_graph_batches_1_2_8(form, case):
    cin, cmid, cout, stride, k, hw, resized = case
    unit = lively(Unit(cin, cmid, cout, stride, k), seed=4)
    shape, batches = (1, cin, *hw), (1, 2, 8)
    # The argmax makes parity discontinuous: a rounding difference of ~1e-7 in the guide could flip a pixel
    # whose top-2 logits are closer than that. Take the first input seed whose top-2 gap is ≥ 1e-4 of the scale
    # on every pixel of every input the check will draw, so no rounding can flip a selection.
    seed = next((s for s in range(100) if min(top2_margin(unit, x) for x in _runtime_inputs(shape, batches, s)) >= 1e-4), None)
    assert seed is not None, "no input seed with well-separated guide logits"
    x8 = _runtime_inputs(shape, batches, seed)[-1]
    assert len(x8) == 8 and routing_spread(unit.a if k == 1 else unit.c, x8) > 0.05
    deployed = copy.deepcopy(unit)
    deployed.c = to_deploy(unit.c, form)
    if k == 1:
        deployed.a = to_deploy(unit.a, form).fuse_bn(unit.bn)
        deployed.bn = nn.Identity()
    check_on_runtimes(unit, deployed, [shape], batches=batches, seed=seed, onnx_check=_structure(form, resized, 2 if k == 1 else 1))


# --- the converter and the adapter ---------------------------------------------------------------------------

class Block(nn.Module):
    """masknet → argmax → the paper's conv_bn_relu(DLS=True) (zoo's copy of upstream's)."""

    def __init__(self, cin: int = 8, cout: int = 12, k: int = 1, stride: int = 1):
        super().__init__()
        self.masknet = nn.Conv2d(cin, 8, 1, bias=False)
        self.body = conv_bn_relu(cin, cout, k, stride, k // 2, bias=False, DLS=True)

    def forward(self, x):
        alpha = torch.softmax(self.masknet(x), 1)
        return self.body(x, alpha.argmax(1), alpha)


@pytest.mark.parametrize("k,stride,forced,form", [
    (1, 1, None, None), (1, 2, None, None), (3, 2, None, None), (1, 1, "candidates", "candidates"),
    (1, 1, "prescaled", "prescaled"), (3, 1, "basis", "basis"),
])
def test_convert_swaps_and_folds_bn(k, stride, forced, form):
    model = lively(Block(8, 12, k, stride), seed=6)
    forms = {"DRConv": forced} if forced else None
    deployed, records = convert(model, dynamic_batch=True, forms=forms)
    assert not any(isinstance(m, (nn.BatchNorm2d, DRConv)) for m in deployed.modules())
    got = [(r.name, r.type, r.form) for r in records]
    assert got[0][:2] == ("body.conv", "DRConv") and got[0][2] in FORMS and got[0][2] == (form or got[0][2]), got
    assert got[1] == ("body.bn", "BatchNorm2d", "folded"), got
    x = inputs(3, 8, (9, 7))
    assert_equivalent(model, deployed, x)


def test_adapter_recognises_upstream_and_deploys():
    foreign = lively(upstream.make_block(24, 48, 2), seed=7)
    assert adapter.matches(foreign.conva_right.conv) and not adapter.matches(DRConv(4, 4, 1))
    assert not adapter.matches(DRConv2d(4, 4, 3)) and not shallowtoil_adapter.matches(foreign.conva_right.conv)
    x = inputs(2, 24, (9, 9))  # odd: convc_right resizes the mask 9×9 → 5×5
    deployed, records = convert(foreign, dynamic_batch=True)
    drs = [r for r in records if r.type == "DRConv"]
    assert [r.name for r in drs] == ["conva_right.conv", "convc_right.conv"]
    assert all(r.form in FORMS and "adapter drconv-megvii" in r.note for r in drs)
    assert {r.name for r in records if r.form == "folded"} >= {"conva_right.bn", "convc_right.bn"}
    assert not any(isinstance(m, (nn.BatchNorm2d, upstream.DRConv)) for m in deployed.modules())
    assert_equivalent(foreign, deployed, x)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[4], CONFIGS[7]], ids=["1x1", "k3s2", "1x1pad"])
def test_upstream_layer_state_dict_loads(cfg):
    cin, cout, k, s, p, d, g, w, bias, hw = cfg
    foreign = lively(upstream.DRConv(cin, cout, k, s, p, bias=bias, dilation=d, groups_num=g, num_W=w), seed=8)
    ours = adapter.to_reference(foreign)
    assert isinstance(ours, DRConv) and not ours.training
    x = inputs(3, cin, hw)
    mask, alpha = _mask_and_alpha(3, g, hw)
    assert_equivalent(foreign, ours, x, mask, alpha)


def test_upstream_model_state_dict_loads_into_the_zoo_model():
    """Upstream's ShuffleNetV2(width_mult=0.5): same names, same function (at 224, where its AvgPool2d(7) is our mean)."""
    foreign = lively(upstream.ShuffleNetV2(width_mult=0.5), seed=9)
    ours = zoo.get("dr_shufflenetv2_0_5x").build()
    ours.load_state_dict(foreign.state_dict(), strict=True)
    assert_equivalent(foreign, ours.eval(), torch.randn(1, 3, 224, 224))


def test_zoo_model_converts_with_no_drconv_left():
    model = zoo.instantiate("dr_shufflenetv2_0_5x", seed=1)
    deployed, records = convert(model, dynamic_batch=True)
    drs = [r for r in records if r.type == "DRConv"]
    assert len(drs) == 32 and all(r.form in FORMS for r in drs), Counter(r.form for r in drs)
    assert not any(isinstance(m, (DRConv, nn.BatchNorm2d)) for m in deployed.modules())
    assert_equivalent(model, deployed, torch.randn(2, 3, 64, 64))


def test_zoo_model_routes_per_sample_with_clear_regions():
    """instantiate gives guide logits with a margin and routing that differs between samples, in every unit."""
    model = zoo.instantiate("dr_shufflenetv2_0_5x", seed=1)
    seen = []

    def hook(block, args, _out):
        x = args[0] if block.stride == 2 else args[0][:, 1::2]
        seen.append((top2_margin(block, x), routing_spread(block.conva_right.conv, x),
                     min(len(torch.unique(m)) for m in block.masknet(x).argmax(1))))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if type(m).__name__ == "make_block"]
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert len(seen) == 16
    assert min(s[0] for s in seen) > 1e-5, seen  # rounding (~1e-7 of the scale) cannot flip a region
    assert min(s[1] for s in seen) > 0.05, seen
    assert sum(s[2] >= 2 for s in seen) >= 8, seen  # most units use several regions on every sample
