"""EfficientNet-B0 (Tan & Le 2019) and CondConv-EfficientNet-B0 with 4 experts (Yang et al. 2019), written here.

Layout and parameter names follow timm's `efficientnet_b0` / `efficientnet_cc_b0_4e` (`conv_stem`, `blocks.S.I`
with `conv_pw`/`conv_dw`/`se`/`conv_pwl`, `conv_head`, `classifier`), BN and activation kept as separate
modules as `layers.condconv.CondConvResidual` does. The mobile blocks here are shared with `mobilenetv3.py`
(timm builds both families from the same blocks); their convolutions come from a `conv` factory so that a
paper's layer (e.g. DY-Conv) can take every conv's place.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ..layers.condconv import CondConvResidual, SqueezeExcite, make_divisible
from . import register

#: conv(cin, cout, kernel_size, stride, groups) -> module computing a bias-free, "same"-padded convolution
ConvFactory = Callable[[int, int, int, int, int], nn.Module]
Act = Callable[..., nn.Module]


def plain_conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)


def _se(chs: int, rd: int, act: Act, gate: Act) -> nn.Module:
    return SqueezeExcite(chs, rd_channels=rd, act_layer=act, gate_layer=gate) if rd else nn.Identity()


class DepthwiseSeparable(nn.Module):
    """timm's DepthwiseSeparableConv ('ds'): dw → BN → act → SE → pw → BN, skip when the shape is kept."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, act: Act, se_rd: int = 0, se_act: Act = nn.ReLU,
                 se_gate: Act = nn.Sigmoid, conv: ConvFactory = plain_conv):
        super().__init__()
        self.has_skip = stride == 1 and cin == cout
        self.conv_dw = conv(cin, cin, k, stride, cin)
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = act(inplace=True)
        self.se = _se(cin, se_rd, se_act, se_gate)
        self.conv_pw = conv(cin, cout, 1, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.se(self.act1(self.bn1(self.conv_dw(x))))))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """timm's InvertedResidual ('ir', MBConv): pw expand → BN → act → dw → BN → act → SE → pwl → BN (+ skip)."""

    def __init__(self, cin: int, mid: int, cout: int, k: int, stride: int, act: Act, se_rd: int = 0,
                 se_act: Act = nn.ReLU, se_gate: Act = nn.Sigmoid, conv: ConvFactory = plain_conv):
        super().__init__()
        self.has_skip = stride == 1 and cin == cout
        self.conv_pw = conv(cin, mid, 1, 1, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = act(inplace=True)
        self.conv_dw = conv(mid, mid, k, stride, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = act(inplace=True)
        self.se = _se(mid, se_rd, se_act, se_gate)
        self.conv_pwl = conv(mid, cout, 1, 1, 1)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv_pw(x)))
        out = self.se(self.act2(self.bn2(self.conv_dw(out))))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


def init_weights(model: nn.Module) -> None:
    """timm's `_init_weight_goog` for convs and BN (random init; no downloads)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


#: EfficientNet-B0 stages (paper Table 1; timm's arch_def): (repeats, kernel, stride, expansion, out channels)
B0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
             (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
SE_RATIO = 0.25  # of the block's input channels (timm: se0.25 divided by the expansion, `se_from_exp=False`)


class EfficientNet(nn.Module):
    """Stem 3×3/2 → MBConv stages → 1×1 head to 1280 → pool → classifier; swish throughout.

    condconv_experts > 0 makes the blocks of the stages listed in `condconv_stages` timm's CondConvResidual
    (one sigmoid routing per block shared by its three convs), as in timm's `efficientnet_cc_b0_4e`
    (`_cc4` on the last three stages).
    """

    def __init__(self, num_classes: int = 1000, condconv_experts: int = 0, condconv_stages: tuple[int, ...] = (4, 5, 6)):
        super().__init__()
        act = nn.SiLU
        self.conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = act(inplace=True)
        cin, stages = 32, []
        for s, (n, k, stride, exp, cout) in enumerate(B0_STAGES):
            blocks: list[nn.Module] = []
            for i in range(n):
                st, se_rd = stride if i == 0 else 1, round(cin * SE_RATIO)
                if exp == 1:
                    blocks.append(DepthwiseSeparable(cin, cout, k, st, act, se_rd, se_act=act))
                elif condconv_experts and s in condconv_stages:
                    se = partial(SqueezeExcite, rd_channels=se_rd)
                    blocks.append(CondConvResidual(cin, cout, k, st, exp_ratio=exp, act_layer=act, se_layer=se,
                                                   num_experts=condconv_experts))
                else:
                    blocks.append(InvertedResidual(cin, make_divisible(cin * exp), cout, k, st, act, se_rd, se_act=act))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.act2 = act(inplace=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        x = self.act2(self.bn2(self.conv_head(x)))
        return self.classifier(self.global_pool(x).flatten(1))


@register("efficientnet_b0", test_shape=(1, 3, 64, 64),
          paper={"params_m": 5.3, "gflops": 0.39, "source": "Tan & Le 2019, Table 2 (EfficientNet-B0: 5.3M params, 0.39B FLOPs)"})
def efficientnet_b0(num_classes: int = 1000) -> EfficientNet:
    return EfficientNet(num_classes)


@register("cc_efficientnet_b0", baseline="efficientnet_b0", test_shape=(1, 3, 64, 64),
          paper={"params_m": 13.3, "gflops": 0.40,
                 "source": "timm's tf_efficientnet_cc_b0_4e.in1k model card (CondConv authors' weights): 13.3M params, 0.4 GMACs"})
def cc_efficientnet_b0(num_classes: int = 1000) -> EfficientNet:
    return EfficientNet(num_classes, condconv_experts=4)
