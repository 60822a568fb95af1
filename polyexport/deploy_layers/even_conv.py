"""Deploy forms of SymmetricPadConv2d (C2sp / C4sp).

The reference is Split → four Pads → Concat → k×k conv: a copy of the whole input before the conv,
and a BN after it cannot be folded into anything. Three exact forms:
  - "single": one (k+1)×(k+1) nn.Conv2d with padding k/2. Each input channel's k×k kernel sits in
    the corner of the (k+1)×(k+1) window that matches its group's padding (row/column offset 0 where
    the group is padded one more on top/left, else 1), zeros elsewhere. Output positions line up at
    every stride and input size: both read original row o·s − top_g + i for kernel row i. Costs
    ((k+1)/k)² the reference's FLOPs (×2.25 for C2sp = a 3×3 conv), no data movement.
  - "split": per channel group, Pad + k×k conv on that group's channels; summed (groups = 1) or
    concatenated (each conv group inside one channel group, e.g. depthwise). Same FLOPs as the
    reference, no Concat of the input; runtimes fuse each Pad into its Conv's asymmetric pads.
  - "padcat": the reference's own graph (Pad per group + Concat + conv), as a module that folds BN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import Form, register_layer
from ..layers.even_conv import CORNER_BITS, SymmetricPadConv2d, group_sizes
from .conv_bn import bn_scale_shift, fuse_conv_bn


def _scaled(conv: nn.Conv2d, s: torch.Tensor, t: torch.Tensor | None) -> nn.Conv2d:
    """A copy of `conv` computing s·conv(x) + t per output channel (t None: s·conv(x), bias kept scaled)."""
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=conv.bias is not None or t is not None)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(s)
    with torch.no_grad():
        new.weight.copy_((conv.weight.detach().double() * s.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
        if new.bias is not None:
            new.bias.copy_((s * b + (t if t is not None else 0)).to(conv.weight.dtype))
    return new


class PadConcatConv(nn.Module):
    """The reference's computation (per-group Pad, Concat, k×k conv without padding), BN-foldable."""

    def __init__(self, sizes: list[int], pads: list[tuple[int, int, int, int]], conv: nn.Conv2d):
        super().__init__()
        self.sizes, self.pads, self.conv = list(sizes), [tuple(p) for p in pads], conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.sizes, dim=1)
        return self.conv(torch.cat([F.pad(p, pad) for p, pad in zip(parts, self.pads)], dim=1))

    def fuse_bn(self, bn: nn.BatchNorm2d) -> nn.Module:
        return PadConcatConv(self.sizes, self.pads, fuse_conv_bn(self.conv, bn))


class SplitPadConv(nn.Module):
    """Per channel group: Pad, then its own k×k conv; outputs summed (mode "sum") or concatenated ("cat")."""

    def __init__(self, sizes: list[int], pads: list[tuple[int, int, int, int]], convs: list[nn.Conv2d], mode: str):
        super().__init__()
        self.sizes, self.pads, self.mode = list(sizes), [tuple(p) for p in pads], mode
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [conv(F.pad(p, pad)) for p, pad, conv in zip(torch.split(x, self.sizes, dim=1), self.pads, self.convs)]
        if self.mode == "cat":
            return torch.cat(outs, dim=1)
        y = outs[0]
        for o in outs[1:]:
            y = y + o
        return y

    def fuse_bn(self, bn: nn.BatchNorm2d) -> nn.Module:
        s, t = bn_scale_shift(bn)
        convs, start = [], 0
        for i, conv in enumerate(self.convs):
            if self.mode == "cat":  # each conv owns a slice of the output channels
                sl = slice(start, start + conv.out_channels)
                convs.append(_scaled(conv, s[sl], t[sl]))
                start += conv.out_channels
            else:  # every conv feeds every output channel: the shift is added once
                convs.append(_scaled(conv, s, t if i == 0 else None))
        return SplitPadConv(self.sizes, self.pads, convs, self.mode)


def _nonempty(ref: SymmetricPadConv2d) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """(first channel, size, pad) of each non-empty channel group."""
    out, start = [], 0
    for size, pad in zip(group_sizes(ref.in_channels), ref.group_pads()):
        if size:
            out.append((start, size, pad))
        start += size
    return out


def split_unfit(ref: SymmetricPadConv2d) -> str | None:
    """Why "split" cannot represent `ref`: a conv group straddling two channel groups."""
    if ref.groups == 1:
        return None
    per = ref.in_channels // ref.groups
    if all(start % per == 0 and size % per == 0 for start, size, _ in _nonempty(ref)):
        return None
    return (f"conv groups of {per} input channels straddle the padding groups {group_sizes(ref.in_channels)}; "
            "split needs each conv group inside one padding group")


