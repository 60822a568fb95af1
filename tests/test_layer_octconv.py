"""OctConv: the reference is the official layer, every deploy form equals it (tuple conventions, stride 2,
odd sizes, groups, depthwise, BN and activation folded), on ONNX Runtime and OpenVINO too, through the
converter, and the official classes are recognised."""
from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch
from torch import nn

from polyexport import deploy
from polyexport.convert import convert, forms_of, registered_layers, to_deploy
from polyexport.deploy_layers.octconv import OctaveConvDeploy
from polyexport.errors import BadInput
from polyexport.layers.octconv import Conv_BN, Conv_BN_ACT, OctaveConv
from polyexport.testing import assert_equivalent, check_on_runtimes, randomize_
from tests.foreign import octconv as foreign

FORMS = tuple(forms_of(OctaveConv))  # Conv_BN and Conv_BN_ACT register the same four

DEFAULT = registered_layers()[OctaveConv].candidates(None)[0].name


class Flat(nn.Module):
    """Positional tensors in (x_h[, x_l]), the layer's non-None outputs out: what export and runtimes take."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *xs: torch.Tensor):
        out = self.layer(xs[0] if len(xs) == 1 else tuple(xs))
        return tuple(t for t in out if t is not None)


def _inputs(cin: int, alpha_in: float, hw: tuple[int, int], batch: int) -> list[torch.Tensor]:
    """x_h at hw and, unless alpha_in = 0, x_l at the floored half size (what a previous layer's pooling gives)."""
    low = int(alpha_in * cin)
    xs = [torch.randn(batch, cin - low, *hw)]
    if low:
        xs.append(torch.randn(batch, low, hw[0] // 2, hw[1] // 2))
    return xs


def _ops(path: str) -> Counter:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


CLASSES = {"oct": OctaveConv, "bn": Conv_BN, "bnact": Conv_BN_ACT}

# cin, cout, kwargs, (H, W): stride 1/2, alpha 0.25/0.5, first (alpha_in 0) / last (alpha_out 0), groups, dw
CONFIGS = [
    (16, 32, dict(kernel_size=3, padding=1), (8, 8)),
    (16, 16, dict(kernel_size=3, padding=1, alpha_in=0.25, alpha_out=0.25), (8, 10)),
    (16, 24, dict(kernel_size=1), (6, 6)),
    (3, 16, dict(kernel_size=3, padding=1, alpha_in=0), (9, 7)),  # first layer, odd sizes
    (16, 8, dict(kernel_size=3, padding=1, alpha_out=0), (8, 6)),  # last layer
    (16, 32, dict(kernel_size=3, padding=1, stride=2), (8, 8)),
    (16, 32, dict(kernel_size=3, padding=1, stride=2), (9, 11)),  # stride 2 accepts odd sizes
    (16, 16, dict(kernel_size=3, padding=1, stride=2, alpha_in=0.25, alpha_out=0.25), (14, 10)),
    (3, 16, dict(kernel_size=3, padding=1, stride=2, alpha_in=0), (11, 9)),
    (16, 8, dict(kernel_size=1, stride=2, alpha_out=0), (8, 8)),
    (16, 16, dict(kernel_size=1, stride=2, alpha_in=0.5, alpha_out=0), (7, 9)),
    (16, 32, dict(kernel_size=3, padding=2, dilation=2, bias=True), (8, 12)),
    (16, 32, dict(kernel_size=3, padding=1, groups=2), (8, 8)),
    (16, 32, dict(kernel_size=3, padding=1, groups=4, stride=2), (10, 6)),
    (16, 16, dict(kernel_size=3, padding=1, groups=16), (8, 8)),  # depthwise
    (16, 16, dict(kernel_size=3, padding=1, groups=16, stride=2), (9, 9)),
    (8, 8, dict(kernel_size=3, padding=1, groups=8, alpha_in=0, alpha_out=0), (6, 6)),  # depthwise, plain
    (16, 24, dict(kernel_size=(1, 3), padding=(0, 1), alpha_in=0.25, alpha_out=0.5, bias=True), (6, 8)),
]


@pytest.mark.parametrize("cin,cout,kw,hw", CONFIGS)
@pytest.mark.parametrize("batch", [1, 4])
def test_reference_is_official(cin, cout, kw, hw, batch):
    for name, cls in CLASSES.items():
        ours = randomize_(cls(cin, cout, **kw), seed=cin + cout)
        theirs = getattr(foreign, cls.__name__)(cin, cout, **kw)
        theirs.load_state_dict(ours.state_dict(), strict=True)
        xs = _inputs(cin, kw.get("alpha_in", 0.5), hw, batch)
        with torch.no_grad():
            a, b = Flat(ours)(*xs), Flat(theirs.eval())(*xs)
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), name
        assert len(ours(xs[0] if len(xs) == 1 else tuple(xs))) == 2  # always a 2-tuple, (y_h, None) when alpha_out = 0


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cin,cout,kw,hw", CONFIGS)
@pytest.mark.parametrize("batch", [1, 4])
def test_forms_exact(form, cin, cout, kw, hw, batch):
    for cls in CLASSES.values():
        ref = randomize_(cls(cin, cout, **kw), seed=batch + cout)
        dep = to_deploy(ref, form)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in dep.modules())
        xs = _inputs(cin, kw.get("alpha_in", 0.5), hw, batch)
        out_ref, out_dep = ref(xs[0] if len(xs) == 1 else tuple(xs)), dep(xs[0] if len(xs) == 1 else tuple(xs))
        assert [t is None for t in out_dep] == [t is None for t in out_ref]  # same None positions
        assert_equivalent(Flat(ref), Flat(dep), *xs)


@pytest.mark.parametrize("form", FORMS)
def test_single_tensor_into_a_middle_layer(form):
    """The official forward reads a lone tensor (or (x, None)) as x_h even when alpha_in > 0: so do the forms."""
    ref = randomize_(Conv_BN_ACT(16, 16, 3, padding=1))
    dep = to_deploy(ref, form)
    x = torch.randn(2, 8, 6, 6)
    assert_equivalent(Flat(ref), Flat(dep), x)
    with torch.no_grad():
        want, got = ref((x, None)), dep((x, None))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-5 * a.abs().max().item()) for a, b in zip(want, got))


