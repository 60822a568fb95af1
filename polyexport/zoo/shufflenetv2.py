"""ShuffleNetV2 (Ma et al., ECCV 2018), torchvision's layout and parameter names, written here.

`dr_shufflenetv2_0_5x` is its DRConv variant (Chen et al., CVPR 2021); see `dr_shufflenetv2_0_5x`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..layers.drconv_megvii import DRConv
from . import register

#: makes the unit's pointwise conv: (in, out) -> module; the papers' layers swap in here
PointwiseFactory = Callable[[int, int], nn.Module]


def _pw(cin: int, cout: int) -> nn.Module:
    return nn.Conv2d(cin, cout, 1, bias=False)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class InvertedResidual(nn.Module):
    """The ShuffleNetV2 unit: split (or, strided, both halves) → 1×1, dw 3×3, 1×1 → concat → shuffle."""

    def __init__(self, cin: int, cout: int, stride: int, pw: PointwiseFactory = _pw) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        c2 = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            pw(c2, half), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            pw(half, half), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, stages_repeats: list[int], stages_out_channels: list[int], num_classes: int = 1000,
                 pw: PointwiseFactory = _pw) -> None:
        super().__init__()
        cin = stages_out_channels[0]
        self.conv1 = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (repeats, cout) in enumerate(zip(stages_repeats, stages_out_channels[1:4]), start=2):
            units = [InvertedResidual(cin, cout, 2, pw)] + [InvertedResidual(cout, cout, 1, pw) for _ in range(repeats - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            cin = cout
        cout = stages_out_channels[-1]
        self.conv5 = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.fc = nn.Linear(cout, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))


#: ShuffleNetV2 0.5× (Ma et al. 2018, Table 5, the architecture): stage repeats and output channels
REPEATS_0_5X, CHANNELS_0_5X = [4, 8, 4], [24, 48, 96, 192, 1024]


@register("shufflenetv2_0_5x", test_shape=(1, 3, 64, 64),
          paper={"params_m": 1.4, "gflops": 0.041, "source": "Ma et al. 2018 (ShuffleNet v2 0.5x: 41 MFLOPs); megvii-model/ShuffleNet-Series README: 41M FLOPs, 1.4M params",
                 "params_tol": 0.03, "why": "the paper rounds to 0.1 M (1.37 M, torchvision's count, prints as 1.4)"})
def shufflenetv2_0_5x(num_classes: int = 1000) -> ShuffleNetV2:
    return ShuffleNetV2(REPEATS_0_5X, CHANNELS_0_5X, num_classes)


# --- DRConv ShuffleNetV2 (Chen et al., CVPR 2021), as megvii-research/DRConv's ShuffleNetV2_pytorch.py ----------
# Module and parameter names are upstream's, so an upstream checkpoint loads with strict=True.


class conv_bn_relu(nn.Module):  # noqa: N801 - upstream name
    """Conv (or, with DLS=True, the authors' DRConv fed the unit's mask) → BN → ReLU, as upstream."""

    def __init__(self, input_channel: int, output_channel: int, kernel_size: int, stride: int, padding: int,
                 groups: int = 1, bias: bool = True, bn: bool = True, relu: bool = True, DLS: bool = False,  # noqa: N803
                 groups_num: int = 8) -> None:
        super().__init__()
        self.DLS, self.has_bn, self.has_relu = DLS, bn, relu  # noqa: N815 - upstream name
        if DLS:
            self.conv = DRConv(input_channel, output_channel, kernel_size, stride, padding, groups=groups, bias=bias,
                               groups_num=groups_num, num_W=8)
        else:
            self.conv = nn.Conv2d(input_channel, output_channel, kernel_size, stride, padding, groups=groups, bias=bias)
        if bn:
            self.bn = nn.BatchNorm2d(output_channel, momentum=0.1)
        if relu:
            self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, Alpha: torch.Tensor | None = None) -> torch.Tensor:  # noqa: N803
        x = self.conv(x, mask, Alpha) if self.DLS else self.conv(x)
        if self.has_bn:
            x = self.bn(x)
        if self.has_relu:
            x = self.relu(x)
        return x


def channel_shuffle_v2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's split: reshape (b·c/2, 2, hw) → permute → (2, b, c/2, h, w), i.e. the even and the odd channels."""
    return x[:, 0::2], x[:, 1::2]


class make_block(nn.Module):  # noqa: N801 - upstream name
    """The DR ShuffleNetV2 unit: a 1×1 `masknet` → softmax → argmax gives the regions (mask) and their
    softmax (Alpha), shared by the right branch's two DRConvs (1×1 → dw 3×3 → 1×1); the second runs at
    the unit's output resolution, so in a strided unit it resizes the mask (nearest)."""

    def __init__(self, inp: int, oup: int, stride: int, groups_num: int = 8) -> None:
        super().__init__()
        assert stride in (1, 2)
        self.stride, self.inp, self.groups_num = stride, inp, groups_num
        inp = inp if stride == 2 else inp // 2
        right_oup, mid_channel = oup - inp, oup // 2
        self.masknet = nn.Conv2d(inp, groups_num, kernel_size=1, stride=1, padding=0, bias=False)
        self.conva_right = conv_bn_relu(inp, mid_channel, 1, 1, 0, bias=False, DLS=True, groups_num=groups_num)
        self.convb_right = conv_bn_relu(mid_channel, mid_channel, 3, stride, 1, groups=mid_channel, bias=False, relu=False)
        self.convc_right = conv_bn_relu(mid_channel, right_oup, 1, 1, 0, bias=False, DLS=True, groups_num=groups_num)
        if stride == 2:
            self.conva_left = conv_bn_relu(inp, inp, 3, stride, 1, groups=inp, bias=False, relu=False)
            self.convb_left = conv_bn_relu(inp, inp, 1, 1, 0, bias=False, DLS=False, groups_num=groups_num)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x_proj = self.convb_left(self.conva_left(x))
        else:
            x_proj, x = channel_shuffle_v2(x)
        Alpha = torch.softmax(self.masknet(x), dim=1)  # noqa: N806 - upstream name
        mask = torch.argmax(Alpha, dim=1)
        x = self.conva_right(x, mask, Alpha)
        x = self.convb_right(x)
        x = self.convc_right(x, mask, Alpha)
        return torch.cat((x_proj, x), 1)


