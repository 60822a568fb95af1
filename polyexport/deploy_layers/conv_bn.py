"""BN folding: `bn(conv(x))` as one conv, computed once from the trained tensors.

y = γ·(W*x + b − μ)/√(σ²+ε) + β  =  (s·W)*x + (s·(b − μ) + β),  s = γ/√(σ²+ε), per output channel.
Done in float64 so that folding adds no rounding beyond the final cast to the weights' dtype.
"""
from __future__ import annotations

import copy

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
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    w, b = fold_bn_into(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), bn)
    with torch.no_grad():
        fused.weight.copy_(w)
        fused.bias.copy_(b)
    return fused


class ScaleThenBias:
    """fuse_bn for a deploy module whose output is linear in weights that `_scale_out(s)` scales per output
    channel (in place, on a copy), followed by its `bias` buffer (None or per channel): bn(y) = s·y + t."""

    bias: torch.Tensor | None

    def _scale_out(self, s: torch.Tensor) -> None:
        raise NotImplementedError

    def fuse_bn(self, bn: nn.BatchNorm2d) -> nn.Module:
        if bn.running_mean is None:
            raise ValueError("BatchNorm without running statistics cannot be folded")
        s, t = bn_scale_shift(bn)
        new = copy.deepcopy(self)
        new._scale_out(s)
        b = t if self.bias is None else s * self.bias.double() + t
        new.bias = b.detach().to(bn.running_mean.dtype)
        return new