def _convs(m: nn.Module) -> int:
    return sum(isinstance(c, nn.Conv2d) for c in m.modules())


def test_merged_and_concat_use_fewer_convs():
    ref = randomize_(Conv_BN(16, 32, 3, padding=1))
    assert _convs(to_deploy(ref, "separate")) == 4
    merged = to_deploy(ref, "merged")
    assert _convs(merged) == 3 and merged.low is not None and merged.l2l is None and merged.l2h is None
    concat = to_deploy(ref, "concat")  # keeps h2h and h2l for a lone-tensor input; the ONNX counts are checked below
    assert concat.cat_l is not None and concat.cat_h is None and concat.l2l is None
    s2 = to_deploy(randomize_(Conv_BN(16, 32, 3, padding=1, stride=2)), "concat")
    assert s2.cat_h is not None and s2.cat_l is not None and s2.l2h is None and s2.l2l is None
    # stride 2 (l2l and l2h read different tensors) and groups > 1 keep separate convs
    for kw in (dict(stride=2), dict(groups=2)):
        dep = to_deploy(randomize_(Conv_BN(16, 32, 3, padding=1, **kw)), "merged")
        assert dep.low is None and dep.l2l is not None and dep.l2h is not None
    grouped = to_deploy(randomize_(Conv_BN(16, 32, 3, padding=1, groups=2, stride=2)), "concat")
    assert grouped.cat_h is None and grouped.cat_l is None and _convs(grouped) == 4  # h2h has groups 1, l2h 2


@pytest.mark.parametrize("form", FORMS)
def test_odd_size_at_stride_1_fails_like_the_reference(form):
    """x_h odd, x_l floored: up(l2h(x_l)) is one pixel short; the reference raises and the forms do too."""
    ref = randomize_(OctaveConv(16, 16, 3, padding=1))
    xs = (torch.randn(1, 8, 9, 8), torch.randn(1, 8, 4, 4))
    with pytest.raises(RuntimeError):
        ref(xs)
    with pytest.raises(RuntimeError):
        to_deploy(ref, form)(xs)


