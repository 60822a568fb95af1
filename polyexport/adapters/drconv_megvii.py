"""Recognise megvii-research/DRConv's own `DRConv` (the authors' code) and rebuild it as our reference.

Upstream's layer runs its per-pixel selection in a compiled CUDA op (`Deformable_MatMul3`); without
CUDA its forward returns zeros (the op's CPU fallback is `torch.zeros`), so reference outputs of a
model that uses it must be produced on a CUDA machine. Our re-creation
(polyexport.layers.drconv_megvii.DRConv) computes the same function in PyTorch on any device and
loads the same state_dict.
"""
from __future__ import annotations

from torch import nn

from ..convert import register_adapter
from ..layers.drconv_megvii import DRConv


def matches(module: nn.Module) -> bool:
    """An upstream DRConv: its name, a routing Linear, a 2-D bank (out·in·k·k, num_W) and the CUDA op module."""
    if type(module).__name__ != "DRConv" or isinstance(module, DRConv):
        return False
    fc, weight = getattr(module, "routing_fc", None), getattr(module, "weight", None)
    if not (isinstance(fc, nn.Linear) and isinstance(weight, nn.Parameter) and weight.dim() == 2
            and hasattr(module, "deformable_matmul3")):
        return False
    try:
        cin, cout, (kh, kw) = module.in_channels, module.out_channels, tuple(module.kernel_size)
        g, w = module.groups_num, module.num_W
    except (AttributeError, TypeError, ValueError):
        return False
    return (tuple(weight.shape) == (cout * cin * kh * kw, w) and fc.in_features == cin and fc.out_features == g * w
            and (getattr(module, "bias", None) is None or tuple(module.bias.shape) == (cout,)))


def to_reference(module: nn.Module) -> DRConv:
    """Our reference with the upstream weights (same names: weight, bias, routing_fc.*)."""
    ref = DRConv(module.in_channels, module.out_channels, tuple(module.kernel_size), tuple(module.stride),
                 tuple(module.padding), groups=getattr(module, "groups", 1), bias=module.bias is not None,
                 dilation=tuple(module.dilation), groups_num=module.groups_num, num_W=module.num_W)
    ref.load_state_dict(module.state_dict(), strict=True)
    return ref.to(module.weight.device).train(module.training)


register_adapter("drconv-megvii", matches, to_reference)
