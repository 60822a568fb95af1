"""Recognise PSConv layers of other codebases (d-li14/PSConv's `PSConv2d` / `PSGConv2d`, copied under
the same names into many YOLO-style repositories) by structure, and rebuild them as ours.

Structure: exactly the children `gwconv`, `gwconv_shift`, `conv` (nn.Conv2d), the shift conv at twice
the grouped conv's (square) dilation, both grouped convs with `conv.groups · parts` groups, no other
parameters. The constructor arguments are read back from the convs; loading the foreign state_dict
with strict=True checks the layout. timm has no PSConv.
"""
from __future__ import annotations

from torch import nn

from ..convert import register_adapter
from ..layers.psconv import PSConv2d, PSGConv2d


def _is_psconv(m: nn.Module) -> bool:
    if type(m).__name__ not in ("PSConv2d", "PSGConv2d") or isinstance(m, (PSConv2d, PSGConv2d)):
        return False
    children = dict(m.named_children())
    if set(children) != {"gwconv", "gwconv_shift", "conv"} or not all(isinstance(c, nn.Conv2d) for c in children.values()):
        return False
    gw, shift, conv = m.gwconv, m.gwconv_shift, m.conv
    d = gw.dilation[0]
    return (gw.dilation == (d, d) and gw.padding == (d, d) and shift.dilation == (2 * d, 2 * d)
            and shift.padding == (2 * d, 2 * d) and conv.dilation == (1, 1) and gw.groups == shift.groups
            and gw.groups % conv.groups == 0 and len({c.stride for c in (gw, shift, conv)}) == 1
            and len({(c.in_channels, c.out_channels, c.kernel_size, c.bias is None) for c in (gw, shift, conv)}) == 1
            and (type(m).__name__ == "PSGConv2d" or conv.groups == 1)
            and (type(m).__name__ == "PSConv2d" or getattr(m, "groups", None) == conv.groups))


def _to_reference(m: nn.Module) -> nn.Module:
    gw, conv = m.gwconv, m.conv
    args = dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                stride=conv.stride, padding=conv.padding, dilation=gw.dilation[0],
                parts=gw.groups // conv.groups, bias=conv.bias is not None)
    ref = PSConv2d(**args) if type(m).__name__ == "PSConv2d" else PSGConv2d(groups=conv.groups, **args)
    ref.load_state_dict(m.state_dict(), strict=True)
    return ref.to(conv.weight.device).eval()


register_adapter("d-li14/PSConv", _is_psconv, _to_reference)