@pytest.mark.parametrize("alpha_in,alpha_out", [(1.0, 0.5), (0.5, 1.0)])
def test_alpha_one_cannot_run_and_has_no_form(alpha_in, alpha_out):
    ref = OctaveConv(16, 16, 3, alpha_in, alpha_out, padding=1)
    with pytest.raises(TypeError):
        ref((torch.randn(1, 16 - int(16 * alpha_in), 4, 4), torch.randn(1, int(16 * alpha_in), 2, 2)))
    for form in FORMS:
        with pytest.raises(BadInput, match="no conv_h2h"):
            to_deploy(ref, form)
    with pytest.raises(BadInput, match="no form of OctaveConv is exact"):
        to_deploy(ref)


# --- (b) on the runtimes, one graph with dynamic batch -----------------------------------------

RUNTIME_CASES = [  # id, class, cin, cout, kwargs, hw, form, expected op counts
    ("mid-merged", Conv_BN_ACT, 32, 32, dict(kernel_size=3, padding=1), (8, 10), "merged",
     {"Conv": 3, "Resize": 1, "AveragePool": 1, "Split": 1, "Relu": 2, "BatchNormalization": 0}),
    ("mid-deconv-a025", Conv_BN, 32, 32, dict(kernel_size=3, padding=1, alpha_in=0.25, alpha_out=0.25), (8, 8),
     "merged_deconv", {"Conv": 3, "ConvTranspose": 1, "Resize": 0, "BatchNormalization": 0}),
    ("mid-separate", Conv_BN, 16, 32, dict(kernel_size=1), (6, 6), "separate", {"Conv": 4, "Resize": 1}),
    ("first-odd", Conv_BN_ACT, 3, 16, dict(kernel_size=3, padding=1, alpha_in=0), (9, 7), "merged",
     {"Conv": 2, "AveragePool": 1, "Resize": 0}),
    ("last", Conv_BN, 16, 16, dict(kernel_size=3, padding=1, alpha_out=0), (8, 8), "merged",
     {"Conv": 2, "Resize": 1, "BatchNormalization": 0}),
    ("stride2-odd", Conv_BN_ACT, 16, 32, dict(kernel_size=3, padding=1, stride=2), (9, 11), "merged",
     {"Conv": 4, "AveragePool": 3, "Resize": 0}),
    ("stride2-concat", Conv_BN_ACT, 16, 32, dict(kernel_size=3, padding=1, stride=2), (10, 6), "concat",
     {"Conv": 2, "Concat": 1, "AveragePool": 2, "Add": 0, "Resize": 0}),
    ("mid-concat-a025", Conv_BN, 32, 32, dict(kernel_size=1, alpha_in=0.25, alpha_out=0.25), (8, 8), "concat",
     {"Conv": 3, "Concat": 1, "AveragePool": 1, "Add": 1, "Resize": 1}),
    ("depthwise", OctaveConv, 16, 16, dict(kernel_size=3, padding=1, groups=16), (8, 8), "merged",
     {"Conv": 2, "Resize": 0}),
]


@pytest.mark.parametrize("case", RUNTIME_CASES, ids=[c[0] for c in RUNTIME_CASES])
def test_on_runtimes(case):
    _, cls, cin, cout, kw, hw, form, want = case
    ref = randomize_(cls(cin, cout, **kw), seed=cout)
    shapes = [tuple(x.shape) for x in _inputs(cin, kw.get("alpha_in", 0.5), hw, 1)]

    def onnx_check(path):
        ops = _ops(path)
        for op, n in want.items():
            assert ops[op] == n, (op, ops)

    checks = check_on_runtimes(Flat(ref), Flat(to_deploy(ref, form)), shapes, batches=(1, 4), onnx_check=onnx_check)
    assert {c.batch for c in checks} == {1, 4}


# --- (c) through the converter ------------------------------------------------------------------

class TinyOct(nn.Module):
    """A conv+BN stem, first, middle (stride 2) and last OctConv layers, then a BN on the last layer's y_h."""

    def __init__(self, octave=OctaveConv, bn=Conv_BN, bnact=Conv_BN_ACT):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.first = bnact(8, 16, 3, alpha_in=0, alpha_out=0.25, padding=1)
        self.mid = bnact(16, 32, 3, alpha_in=0.25, alpha_out=0.25, stride=2, padding=1)
        self.plain = octave(32, 32, 1, alpha_in=0.25, alpha_out=0.25)
        self.last = bn(32, 16, 3, alpha_in=0.25, alpha_out=0, padding=1)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x):
        return self.bn(self.last(self.plain(self.mid(self.first(self.stem_bn(self.stem(x))))))[0])


