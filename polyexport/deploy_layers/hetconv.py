"""Deploy forms of HetConv (gwc: grouped K×K conv, groups = P; pwc: dense 1×1 conv; summed) and of
ShiftedHetConv (the paper's assignment: K×K on input channels j ≡ c mod P, 1×1 on the rest).

Both forms of both layers are exact for every configuration the references accept (odd K, "same"
padding, any stride / dilation / P dividing the channels), so neither needs an `exact_for`:
  - "grouped_plus_pointwise": a grouped K×K conv (carrying both biases) plus a dense 1×1 conv,
    summed; a following BN folds into both. FLOPs (K²/P + 1)/K² of a plain K×K conv (0.36× at K=3,
    P=4). For ShiftedHetConv the input is first channel-shuffled (Reshape/Transpose/Reshape, batch
    kept dynamic) so that each residue class j ≡ i is contiguous and the K×K kernels form a grouped
    conv; the group-major output is shuffled back (c = q·P + i). That output permutation is not
    folded into the next layer: the converter folds permutations only *before* a conv.
  - "dense": one K×K conv, the K×K kernels in place, the 1×1 kernels added at the centre tap (the
    two branches read the same input pixel there: padding = d·(K−1)/2). FLOPs 1×.
"""
from __future__ import annotations

import torch
from torch import nn

from ..convert import Form, register_layer
from ..layers.hetconv import HetConv, ShiftedHetConv
from .conv_bn import bn_scale_shift


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, like: torch.Tensor) -> nn.Conv2d:
    """A conv with `conv`'s geometry, `like`'s dtype and device, and the given (float64) weight and bias."""
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=bias is not None, device=like.device, dtype=like.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _summed_bias(ref: HetConv) -> torch.Tensor | None:
    """gwc.bias + pwc.bias (float64), or None where the reference has no bias."""
    biases = [c.bias.detach().double() for c in (ref.gwc, ref.pwc) if c.bias is not None]
    return sum(biases) if biases else None


class GroupedPlusPointwise(nn.Module):
    """gwc(x) + pwc(x): a grouped K×K conv (carrying the bias) plus a bias-free dense 1×1 conv."""

    def __init__(self, gwc: nn.Conv2d, pwc: nn.Conv2d):
        super().__init__()
        self.gwc, self.pwc = gwc, pwc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gwc(x) + self.pwc(x)

    def fuse_bn(self, bn: nn.BatchNorm2d) -> nn.Module:
        """bn(gwc(x) + pwc(x)) = (s·gwc)(x) + s·b + t + (s·pwc)(x): scale both, shift once."""
        s, t = bn_scale_shift(bn)
        b = self.gwc.bias.detach().double() if self.gwc.bias is not None else torch.zeros_like(s)
        like = self.gwc.weight
        gwc = _conv_like(self.gwc, self.gwc.weight.detach().double() * s.reshape(-1, 1, 1, 1), s * b + t, like)
        pwc = _conv_like(self.pwc, self.pwc.weight.detach().double() * s.reshape(-1, 1, 1, 1), None, like)
        return GroupedPlusPointwise(gwc, pwc).eval()


def build_grouped_plus_pointwise(ref: HetConv) -> GroupedPlusPointwise:
    """The reference's own two convs, biases summed into the grouped one (one Add in the graph)."""
    like = ref.gwc.weight
    gwc = _conv_like(ref.gwc, ref.gwc.weight.detach(), _summed_bias(ref), like)
    pwc = _conv_like(ref.pwc, ref.pwc.weight.detach(), None, like)
    return GroupedPlusPointwise(gwc, pwc).eval()


