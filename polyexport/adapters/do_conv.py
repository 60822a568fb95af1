"""Recognise the official DOConv2d (yangyanli/DO-Conv `do_conv_pytorch.py` / `do_conv_pytorch_1_10.py`, and the
many verbatim copies of it in other repositories) and rebuild it as our DOConv2d.

Matched by class name and by the official structure: no child modules, `W` (out, in/groups, D_mul), and for an
M×N kernel with M·N > 1 also `D` and `d_diag` (in, M·N, D_mul); none of them where M·N == 1. The state_dict is
the official one, so it loads strictly. timm has no DO-Conv. A look-alike with another layout (e.g. a DOConv2d
subclassing nn.Conv2d) is declined.
"""
from __future__ import annotations

from torch import nn

from ..convert import register_adapter
from ..layers.do_conv import DOConv2d

_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode", "D_mul")


def _shape(m: nn.Module, name: str) -> tuple[int, ...] | None:
    p = getattr(m, name, None)
    return tuple(p.shape) if isinstance(p, nn.Parameter) else None


def matches(m: nn.Module) -> bool:
    """The official DOConv2d's attributes and parameter layout (our own class is in the registry already)."""
    if type(m).__name__ != "DOConv2d" or isinstance(m, (DOConv2d, nn.Conv2d)) or any(True for _ in m.children()):
        return False
    if not all(hasattr(m, a) for a in _ATTRS):
        return False
    try:
        (kh, kw), groups, d_mul = tuple(m.kernel_size), int(m.groups), int(m.D_mul)
    except (TypeError, ValueError):
        return False
    cin, cout = m.in_channels, m.out_channels
    if groups < 1 or cin % groups or cout % groups:
        return False
    if _shape(m, "W") != (cout, cin // groups, d_mul):
        return False
    bias = getattr(m, "bias", None)
    if bias is not None and _shape(m, "bias") != (cout,):
        return False
    if kh * kw > 1:
        return _shape(m, "D") == _shape(m, "d_diag") == (cin, kh * kw, d_mul)
    return getattr(m, "D", None) is None and getattr(m, "d_diag", None) is None


def to_reference(m: nn.Module) -> DOConv2d:
    """Our DOConv2d with m's constructor arguments read back, its state_dict loaded strictly."""
    ref = DOConv2d(m.in_channels, m.out_channels, tuple(m.kernel_size), m.D_mul, tuple(m.stride),
                   m.padding if isinstance(m.padding, str) else tuple(m.padding), tuple(m.dilation), m.groups,
                   bias=getattr(m, "bias", None) is not None, padding_mode=m.padding_mode)
    ref.to(device=m.W.device, dtype=m.W.dtype).load_state_dict(m.state_dict(), strict=True)
    return ref.eval()


register_adapter("do-conv/DOConv2d", matches, to_reference)
