"""HetConv networks (Singh et al., "HetConv: Heterogeneous Kernel-Based Convolutions for Deep CNNs", CVPR 2019).

The paper replaces the 3×3 convs of VGG-16 and of ResNet-50's bottlenecks by HetConv with part
P = 4 (each filter: 3×3 kernels on 1/P of its input channels, 1×1 on the rest). We use
`ShiftedHetConv`, not `HetConv`: the paper arranges the 3×3 kernels "in a shifted manner" (filter
c has them on input channels j ≡ c mod P, Fig. 3), which is exactly ShiftedHetConv's assignment,
and it holds exactly the paper's kernel count. `HetConv` (irvinxav's gwc + pwc) is the same family
up to a channel permutation but keeps a dense 1×1 over *all* channels, so it has in·out/P more
weights (and MACs) per layer than the paper counts.

VGG-16's first conv (3 input channels, not divisible by P) stays a plain conv.
"""
from __future__ import annotations

from torch import nn

from ..layers.hetconv import ShiftedHetConv
from . import register
from .resnet import Bottleneck, ResNet
from .vgg import CFG_D, VGG

P = 4


def het_conv3x3(cin: int, cout: int, stride: int) -> ShiftedHetConv:
    """The bottleneck's 3×3 as HetConv P=4 (bias-free, BN follows)."""
    return ShiftedHetConv(cin, cout, P, 3, stride)


def het_vgg_conv(cin: int, cout: int, index: int) -> nn.Module:
    """VGG's 3×3 conv (with bias, no BN) as HetConv P=4, except the first layer."""
    return nn.Conv2d(cin, cout, 3, padding=1) if index == 0 else ShiftedHetConv(cin, cout, P, 3, bias=True)


@register("het_resnet50", baseline="resnet50", test_shape=(1, 3, 64, 64))
def het_resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, conv3x3=het_conv3x3)


@register("het_vgg16", baseline="vgg16")
def het_vgg16(num_classes: int = 1000) -> VGG:
    return VGG(CFG_D, num_classes, conv=het_vgg_conv)
