"""Recognise PyTorch ports of C2sp and rebuild them as SymmetricPadConv2d.

The official code is TensorFlow (no class to match). The one PyTorch port found by search is
EL-NAS's `Spconv2d` (jamiejyhu/EL-NAS, cnn/module/Spconv2d.py): a 2×2 conv in `self.conv[0]`
after padding the channel quarters toward left-top, right-top, left-bottom, right-bottom. It is
matched by class name and layout, and only where it computes a C2sp (kernel 2, no extra padding,
no dilation, channels divisible by 4 as its forward asserts). timm has no such layer.
"""
from __future__ import annotations

import torch
from torch import nn

from ..convert import register_adapter
from ..layers.even_conv import SymmetricPadConv2d

#: EL-NAS's group order (F.pad (1,0,1,0), (0,1,1,0), (1,0,0,1), (0,1,0,1))
ELNAS_CORNERS = ("tl", "tr", "bl", "br")


def _elnas_conv(m: nn.Module) -> nn.Conv2d | None:
    seq = getattr(m, "conv", None)
    if type(m).__name__ != "Spconv2d" or not isinstance(seq, nn.Sequential) or len(seq) != 1:
        return None
    conv = seq[0]
    return conv if isinstance(conv, nn.Conv2d) else None


def matches_elnas(m: nn.Module) -> bool:
    """EL-NAS Spconv2d holding a plain 2×2 conv that makes it exactly a C2sp."""
    conv = _elnas_conv(m)
    return (conv is not None and conv.kernel_size == (2, 2) and conv.padding == (0, 0) and conv.dilation == (1, 1)
            and conv.stride[0] == conv.stride[1] and conv.groups == 1 and conv.in_channels % 4 == 0)


def elnas_to_reference(m: nn.Module) -> SymmetricPadConv2d:
    """Same weights, same corner order as EL-NAS: our reference computes what its forward computes."""
    conv = _elnas_conv(m)
    ref = SymmetricPadConv2d(conv.in_channels, conv.out_channels, 2, conv.stride[0], 1, conv.bias is not None,
                             corners=ELNAS_CORNERS)
    with torch.no_grad():
        ref.weight.copy_(conv.weight)
        if conv.bias is not None:
            ref.bias.copy_(conv.bias)
    return ref.to(conv.weight.device).eval()


register_adapter("elnas_spconv2d", matches_elnas, elnas_to_reference)
