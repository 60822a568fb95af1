"""MixNet-S (Tan & Le, "MixConv: Mixed Depthwise Convolutional Kernels", BMVC 2019), as timm's `mixnet_s`.

Written from timm's `_gen_mixnet_s` arch def (timm/models/efficientnet.py) with the project's own
`MixedConv2d`; module names follow timm (`conv_stem`, `blocks.2.0.conv_dw`, `conv_head`, `classifier`).
Where a block lists several kernel sizes (`k3.5.7`, or `a1.1`/`p1.1` for the 1×1 convs) it is a
MixedConv2d; a single size is a plain conv, as in timm's `create_conv2d`. SE is squeeze-excite on
the block's *input* width (timm's `se_from_exp=False`), with the block's activation and a sigmoid gate.

The baseline is `mobilenetv2`: the paper's ImageNet table (Table 2) sets MixNet-S against MobileNetV2.
"""
from __future__ import annotations

from torch import nn

from ..layers.mixconv import MixedConv2d
from . import register

# (repeats, kernels of the depthwise conv, expansion kernels, projection kernels, stride, expansion, out, SE ratio, swish)
# from timm's mixnet_s arch def: 'ir_r1_k3.5.7_s2_e6_c40_se0.5_nsw' -> (1, (3, 5, 7), (1,), (1,), 2, 6, 40, 0.5, True)
MIXNET_S = [
    [(1, (3,), (1, 1), (1, 1), 2, 6, 24, 0.0, False), (1, (3,), (1, 1), (1, 1), 1, 3, 24, 0.0, False)],
    [(1, (3, 5, 7), (1,), (1,), 2, 6, 40, 0.5, True), (3, (3, 5), (1, 1), (1, 1), 1, 6, 40, 0.5, True)],
    [(1, (3, 5, 7), (1,), (1, 1), 2, 6, 80, 0.25, True), (2, (3, 5), (1,), (1, 1), 1, 6, 80, 0.25, True)],
    [(1, (3, 5, 7), (1, 1), (1, 1), 1, 6, 120, 0.5, True), (2, (3, 5, 7, 9), (1, 1), (1, 1), 1, 3, 120, 0.5, True)],
    [(1, (3, 5, 7, 9, 11), (1,), (1,), 2, 6, 200, 0.5, True), (2, (3, 5, 7, 9), (1,), (1, 1), 1, 6, 200, 0.5, True)],
]


def mixed_conv(cin: int, cout: int, kernels: tuple[int, ...], stride: int = 1, depthwise: bool = False) -> nn.Module:
    """timm's `create_conv2d`: MixedConv2d for several kernel sizes, a plain conv for one."""
    if len(kernels) > 1:
        return MixedConv2d(cin, cout, list(kernels), stride, depthwise=depthwise)
    k = kernels[0]
    return nn.Conv2d(cin, cout, k, stride, (stride - 1 + k - 1) // 2, groups=cin if depthwise else 1, bias=False)


class SqueezeExcite(nn.Module):
    """timm's efficientnet SqueezeExcite: mean, 1×1 reduce (bias), act, 1×1 expand (bias), sigmoid gate."""

    def __init__(self, channels: int, reduced: int, act: type[nn.Module]):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = act()
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


class DepthwiseSeparable(nn.Module):
    """timm's DepthwiseSeparableConv (the `ds` block): dw 3×3, BN, act, pw 1×1, BN, no act; skip when shapes match."""

    def __init__(self, cin: int, cout: int, act: type[nn.Module]):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = act()
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.has_skip = cin == cout

    def forward(self, x):
        out = self.bn2(self.conv_pw(self.act1(self.bn1(self.conv_dw(x)))))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """timm's InvertedResidual (the `ir` block) with mixed kernels: pw (expand), dw, SE, pwl (project)."""

    def __init__(self, cin: int, cout: int, dw_k: tuple[int, ...], exp_k: tuple[int, ...], pw_k: tuple[int, ...],
                 stride: int, exp: int, se: float, act: type[nn.Module]):
        super().__init__()
        mid = cin * exp
        self.conv_pw = mixed_conv(cin, mid, exp_k)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = act()
        self.conv_dw = mixed_conv(mid, mid, dw_k, stride, depthwise=True)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = act()
        self.se = SqueezeExcite(mid, round(cin * se), act) if se else nn.Identity()
        self.conv_pwl = mixed_conv(mid, cout, pw_k)
        self.bn3 = nn.BatchNorm2d(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x):
        out = self.act1(self.bn1(self.conv_pw(x)))
        out = self.se(self.act2(self.bn2(self.conv_dw(out))))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


class MixNet(nn.Module):
    def __init__(self, stages=MIXNET_S, stem: int = 16, num_features: int = 1536, num_classes: int = 1000):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act1 = nn.ReLU(inplace=True)
        blocks: list[nn.Module] = [nn.Sequential(DepthwiseSeparable(stem, stem, nn.ReLU))]
        cin = stem
        for stage in stages:
            layers = []
            for repeats, dw_k, exp_k, pw_k, stride, exp, cout, se, swish in stage:
                for i in range(repeats):
                    act = nn.SiLU if swish else nn.ReLU
                    layers.append(InvertedResidual(cin, cout, dw_k, exp_k, pw_k, stride if i == 0 else 1, exp, se, act))
                    cin = cout
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(cin, num_features, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(num_features)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x):
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        x = self.act2(self.bn2(self.conv_head(x)))
        return self.classifier(x.mean((2, 3)))


@register("mixnet_s", baseline="mobilenetv2", test_shape=(1, 3, 64, 64),
          paper={"params_m": 4.1, "gflops": 0.256, "source": "MixConv paper (Tan & Le, BMVC 2019), Table 2: MixNet-S 4.1M params, 256M FLOPs (multiply-adds)",
                 "flops_tol": 0.08, "why": "torch's FlopCounterMode counts conv and matmul MACs only (0.239 G); the paper's "
                 "TF-profiler count also includes BN, activations, SE gating and residual adds, a few % in a net this small"})
def mixnet_s(num_classes: int = 1000) -> MixNet:
    return MixNet(num_classes=num_classes)
