"""Random valid configurations of every registered reference layer, and the check of one deploy form on one.

Shared by tests/test_forms_property.py (a few hundred examples, fixed seed, in the default suite) and
benchmarks/fuzz.py (thousands, ONNX Runtime and OpenVINO). A generator draws a configuration the
reference accepts (it is built and run once; a draw it refuses is rejected, and hypothesis fails the
test if it has to reject too often), with random weights and non-trivial BN statistics (`randomize_`),
and trained-like structure where a form's exactness depends on it (PSConv's masked entries zero,
Dynamic_conv2d's input-independent attention). The layer sits in a `Harness` with what feeds it
(OctConv's tuple, CondConv's routing, DRConv's mask) and what follows it (a BN, a BN subclass with an
activation in its forward, the convs an SPD layer folds into), so that every check goes through
`polyexport.convert.convert` as a user's model would: swap, fold into the next conv, fold BN.
"""
from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from hypothesis import reject
from hypothesis import strategies as st
from torch import nn

from polyexport.convert import Form, convert, registered_layers
from polyexport.exporter import flatten_outputs
from polyexport.layers.condconv import CondConv2d, pad_same
from polyexport.layers.dcd import DYModule, conv_basic_dy, conv_dy
from polyexport.layers.do_conv import DOConv2d
from polyexport.layers.drconv import DRConv2d
from polyexport.layers.drconv_megvii import DRConv
from polyexport.layers.dynamic_conv import Dynamic_conv2d
from polyexport.layers.even_conv import OFFICIAL_CORNERS, SymmetricPadConv2d
from polyexport.layers.hetconv import ShiftedHetConv
from polyexport.layers.mixconv import Conv2dSame, MixedConv2d
from polyexport.layers.octconv import Conv_BN_ACT, OctaveConv, split_channels
from polyexport.layers.psconv import PSGConv2d
from polyexport.layers.rel_attention import RelPosAttention
from polyexport.layers.spd_conv import SPDConv, space_to_depth
from polyexport.testing import RTOL, check_on_runtimes, max_rel_err, randomize_

#: the smallest top-1 − top-2 gap (relative to the logits' scale) a region guide may have on a runtime's
#: inputs: below it, a rounding difference of ~1e-7 could flip an argmax and no form could match
GUIDE_MARGIN = 1e-4


# --- neighbours a user's model puts around the layers ---------------------------------------------

class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d style: a BatchNorm2d subclass whose forward adds an activation."""

    def __init__(self, num_features: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(num_features)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class RenamedBatchNorm2d(nn.BatchNorm2d):
    """A subclass that only renames (forward untouched): folding it would be exact."""


class TimmConv2dSame(nn.Conv2d):
    """timm's Conv2dSame as timm writes it: TF 'SAME' padding from the input size, and no fuse_bn."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1, groups: int = 1,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


ACTIVATIONS = (nn.ReLU, nn.SiLU, nn.Hardswish, nn.GELU)


