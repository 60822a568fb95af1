"""Recognise timm's MixedConv2d (timm/layers/mixed_conv2d.py; the MixNet models) and rebuild it as ours.

timm is the reference implementation (the paper's official code is TensorFlow), so a timm module
and ours have the same state_dict. Matched by class name and layout: an nn.ModuleDict named
MixedConv2d whose children '0', '1', … are convs (nn.Conv2d, or timm's Conv2dSame where it pads
dynamically) reading the channel splits in `splits`. The constructor arguments are recovered by
rebuilding ours from each plausible set and keeping the one whose convs match exactly.
"""
from __future__ import annotations

import itertools

from torch import nn

from ..convert import register_adapter
from ..layers.mixconv import MixedConv2d

_SAME_NAMES = ("Conv2dSame", "Conv2dSameExport")


def _convs(m: nn.Module) -> list[nn.Module]:
    return [m[str(i)] for i in range(len(m))]


def _signature(conv: nn.Module) -> tuple:
    """What decides a split's computation: dynamic 'same' padding or static padding, and the conv's shape."""
    dynamic = type(conv).__name__ in _SAME_NAMES
    return (dynamic, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
            None if dynamic else conv.padding, conv.dilation, conv.groups, conv.bias is not None,
            getattr(conv, "padding_mode", "zeros"))


def matches_timm(m: nn.Module) -> bool:
    """timm's MixedConv2d (not ours): a ModuleDict of convs keyed 0..n-1 over the splits it records."""
    if type(m).__name__ != "MixedConv2d" or type(m) is MixedConv2d or not isinstance(m, nn.ModuleDict):
        return False
    if len(m) == 0 or list(m.keys()) != [str(i) for i in range(len(m))]:
        return False
    convs = _convs(m)
    return (all(isinstance(c, nn.Conv2d) for c in convs)
            and list(getattr(m, "splits", [])) == [c.in_channels for c in convs])


def timm_to_reference(m: nn.Module) -> MixedConv2d:
    """Our MixedConv2d built with the arguments that reproduce every split, loaded with m's weights."""
    convs = _convs(m)
    first = convs[0]
    want = [_signature(c) for c in convs]
    if any(c.kernel_size[0] != c.kernel_size[1] for c in convs) or first.stride[0] != first.stride[1] \
            or first.dilation[0] != first.dilation[1]:
        raise ValueError("non-square kernel, stride or dilation: not a timm MixedConv2d configuration")
    kernels = [c.kernel_size[0] for c in convs]
    paddings = ["", "same", "valid", *sorted({c.padding[0] for c in convs if c.padding[0] == c.padding[1]})]
    extra = {"bias": first.bias is not None}
    if getattr(first, "padding_mode", "zeros") != "zeros":  # timm passes it on to nn.Conv2d
        extra["padding_mode"] = first.padding_mode
    for padding, depthwise in itertools.product(paddings, (True, False)):
        if depthwise and any(c.groups != c.in_channels for c in convs):
            continue
        ref = MixedConv2d(sum(c.in_channels for c in convs), sum(c.out_channels for c in convs), kernels,
                          first.stride[0], padding, first.dilation[0], depthwise, **extra)
        if [_signature(c) for c in ref.values()] == want:
            ref.load_state_dict(m.state_dict(), strict=True)
            return ref.to(first.weight.device).eval()
    raise ValueError(f"no MixedConv2d arguments reproduce its convs {want}")


register_adapter("timm_mixed_conv2d", matches_timm, timm_to_reference)