@pytest.mark.parametrize("form", [None, *FORMS])
def test_deploy_swaps_every_layer(form):
    model = randomize_(TinyOct())
    forms = {c: form for c in ("OctaveConv", "Conv_BN", "Conv_BN_ACT")} if form else None
    dep, records = convert(model, forms=forms)
    rec = {r.name: r for r in records}
    for name, typ in (("first", "Conv_BN_ACT"), ("mid", "Conv_BN_ACT"), ("plain", "OctaveConv"), ("last", "Conv_BN")):
        assert (rec[name].type, rec[name].form) == (typ, form or DEFAULT)
        assert isinstance(getattr(dep, name), OctaveConvDeploy)
    assert rec["stem_bn"].form == "folded"  # deploy modules are fx leaves: the model around them still traces
    assert not any(isinstance(m, nn.BatchNorm2d) for n, m in dep.named_modules() if n != "bn")
    assert isinstance(model.first, Conv_BN_ACT)  # original untouched
    assert_equivalent(model, dep, torch.randn(2, 3, 16, 12))
    assert_equivalent(model, deploy(model), torch.randn(4, 3, 8, 8))


MODEL_OPS = {  # stem 1; first 2 (h2h, h2l); mid stride 2; plain stride 1; last 2 (h2h, l2h)
    "merged": {"Conv": 1 + 2 + 4 + 3 + 2, "Resize": 2},
    "merged_deconv": {"Conv": 1 + 2 + 4 + 3 + 2, "Resize": 0, "ConvTranspose": 2},
    "concat": {"Conv": 1 + 2 + 2 + 3 + 2, "Resize": 2, "Concat": 2},
    "separate": {"Conv": 1 + 2 + 4 + 4 + 2, "Resize": 2},
}


@pytest.mark.parametrize("form", FORMS)
def test_deployed_model_on_runtimes(form):
    model = randomize_(TinyOct())
    dep = deploy(model, forms={c: form for c in ("OctaveConv", "Conv_BN", "Conv_BN_ACT")})

    def onnx_check(path):
        ops = _ops(path)
        assert ops["BatchNormalization"] <= 1, ops  # only the BN on the tuple's y_h (see the xfail above)
        for op, n in MODEL_OPS[form].items():
            assert ops[op] == n, (op, ops)

    check_on_runtimes(model, dep, [(1, 3, 12, 16)], batches=(1, 4), onnx_check=onnx_check)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Conv_BN(16, 16, 3, padding=1)

    def forward(self, x):
        return self.a(x) if x[0].sum() > -1e9 else x  # data-dependent: the converter traces children one by one


def test_kept_reference_is_not_folded_wrongly():
    """A Conv_BN kept as reference, traced alone (input a Proxy): its bn_h must not be folded into conv_h2h alone."""
    model = randomize_(_Untraceable())
    dep, records = convert(model, forms={"Conv_BN": "reference"})
    assert [r.form for r in records] == ["reference"]
    xs = (torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4))
    assert_equivalent(Flat(model.a), Flat(dep.a), *xs)


@pytest.mark.xfail(strict=True, reason="convert.py's fold_batchnorm only pairs a module whose single output feeds "
                                       "the BN; OctConv returns a tuple, so a BN on out[0] stays (see report)")
def test_bn_after_the_tuple_output_is_folded():
    dep = deploy(randomize_(TinyOct()))
    assert isinstance(dep.bn, nn.Identity)


# --- (f) norms that cannot be folded, and where no form applies ---------------------------------------

def test_unfoldable_norm_is_kept_after_the_convs():
    """A GroupNorm is no reason to keep the reference: the forms apply it as it is, after the convs."""
    model = randomize_(nn.Sequential(Conv_BN(16, 16, 3, padding=1, norm_layer=lambda c: nn.GroupNorm(2, c))))
    dep, records = convert(model)
    assert records[0].form == DEFAULT
    assert sum(isinstance(m, nn.GroupNorm) for m in dep.modules()) == 2
    xs = _inputs(16, 0.5, (8, 6), 3)
    assert_equivalent(Flat(model[0]), Flat(dep[0]), *xs)