@st.composite
def norm_layers(draw, allow_group_norm: bool = True) -> tuple[Callable[[int], nn.Module], str]:
    """A norm-layer factory as a user passes one, and its name: BN, BN subclasses, GroupNorm."""
    kinds = ["bn", "bn", "bn_act", "bn_renamed"] + (["group_norm"] if allow_group_norm else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "bn_act":
        act = draw(st.sampled_from(ACTIVATIONS))
        return (lambda c: BatchNormAct2d(c, act)), f"BatchNormAct2d({act.__name__})"
    if kind == "bn_renamed":
        return RenamedBatchNorm2d, "RenamedBatchNorm2d"
    if kind == "group_norm":
        return (lambda c: nn.GroupNorm(1, c)), "GroupNorm(1)"
    return nn.BatchNorm2d, "BatchNorm2d"


@st.composite
def followers(draw, channels: int) -> tuple[list[nn.Module], str]:
    """What may follow a single-output layer: nothing, or a norm layer (folded where exact)."""
    if draw(st.integers(0, 3)) == 0:
        return [], ""
    make, name = draw(norm_layers(allow_group_norm=False))
    return [make(channels)], name


# --- the harness: positional tensors in, a tuple of tensors out ------------------------------------

class Harness(nn.Module):
    """layer(x), then what follows it (`post`): a module export and the runtimes take as it is."""

    def __init__(self, layer: nn.Module, post: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.layer = layer
        self.post = nn.Sequential(*post)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.layer(x))


class RoutedHarness(Harness):
    """CondConv2d: the routing weights are the second input (timm computes them once per block)."""

    def forward(self, x: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
        return self.post(self.layer(x, routing))


class GuidedHarness(Harness):
    """The authors' DRConv: a 1×1 guide conv and its argmax give the region mask (as the paper's unit does)."""

    def __init__(self, layer: nn.Module, regions: int, post: Sequence[nn.Module] = ()) -> None:
        super().__init__(layer, post)
        self.guide = nn.Conv2d(layer.in_channels, regions, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.layer(x, self.guide(x).argmax(1)))


class OctaveHarness(Harness):
    """OctConv: one or two positional tensors in (x_h[, x_l]), the non-None outputs out."""

    def forward(self, *xs: torch.Tensor):
        out = self.layer(xs[0] if len(xs) == 1 else tuple(xs))
        return tuple(t for t in out if t is not None)


def top2_gap(logits: torch.Tensor) -> float:
    """min over pixels of (top-1 − top-2) / max |logit|: how far an argmax over dim 1 is from a tie."""
    if logits.shape[1] < 2:
        return math.inf
    top = logits.topk(2, dim=1).values
    return ((top[:, 0] - top[:, 1]).min() / logits.abs().max().clamp_min(1e-30)).item()


# --- a drawn case -------------------------------------------------------------------------------------

@dataclass
class LayerCase:
    """A reference layer in its harness, the shapes of the harness's inputs, and a readable label."""

    layer: nn.Module
    model: Harness
    input_shapes: list[tuple[int, ...]]
    label: str
    #: the smallest argmax gap inside the model on these inputs (None: no argmax in the model)
    guide_gap: Callable[[Sequence[torch.Tensor]], float] | None = None
    #: per-sample offsets on the inputs, so pooled routings and attentions differ between samples
    offsets: bool = True

    @property
    def layer_type(self) -> type:
        return type(self.layer)

    def inputs(self, seed: int, batch: int | None = None) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for shape in self.input_shapes:
            shape = (batch or shape[0], *shape[1:])
            x = torch.randn(shape, generator=g)
            if self.offsets and len(shape) == 4:
                x = x + 0.5 * torch.randn(*shape[:2], 1, 1, generator=g)
            out.append(x)
        return out


def _finish(layer: nn.Module, harness: Harness, shapes: list[tuple[int, ...]], label: str, seed: int,
            guide_gap=None, prepare: Callable[[nn.Module], None] | None = None) -> LayerCase:
    """Randomize (then `prepare`: trained-like structure), run the reference once; reject what it refuses."""
    if any(p.numel() == 0 for p in harness.parameters()):  # e.g. an OctConv branch with no channels
        reject()
    randomize_(harness, seed)
    if prepare is not None:
        with torch.no_grad():
            prepare(layer)
    harness.eval()
    case = LayerCase(layer, harness, shapes, label, guide_gap)
    try:
        with torch.no_grad():
            outs = flatten_outputs(harness(*case.inputs(0)))
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError):
        reject()
    if not outs or any(o.numel() == 0 for o in outs):
        reject()
    return case


def _build(make: Callable[[], nn.Module]) -> nn.Module:
    """The reference's constructor, a draw it refuses rejected (e.g. channels not divisible by groups)."""
    try:
        return make()
    except (ValueError, RuntimeError, AssertionError, ZeroDivisionError, TypeError):
        reject()


def _odd_biased_size(draw, lo: int = 3, hi: int = 11) -> int:
    return draw(st.integers(lo, hi))


def _batch(draw) -> int:
    return draw(st.integers(1, 5))


def _seed(draw) -> int:
    return draw(st.integers(0, 2**16))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --- one generator per registered layer type ---------------------------------------------------------

@st.composite
def psconv_cases(draw, cls: type) -> LayerCase:
    parts = draw(st.sampled_from([1, 2, 2, 3, 4, 4, 8]))
    groups = draw(st.integers(1, 3)) if cls is PSGConv2d else 1
    unit = parts * groups
    cin, cout = unit * draw(st.integers(1, max(1, 24 // unit))), unit * draw(st.integers(1, max(1, 24 // unit)))
    stride, dilation, bias = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.booleans())
    masked = draw(st.booleans())  # official training keeps conv.weight zero under the mask
    padding = draw(st.sampled_from([1, 1, "same"])) if stride == 1 else 1  # 'same' is 1 for conv's 3×3
    kw = dict(stride=stride, padding=padding, dilation=dilation, parts=parts, bias=bias)
    if cls is PSGConv2d:
        kw["groups"] = groups
    layer = _build(lambda: cls(cin, cout, 3, **kw))
    post, post_name = draw(followers(cout))
    b, h, w = _batch(draw), _odd_biased_size(draw, 4, 12), _odd_biased_size(draw, 4, 12)

    def mask(m: nn.Module) -> None:
        if masked:
            m.conv.weight[m.mask] = 0

    label = f"{cls.__name__}({cin}, {cout}, 3, {kw}, masked={masked}) {post_name} @{b}x{cin}x{h}x{w}"
    return _finish(layer, Harness(layer, post), [(b, cin, h, w)], label, _seed(draw), prepare=mask)


@st.composite
def hetconv_cases(draw, cls: type) -> LayerCase:
    p = draw(st.integers(2 if cls is ShiftedHetConv else 1, 4))
    cin, cout = p * draw(st.integers(1, 16 // p)), p * draw(st.integers(1, 16 // p))
    k, stride, dilation, bias = draw(st.sampled_from([1, 3, 3, 5])), draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.booleans())
    layer = _build(lambda: cls(cin, cout, p, k, stride, dilation=dilation, bias=bias))
    post, post_name = draw(followers(cout))
    b, h, w = _batch(draw), _odd_biased_size(draw), _odd_biased_size(draw)
    label = f"{cls.__name__}({cin}, {cout}, p={p}, k={k}, s={stride}, d={dilation}, bias={bias}) {post_name} @{b}x{cin}x{h}x{w}"
    return _finish(layer, Harness(layer, post), [(b, cin, h, w)], label, _seed(draw))


@st.composite
def octconv_cases(draw, cls: type) -> LayerCase:
    alpha_in = draw(st.sampled_from([0.0, 0.25, 0.5, 0.5, 0.75]))
    alpha_out = draw(st.sampled_from([0.0, 0.25, 0.5, 0.5, 0.75]))
    cin, cout = draw(st.integers(2, 16)), draw(st.integers(2, 16))
    depthwise = draw(st.integers(0, 5)) == 0
    groups = cin if depthwise else draw(st.sampled_from([1, 1, 1, 2]))
    if depthwise:
        cout = cin
    stride, dilation, bias = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.booleans())
    k = draw(st.sampled_from([1, 2, 3, 3, 5]))
    in_h, in_l = split_channels(cin, alpha_in)
    tuple_input = in_l > 0 and draw(st.booleans())
    if tuple_input and stride == 1:  # up(l2h(x_l)) is added to h2h(x_h): sizes must be kept
        padding = draw(st.sampled_from(["same"] + ([dilation * (k - 1) // 2] if k % 2 else [])))
        h, w = 2 * draw(st.integers(2, 6)), 2 * draw(st.integers(2, 6))
    else:
        padding = draw(st.sampled_from(["same", 0, 1, 2] if stride == 1 else [0, 1, 2]))
        h, w = _odd_biased_size(draw, 4, 13), _odd_biased_size(draw, 4, 13)
    kw = dict(alpha_in=alpha_in, alpha_out=alpha_out, stride=stride, padding=padding, dilation=dilation,
              groups=groups, bias=bias)
    norm_name = ""
    if cls is not OctaveConv:
        norm, norm_name = draw(norm_layers())
        kw["norm_layer"] = norm
        if cls is Conv_BN_ACT:
            act = draw(st.sampled_from(ACTIVATIONS[:3]))  # activation_layer(inplace=True): GELU has no inplace
            kw["activation_layer"] = act
            norm_name += f", {act.__name__}"
    layer = _build(lambda: cls(cin, cout, k, **kw))
    b = _batch(draw)
    shapes = [(b, in_h, h, w)] + ([(b, in_l, h // 2, w // 2)] if tuple_input else [])
    shown = {key: v for key, v in kw.items() if key not in ("norm_layer", "activation_layer")}
    label = f"{cls.__name__}({cin}, {cout}, {k}, {shown}) {norm_name} @{shapes}"
    return _finish(layer, OctaveHarness(layer), shapes, label, _seed(draw))


@st.composite
def mixconv_layers(draw, cin: int | None = None, cout: int | None = None, padding=None,
                   stride: int | None = None) -> tuple[MixedConv2d, str]:
    n = draw(st.integers(1, 4))
    kernels = [draw(st.sampled_from([1, 2, 3, 3, 5, 5, 7])) for _ in range(n)]
    depthwise = draw(st.booleans())
    cin = cin if cin is not None else draw(st.integers(n, 16))
    if cout is None:
        cout = cin * draw(st.integers(1, 2)) if depthwise else draw(st.integers(n, 16))
    padding = padding if padding is not None else draw(st.sampled_from(["", "", "same", "same", "valid", 1]))
    stride = stride if stride is not None else draw(st.integers(1, 2))
    dilation, bias = draw(st.integers(1, 2)), draw(st.booleans())
    layer = _build(lambda: MixedConv2d(cin, cout, kernels, stride, padding, dilation, depthwise, bias=bias))
    return layer, (f"MixedConv2d({cin}, {cout}, {kernels}, s={stride}, pad={padding!r}, d={dilation}, "
                   f"dw={depthwise}, bias={bias})")


@st.composite
def mixconv_cases(draw, cls: type) -> LayerCase:
    layer, name = draw(mixconv_layers())
    post, post_name = draw(followers(layer.out_channels))
    b, h, w = _batch(draw), _odd_biased_size(draw, 4, 13), _odd_biased_size(draw, 4, 13)
    return _finish(layer, Harness(layer, post), [(b, layer.in_channels, h, w)], f"{name} {post_name} @{b}x{h}x{w}",
                   _seed(draw))


@st.composite
def even_conv_cases(draw, cls: type) -> LayerCase:
    k, stride, bias = draw(st.sampled_from([2, 2, 4])), draw(st.integers(1, 2)), draw(st.booleans())
    g = draw(st.sampled_from([1, 1, 2, 3, 4]))
    depthwise = draw(st.integers(0, 3)) == 0
    cin = draw(st.integers(1, 12)) if depthwise else g * draw(st.integers(1, 12 // g))
    groups = cin if depthwise else g
    cout = groups * draw(st.integers(1, max(1, 12 // groups)))
    corners = tuple(draw(st.permutations(OFFICIAL_CORNERS))) if draw(st.booleans()) else OFFICIAL_CORNERS
    layer = _build(lambda: SymmetricPadConv2d(cin, cout, k, stride, groups, bias, corners))
    post, post_name = draw(followers(cout))
    b, h, w = _batch(draw), _odd_biased_size(draw), _odd_biased_size(draw)
    label = f"SymmetricPadConv2d({cin}, {cout}, k={k}, s={stride}, g={groups}, bias={bias}, {corners}) {post_name} @{b}x{h}x{w}"
    return _finish(layer, Harness(layer, post), [(b, cin, h, w)], label, _seed(draw))


@st.composite
def do_conv_cases(draw, cls: type) -> LayerCase:
    """DOConv2d: groups (dense, grouped, depthwise with a multiplier), non-square and 1×1 kernels, D_mul below, at
    and above M·N, numeric pads unequal per axis (the official F.pad swaps them in non-zero modes), string pads."""
    g = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.integers(0, 3)) == 0
    cin = draw(st.integers(1, 12)) if depthwise else g * draw(st.integers(1, 12 // g))
    groups = cin if depthwise else g
    cout = groups * draw(st.integers(1, max(1, 12 // groups)))
    kh, kw = draw(st.sampled_from([1, 1, 2, 3, 3, 4])), draw(st.sampled_from([1, 2, 3, 3, 4]))
    d_mul = draw(st.sampled_from([None, None, kh * kw, kh * kw + draw(st.integers(1, 5)), max(1, kh * kw - 2)]))
    stride, dilation, bias = (draw(st.integers(1, 2)), draw(st.integers(1, 2))), draw(st.integers(1, 2)), draw(st.booleans())
    mode = draw(st.sampled_from(["zeros", "zeros", "zeros", "reflect", "replicate", "circular"]))
    strings = ["valid"] + (["same", "same"] if stride == (1, 1) and mode == "zeros" else [])
    padding = draw(st.sampled_from([(0, 0), (1, 1), (1, 2), (2, 0)] + (strings if mode == "zeros" else [])))
    kw_ = dict(D_mul=d_mul, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias, padding_mode=mode)
    layer = _build(lambda: DOConv2d(cin, cout, (kh, kw), **kw_))
    post, post_name = draw(followers(cout))
    b, h, w = _batch(draw), _odd_biased_size(draw, 4, 12), _odd_biased_size(draw, 4, 12)
    label = f"DOConv2d({cin}, {cout}, ({kh}, {kw}), {kw_}) {post_name} @{b}x{cin}x{h}x{w}"
    return _finish(layer, Harness(layer, post), [(b, cin, h, w)], label, _seed(draw))


@st.composite
def next_convs(draw, cin: int) -> tuple[list[nn.Module], str]:
    """The conv an SPD layer may fold into: plain (string paddings, groups, dilation, padding modes),
    'same'-padded subclasses (timm's, ours), a MixConv (whose forms return one), or none."""
    kind = draw(st.sampled_from(["conv", "conv", "conv", "timm_same", "ours_same", "ours_same", "mixconv", "mixconv", "none"]))
    if kind == "none":
        return [], ""
    cout = draw(st.integers(1, 12))
    if kind == "mixconv":
        layer, name = draw(mixconv_layers(cin=cin, padding=draw(st.sampled_from(["same", "same", ""])),
                                          stride=draw(st.sampled_from([1, 2, 2]))))
        return [layer], name
    k, stride, dilation, bias = draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.booleans())
    # groups 1 half the time: the SPD order's block permutation only folds into convs whose groups it keeps
    groups = draw(st.sampled_from([1] + [g for g in _divisors(cin) if g <= 8]))
    cout = groups * max(1, cout // groups)
    if kind == "timm_same":
        return [TimmConv2dSame(cin, cout, k, stride, dilation, groups, bias)], f"TimmConv2dSame(k={k}, s={stride}, d={dilation}, g={groups})"
    if kind == "ours_same":
        return [Conv2dSame(cin, cout, k, stride, 0, dilation, groups, bias)], f"Conv2dSame(k={k}, s={stride}, d={dilation}, g={groups})"
    padding = draw(st.sampled_from([0, 1, "same", "same", "valid"] if stride == 1 else [0, 1, 2]))
    mode = draw(st.sampled_from(["zeros", "zeros", "zeros", "reflect", "circular"])) if padding not in (0, "valid") else "zeros"
    conv = _build(lambda: nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias, mode))
    return [conv], f"Conv2d({cin}, {cout}, k={k}, s={stride}, pad={padding!r}, d={dilation}, g={groups}, {mode}, bias={bias})"


@st.composite
def spd_cases(draw, cls: type) -> LayerCase:
    scale = draw(st.sampled_from([1, 2, 2, 2, 3, 4]))
    cin = draw(st.integers(1, 6 if scale <= 2 else 3))
    b, h, w = _batch(draw), scale * draw(st.integers(2, 6)), scale * draw(st.integers(2, 6))
    if cls is SPDConv:
        cout, k = draw(st.integers(1, 12)), draw(st.integers(1, 4))
        layer = _build(lambda: SPDConv(cin, cout, k, scale))
        if draw(st.booleans()):
            layer.spd.order = "onnx"
        post, post_name = draw(followers(cout))
        label = f"SPDConv({cin}, {cout}, k={k}, scale={scale}, order={layer.spd.order}) {post_name} @{b}x{h}x{w}"
        return _finish(layer, Harness(layer, post), [(b, cin, h, w)], label, _seed(draw))
    order = draw(st.sampled_from(["spd", "spd", "onnx"]))
    layer = space_to_depth(scale=scale, order=order)
    post, post_name = draw(next_convs(cin * scale * scale))
    if post and draw(st.booleans()):  # a norm after the conv, sometimes (a BN subclass keeps fx from pairing them)
        more, more_name = draw(followers(post[0].out_channels))
        post, post_name = post + more, f"{post_name} {more_name}"
    label = f"space_to_depth(scale={scale}, order={order}) -> {post_name or 'nothing'} @{b}x{cin}x{h}x{w}"
    return _finish(layer, Harness(layer, post), [(b, cin, h, w)], label, _seed(draw))


@st.composite
def condconv_cases(draw, cls: type) -> LayerCase:
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 12 // groups)), groups * draw(st.integers(1, 12 // groups))
    if draw(st.integers(0, 3)) == 0:  # depthwise, as in timm's inverted residual
        cin = cout = groups = draw(st.integers(1, 12))
    k, stride, dilation, bias = draw(st.integers(1, 5)), draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.booleans())
    padding = draw(st.sampled_from(["", "same", "same", "valid", 0, 1]))
    experts = draw(st.integers(1, 4))
    layer = _build(lambda: CondConv2d(cin, cout, k, stride, padding, dilation, groups, bias, experts))
    post, post_name = draw(followers(cout))
    b, h, w = _batch(draw), _odd_biased_size(draw, 4, 12), _odd_biased_size(draw, 4, 12)
    label = (f"CondConv2d({cin}, {cout}, k={k}, s={stride}, pad={padding!r}, d={dilation}, g={groups}, bias={bias}, "
             f"experts={experts}) {post_name} @{b}x{h}x{w}")
    return _finish(layer, RoutedHarness(layer, post), [(b, cin, h, w), (b, experts)], label, _seed(draw))


@st.composite
def dynamic_conv_cases(draw, cls: type) -> LayerCase:
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 12 // groups)), groups * draw(st.integers(1, 12 // groups))
    k, stride, dilation, bias = draw(st.integers(1, 5)), draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.booleans())
    padding = draw(st.integers(0, 2))
    K, temperature = draw(st.integers(1, 4)), draw(st.sampled_from([1, 4, 34]))  # noqa: N806 - upstream's name
    attention = draw(st.sampled_from(["lively", "lively", "zero_fc1", "zero_fc2"]))  # zeros: input-independent
    ratio = draw(st.sampled_from([0.25, 0.5]))
    layer = _build(lambda: Dynamic_conv2d(cin, cout, k, ratio, stride, padding, dilation, groups, bias, K, temperature))
    post, post_name = draw(followers(cout))
    b, h, w = _batch(draw), _odd_biased_size(draw, 4, 12), _odd_biased_size(draw, 4, 12)

    def train_like(m: Dynamic_conv2d) -> None:
        if attention == "zero_fc1":
            m.attention.fc1.weight.zero_()
        elif attention == "zero_fc2":
            m.attention.fc2.weight.zero_()
        else:  # pooled noise through fan-in scaled weights would give a nearly constant attention
            m.attention.fc2.weight.mul_(3.0 * temperature ** 0.5)

    label = (f"Dynamic_conv2d({cin}, {cout}, k={k}, s={stride}, p={padding}, d={dilation}, g={groups}, bias={bias}, "
             f"K={K}, T={temperature}, {attention}) {post_name} @{b}x{h}x{w}")
    return _finish(layer, Harness(layer, post), [(b, cin, h, w)], label, _seed(draw), prepare=train_like)


@st.composite
def drconv_cases(draw, cls: type) -> LayerCase:
    cin, cout, k = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    regions = draw(st.integers(2, 4))
    kwargs = {}
    for name, lo, hi in (("stride", 1, 2), ("padding", 0, 1), ("dilation", 1, 2)):
        if draw(st.booleans()):
            kwargs[name] = draw(st.integers(lo, hi))
    layer = _build(lambda: DRConv2d(cin, cout, k, regions, **kwargs))
    post, post_name = draw(followers(cout))
    b, h, w = _batch(draw), _odd_biased_size(draw, 4, 11), _odd_biased_size(draw, 4, 11)

    def gap(xs: Sequence[torch.Tensor]) -> float:
        with torch.no_grad():
            return top2_gap(layer.conv_guide(xs[0]))

    label = f"DRConv2d({cin}, {cout}, k={k}, regions={regions}, {kwargs}) {post_name} @{b}x{h}x{w}"
    return _finish(layer, Harness(layer, post), [(b, cin, h, w)], label, _seed(draw), guide_gap=gap)


@st.composite
def drconv_megvii_cases(draw, cls: type) -> LayerCase:
    cin, cout, k = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    stride, padding, dilation = draw(st.integers(1, 2)), draw(st.integers(0, 1)), draw(st.integers(1, 2))
    regions, bases, bias = draw(st.integers(2, 4)), draw(st.integers(1, 4)), draw(st.booleans())
    layer = _build(lambda: DRConv(cin, cout, k, stride, padding, bias=bias, dilation=dilation, groups_num=regions, num_W=bases))
    post, post_name = draw(followers(cout))
    harness = GuidedHarness(layer, regions, post)
    b, h, w = _batch(draw), _odd_biased_size(draw, 4, 11), _odd_biased_size(draw, 4, 11)

    def lively(m: DRConv) -> None:
        m.routing_fc.weight.mul_(8.0)

    def gap(xs: Sequence[torch.Tensor]) -> float:
        with torch.no_grad():
            return top2_gap(harness.guide(xs[0]))

    label = (f"DRConv({cin}, {cout}, k={k}, s={stride}, p={padding}, d={dilation}, regions={regions}, num_W={bases}, "
             f"bias={bias}) {post_name} @{b}x{h}x{w}")
    return _finish(layer, harness, [(b, cin, h, w)], label, _seed(draw), guide_gap=gap, prepare=lively)


@st.composite
def dcd_cases(draw, cls: type) -> LayerCase:
    if cls is conv_dy:
        cin, cout, k, stride = draw(st.integers(16, 40)), draw(st.integers(2, 24)), draw(st.sampled_from([1, 3, 5])), draw(st.integers(1, 2))
        layer = _build(lambda: conv_dy(cin, cout, k, stride, k // 2))
        name = f"conv_dy({cin}, {cout}, k={k}, s={stride})"
    elif cls is conv_basic_dy:
        cin, cout, stride = draw(st.integers(4, 16)), draw(st.integers(2, 16)), draw(st.integers(1, 2))
        layer = _build(lambda: conv_basic_dy(cin, cout, stride))
        name = f"conv_basic_dy({cin}, {cout}, s={stride})"
    else:
        cin, cout, squeeze = draw(st.integers(4, 32)), draw(st.integers(4, 48)), draw(st.sampled_from([4, 8]))
        layer = _build(lambda: DYModule(cin, cout, squeeze))
        name = f"DYModule({cin}, {cout}, fc_squeeze={squeeze})"
    post, post_name = draw(followers(layer.conv.out_channels))
    b, h, w = _batch(draw), _odd_biased_size(draw, 3, 11), _odd_biased_size(draw, 3, 11)
    gain = draw(st.sampled_from([1.0, 3.0]))  # the dynamic branch's gain: Φ(x) and Λ(x) vary between samples

    def lively(m: nn.Module) -> None:
        m.fc[0].weight.mul_(3.0 * gain)
        m.fc_phi.weight.mul_(gain)

    return _finish(layer, Harness(layer, post), [(b, cin, h, w)], f"{name} gain={gain} {post_name} @{b}x{h}x{w}",
                   _seed(draw), prepare=lively)


@st.composite
def rel_attention_cases(draw, cls: type) -> LayerCase:
    dim, dim_head, heads = draw(st.integers(2, 16)), draw(st.sampled_from([2, 4, 8])), draw(st.integers(1, 3))
    window = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    bias = draw(st.booleans())
    layer = _build(lambda: RelPosAttention(dim, heads * dim_head, dim_head, bias, window))
    post, post_name = draw(followers(heads * dim_head))
    b = _batch(draw)
    label = f"RelPosAttention({dim}, {heads * dim_head}, dim_head={dim_head}, bias={bias}, window={window}) {post_name} @{b}"
    return _finish(layer, Harness(layer, post), [(b, dim, *window)], label, _seed(draw))


class DynamicHeadHarness(Harness):
    """A dynamic head: the generated parameters come in as a float input, scaled like fan-in scaled weights
    (standard normal weights through several layers give outputs dominated by cancellation)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__(layer)
        self.param_scale = 1 / math.sqrt(max(layer.head_in_channels, layer.channels))


class CondInstHarness(DynamicHeadHarness):
    """CondInst's mask head: float inputs only (what check_on_runtimes draws); the instances' FPN levels
    and image indices are derived from a float `selector` (n, 2), identically in every graph."""

    def forward(self, mask_feats: torch.Tensor, params: torch.Tensor, locations: torch.Tensor,
                selector: torch.Tensor) -> torch.Tensor:
        levels = (selector[:, 0].abs() * 10).long() % self.layer.sizes_of_interest.numel()
        images = (selector[:, 1].abs() * 10).long() % mask_feats.shape[0]
        return self.post(self.layer(mask_feats, params * self.param_scale, locations * 32, levels, images))


@st.composite
def condinst_cases(draw, cls: type) -> LayerCase:
    cin, channels, layers = draw(st.integers(1, 8)), draw(st.integers(1, 8)), draw(st.integers(2, 3))
    no_coords = draw(st.booleans())
    feat_stride, out_stride = draw(st.sampled_from([(8, 4), (8, 8), (8, 2), (4, 4), (16, 4)]))
    layer = _build(lambda: cls(cin, channels, layers, no_coords, mask_feat_stride=feat_stride, mask_out_stride=out_stride))
    harness = CondInstHarness(layer)
    b, h, w = _batch(draw), _odd_biased_size(draw, 3, 9), _odd_biased_size(draw, 3, 9)
    shapes = [(b, cin, h, w), (b, layer.num_gen_params), (b, 2), (b, 2)]
    label = (f"{cls.__name__}({cin}, {channels}, layers={layers}, no_coords={no_coords}, strides {feat_stride}/{out_stride}) "
             f"@{b} instances, {h}x{w}")
    return _finish(layer, harness, shapes, label, _seed(draw))


class DyCo3DHarness(DynamicHeadHarness):
    """DyCo3D's head: every input's first axis is the instance count n (what check_on_runtimes varies); the
    points are n·P (features (n, P, C) and coordinates (n, P, 3) flattened), so there are always several."""

    def forward(self, feats: torch.Tensor, params: torch.Tensor, centres: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.post(self.layer(feats.flatten(0, 1), params * self.param_scale, centres, coords.flatten(0, 1)))


@st.composite
def dyco3d_cases(draw, cls: type) -> LayerCase:
    cin, channels, layers, coords = draw(st.integers(1, 16)), draw(st.integers(1, 16)), draw(st.integers(2, 3)), draw(st.booleans())
    layer = _build(lambda: cls(cin, channels, layers, coords))
    harness = DyCo3DHarness(layer)
    b, points = _batch(draw), draw(st.integers(2, 12))
    shapes = [(b, points, cin), (b, layer.num_gen_params), (b, 3), (b, points, 3)]
    label = f"{cls.__name__}({cin}, {channels}, layers={layers}, coords={coords}) @{b} instances, {b}x{points} points"
    return _finish(layer, harness, shapes, label, _seed(draw))


class DetectHarness(Harness):
    """YOLOv5's Detect: one positional tensor per level in, the decoded boxes and each level's raw map out."""

    def forward(self, *levels: torch.Tensor):
        boxes, raw = self.layer(list(levels))
        return (boxes, *raw)


@st.composite
def yolov5_detect_cases(draw, cls: type) -> LayerCase:
    nl, na, nc = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    channels = [draw(st.integers(1, 12)) for _ in range(nl)]
    convs = nn.ModuleList(nn.Conv2d(c, na * (nc + 5), 1) for c in channels)
    anchors = torch.rand(nl, na, 2, generator=torch.Generator().manual_seed(_seed(draw))) * 4 + 0.5  # grid units
    stride = torch.tensor([8.0, 16.0, 32.0][:nl])
    inplace = draw(st.booleans())
    layer = _build(lambda: cls(convs, anchors, stride, nc, inplace))
    b = _batch(draw)
    sizes = [(draw(st.integers(1, 9)), draw(st.integers(1, 9))) for _ in range(nl)]
    shapes = [(b, c, h, w) for c, (h, w) in zip(channels, sizes)]
    label = f"{cls.__name__}(nl={nl}, na={na}, nc={nc}, channels={channels}, inplace={inplace}) @{shapes}"
    return _finish(layer, DetectHarness(layer), shapes, label, _seed(draw))


#: reference layer type name -> strategy of cases; a registered type missing here fails test_every_layer_has_a_generator
GENERATORS: dict[str, Callable[[type], st.SearchStrategy[LayerCase]]] = {
    "PSConv2d": psconv_cases, "PSGConv2d": psconv_cases,
    "HetConv": hetconv_cases, "ShiftedHetConv": hetconv_cases,
    "OctaveConv": octconv_cases, "Conv_BN": octconv_cases, "Conv_BN_ACT": octconv_cases,
    "MixedConv2d": mixconv_cases,
    "SymmetricPadConv2d": even_conv_cases,
    "space_to_depth": spd_cases, "SPDConv": spd_cases,
    "CondConv2d": condconv_cases,
    "Dynamic_conv2d": dynamic_conv_cases,
    "DRConv2d": drconv_cases,
    "DRConv": drconv_megvii_cases,
    "DOConv2d": do_conv_cases,
    "conv_dy": dcd_cases, "conv_basic_dy": dcd_cases, "DYModule": dcd_cases,
    "RelPosAttention": rel_attention_cases,
    "CondInstMaskHead": condinst_cases,
    "DyCo3DMaskHead": dyco3d_cases,
    "YOLOv5Detect": yolov5_detect_cases,
}


def shipped_layers() -> dict:
    """The registry's entries for the layers polyexport ships (tests register toy layers of their own)."""
    return {t: entry for t, entry in registered_layers().items() if t.__module__.startswith("polyexport.")}


def missing_generators() -> list[str]:
    """Shipped reference layer types that no generator covers."""
    return sorted(t.__name__ for t in shipped_layers() if t.__name__ not in GENERATORS)


def cases_for(layer_type: type) -> st.SearchStrategy[LayerCase]:
    return GENERATORS[layer_type.__name__](layer_type)


def registered_pairs() -> list[tuple[type, Form]]:
    """Every (reference layer type, deploy form) in the registry."""
    return [(t, f) for t, entry in shipped_layers().items() for f in entry.forms.values()]


# --- checking one form on one case ----------------------------------------------------------------------

@dataclass
class FormCheck:
    """What happened to one form on one case."""

    declined: str | None = None  # exact_for's reason: not a mismatch, the converter falls back
    torch_error: float | None = None  # max error / output scale in PyTorch
    runtime_errors: dict[str, float] = field(default_factory=dict)  # worst over both batches, per runtime
    #: runtime -> why no comparison could judge the form there (not a mismatch): the reference harness itself
    #: fails on it (a user's 'same'-padded dilated conv that stays as it is: ONNX Runtime refuses its auto_pad),
    #: or every input seed tried puts some pixel's region argmax within rounding of a tie
    unjudged: dict[str, str] = field(default_factory=dict)
    failure: str | None = None  # an exception (build, convert, export, runtime) or a wrong record
    folds: int = 0  # BNs folded and convs absorbed by the converter around the layer
    #: runtime -> what it got wrong where the form is exact in PyTorch and the very same exported graph is exact on
    #: another runtime: that runtime miscomputes a valid graph (each one found is triaged in docs/results.md, with a
    #: repro without polyexport; the pipeline's own parity check keeps such a graph from shipping)
    runtime_defects: dict[str, str] = field(default_factory=dict)

    def mismatches(self, rtol: float = RTOL) -> list[str]:
        """Why this check failed (empty where it passed or was declined)."""
        out = [self.failure] if self.failure else []
        if self.torch_error is not None and not self.torch_error <= rtol:
            out.append(f"PyTorch: max error / scale {self.torch_error:.3g} > {rtol:g}")
        out += [f"{rt}: max error / scale {e:.3g} > {rtol:g}" for rt, e in self.runtime_errors.items() if not e <= rtol]
        return out


def deployed_with(case: LayerCase, form: Form):
    """The harness through convert() with `form` forced for the layer (its neighbours by their defaults)."""
    return convert(case.model, forms={case.layer_type.__name__: form.name})


def torch_error(case: LayerCase, deployed: nn.Module, seed: int) -> float:
    with torch.no_grad():
        xs = case.inputs(seed)
        want, got = flatten_outputs(case.model(*xs)), flatten_outputs(deployed(*xs))
    if len(want) != len(got):
        return math.inf
    return max((max_rel_err(a, b) for a, b in zip(want, got)), default=0.0)


def constant_conv_weights(path: str) -> None:
    """Every Conv / ConvTranspose weight in the graph is an initializer or a Constant (TensorRT's parser needs it)."""
    graph = onnx.load(path).graph
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            assert node.input[1] in consts, f"{node.op_type} {node.name}: weight computed at run time"


def runtime_draws(shapes: Sequence[tuple[int, ...]], batches: Sequence[int], n_runtimes: int, seed: int) -> list[list[torch.Tensor]]:
    """The inputs check_on_runtimes draws (same generator, same order): to check their argmax gaps first."""
    rng = np.random.default_rng(seed)
    draws = [[torch.from_numpy(rng.standard_normal(s, dtype=np.float32)) for s in shapes]]
    for _ in range(n_runtimes):
        for b in batches:
            draws.append([torch.from_numpy(rng.standard_normal((b, *s[1:]), dtype=np.float32)) for s in shapes])
    return draws


def runtime_seed(case: LayerCase, batches: Sequence[int], n_runtimes: int) -> int | None:
    """The first input seed whose every draw keeps the model's argmaxes clear of ties (0 where none)."""
    if case.guide_gap is None:
        return 0
    for seed in range(50):
        if all(case.guide_gap(xs) >= GUIDE_MARGIN for xs in runtime_draws(case.input_shapes, batches, n_runtimes, seed)):
            return seed
    return None


def _exception_text(stage: str, e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)[-1]
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{stage}: {type(e).__name__}: {text} ({tb.filename.rsplit('/', 1)[-1]}:{tb.lineno})"


def _on_runtimes(case: LayerCase, deployed: nn.Module, form: Form, runtimes: Sequence[str], batches: Sequence[int],
                 seed: int) -> dict[str, float]:
    """Worst error per runtime of one exported graph (raises what check_on_runtimes raises)."""
    checks = check_on_runtimes(case.model, deployed, case.input_shapes, batches=batches, runtimes=list(runtimes),
                               rtol=math.inf, seed=seed, dynamic_batch=form.dynamic_batch,
                               onnx_check=constant_conv_weights if form.constant_weights else None)
    worst: dict[str, float] = {}
    for c in checks:
        worst[c.runtime] = max(worst.get(c.runtime, 0.0), c.worst)
    return worst


def _set_apart_runtime_defects(result: FormCheck, rtol: float = RTOL) -> None:
    """A runtime that misses where PyTorch and another runtime running the same graph file are exact: its defect,
    not the form's mismatch (kept apart, listed in full by benchmarks/fuzz.py)."""
    exact_on = [rt for rt, e in result.runtime_errors.items() if e <= rtol]
    if not exact_on or result.torch_error is None or not result.torch_error <= rtol:
        return
    for rt, e in list(result.runtime_errors.items()):
        if not e <= rtol:
            result.runtime_defects[rt] = f"max error / scale {e:.3g} on {rt}; the same graph is exact on {', '.join(exact_on)}"
            del result.runtime_errors[rt]


def check_form(case: LayerCase, form: Form, runtimes: Sequence[str] = (), seed: int = 0,
               second_batch: int | None = None) -> FormCheck:
    """Deploy `case` with `form` (unless exact_for declines), compare in PyTorch, then on each runtime
    from one exported graph (at two batches where the form claims a dynamic batch); never raises.

    An infinite rtol in check_on_runtimes keeps it from raising on a finite error of any size (NaN/Inf and wrong
    shapes still raise): the error is recorded and judged by FormCheck.mismatches at RTOL. Where a runtime fails, each runtime is tried
    alone, and one where the reference harness itself fails is recorded apart, not as a mismatch.
    """
    why = form.exact_for(case.layer)
    if why is not None:
        return FormCheck(declined=why)
    result = FormCheck()
    stage = "convert"
    try:
        deployed, records = deployed_with(case, form)
        mine = [r for r in records if r.name == "layer"]
        if [r.form for r in mine] != [form.name]:
            result.failure = f"records {[r.as_dict() for r in mine]}: the layer did not get form {form.name}"
            return result
        result.folds = sum(r.form in ("folded", "absorbed") for r in records)
        stage = "PyTorch"
        result.torch_error = torch_error(case, deployed, seed)
    except Exception as e:  # noqa: BLE001 - any exception is a finding, reported with where it happened
        result.failure = _exception_text(stage, e)
        return result
    if not runtimes:
        return result
    b = case.input_shapes[0][0]
    batches = (b, second_batch if second_batch not in (None, b) else b % 5 + 1) if form.dynamic_batch else (b,)
    rt_seed = runtime_seed(case, batches, len(runtimes))
    if rt_seed is None:  # e.g. one input channel and two nearly equal guide weights: the regions' order is rounding
        result.unjudged = {rt: f"no input seed keeps every region argmax {GUIDE_MARGIN:g} clear of a tie" for rt in runtimes}
        return result
    try:
        result.runtime_errors = _on_runtimes(case, deployed, form, runtimes, batches, rt_seed)
        _set_apart_runtime_defects(result)
        return result
    except Exception as first:  # noqa: BLE001 - attribute it: runtime by runtime, and the reference's own run
        failures = []
        for rt in runtimes:
            try:
                result.runtime_errors.update(_on_runtimes(case, deployed, form, [rt], batches, rt_seed))
            except Exception as e:  # noqa: BLE001
                try:
                    as_is = Form("reference", lambda m: m, dynamic_batch=False, constant_weights=False)  # at its own batch
                    _on_runtimes(case, case.model, as_is, [rt], batches, rt_seed)
                except Exception as ref_e:  # noqa: BLE001 - the user's own model does not run there either
                    result.unjudged[rt] = _exception_text(f"the reference itself on {rt}", ref_e)
                    continue
                failures.append(_exception_text(f"export/{rt}", e))
        if failures or not (result.runtime_errors or result.unjudged):
            result.failure = "; ".join(failures) or _exception_text("export/runtime", first)
    return result
