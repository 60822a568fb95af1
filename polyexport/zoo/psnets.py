"""PS-ResNet-50 (PSConv, Li et al., ECCV 2020), as the official d-li14/PSConv backbone builds it.

ResNet-50 with every bottleneck 3x3 (`layerN.M.conv2`) replaced by
`PSConv2d(planes, planes, 3, stride, padding=1, dilation=2, parts=4)`
(d-li14/PSConv `mmdet/models/backbones/resnet.py`, Bottleneck.conv2; pytorch style: the stride
sits on the 3x3).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.psconv import PSConv2d
from . import count as zoo_count
from . import register
from .resnet import Bottleneck, ResNet


def ps_conv3x3(cin: int, cout: int, stride: int) -> PSConv2d:
    """The official backbone's 3x3: dilations 1 (conv), 2 (gwconv) and 4 (gwconv_shift), 4 parts."""
    return PSConv2d(cin, cout, 3, stride, padding=1, dilation=2, parts=4)


@torch.no_grad()
def zero_masked_(model: nn.Module) -> nn.Module:
    """Zero `conv.weight` under each PSConv2d's mask, as trained weights are (the official gradient
    hook keeps them zero); ResNet's kaiming init re-filled them after the layer's own zeroing."""
    for m in model.modules():
        if isinstance(m, PSConv2d):
            m.conv.weight[m.mask] = 0
    return model


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Random weights with the mask's zeros kept, as every trained PSConv has them."""
    from ..testing import randomize_

    return zero_masked_(randomize_(model, seed))


def count_unmasked(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(params, multiply-adds) as the paper counts them: the masked entries of each PSConv's dense
    `conv.weight` (zero in every trained model) are absent, so a PSConv costs what the 3x3 it replaces
    costs ("no extra parameters or computation"). Stored as the official code stores them, the three
    convs hold 1.5x the 3x3's weights, and a plain count says +22 % params and MACs."""
    masked: list[tuple[int, torch.Size]] = []
    hooks = [m.conv.register_forward_hook(lambda mod, inp, out, n=int(m.mask.sum()): masked.append((n, out.shape)))
             for m in model.modules() if isinstance(m, PSConv2d)]
    try:
        params, macs = zoo_count(model, x)
    finally:
        for h in hooks:
            h.remove()
    # a masked weight entry of output channel o meets every output pixel of o once per sample
    return (params - sum(n for n, _ in masked),
            macs - sum(n * shape[0] * shape[2] * shape[3] for n, shape in masked))


@register("ps_resnet50", baseline="resnet50", test_shape=(1, 3, 64, 64), randomize=_trained_like,
          count=count_unmasked,
          paper={"params_m": 25.6, "gflops": 4.1, "source": "Li et al., ECCV 2020, Table 1 (ImageNet); counted as the "
                 "paper counts (count_unmasked: the masked half of each PSConv's dense conv.weight is absent)"})
def ps_resnet50(num_classes: int = 1000) -> ResNet:
    return zero_masked_(ResNet(Bottleneck, [3, 4, 6, 3], num_classes, conv3x3=ps_conv3x3))
