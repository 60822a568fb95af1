"""DY-CNNs of Dynamic Convolution (Chen et al., CVPR 2020): DY-ResNet-18 and DY-MobileNetV3-Small.

As the paper (Sec. 5, "Implementation details"): every convolution except the first is a DY-Conv with
K = 4 kernels and a squeeze-and-excitation attention reducing by 4 (`Dynamic_conv2d`'s ratio 0.25). In
MobileNetV3-Small that is every conv of the blocks; the 1×1 `conv_head` on the pooled vector (an FC in conv
form) and the SE convs stay plain, which is what reproduces the paper's increments over the static model
(see the `why`s below). The temperature is 1, its value after the paper's annealing (30 → 1 over the first
epochs), i.e. the trained, deployed state.
"""
from __future__ import annotations

from ..layers.dynamic_conv import Dynamic_conv2d
from . import register
from .mobilenetv3 import MobileNetV3
from .resnet import BasicBlock, ResNet

K, RATIO, TEMPERATURE = 4, 0.25, 1


def dy_conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> Dynamic_conv2d:
    """A DY-Conv in place of nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)."""
    return Dynamic_conv2d(cin, cout, k, ratio=RATIO, stride=stride, padding=k // 2, groups=groups, bias=bias, K=K,
                          temperature=TEMPERATURE)


class DyBasicBlock(BasicBlock):
    """ResNet's BasicBlock with conv1, conv2 and the 1×1 downsample conv as DY-Convs (same names, same forward).

    Built as the plain block, then its convs replaced: resnet.py's BasicBlock takes no conv factory.
    """

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__(cin, planes, stride)
        self.conv1 = dy_conv(cin, planes, 3, stride)
        self.conv2 = dy_conv(planes, planes, 3)
        if self.downsample is not None:
            self.downsample[0] = dy_conv(cin, planes, 1, stride)


@register("dy_resnet18", baseline="resnet18", test_shape=(1, 3, 64, 64),
          paper={"params_m": 42.7, "gflops": 1.85, "params_tol": 0.07,
                 "why": "the same table counts its static ResNet-18 as 11.1M where the standard count (torchvision, our "
                        "resnet18) is 11.69M; the DY/static ratio agrees (ours 45.5/11.69 = 3.89x, paper 42.7/11.1 = 3.85x)",
                 "source": "Chen et al. 2020, Table 2 (DY-ResNet-18: 42.7M params, 1.85G MAdds; the MAdds confirmed by Papers with Code: 3.7 GFLOPs)"})
def dy_resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(DyBasicBlock, [2, 2, 2, 2], num_classes)


@register("dy_mobilenetv3_small", baseline="mobilenetv3_small", test_shape=(1, 3, 64, 64),
          paper={"params_m": 4.8, "gflops": 0.0685, "params_tol": 0.10, "flops_tol": 0.15,
                 "why": "the same table counts the static MobileNetV3-Small as 2.9M / 66.0M MAdds, where Howard et al. "
                        "(and our mobilenetv3_small, same layers) count 2.5M / 56M; the DY increments agree: ours "
                        "+1.84M params / +2.3M MAdds over the static model, the paper's +1.9M / +2.5M",
                 "source": "Chen et al. 2020, Table 2 (DY-MobileNetV3-Small: 4.8M params, 68.5M MAdds; the MAdds confirmed by Papers with Code: 0.137 GFLOPs)"})
def dy_mobilenetv3_small(num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(num_classes, conv=dy_conv)
