"""Recognise timm's CondConv2d (by name and its flat expert layout) and rebuild it as our reference."""
from __future__ import annotations

import math

from torch import nn

from ..convert import register_adapter
from ..layers.condconv import CondConv2d


def matches(m: nn.Module) -> bool:
    """timm's layout: weight (num_experts, out·in/groups·kh·kw), bias (num_experts, out) or None."""
    if type(m).__name__ != "CondConv2d" or isinstance(m, CondConv2d):
        return False
    w = getattr(m, "weight", None)
    shape = getattr(m, "weight_shape", None)
    return (isinstance(w, nn.Parameter) and w.dim() == 2 and shape is not None
            and tuple(w.shape) == (m.num_experts, math.prod(shape)) and hasattr(m, "dynamic_padding"))


def to_reference(m: nn.Module) -> CondConv2d:
    """Our CondConv2d with m's geometry (resolved padding kept as m has it) and weights."""
    ref = CondConv2d(m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride), 0, tuple(m.dilation),
                     m.groups, bias=m.bias is not None, num_experts=m.num_experts)
    ref.padding, ref.dynamic_padding = tuple(m.padding), bool(m.dynamic_padding)
    ref.load_state_dict(m.state_dict(), strict=True)
    return ref.eval()


register_adapter("condconv.timm", matches, to_reference)
