"""Recognise liyunsheng13/dcd's `conv_dy`, `conv_basic_dy` and `DYModule` by name and layout."""
from __future__ import annotations

from torch import nn

from ..convert import register_adapter
from ..layers import dcd

_NAMES = {"conv_dy": ("q", "p"), "conv_basic_dy": ("q", "p"), "DYModule": ("conv_q", "conv_p")}


def matches(module: nn.Module) -> bool:
    """Same class name as upstream, not ours, and upstream's parameter layout."""
    names = _NAMES.get(type(module).__name__)
    if names is None or isinstance(module, dcd.DCD_TYPES):
        return False
    convs = ("conv", *names)
    return (all(isinstance(getattr(module, n, None), nn.Conv2d) for n in convs)
            and isinstance(getattr(module, "bn1", None), nn.BatchNorm2d)
            and isinstance(getattr(module, "bn2", None), nn.BatchNorm1d)
            and all(isinstance(getattr(module, n, None), nn.Linear) for n in ("fc_phi", "fc_scale"))
            and isinstance(getattr(module, "fc", None), nn.Sequential))


def _dymodule(module: nn.Module) -> dcd.DYModule:
    """DYModule's fc_squeeze is not stored: take the one that reproduces fc's width."""
    inp, oup, squeeze = module.conv.in_channels, module.conv.out_channels, module.fc[0].out_features
    for fc_squeeze in (8, *range(1, 4097)):
        ref = dcd.DYModule(inp, oup, fc_squeeze)
        if ref.fc[0].out_features == squeeze:
            return ref
    raise ValueError(f"no fc_squeeze gives an fc of width {squeeze}")


def to_reference(module: nn.Module) -> nn.Module:
    """Our reference with the foreign module's weights (strict load: every name and shape checked)."""
    conv = module.conv
    kind = type(module).__name__
    if kind == "conv_dy":
        ref = dcd.conv_dy(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0])
    elif kind == "conv_basic_dy":
        ref = dcd.conv_basic_dy(conv.in_channels, conv.out_channels, conv.stride[0])
    else:
        ref = _dymodule(module)
    ref.load_state_dict(module.state_dict(), strict=True)
    return ref.train(module.training)


register_adapter("dcd-official", matches, to_reference)
