"""Recognise shallowtoil/DRConv-PyTorch's `DRConv2d` (and its copies) by name and layout."""
from __future__ import annotations

from torch import nn

from ..convert import register_adapter
from ..layers.drconv import DRConv2d


def matches(module: nn.Module) -> bool:
    """A foreign DRConv2d: pool → 1×1 conv → sigmoid → grouped 1×1 conv, plus a guide conv."""
    if type(module).__name__ != "DRConv2d" or isinstance(module, DRConv2d):
        return False
    gen = getattr(module, "conv_kernel", None)
    return (isinstance(gen, nn.Sequential) and len(gen) == 4
            and isinstance(gen[0], nn.AdaptiveAvgPool2d) and isinstance(gen[1], nn.Conv2d)
            and isinstance(gen[2], nn.Sigmoid) and isinstance(gen[3], nn.Conv2d)
            and isinstance(getattr(module, "conv_guide", None), nn.Conv2d)
            and isinstance(getattr(module, "region_num", None), int)
            and isinstance(getattr(module, "kwargs", None), dict))


def to_reference(module: nn.Module) -> DRConv2d:
    """Our reference with the foreign weights; sizes read from the generator's convs."""
    gen, m = module.conv_kernel, module.region_num
    cin = gen[1].in_channels
    ref = DRConv2d(cin, gen[3].out_channels // (m * cin), module.conv_guide.kernel_size[0], m, **module.kwargs)
    ref.load_state_dict(module.state_dict(), strict=True)
    return ref.train(module.training)


register_adapter("drconv-shallowtoil", matches, to_reference)