def test_fallback_where_the_layer_cannot_run_and_strict_raises():
    model = nn.Sequential(Conv_BN(16, 16, 3, padding=1, alpha_out=1.0))  # no conv_h2h: the official forward fails
    dep, records = convert(model)
    assert records[0].form == "reference" and "conv_h2h" in records[0].note
    assert isinstance(dep[0], Conv_BN)
    with pytest.raises(BadInput):
        convert(model, strict=True)


# --- (g) holes found by tests/test_forms_property.py, kept as regression tests ------------------------

class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d style: a BatchNorm2d subclass whose forward adds the activation."""

    def __init__(self, num_features: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(num_features)
        self.act = act()

    def forward(self, x):
        return self.act(super().forward(x))


#: the property test's falsifying example first (Conv_BN(2, 2, 1, alpha 0/0, 'same', groups 2) with a
#: BatchNormAct2d(ReLU): every form dropped the ReLU, error 1.75 of the output's scale), then a tuple input
SUBCLASSED_NORM_CASES = [
    (Conv_BN, 2, 2, dict(kernel_size=1, alpha_in=0.0, alpha_out=0.0, padding="same", groups=2), [(1, 2, 4, 4)]),
    (Conv_BN_ACT, 16, 16, dict(kernel_size=3, padding=1), [(3, 8, 8, 6), (3, 8, 4, 3)]),
    (Conv_BN, 12, 8, dict(kernel_size=3, padding=1, stride=2, alpha_in=0.25, alpha_out=0.5), [(2, 9, 7, 9), (2, 3, 3, 4)]),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cls,cin,cout,kw,shapes", SUBCLASSED_NORM_CASES)
def test_bn_subclass_with_work_in_forward_is_not_folded(form, cls, cin, cout, kw, shapes):
    ref = randomize_(cls(cin, cout, norm_layer=lambda c: BatchNormAct2d(c, nn.SiLU), **kw), seed=cin)
    dep = to_deploy(ref, form)
    assert any(isinstance(m, BatchNormAct2d) for m in dep.modules())  # kept, activation and all
    xs = [torch.randn(s) for s in shapes]
    assert_equivalent(Flat(ref), Flat(dep), *xs)
    check_on_runtimes(Flat(ref), Flat(dep), shapes, batches=(1, 3))


def test_exact_batchnorm_is_still_folded_next_to_a_kept_one():
    """bn_h an exact BatchNorm2d (folded), bn_l a subclass (kept): each handled on its own."""
    ref = randomize_(Conv_BN(16, 16, 3, padding=1))
    ref.bn_l = randomize_(BatchNormAct2d(8), seed=4)
    dep = to_deploy(ref, "separate")
    assert not any(type(m) is nn.BatchNorm2d for m in dep.modules()) and isinstance(dep.norm_l, BatchNormAct2d)
    assert_equivalent(Flat(ref), Flat(dep), *_inputs(16, 0.5, (8, 8), 2))


def _no_auto_pad(path: str) -> None:
    for node in onnx.load(path).graph.node:
        assert all(a.name != "auto_pad" or a.s in (b"", b"NOTSET") for a in node.attribute), node.name


#: padding='same' with dilation (torch exports auto_pad, which ONNX Runtime refuses with dilation): the
#: property test's example (1×1, dilation 2), symmetric 3×3 and asymmetric 2×2 'same' paddings
SAME_PADDING_CASES = [
    (2, 2, dict(kernel_size=1, alpha_in=0.0, alpha_out=0.0, padding="same", dilation=2, groups=2), [(1, 2, 4, 4)]),
    (16, 16, dict(kernel_size=3, padding="same", dilation=2), [(2, 8, 8, 6), (2, 8, 4, 3)]),
    (16, 8, dict(kernel_size=2, padding="same", dilation=3, alpha_out=0.25), [(2, 8, 10, 8), (2, 8, 5, 4)]),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cin,cout,kw,shapes", SAME_PADDING_CASES)
def test_same_padding_with_dilation_is_written_out(form, cin, cout, kw, shapes):
    ref = randomize_(Conv_BN_ACT(cin, cout, **kw), seed=cout)
    dep = to_deploy(ref, form)
    assert not any(isinstance(m, nn.Conv2d) and isinstance(m.padding, str) for m in dep.modules())
    assert_equivalent(Flat(ref), Flat(dep), *[torch.randn(s) for s in shapes])
    check_on_runtimes(Flat(ref), Flat(dep), shapes, batches=(2, 5), onnx_check=_no_auto_pad)


# --- (d), (e) the official classes ------------------------------------------------------------------

@pytest.mark.parametrize("cin,cout,kw,hw", [CONFIGS[i] for i in (0, 1, 3, 4, 6, 11, 12, 14, 17)])
def test_official_state_dict_loads_strict(cin, cout, kw, hw):
    for cls in CLASSES.values():
        theirs = randomize_(getattr(foreign, cls.__name__)(cin, cout, **kw), seed=3)
        ours = cls(cin, cout, **kw)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        assert_equivalent(Flat(theirs), Flat(ours.eval()), *_inputs(cin, kw.get("alpha_in", 0.5), hw, 2), rtol=0)


@pytest.mark.parametrize("cin,cout,kw,hw", [CONFIGS[i] for i in (0, 1, 3, 4, 7, 11, 13, 15, 16)])
def test_adapter_rebuilds_official_layers(cin, cout, kw, hw):
    for cls in CLASSES.values():
        theirs = randomize_(getattr(foreign, cls.__name__)(cin, cout, **kw), seed=5)
        dep, records = convert(nn.Sequential(theirs))
        assert isinstance(dep[0], OctaveConvDeploy), records
        assert records[0].type == cls.__name__ and "octconv.pytorch" in records[0].note
        assert_equivalent(Flat(theirs), Flat(dep[0]), *_inputs(cin, kw.get("alpha_in", 0.5), hw, 2))


def test_adapter_on_official_bottlenecks():
    """oct_resnet's Bottleneck (first, middle, last of a stage, with Conv_BN downsample): converted and equal."""
    first = foreign.Bottleneck(64, 16, downsample=nn.Sequential(foreign.Conv_BN(64, 64, 1, alpha_in=0)), alpha_in=0)
    mid = foreign.Bottleneck(64, 32, stride=2, downsample=nn.Sequential(foreign.Conv_BN(64, 128, 1, stride=2)))
    last = foreign.Bottleneck(128, 32, stride=2, alpha_out=0, output=True,
                              downsample=nn.Sequential(foreign.Conv_BN(128, 128, 1, stride=2, alpha_out=0)))
    model = randomize_(nn.Sequential(first, mid, last))
    dep, records = convert(model)
    assert sum(r.form == DEFAULT for r in records) == 12
    assert not any(type(m).__name__ in ("Conv_BN", "Conv_BN_ACT", "OctaveConv") for m in dep.modules())
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        want, got = model(x), dep(x)
    assert want[1] is None and got[1] is None
    assert_equivalent(nn.Sequential(model, _First()), nn.Sequential(dep, _First()), x)


