"""Faithful re-creations of foreign SPD / space-to-depth classes, for the adapter tests.

- `space_to_depth`, `Conv`, `autopad`: LabSAINT/SPD-Conv (YOLOv5-SPD/models/common.py, ResNet*-SPD/models/*.py).
- `Focus`, `BottleNeck`, `ResNet`, `resnet18_spd`: LabSAINT/SPD-Conv ResNet18-SPD/models/resnet50_spd.py (its
  `resnet18()`, a 50-layer BottleNeck net: what the README trains as ResNet18-SPD on Tiny-ImageNet).
- `SpaceToDepth`: timm/layers/space_to_depth.py (TResNet stem; block size asserted to be 4).
- `SpaceToDepthJit`, `SpaceToDepthModule`: older timm (timm/models/layers/space_to_depth.py). The real
  `SpaceToDepthJit` is decorated with `@torch.jit.script`; left undecorated here (same computation).
"""
import torch
import torch.nn as nn


class space_to_depth(nn.Module):
    # Changing the dimension of the Tensor
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


def autopad(k, p=None):  # kernel, padding
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    # Standard convolution (YOLOv5): conv, BN, SiLU
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Focus(nn.Module):
    # space-to-depth (the official slice order), then Conv
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act)

    def forward(self, x):
        return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))


class BottleNeck(nn.Module):
    # at stride 2: 3x3 at stride 1, space_to_depth, BN over 4x the channels, 1x1 from 4x the channels
    expansion = 4

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        if stride == 2:
            layers += [nn.Conv2d(out_channels, out_channels, stride=1, kernel_size=3, padding=1, bias=False), space_to_depth(),
                       nn.BatchNorm2d(4 * out_channels), nn.ReLU(inplace=True),
                       nn.Conv2d(4 * out_channels, out_channels * BottleNeck.expansion, kernel_size=1, bias=False),
                       nn.BatchNorm2d(out_channels * BottleNeck.expansion)]
        else:
            layers += [nn.Conv2d(out_channels, out_channels, stride=stride, kernel_size=3, padding=1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
                       nn.Conv2d(out_channels, out_channels * BottleNeck.expansion, kernel_size=1, bias=False),
                       nn.BatchNorm2d(out_channels * BottleNeck.expansion)]
        self.residual_function = nn.Sequential(*layers)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels * BottleNeck.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels * BottleNeck.expansion, stride=stride, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_channels * BottleNeck.expansion))

    def forward(self, x):
        return nn.ReLU(inplace=True)(self.residual_function(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block, num_block, num_classes=200):
        super().__init__()
        self.in_channels = 64
        self.conv1 = Focus(3, 64, k=1, s=1)
        self.conv2_x = self._make_layer(block, 64, num_block[0], 1)
        self.conv3_x = self._make_layer(block, 128, num_block[1], 2)
        self.conv4_x = self._make_layer(block, 256, num_block[2], 2)
        self.conv5_x = self._make_layer(block, 512, num_block[3], 2)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, out_channels, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_channels, out_channels, s))
            self.in_channels = out_channels * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        output = self.conv5_x(self.conv4_x(self.conv3_x(self.conv2_x(self.conv1(x)))))
        return self.fc(self.avg_pool(output).view(output.size(0), -1))


def resnet18_spd():
    return ResNet(BottleNeck, [3, 4, 6, 3])


class SpaceToDepth(nn.Module):
    bs: torch.jit.Final[int]

    def __init__(self, block_size=4):
        super().__init__()
        assert block_size == 4
        self.bs = block_size

    def forward(self, x):
        N, C, H, W = x.size()
        x = x.view(N, C, H // self.bs, self.bs, W // self.bs, self.bs)  # (N, C, H//bs, bs, W//bs, bs)
        x = x.permute(0, 3, 5, 1, 2, 4).contiguous()  # (N, bs, bs, C, H//bs, W//bs)
        x = x.view(N, C * self.bs * self.bs, H // self.bs, W // self.bs)  # (N, C*bs^2, H//bs, W//bs)
        return x


class SpaceToDepthJit(object):
    def __call__(self, x: torch.Tensor):
        # assuming hard-coded that block_size==4 for acceleration
        N, C, H, W = x.size()
        x = x.view(N, C, H // 4, 4, W // 4, 4)  # (N, C, H//bs, bs, W//bs, bs)
        x = x.permute(0, 3, 5, 1, 2, 4).contiguous()  # (N, bs, bs, C, H//bs, W//bs)
        x = x.view(N, C * 16, H // 4, W // 4)  # (N, C*bs^2, H//bs, W//bs)
        return x


class SpaceToDepthModule(nn.Module):
    def __init__(self, no_jit=False):
        super().__init__()
        if not no_jit:
            self.op = SpaceToDepthJit()
        else:
            self.op = SpaceToDepth()

    def forward(self, x):
        return self.op(x)
