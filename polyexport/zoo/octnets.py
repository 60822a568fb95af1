"""Oct-ResNet-50 (Octave Convolution, Chen et al., ICCV 2019), as d-li14/octconv.pytorch builds it.

d-li14 `oct_resnet.py`: every conv of every bottleneck (and its downsample) is an OctaveConv; the
stem and the classifier stay plain. The first block of layer1 splits the stem's single tensor
(alpha_in = 0), the first block of layer4 merges the frequencies back (alpha_out = 0) and layer4
runs at alpha 0 (plain convs as OctaveConvs). Module and parameter names are d-li14's, so its
checkpoints load; d-li14 hard-codes alpha 0.5, here it is an argument (the paper's ResNet-50 ablation
covers alpha 0.125 to 0.75), default the paper's 0.25.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.octconv import Conv_BN, Conv_BN_ACT, OctInput, OctOutput, split_input
from . import register
from .resnet import ResNet


class OctBottleneck(nn.Module):
    """d-li14's Bottleneck: conv1 changes the frequency split (alpha_in -> alpha_out), conv2 (the
    strided 3x3) and conv3 keep alpha_out; the identity is added per frequency."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, alpha_in: float = 0.25, alpha_out: float = 0.25):
        super().__init__()
        a = alpha_out
        self.conv1 = Conv_BN_ACT(cin, planes, 1, alpha_in=alpha_in, alpha_out=a)
        self.conv2 = Conv_BN_ACT(planes, planes, 3, stride=stride, padding=1, alpha_in=a, alpha_out=a)
        self.conv3 = Conv_BN(planes, planes * 4, 1, alpha_in=a, alpha_out=a)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(Conv_BN(cin, planes * 4, 1, stride=stride, alpha_in=alpha_in, alpha_out=a))

    def forward(self, x: OctInput) -> OctOutput:
        id_h, id_l = split_input(x if self.downsample is None else self.downsample(x))
        y_h, y_l = self.conv3(self.conv2(self.conv1(x)))
        y_h = self.relu(y_h + id_h)
        return y_h, (None if id_l is None else self.relu(y_l + id_l))


class OctResNet(ResNet):
    """resnet.ResNet's stem, stages and init with OctBottlenecks: alpha_in 0 entering layer1,
    alpha_out 0 from layer4 on (d-li14 `OctResNet._make_layer`)."""

    def __init__(self, layers: list[int], alpha: float = 0.25, num_classes: int = 1000):
        self.alpha = alpha  # read by _make_layer, which ResNet.__init__ calls
        super().__init__(OctBottleneck, layers, num_classes)

    def _make_layer(self, block: type[OctBottleneck], planes: int, blocks: int, stride: int,
                    conv3x3: None = None) -> nn.Sequential:
        first, last = planes == 64, planes == 512
        a_in = 0.0 if first else self.alpha
        a = 0.0 if last else self.alpha
        layers = [block(self.inplanes, planes, stride, a_in, a)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, a, a) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x_h, _ = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x_h).flatten(1))


@register("oct_resnet50", baseline="resnet50", test_shape=(1, 3, 64, 64),
          paper={"params_m": 25.6, "gflops": 3.1,
                 "source": "Chen et al., ICCV 2019, Table 2 (ResNet-50, alpha .25: 3.1 GFLOPs); "
                           "OctConv keeps ResNet-50's 25.6 M parameters at every alpha"})
def oct_resnet50(num_classes: int = 1000, alpha: float = 0.25) -> OctResNet:
    return OctResNet([3, 4, 6, 3], alpha, num_classes)


@register("oct_resnet50_a05", baseline="resnet50", test_shape=(1, 3, 64, 64),
          paper={"params_m": 25.557, "gflops": 2.367,
                 "source": "d-li14/octconv.pytorch README (OctResNet-50, alpha 0.5: its released checkpoint)"})
def oct_resnet50_a05(num_classes: int = 1000) -> OctResNet:
    return OctResNet([3, 4, 6, 3], 0.5, num_classes)
