"""MobileNetV3-Small 1.0× (Howard et al. 2019, Table 2), written here with timm's layout and names.

`conv_stem` → `blocks.S.I` (the mobile blocks of `efficientnet.py`) → 1×1 conv to 576 → pool → `conv_head`
(1×1 to 1024, bias, no BN) → hard-swish → `classifier`. SE squeezes to make_divisible(mid / 4), ReLU then
hard-sigmoid. Every conv between the stem and the pooling comes from a `conv` factory, where DY-Conv takes
its place (`dynets.py`); `conv_head` acts on the pooled vector (an FC in conv form) and stays plain.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.condconv import make_divisible
from . import register
from .efficientnet import (
    Act,
    ConvFactory,
    DepthwiseSeparable,
    InvertedResidual,
    init_weights,
    plain_conv,
)

#: Howard et al. Table 2, one row per block: (kernel, expanded channels, out channels, SE, hard-swish, stride)
SMALL_BLOCKS = [
    [(3, 16, 16, True, False, 2)],
    [(3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1)],
    [(5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1)],
    [(5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1)],
    [(5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1)],
]


class ConvBnAct(nn.Module):
    """timm's ConvBnAct ('cn' block): conv → BN → act."""

    def __init__(self, cin: int, cout: int, k: int, act: Act, conv: ConvFactory = plain_conv):
        super().__init__()
        self.conv = conv(cin, cout, k, 1, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))


class MobileNetV3(nn.Module):
    """MobileNetV3-Small 1.0×; `conv` builds every conv of the blocks (not the stem, not conv_head)."""

    def __init__(self, num_classes: int = 1000, conv: ConvFactory = plain_conv):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.Hardswish(inplace=True)
        cin, stages = 16, []
        for rows in SMALL_BLOCKS:
            blocks: list[nn.Module] = []
            for k, mid, cout, se, hs, stride in rows:
                act = nn.Hardswish if hs else nn.ReLU
                se_rd = make_divisible(mid * 0.25) if se else 0
                kw = {"se_act": nn.ReLU, "se_gate": nn.Hardsigmoid, "conv": conv}
                if mid == cin:  # no expansion: timm's 'ds' block
                    blocks.append(DepthwiseSeparable(cin, cout, k, stride, act, se_rd, **kw))
                else:
                    blocks.append(InvertedResidual(cin, mid, cout, k, stride, act, se_rd, **kw))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        stages.append(nn.Sequential(ConvBnAct(cin, 576, 1, nn.Hardswish, conv)))
        self.blocks = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(576, 1024, 1, bias=True)
        self.act2 = nn.Hardswish(inplace=True)
        self.classifier = nn.Linear(1024, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        x = self.act2(self.conv_head(self.global_pool(x)))
        return self.classifier(x.flatten(1))


@register("mobilenetv3_small", test_shape=(1, 3, 64, 64),
          paper={"params_m": 2.5, "gflops": 0.056, "params_tol": 0.02,
                 "why": "the paper rounds to 2.5M; timm's and torchvision's 1.0x model (same layers) have 2.54M",
                 "source": "Howard et al. 2019, Table 3 (MobileNetV3-Small 1.0: 2.5M params, 56M MAdds)"})
def mobilenetv3_small(num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(num_classes)
