"""Recognise d-li14/octconv.pytorch's OctaveConv, Conv_BN and Conv_BN_ACT (same class names as ours,
other classes) by structure, and rebuild them as our reference layers with the same weights.

The constructor arguments are read back from the four convs (absent ones are None, as in the
official code) and the alphas/stride; loading the foreign state_dict with strict=True then checks
that the rebuilt layer has exactly the foreign parameter layout. timm has no OctConv.
"""
from __future__ import annotations

import copy

from torch import nn

from ..convert import register_adapter
from ..layers.octconv import Conv_BN, Conv_BN_ACT, OctaveConv

_CONVS = ("conv_h2h", "conv_h2l", "conv_l2h", "conv_l2l")


def _is_octave(m: nn.Module) -> bool:
    return (type(m).__name__ == "OctaveConv" and not isinstance(m, OctaveConv)
            and all(isinstance(getattr(m, n, 0), (nn.Conv2d, type(None))) for n in _CONVS)
            and isinstance(getattr(m, "conv_h2h", None), nn.Conv2d)
            and all(hasattr(m, a) for a in ("alpha_in", "alpha_out", "stride", "is_dw")))


def _is_wrapped(m: nn.Module) -> bool:
    return (type(m).__name__ in ("Conv_BN", "Conv_BN_ACT") and not isinstance(m, (Conv_BN, Conv_BN_ACT))
            and _is_octave(getattr(m, "conv", None)) and hasattr(m, "bn_h") and hasattr(m, "bn_l")
            and (type(m).__name__ == "Conv_BN" or isinstance(getattr(m, "act", None), nn.Module)))


def _octave_args(m: nn.Module) -> dict:
    """OctaveConv constructor arguments that rebuild the foreign layer's parameter layout."""
    h2h = m.conv_h2h
    low_in = m.conv_l2l or m.conv_l2h
    low_out = m.conv_l2l or m.conv_h2l
    in_channels = h2h.in_channels + (low_in.in_channels if low_in is not None else 0)
    cross = m.conv_h2l or m.conv_l2h
    groups = cross.groups if cross is not None else (in_channels if m.is_dw else h2h.groups)
    return dict(in_channels=in_channels, out_channels=h2h.out_channels + (low_out.out_channels if low_out else 0),
                kernel_size=h2h.kernel_size, alpha_in=m.alpha_in, alpha_out=m.alpha_out, stride=m.stride,
                padding=h2h.padding, dilation=h2h.dilation, groups=groups, bias=h2h.bias is not None)


def _octave(m: nn.Module) -> OctaveConv:
    ours = OctaveConv(**_octave_args(m)).to(m.conv_h2h.weight.device)
    ours.load_state_dict(m.state_dict(), strict=True)
    return ours.train(m.training)


def _wrapped(m: nn.Module) -> nn.Module:
    cls = Conv_BN_ACT if type(m).__name__ == "Conv_BN_ACT" else Conv_BN
    ours = cls(**_octave_args(m.conv))
    ours.conv = _octave(m.conv)
    ours.bn_h, ours.bn_l = copy.deepcopy(m.bn_h), copy.deepcopy(m.bn_l)  # any norm layer, its eps/momentum kept
    if cls is Conv_BN_ACT:
        ours.act = copy.deepcopy(m.act)
    ours.load_state_dict(m.state_dict(), strict=True)
    return ours.train(m.training)


register_adapter("octconv.pytorch/OctaveConv", _is_octave, _octave)
register_adapter("octconv.pytorch/Conv_BN", _is_wrapped, _wrapped)
