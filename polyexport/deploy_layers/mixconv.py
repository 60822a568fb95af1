"""Deploy forms of MixedConv2d (MixConv): the per-split convs merged into one, or kept apart.

- "single": one conv at the largest kernel size, each smaller kernel zero-padded to its centre,
  with as many groups as the split structure allows (C groups for a depthwise MixConv, n groups
  for equal dense splits, 1 with zero blocks otherwise). A zero tap multiplies a padded or real
  pixel by 0, so the sum is the same: exact where every split samples the same centre, i.e. same
  stride, dilation and padding kind, and padding that grows by d·(K − k)/2 with the kernel
  (timm's '' and 'same' paddings do, for kernel sizes of one parity).
- "aligned" (depthwise only): Split at multiples of ALIGN channels, one conv per kernel size, Concat;
  the channels moved across a boundary get their kernel zero-padded to the larger size. Near the
  reference's FLOPs, without the slow path runtimes take for channel counts like 21 or 22.
- "split": the reference's own structure (Split, one conv per kernel size, Concat), with BN foldable.
All three keep the batch dynamic and every weight constant.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..convert import Form, register_layer
from ..layers.mixconv import Conv2dSame, MixedConv2d
from .conv_bn import fuse_conv_bn


def _convs(ref: MixedConv2d) -> list[nn.Conv2d]:
    return list(ref.values())


def single_unfit(ref: MixedConv2d) -> str | None:
    """Why one conv with centred, zero-padded kernels would not equal this MixedConv2d (None if it would)."""
    convs = _convs(ref)
    kinds = {type(c) for c in convs}
    if len(kinds) != 1 or not kinds <= {nn.Conv2d, Conv2dSame}:
        return f"splits mix conv types {sorted(k.__name__ for k in kinds)}"
    if len({c.stride for c in convs}) != 1 or len({c.dilation for c in convs}) != 1:
        return "splits differ in stride or dilation"
    if any(c.padding_mode != "zeros" for c in convs):
        return "non-zero padding mode"
    big = tuple(max(c.kernel_size[a] for c in convs) for a in (0, 1))
    for c in convs:
        for a in (0, 1):
            k, d, s = c.kernel_size[a], c.dilation[a], c.stride[a]
            if (big[a] - k) % 2:
                return f"kernel {k} cannot be centred in {big[a]} (sizes of both parities)"
            if isinstance(c, Conv2dSame) and k != big[a] and d * (k - 1) < s - 1:
                return f"'same' padding of kernel {k} with stride {s} is clamped at 0, not centred"
    if not isinstance(convs[0], Conv2dSame):
        offsets = {tuple(2 * c.padding[a] - c.dilation[a] * (c.kernel_size[a] - 1) for a in (0, 1)) for c in convs}
        if len(offsets) != 1:
            return f"paddings {[c.padding for c in convs]} do not centre kernels {[c.kernel_size for c in convs]}"
    return None


def _channel_ranges(ref: MixedConv2d) -> list[tuple[nn.Conv2d, int, int]]:
    """(conv, first input channel, first output channel) per split."""
    out, i0, o0 = [], 0, 0
    for c in _convs(ref):
        out.append((c, i0, o0))
        i0, o0 = i0 + c.in_channels, o0 + c.out_channels
    return out


def _best_groups(ref: MixedConv2d) -> int:
    """The most groups G of one conv such that each output's inputs lie inside its group's input block."""
    lo, hi = [], []  # per output channel: the input channel range it reads
    for c, i0, _ in _channel_ranges(ref):
        ci, co = c.in_channels // c.groups, c.out_channels // c.groups
        for o in range(c.out_channels):
            lo.append(i0 + (o // co) * ci)
            hi.append(i0 + (o // co + 1) * ci)
    cin, cout = ref.in_channels, ref.out_channels
    for g in sorted((g for g in range(1, math.gcd(cin, cout) + 1) if cin % g == 0 and cout % g == 0), reverse=True):
        bi, bo = cin // g, cout // g
        if all(lo[o] >= (o // bo) * bi and hi[o] <= (o // bo + 1) * bi for o in range(cout)):
            return g
    raise AssertionError("unreachable: one group always holds")


def build_single(ref: MixedConv2d) -> nn.Conv2d:
    """One conv (Conv2dSame where timm pads dynamically) holding every split's kernel, centred."""
    why = single_unfit(ref)
    if why:
        raise ValueError(f"form 'single' is not exact here: {why}")
    convs = _convs(ref)
    kh, kw = (max(c.kernel_size[a] for c in convs) for a in (0, 1))
    first = convs[0]
    dh, dw = first.dilation
    g = _best_groups(ref)
    bi, bo = ref.in_channels // g, ref.out_channels // g
    weight = first.weight.new_zeros(ref.out_channels, bi, kh, kw)
    bias = first.weight.new_zeros(ref.out_channels) if any(c.bias is not None for c in convs) else None
    for c, i0, o0 in _channel_ranges(ref):
        ci, co = c.in_channels // c.groups, c.out_channels // c.groups
        th, tw = (kh - c.kernel_size[0]) // 2, (kw - c.kernel_size[1]) // 2
        for j in range(c.groups):
            rows = slice(o0 + j * co, o0 + (j + 1) * co)
            col = i0 + j * ci - (rows.start // bo) * bi  # input offset inside the merged group
            weight[rows, col:col + ci, th:th + c.kernel_size[0], tw:tw + c.kernel_size[1]] = c.weight[j * co:(j + 1) * co]
        if c.bias is not None:
            bias[o0:o0 + c.out_channels] = c.bias
    if isinstance(first, Conv2dSame):
        merged = Conv2dSame(ref.in_channels, ref.out_channels, (kh, kw), first.stride, 0, first.dilation, g, bias is not None)
    else:  # padding of the largest kernel: the smaller ones' plus d·(K − k)/2
        c = first
        pad = (c.padding[0] + dh * (kh - c.kernel_size[0]) // 2, c.padding[1] + dw * (kw - c.kernel_size[1]) // 2)
        merged = nn.Conv2d(ref.in_channels, ref.out_channels, (kh, kw), first.stride, pad, first.dilation, g, bias is not None)
    with torch.no_grad():
        merged.weight.copy_(weight)
        if bias is not None:
            merged.bias.copy_(bias)
    return merged.to(first.weight.device).eval()


def _bn_slice(bn: nn.BatchNorm2d, start: int, stop: int) -> nn.BatchNorm2d:
    """The BN of channels [start, stop) alone (eval statistics), to fold into one split's conv."""
    part = nn.BatchNorm2d(stop - start, eps=bn.eps, affine=bn.affine).to(bn.running_mean.device).eval()
    with torch.no_grad():
        part.running_mean.copy_(bn.running_mean[start:stop])
        part.running_var.copy_(bn.running_var[start:stop])
        if bn.affine:
            part.weight.copy_(bn.weight[start:stop])
            part.bias.copy_(bn.bias[start:stop])
    return part


class MixSplit(nn.Module):
    """Split channels, one conv per kernel size, concatenate: the reference's computation, BN-foldable."""

    def __init__(self, splits: list[int], convs: list[nn.Conv2d]) -> None:
        super().__init__()
        self.splits = list(splits)
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(p) for conv, p in zip(self.convs, parts)], 1)

    def fuse_bn(self, bn: nn.BatchNorm2d) -> "MixSplit":
        """bn(self(x)): each split's conv absorbs the BN channels it produces."""
        fused, o0 = [], 0
        for c in self.convs:
            part = _bn_slice(bn, o0, o0 + c.out_channels)
            fused.append(c.fuse_bn(part) if hasattr(c, "fuse_bn") else fuse_conv_bn(c, part))
            o0 += c.out_channels
        return MixSplit(self.splits, fused).eval()