class DRShuffleNetV2(nn.Module):
    """Upstream's `ShuffleNetV2` (ShuffleNetV2_pytorch.py), names as there: conv_first, maxpool,
    stage{1,2,3}_block{i}, conv_last, globalpool, classifier.

    One change: upstream pools with nn.AvgPool2d(input_size // 32), fixed at build time; here
    `globalpool` averages whatever map it gets (AdaptiveAvgPool2d(1)). At 224×224 (the 7×7 map upstream
    is built for) the two are the same function; the adaptive one also runs the 64×64 test shape.
    """

    def __init__(self, n_class: int = 1000, input_size: int = 224, width_mult: float = 0.5) -> None:
        super().__init__()
        assert input_size % 32 == 0
        channels = {0.5: [24, 48, 96, 192, 1024], 1.0: [24, 116, 232, 464, 1024],
                    1.5: [24, 176, 352, 704, 1024], 2.0: [24, 244, 488, 976, 2048]}[width_mult]
        self.conv_first = conv_bn_relu(3, channels[0], kernel_size=3, stride=2, padding=1)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for stage, repeats in enumerate((4, 8, 4), start=1):
            cin, cout = channels[stage - 1], channels[stage]
            for i in range(1, repeats + 1):
                setattr(self, f"stage{stage}_block{i}", make_block(cin if i == 1 else cout, cout, 2 if i == 1 else 1))
        self.conv_last = conv_bn_relu(channels[3], channels[4], kernel_size=1, stride=1, padding=0)
        self.globalpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[4], n_class)
        self._initialize_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv_first(x))
        for stage, repeats in enumerate((4, 8, 4), start=1):
            for i in range(1, repeats + 1):
                x = getattr(self, f"stage{stage}_block{i}")(x)
        x = self.globalpool(self.conv_last(x))
        return self.classifier(x.flatten(1))

    def _initialize_weights(self) -> None:
        """Upstream's init where it applies (its LConv2d branches match no module): BN γ=1, β=0, running mean 1;
        Linear layers (routing_fc included) N(0, 0.01) with zero bias; convs and the DRConv banks keep their own."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
                nn.init.constant_(m.running_mean, 1)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)


#: routing_fc gain for random weights: with fan-in scaled weights the routing sees the spatial mean of a
#: post-ReLU map, which varies little between samples, so every sample would get nearly the same kernels
#: (sigmoid spread ≈ 0.02 across samples). ×5 gives a spread of 0.1–0.4 without saturating the sigmoid.
ROUTING_GAIN = 5.0


def _dr_trained_like(model: nn.Module, seed: int) -> nn.Module:
    from ..testing import randomize_

    randomize_(model, seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DRConv):
                m.routing_fc.weight.mul_(ROUTING_GAIN)
    return model.eval()


@register("dr_shufflenetv2_0_5x", baseline="shufflenetv2_0_5x", test_shape=(1, 3, 64, 64), randomize=_dr_trained_like,
          paper={"params_m": 2.29, "gflops": 0.046,
                 "source": "gflops: Chen et al. CVPR 2021 (abstract) and megvii-research/DRConv README, DRConv ShuffleNetV2-0.5x "
                           "at 46M multiply-adds. params_m is NOT a paper figure (neither the abstract nor the README gives one, "
                           "and the paper's table was not available here): 2.29 M is our count of upstream's "
                           "ShuffleNetV2_pytorch.py at width_mult=0.5 (the baseline's 1.37 M, with each of the 32 DRConvs' bank "
                           "8× its 1×1 conv: 921.6 k, plus routing FCs 112.6 k and masknets 6.9 k), pinned to catch changes",
                 "flops_tol": 0.10,
                 "why": "ours is 50.10 M MACs = the plain ShuffleNetV2-0.5x count (40.48 M, as shufflenetv2_0_5x) + the 16 "
                        "masknets 2.15 M + the routing FCs 0.11 M + the per-sample kernel generation 7.37 M (routing "
                        "coefficients @ bank: groups_num·num_W·out·in = 64·out·in per DRConv). The paper's 46 M is 5 M over its "
                        "own 41 M ShuffleNetV2-0.5x figure and lies between ours without the kernel generation (42.73 M, -7.1 %) "
                        "and with it (+8.9 %); upstream's counter hook for DRConv "
                        "(count_Deformable_for_Dynamic_localshare_via_automask_gradient_Conv2d) is not in its release, so how "
                        "much of the generation the paper counts cannot be reproduced"})
def dr_shufflenetv2_0_5x(num_classes: int = 1000) -> DRShuffleNetV2:
    """The paper's DRConv ShuffleNetV2-0.5× (upstream's ShuffleNetV2(width_mult=0.5))."""
    return DRShuffleNetV2(num_classes, input_size=224, width_mult=0.5)