def build_single(ref: SymmetricPadConv2d) -> nn.Conv2d:
    """One (k+1)×(k+1) conv, padding k/2, each channel's kernel placed in its group's corner."""
    k, g = ref.kernel_size, ref.groups
    conv = nn.Conv2d(ref.in_channels, ref.out_channels, k + 1, ref.stride, k // 2, 1, g, bias=ref.bias is not None)
    w = ref.weight.detach()
    big = torch.zeros(conv.weight.shape, dtype=w.dtype)
    per_in, per_out = ref.in_channels // g, ref.out_channels // g
    corner_of = [c for c, size in zip(ref.corners, group_sizes(ref.in_channels)) for _ in range(size)]
    for gi in range(g):
        rows = slice(gi * per_out, (gi + 1) * per_out)
        for j in range(per_in):
            top, _, left, _ = CORNER_BITS[corner_of[gi * per_in + j]]
            big[rows, j, 1 - top:1 - top + k, 1 - left:1 - left + k] = w[rows, j]
    with torch.no_grad():
        conv.weight.copy_(big)
        if ref.bias is not None:
            conv.bias.copy_(ref.bias.detach())
    return conv


def build_split(ref: SymmetricPadConv2d) -> SplitPadConv:
    """Per channel group a Pad and a k×k conv: summed for groups = 1, concatenated when groups align."""
    why = split_unfit(ref)
    if why:
        raise ValueError(why)
    w, b = ref.weight.detach(), None if ref.bias is None else ref.bias.detach()
    parts = _nonempty(ref)
    convs = []
    if ref.groups == 1:
        for i, (start, size, _) in enumerate(parts):
            conv = nn.Conv2d(size, ref.out_channels, ref.kernel_size, ref.stride, bias=b is not None and i == 0)
            with torch.no_grad():
                conv.weight.copy_(w[:, start:start + size])
                if conv.bias is not None:
                    conv.bias.copy_(b)
            convs.append(conv)
        mode = "sum"
    else:
        per_in, per_out = ref.in_channels // ref.groups, ref.out_channels // ref.groups
        for start, size, _ in parts:
            n = size // per_in  # conv groups in this channel group
            rows = slice(start // per_in * per_out, (start // per_in + n) * per_out)
            conv = nn.Conv2d(size, n * per_out, ref.kernel_size, ref.stride, groups=n, bias=b is not None)
            with torch.no_grad():
                conv.weight.copy_(w[rows])
                if b is not None:
                    conv.bias.copy_(b[rows])
            convs.append(conv)
        mode = "cat"
    return SplitPadConv([s for _, s, _ in parts], [p for _, _, p in parts], convs, mode).eval()


def build_padcat(ref: SymmetricPadConv2d) -> PadConcatConv:
    """The reference's graph with its conv as an nn.Conv2d, so a following BN folds into it."""
    conv = nn.Conv2d(ref.in_channels, ref.out_channels, ref.kernel_size, ref.stride, 0, 1, ref.groups, bias=ref.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(ref.weight.detach())
        if ref.bias is not None:
            conv.bias.copy_(ref.bias.detach())
    return PadConcatConv(group_sizes(ref.in_channels), ref.group_pads(), conv).eval()


def _preference(ref: SymmetricPadConv2d | None) -> list[str]:
    """Measured (benchmarks/layers.py, 1 thread, ONNX Runtime and OpenVINO): dense C2sp at 56²×64,
    28²×128, 14²×256 and C4sp at 28²×128: split ≈ 0.45–0.53× a 3×3 conv, padcat (= the reference
    graph) ≈ 0.51–0.56×, single ≈ 1.0× (it does the 3×3's FLOPs). Depthwise C2sp at 28²×128: single
    ≈ 1.0× a 3×3 depthwise conv, split 1.09–1.19×, padcat 1.19–1.95×: four small convs cost more than
    the extra FLOPs of one. TensorRT not measured: same order.
    """
    if ref is not None and ref.groups > 1 and ref.groups == ref.in_channels:
        return ["single", "split", "padcat"]
    return ["split", "padcat", "single"]


register_layer(
    SymmetricPadConv2d,
    forms=[
        Form("single", build_single, note="one (k+1)x(k+1) conv, padding k/2, kernels in their group's corner; x((k+1)/k)^2 FLOPs"),
        Form("split", build_split, exact_for=split_unfit,
             note="per channel group Pad + kxk conv, summed (groups=1) or concatenated (aligned groups); reference FLOPs"),
        Form("padcat", build_padcat, note="the reference graph (Pad per group, Concat, kxk conv), BN-foldable"),
    ],
    prefer=lambda ref, target: _preference(ref),
)
