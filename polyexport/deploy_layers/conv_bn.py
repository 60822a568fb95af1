"""BN folding: `bn(conv(x))` as one conv, computed once from the trained tensors.

y = γ·(W*x + b − μ)/√(σ²+ε) + β  =  (s·W)*x + (s·(b − μ) + β),  s = γ/√(σ²+ε), per output channel.
Done in float64 so that folding adds no rounding beyond the final cast to the weights' dtype.
"""
from __future__ import annotations

import torch
from torch import nn


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) in float64 such that bn(y) = s·y + t per channel (eval mode)."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - s * mean


def fold_bn_into(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale a conv's (weight, bias) by a following BN; weight's first dim is the output channel."""
    s, t = bn_scale_shift(bn)
    b = bias.double() if bias is not None else torch.zeros_like(s)
    w = weight.double() * s.reshape(-1, *([1] * (weight.dim() - 1)))
    return w.to(weight.dtype), (s * b + t).to(weight.dtype)


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv equal to bn(conv(x)); the originals are untouched."""
    if bn.running_mean is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
    ).to(conv.weight.device)
    w, b = fold_bn_into(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), bn)
    with torch.no_grad():
        fused.weight.copy_(w)
        fused.bias.copy_(b)
    return fused
