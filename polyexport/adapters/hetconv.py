"""Recognise the common unofficial HetConv layouts and rebuild them as our HetConv (gwc + pwc).

HetConv has no official code (nor a timm class). Two layouts are matched by class name and
parameter layout, wherever they are defined:
  - "hetconv_gwc_pwc": a class named like HetConv with exactly the children `gwc` (grouped K×K) and
    `pwc` (1×1, any groups), summed: irvinxav/Efficient-HetConv (our reference's own layout, defined
    in users' code as their own class) and its copies, e.g. the Multimodal-Fusion-Transformer one
    whose `pwc` is grouped and both convs have a bias. A grouped `pwc` is expanded to a dense one.
  - "efficient_hetconv2d": sxpro/HetConvolution2d_pytorch `Efficient_HetConv2d` (also in
    Xianhang/EDSC-pytorch): conv3x3 + conv1x1 − conv1x1_, the grouped 1×1 `conv1x1_` removing the
    1×1 term on the K×K channels; folded as pwc = conv1x1 − blockdiag(conv1x1_), gwc.bias = b3 − b1_.
The layouts with the paper's shifted assignment (K×K on channels j ≡ c mod P), which gwc + pwc
represents only after a channel shuffle, are rebuilt as ShiftedHetConv:
  - "hetconv_filters": the per-branch `filters` layout of many Ultralytics-YOLO plugin files
    (ShiftedHetConv's own state_dict layout);
  - "hetconv2d_v2": sxpro `HetConv2d_v2`, one [K×K, 1×1] pair per output filter, with biases.
Not matched: sxpro `HetConv2d` (v1) cannot be built (its __init__ calls super(HetConv2d_v2, self)),
and variants whose branches are not plain convs (e.g. a YOLO copy with DWConv+norm+DyReLU branches).
"""
from __future__ import annotations

import torch
from torch import nn

from ..convert import register_adapter
from ..layers.hetconv import HetConv, ShiftedHetConv


def _dense_1x1(conv: nn.Conv2d) -> torch.Tensor:
    """(out, in) float64 weight of a (possibly grouped) 1×1 conv as a dense 1×1 conv."""
    w = conv.weight.detach().double()[:, :, 0, 0]
    per_out, per_in = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    dense = torch.zeros(conv.out_channels, conv.in_channels, dtype=torch.float64, device=w.device)
    for g in range(conv.groups):
        dense[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = w[g * per_out:(g + 1) * per_out]
    return dense


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    return conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)


def _is_kxk_branch(kxk: object, *ones: object) -> bool:
    """A grouped odd K×K conv and 1×1 convs over the same channels and stride, whose outputs line up."""
    if not isinstance(kxk, nn.Conv2d) or not all(isinstance(c, nn.Conv2d) for c in ones):
        return False
    k, d = kxk.kernel_size, kxk.dilation
    same = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    return (k[0] == k[1] and k[0] % 2 == 1 and d[0] == d[1] and kxk.padding == same and kxk.stride[0] == kxk.stride[1]
            and kxk.padding_mode == "zeros" and kxk.out_channels % kxk.groups == 0
            and all(c.kernel_size == (1, 1) and c.padding == (0, 0) and c.stride == kxk.stride
                    and (c.in_channels, c.out_channels) == (kxk.in_channels, kxk.out_channels) for c in ones))


def _reference_like(kxk: nn.Conv2d, bias: bool) -> HetConv:
    return HetConv(kxk.in_channels, kxk.out_channels, kxk.groups, kxk.kernel_size[0], kxk.stride[0],
                   kxk.padding[0], kxk.dilation[0], bias=bias)


def _load(ref: HetConv, gwc_w: torch.Tensor, pwc_w: torch.Tensor, gwc_b: torch.Tensor | None, pwc_b: torch.Tensor | None) -> HetConv:
    ref = ref.to(device=gwc_w.device, dtype=gwc_w.dtype)
    with torch.no_grad():
        ref.gwc.weight.copy_(gwc_w)
        ref.pwc.weight.copy_(pwc_w.reshape(ref.pwc.weight.shape))
        if ref.gwc.bias is not None:
            ref.gwc.bias.copy_(gwc_b)
            ref.pwc.bias.copy_(pwc_b)
    return ref.eval()


def matches_gwc_pwc(m: nn.Module) -> bool:
    """A HetConv-named class holding exactly `gwc` (grouped K×K) and `pwc` (1×1) over the same channels."""
    children = dict(m.named_children())
    return ("hetconv" in type(m).__name__.lower() and set(children) == {"gwc", "pwc"}
            and _is_kxk_branch(children["gwc"], children["pwc"]))


def gwc_pwc_to_reference(m: nn.Module) -> HetConv:
    """Same gwc; pwc expanded to dense where grouped; a missing bias becomes a zero bias."""
    gwc, pwc = m.gwc, m.pwc
    bias = gwc.bias is not None or pwc.bias is not None
    ref = _reference_like(gwc, bias)
    return _load(ref, gwc.weight.detach(), _dense_1x1(pwc), _bias(gwc), _bias(pwc))


def matches_efficient(m: nn.Module) -> bool:
    """sxpro's Efficient_HetConv2d: conv3x3 (groups p), conv1x1 (dense), conv1x1_ (groups p)."""
    children = dict(m.named_children())
    if "hetconv" not in type(m).__name__.lower() or set(children) != {"conv3x3", "conv1x1", "conv1x1_"}:
        return False
    c3, c1, c1_ = children["conv3x3"], children["conv1x1"], children["conv1x1_"]
    return _is_kxk_branch(c3, c1, c1_) and c1_.groups == c3.groups and c1.groups == 1