def build_split(ref: MixedConv2d) -> MixSplit:
    """The reference's own structure, with copies of its convs (always exact)."""
    convs = []
    for c in _convs(ref):
        kind = Conv2dSame if isinstance(c, Conv2dSame) else nn.Conv2d
        new = kind(c.in_channels, c.out_channels, c.kernel_size, c.stride, 0 if kind is Conv2dSame else c.padding,
                   c.dilation, c.groups, c.bias is not None, **({} if kind is Conv2dSame else {"padding_mode": c.padding_mode}))
        new.load_state_dict(c.state_dict())
        convs.append(new.to(c.weight.device).eval())
    return MixSplit(list(ref.splits), convs).eval()


#: channel count every "aligned" piece is a multiple of (ONNX Runtime's depthwise fast path wants
#: multiples of 4: 21 or 22 channels run 4-6× slower than 20 or 24; 8 also suits 8-wide blocking)
ALIGN = 8


def aligned_unfit(ref: MixedConv2d) -> str | None:
    """Why "aligned" would not be exact (it re-slices the "single" conv by input channel)."""
    why = single_unfit(ref)
    if why is None and _best_groups(ref) != ref.in_channels:
        why = "only for a depthwise MixConv (one group per input channel)"
    return why


def build_aligned(ref: MixedConv2d) -> MixSplit:
    """Split + per-size depthwise convs, with split boundaries moved to multiples of ALIGN.

    Each boundary moves toward the smaller kernel, so the few channels that change side get a
    larger kernel, zero-padded to the centre as in "single" (exact), and every conv has a channel
    count the runtimes' vectorised depthwise kernels accept.
    """
    why = aligned_unfit(ref)
    if why:
        raise ValueError(f"form 'aligned' is not exact here: {why}")
    merged = build_single(ref)
    mult = ref.out_channels // ref.in_channels
    convs = _convs(ref)
    per_channel = [c.kernel_size for c in convs for _ in range(c.in_channels)]
    bounds = {0, ref.in_channels}
    for (a, _, _), (b, i0, _) in zip(_channel_ranges(ref), _channel_ranges(ref)[1:]):
        down = b.kernel_size[0] * b.kernel_size[1] >= a.kernel_size[0] * a.kernel_size[1]
        bounds.add(i0 // ALIGN * ALIGN if down else min(-(-i0 // ALIGN) * ALIGN, ref.in_channels))
    bounds = sorted(bounds)
    pieces, splits = [], []
    kh, kw = merged.kernel_size
    for s, e in zip(bounds, bounds[1:]):
        ph, pw = (max(k[a] for k in per_channel[s:e]) for a in (0, 1))
        th, tw = (kh - ph) // 2, (kw - pw) // 2
        if isinstance(merged, Conv2dSame):
            conv = Conv2dSame(e - s, (e - s) * mult, (ph, pw), merged.stride, 0, merged.dilation, e - s, merged.bias is not None)
        else:
            pad = (merged.padding[0] - merged.dilation[0] * th, merged.padding[1] - merged.dilation[1] * tw)
            conv = nn.Conv2d(e - s, (e - s) * mult, (ph, pw), merged.stride, pad, merged.dilation, e - s, merged.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(merged.weight[s * mult:e * mult, :, th:th + ph, tw:tw + pw])
            if merged.bias is not None:
                conv.bias.copy_(merged.bias[s * mult:e * mult])
        pieces.append(conv.to(merged.weight.device).eval())
        splits.append(e - s)
    return MixSplit(splits, pieces).eval()


register_layer(
    MixedConv2d,
    forms=[
        Form("single", build_single, dynamic_batch=True, constant_weights=True, exact_for=single_unfit,
             note="one conv at the largest kernel size, smaller kernels zero-padded to the centre"),
        Form("aligned", build_aligned, dynamic_batch=True, constant_weights=True, exact_for=aligned_unfit,
             note=f"Split at multiples of {ALIGN} channels, one depthwise conv per kernel size, Concat"),
        Form("split", build_split, dynamic_batch=True, constant_weights=True,
             note="Split, one conv per kernel size, Concat"),
    ],
    # measured on ONNX Runtime and OpenVINO (CPU, batch 1): "aligned" ≈ the reference's speed where its
    # splits are multiples of 4 (0.6× a depthwise conv at the largest kernel for 3-5-7-9), and within
    # ~10% of "single" where "single" wins (3-5-7 at 56×56); "split" is 5-7× slower on ONNX Runtime
    # when a split has 21 or 22 channels. Dense MixConvs ([1, 1] pointwise): "single" (grouped) fastest.
    # TensorRT: not measured; the same order.
    prefer={"*": ["aligned", "single", "split"]},
)
