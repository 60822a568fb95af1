"""MixConv (Tan & Le, BMVC 2019) as timm writes it: `timm/layers/mixed_conv2d.py` (`MixedConv2d`).

The channels are split (equally, the remainder going to the first split) across several kernel
sizes; one conv per split (depthwise if asked), outputs concatenated. timm builds each split with
`create_conv2d_pad`, whose string padding decides the conv:
  - ''  (the default, PyTorch MixNets): symmetric padding ((s - 1) + d·(k - 1)) // 2;
  - 'same': TF 'SAME' — static symmetric padding where stride 1 and d·(k - 1) is even, otherwise
    `Conv2dSame`, which pads at run time from the input size (the extra pixel at the bottom/right;
    the tf_mixnet_* models);
  - 'valid': 0; an int or tuple is used as it is.
Same class name, constructor and state_dict keys ('0.weight', '1.weight', …) as timm's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def split_channels(num_chan: int, num_groups: int) -> list[int]:
    """timm's `_split_channels`: equal parts, the remainder added to the first."""
    split = [num_chan // num_groups] * num_groups
    split[0] += num_chan - sum(split)
    return split


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def symmetric_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """timm's `get_padding` (PyTorch-style 'same'-ish padding, exact 'same' only for stride 1 and odd k)."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def same_pad_amounts(size: int, kernel_size: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis of length `size`: the odd pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """timm's `Conv2dSame`: a conv with TF 'SAME' padding computed from each input's size.

    The padding depends on the spatial size (not on the batch), so one exported graph per
    spatial size still has a dynamic batch. `fuse_bn` keeps the dynamic padding when BN is folded.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = (
            same_pad_amounts(n, k, s, d) for n, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation)
        )
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def fuse_bn(self, bn: nn.BatchNorm2d) -> "Conv2dSame":
        """bn(self(x)) as one Conv2dSame (the BN scales the weights; the padding is zeros either way)."""
        from ..deploy_layers.conv_bn import fold_bn_into

        fused = Conv2dSame(self.in_channels, self.out_channels, self.kernel_size, self.stride, 0, self.dilation,
                           self.groups, bias=True).to(self.weight.device)
        w, b = fold_bn_into(self.weight.detach(), None if self.bias is None else self.bias.detach(), bn)
        with torch.no_grad():
            fused.weight.copy_(w)
            fused.bias.copy_(b)
        return fused.eval()


def create_conv2d_pad(in_chs: int, out_chs: int, kernel_size: int, padding="", stride: int = 1, dilation: int = 1,
                      bias: bool = False, **kwargs) -> nn.Conv2d:
    """timm's `create_conv2d_pad`: the conv that timm's string (or numeric) padding asks for."""
    if isinstance(padding, str):
        mode = padding.lower()
        static_same = stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0
        if mode == "same" and not static_same:
            return Conv2dSame(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, bias=bias, **kwargs)
        padding = 0 if mode == "valid" else symmetric_padding(kernel_size, stride, dilation)
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias, **kwargs)


class MixedConv2d(nn.ModuleDict):
    """Mixed depthwise (or grouped) convolution: one kernel size per channel split, concatenated."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride: int = 1, padding="",
                 dilation: int = 1, depthwise: bool = False, **kwargs) -> None:
        super().__init__()
        kernel_size = kernel_size if isinstance(kernel_size, list) else [kernel_size]
        in_splits = split_channels(in_channels, len(kernel_size))
        out_splits = split_channels(out_channels, len(kernel_size))
        self.in_channels = sum(in_splits)
        self.out_channels = sum(out_splits)
        for idx, (k, in_ch, out_ch) in enumerate(zip(kernel_size, in_splits, out_splits)):
            self.add_module(str(idx), create_conv2d_pad(in_ch, out_ch, k, stride=stride, padding=padding,
                                                        dilation=dilation, groups=in_ch if depthwise else 1, **kwargs))
        self.splits = in_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(parts[i]) for i, conv in enumerate(self.values())], 1)