def efficient_to_reference(m: nn.Module) -> HetConv:
    """conv3x3 + conv1x1 − conv1x1_ = gwc + pwc with pwc = conv1x1 − blockdiag(conv1x1_)."""
    c3, c1, c1_ = m.conv3x3, m.conv1x1, m.conv1x1_
    bias = any(c.bias is not None for c in (c3, c1, c1_))
    ref = _reference_like(c3, bias)
    return _load(ref, c3.weight.detach(), _dense_1x1(c1) - _dense_1x1(c1_), _bias(c3) - _bias(c1_), _bias(c1))


def _pair(branch: object) -> tuple[nn.Conv2d, nn.Conv2d] | None:
    """(K×K conv, 1×1 conv) of a two-conv ModuleList branch, else None."""
    if not isinstance(branch, nn.ModuleList) or len(branch) != 2:
        return None
    kxk, one = branch
    return (kxk, one) if isinstance(kxk, nn.Conv2d) and isinstance(one, nn.Conv2d) else None


def _shifted_branches_ok(pairs: list, p: int, out_per_branch: int) -> bool:
    """Every branch: K×K over in/P channels and 1×1 over the rest, out_per_branch outputs, same geometry."""
    if p < 2 or not pairs or any(pr is None for pr in pairs):
        return False
    k0, o0 = pairs[0]
    n_kxk, n_one = k0.in_channels, o0.in_channels
    geometry = (k0.kernel_size, k0.stride, k0.padding, k0.dilation, k0.bias is not None)
    d = k0.dilation[0]
    return (k0.kernel_size[0] == k0.kernel_size[1] and k0.kernel_size[0] % 2 == 1 and k0.dilation[0] == k0.dilation[1]
            and k0.padding == (d * (k0.kernel_size[0] - 1) // 2,) * 2 and k0.stride[0] == k0.stride[1]
            and n_one == (p - 1) * n_kxk and all(
                (k.kernel_size, k.stride, k.padding, k.dilation, k.bias is not None) == geometry and k.groups == 1
                and (k.in_channels, k.out_channels, k.padding_mode) == (n_kxk, out_per_branch, "zeros")
                and o.kernel_size == (1, 1) and o.padding == (0, 0) and o.stride == k0.stride and o.groups == 1
                and (o.in_channels, o.out_channels) == (n_one, out_per_branch) and (o.bias is not None) == geometry[-1]
                for k, o in pairs))


def _shifted_like(k0: nn.Conv2d, in_channels: int, out_channels: int, p: int) -> ShiftedHetConv:
    return ShiftedHetConv(in_channels, out_channels, p, k0.kernel_size[0], k0.stride[0], k0.padding[0], k0.dilation[0],
                          bias=k0.bias is not None)


def matches_filters(m: nn.Module) -> bool:
    """The YOLO-plugin `filters` layout: P branches [K×K over i::P, 1×1 over the rest], outputs interleaved."""
    filters, p = getattr(m, "filters", None), getattr(m, "p", None)
    if "hetconv" not in type(m).__name__.lower() or not isinstance(filters, nn.ModuleList) or not isinstance(p, int):
        return False
    pairs = [_pair(b) for b in filters]
    return len(pairs) == p and pairs[0] is not None and _shifted_branches_ok(pairs, p, pairs[0][0].out_channels)


def filters_to_reference(m: nn.Module) -> ShiftedHetConv:
    """ShiftedHetConv has this very layout: load the state_dict as it is."""
    k0, o0 = m.filters[0]
    ref = _shifted_like(k0, k0.in_channels + o0.in_channels, k0.out_channels * m.p, m.p).to(k0.weight)
    ref.load_state_dict(m.state_dict(), strict=True)
    return ref.eval()


def matches_v2(m: nn.Module) -> bool:
    """sxpro HetConv2d_v2: one [K×K, 1×1] pair with one output per filter, channel j K×K in filter i iff j ≡ i (mod p)."""
    blocks, p = getattr(m, "blocks", None), getattr(m, "p", None)
    if type(m).__name__ != "HetConv2d_v2" or not isinstance(blocks, nn.ModuleList) or not isinstance(p, int):
        return False
    pairs = [_pair(b) for b in blocks]
    return len(pairs) % p == 0 and _shifted_branches_ok(pairs, p, 1)


def v2_to_reference(m: nn.Module) -> ShiftedHetConv:
    """Filter c = q·P + i of HetConv2d_v2 is row q of ShiftedHetConv's branch i."""
    p, pairs = m.p, [_pair(b) for b in m.blocks]
    k0, o0 = pairs[0]
    ref = _shifted_like(k0, k0.in_channels + o0.in_channels, len(pairs), p).to(k0.weight)
    with torch.no_grad():
        for c, (kxk, one) in enumerate(pairs):
            branch_k, branch_1 = ref.filters[c % p]
            for src, dst in ((kxk, branch_k), (one, branch_1)):
                dst.weight[c // p] = src.weight[0]
                if src.bias is not None:
                    dst.bias[c // p] = src.bias[0]
    return ref.eval()


register_adapter("hetconv_gwc_pwc", matches_gwc_pwc, gwc_pwc_to_reference)
register_adapter("efficient_hetconv2d", matches_efficient, efficient_to_reference)
register_adapter("hetconv_filters", matches_filters, filters_to_reference)
register_adapter("hetconv2d_v2", matches_v2, v2_to_reference)