def dense_weight(ref: HetConv) -> torch.Tensor:
    """(out, in, K, K) float64: gwc's kernels on the block diagonal, pwc's 1×1 kernels added at the centre."""
    gw = ref.gwc.weight.detach().double()
    out_c, per_in, k, _ = gw.shape
    per_out = out_c // ref.p
    w = torch.zeros(out_c, ref.in_channels, k, k, dtype=torch.float64, device=gw.device)
    for g in range(ref.p):
        w[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] = gw[g * per_out:(g + 1) * per_out]
    w[:, :, k // 2, k // 2] += ref.pwc.weight.detach().double()[:, :, 0, 0]
    return w


def build_dense(ref: HetConv) -> nn.Conv2d:
    """One dense K×K conv equal to gwc + pwc (a following BN is folded by the converter)."""
    conv = nn.Conv2d(ref.in_channels, ref.out_channels, ref.kernel_size, ref.stride, ref.padding, ref.dilation,
                     device="meta")  # geometry only
    return _conv_like(conv, dense_weight(ref), _summed_bias(ref), ref.gwc.weight).eval()


# --- ShiftedHetConv ---------------------------------------------------------------------------

def _shifted_parts(ref: ShiftedHetConv) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(K×K part (out, in, K, K), 1×1 part (out, in), summed bias) in float64, original channel order."""
    p, k = ref.p, ref.kernel_size
    kxk = torch.zeros(ref.out_channels, ref.in_channels, k, k, dtype=torch.float64)
    one = torch.zeros(ref.out_channels, ref.in_channels, dtype=torch.float64)
    bias = torch.zeros(ref.out_channels, dtype=torch.float64)
    for i, (conv_k, conv_1) in enumerate(ref.filters):
        kxk[i::p, i::p] = conv_k.weight.detach().double()
        one[i::p, ref.channels_1x1(i)] = conv_1.weight.detach().double()[:, :, 0, 0]
        for conv in (conv_k, conv_1):
            if conv.bias is not None:
                bias[i::p] += conv.bias.detach().double()
    return kxk, one, bias if ref.filters[0][0].bias is not None else None


def _shifted_dense(ref: ShiftedHetConv) -> nn.Conv2d:
    kxk, one, bias = _shifted_parts(ref)
    kxk[:, :, ref.kernel_size // 2, ref.kernel_size // 2] += one
    conv = nn.Conv2d(ref.in_channels, ref.out_channels, ref.kernel_size, ref.stride, ref.padding, ref.dilation,
                     device="meta")  # geometry only
    return _conv_like(conv, kxk, bias, ref.filters[0][0].weight).eval()


def _group_major(n: int, p: int) -> torch.Tensor:
    """perm[g·(n/P) + m] = m·P + g: the residue-class-major order of n channels."""
    return torch.arange(n).reshape(n // p, p).t().flatten()


class ShuffledGroupedPlusPointwise(nn.Module):
    """Shuffle channels residue-class-major, grouped K×K conv + dense 1×1 conv, shuffle back."""

    def __init__(self, p: int, gwc: nn.Conv2d, pwc: nn.Conv2d):
        super().__init__()
        self.p, self.gwc, self.pwc = p, gwc, pwc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unflatten(1, (-1, self.p)).transpose(1, 2).flatten(1, 2)
        y = self.gwc(x) + self.pwc(x)
        return y.unflatten(1, (self.p, -1)).transpose(1, 2).flatten(1, 2)

    def fuse_bn(self, bn: nn.BatchNorm2d) -> nn.Module:
        """BN acts on the un-shuffled channels: scale/shift each conv row by its channel's (s, t)."""
        s, t = bn_scale_shift(bn)
        perm = _group_major(self.gwc.out_channels, self.p)
        s, t = s[perm], t[perm]
        b = self.gwc.bias.detach().double() if self.gwc.bias is not None else torch.zeros_like(s)
        like = self.gwc.weight
        gwc = _conv_like(self.gwc, self.gwc.weight.detach().double() * s.reshape(-1, 1, 1, 1), s * b + t, like)
        pwc = _conv_like(self.pwc, self.pwc.weight.detach().double() * s.reshape(-1, 1, 1, 1), None, like)
        return ShuffledGroupedPlusPointwise(self.p, gwc, pwc).eval()


def _shifted_grouped(ref: ShiftedHetConv) -> ShuffledGroupedPlusPointwise:
    kxk, one, bias = _shifted_parts(ref)
    p, per_in, per_out = ref.p, ref.in_channels // ref.p, ref.out_channels // ref.p
    rows, cols = _group_major(ref.out_channels, p), _group_major(ref.in_channels, p)
    kxk, one = kxk[rows][:, cols], one[rows][:, cols]
    gw = torch.cat([kxk[i * per_out:(i + 1) * per_out, i * per_in:(i + 1) * per_in] for i in range(p)])
    gwc = nn.Conv2d(ref.in_channels, ref.out_channels, ref.kernel_size, ref.stride, ref.padding, ref.dilation, groups=p, device="meta")
    pwc = nn.Conv2d(ref.in_channels, ref.out_channels, 1, ref.stride, device="meta")
    like = ref.filters[0][0].weight
    return ShuffledGroupedPlusPointwise(p, _conv_like(gwc, gw, None if bias is None else bias[rows], like),
                                        _conv_like(pwc, one[:, :, None, None], None, like)).eval()


#: Measured (benchmarks/layers.py, 1 thread, 3 repeats, shared 2-core CPU: indicative), latency vs a
#: plain 3x3 conv at 56²×64, 28²×128, 14²×256 (P=4), 28²×128 stride 2 and P=128:
#: grouped_plus_pointwise 0.35–0.47× on ONNX Runtime, 0.36–0.63× on OpenVINO (0.14× / 0.24× at P=128);
#: dense 0.96–1.07× and 0.92–1.25×. ShiftedHetConv (P=4, same three shapes): shuffled grouped 0.37–0.49×
#: (ORT) and 0.18–0.58× (OpenVINO, noisy), dense 0.97–1.04× and 0.45–1.22×. TensorRT not measured (no
#: GPU in this task): same order assumed.
_PREFER = ["grouped_plus_pointwise", "dense"]

register_layer(
    HetConv,
    forms=[
        Form("grouped_plus_pointwise", build_grouped_plus_pointwise,
             note="grouped KxK conv (groups=P) + dense 1x1 conv, summed; (K^2/P + 1)/K^2 of a plain conv's FLOPs"),
        Form("dense", build_dense, note="one dense KxK conv, 1x1 kernels at the centre tap; a plain conv's FLOPs"),
    ],
    prefer={"*": _PREFER},
)

register_layer(
    ShiftedHetConv,
    forms=[
        Form("grouped_plus_pointwise", _shifted_grouped,
             note="channel shuffle, grouped KxK conv (groups=P) + dense 1x1 conv, shuffle back; (K^2/P + 1)/K^2 FLOPs"),
        Form("dense", _shifted_dense, note="one dense KxK conv, 1x1 kernels at the centre tap; a plain conv's FLOPs"),
    ],
    prefer={"*": _PREFER},
)
