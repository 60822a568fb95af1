"""A conv's string padding ('same', 'valid') written out as numbers, for deploy forms that rebuild convs.

torch exports `padding='same'` as ONNX `auto_pad=SAME_UPPER`, which ONNX Runtime refuses once the
conv is dilated ("Dilation not supported for AutoPadType::SAME_UPPER"). PyTorch's 'same' (stride 1
only) pads d·(k − 1) zeros per axis, the odd one at the end; 'valid' pads none. Where both sides are
equal a plain integer padding says it; otherwise a ZeroPad2d goes before a conv without padding (the
runtimes fuse the Pad into the Conv's asymmetric pads). Other padding modes export as an explicit Pad
already and are left as they are. No file here registers anything.
"""
from __future__ import annotations

from torch import nn


def same_pads(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zeros that `conv`'s padding adds (numeric, 'same' or 'valid')."""
    if conv.padding == "valid":
        return (0, 0), (0, 0)
    if conv.padding == "same":
        totals = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)  # type: ignore[return-value]
    return tuple((p, p) for p in conv.padding)  # type: ignore[return-value]


def numeric_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """The padding as nn.Conv2d's (ph, pw), or None where 'same' pads one side more than the other."""
    pads = same_pads(conv)
    return None if any(a != b for a, b in pads) else tuple(a for a, _ in pads)  # type: ignore[return-value]


def plain_conv(conv: nn.Module) -> bool:
    """An nn.Conv2d that computes nn.Conv2d's own forward. A subclass may do more (timm's Conv2dSame
    pads from the input size): rebuilt as a plain conv it would lose that."""
    return (isinstance(conv, nn.Conv2d) and type(conv).forward is nn.Conv2d.forward
            and type(conv)._conv_forward is nn.Conv2d._conv_forward)


def split_padding(conv: nn.Conv2d) -> tuple[tuple[int, int] | str, tuple[int, int, int, int] | None]:
    """(padding for a rebuilt conv, F.pad's (left, right, top, bottom) zeros to add before it, or None):
    a zero 'same' or 'valid' padding as numbers; any other padding (mode) as it is."""
    if not isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return conv.padding, None
    numeric = numeric_padding(conv)
    if numeric is not None:
        return numeric, None
    (top, bottom), (left, right) = same_pads(conv)
    return (0, 0), (left, right, top, bottom)


def written_out(conv: nn.Conv2d) -> nn.Module:
    """`conv` with a string padding replaced by numbers: the conv itself where that changes nothing (or
    where it is a subclass with its own forward), a copy with integer padding, or ZeroPad2d + a copy
    without padding."""
    padding, pad = split_padding(conv)
    if not plain_conv(conv) or (padding == conv.padding and pad is None):
        return conv
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
                    conv.groups, conv.bias is not None).to(conv.weight.device, conv.weight.dtype)
    new.load_state_dict(conv.state_dict())
    new.train(conv.training)
    return new if pad is None else nn.Sequential(nn.ZeroPad2d(pad), new)
