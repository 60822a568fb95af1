"""Recognise kaijieshi7/Dynamic-convolution-Pytorch's Dynamic_conv2d (by name and parameter layout)."""
from __future__ import annotations

from torch import nn

from ..convert import register_adapter
from ..layers.dynamic_conv import Dynamic_conv2d


def matches(m: nn.Module) -> bool:
    """Upstream's layout: weight (K, out, in/groups, k, k), bias (K, out) or None, attention.fc1/fc2 1×1 convs."""
    if type(m).__name__ != "Dynamic_conv2d" or isinstance(m, Dynamic_conv2d):
        return False
    att = getattr(m, "attention", None)
    w = getattr(m, "weight", None)
    return (isinstance(getattr(att, "fc1", None), nn.Conv2d) and isinstance(getattr(att, "fc2", None), nn.Conv2d)
            and isinstance(w, nn.Parameter) and w.dim() == 5 and w.shape[0] == m.K and hasattr(att, "temperature"))


def to_reference(m: nn.Module) -> Dynamic_conv2d:
    """Our Dynamic_conv2d with m's weights; the attention's hidden width and fc2 bias are taken as m has them."""
    ref = Dynamic_conv2d(m.in_planes, m.out_planes, m.kernel_size, stride=m.stride, padding=m.padding,
                         dilation=m.dilation, groups=m.groups, bias=m.bias is not None, K=m.K,
                         temperature=m.attention.temperature, init_weight=False)
    fc1, fc2 = m.attention.fc1, m.attention.fc2  # older upstream revisions: other hidden width, fc2 without bias
    ref.attention.fc1 = nn.Conv2d(fc1.in_channels, fc1.out_channels, 1, bias=False)
    ref.attention.fc2 = nn.Conv2d(fc2.in_channels, fc2.out_channels, 1, bias=fc2.bias is not None)
    ref.load_state_dict(m.state_dict(), strict=True)
    return ref.eval()


register_adapter("dynamic_conv.kaijieshi7", matches, to_reference)