class _First(nn.Module):
    def forward(self, x):
        return x[0]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("stride", [1, 2])
def test_one_graph_for_any_spatial_size(form, stride, tmp_path):
    """Pooling and upsampling are exported shape-free: one graph (dynamic N, H, W) serves several sizes.

    polyexport's export makes only the batch dynamic, so this uses torch.onnx directly, then ONNX Runtime.
    """
    ort = pytest.importorskip("onnxruntime")
    ref = randomize_(Conv_BN_ACT(16, 16, 3, padding=1, stride=stride), seed=stride)
    flat = Flat(to_deploy(ref, form))
    path = str(tmp_path / "oct.onnx")
    axes = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(flat, tuple(_inputs(16, 0.5, (8, 8), 1)), path, input_names=["x_h", "x_l"],
                      output_names=["y_h", "y_l"], dynamic_axes={"x_h": axes, "x_l": axes}, opset_version=17,
                      dynamo=False)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for hw, batch in (((8, 10), 1), ((12, 6), 3), ((16, 16), 2)):
        xs = _inputs(16, 0.5, hw, batch)
        got = sess.run(None, {"x_h": xs[0].numpy(), "x_l": xs[1].numpy()})
        with torch.no_grad():
            want = Flat(ref)(*xs)
        for w, g in zip(want, got):
            assert w.shape == g.shape and float((w - torch.from_numpy(g)).abs().max()) <= 1e-5 * float(w.abs().max())
