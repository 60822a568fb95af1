"""CoAtNet-0 (Dai et al. 2021) as timm's `coatnet_0_224` (maxxvit.py), timm's parameter names.

Stem (3×3 s2, 3×3) → S1, S2: MBConv (pre-norm BN, expand 4× of the output width, dw 3×3 with the
stride, SE 0.25, GELU) → S3, S4: transformer blocks with relative self-attention over the whole
grid (`RelPosAttention`, 32-dim heads) and a 4× conv MLP → avg-pool, LayerNorm, 768 tanh pre-logits,
classifier. Widths (96, 192, 384, 768), depths (2, 3, 5, 2), stem 64. The relative tables fix the
token grids to 14×14 (S3) and 7×7 (S4): the model takes 224×224 inputs only.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.rel_attention import RelPosAttention
from . import register


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm's LayerNorm2d)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class Downsample2d(nn.Module):
    """2×2 average pool, then a 1×1 conv where the width changes (timm's 'avg2')."""

    def __init__(self, dim: int, dim_out: int, bias: bool = True) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2, count_include_pad=False)
        self.expand = nn.Conv2d(dim, dim_out, 1, bias=bias) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.pool(x))


class SEModule(nn.Module):
    """Squeeze-excitation with SiLU (timm's SEModule: fc1, act, fc2, sigmoid gate)."""

    def __init__(self, channels: int, rd_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()


class MbConvBlock(nn.Module):
    """Pre-norm MBConv, stride in the depthwise conv. timm's BatchNormAct2d is split here into
    `normN` (a plain BatchNorm2d, same state_dict keys) and `actN`, so BN folds into the conv before it."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        mid = out_chs * 4
        self.shortcut = Downsample2d(in_chs, out_chs) if stride == 2 else nn.Identity()
        self.pre_norm = nn.BatchNorm2d(in_chs)
        self.conv1_1x1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid)
        self.act1 = nn.GELU()
        self.conv2_kxk = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.act2 = nn.GELU()
        self.se = SEModule(mid, out_chs // 4)
        self.conv3_1x1 = nn.Conv2d(mid, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.norm1(self.conv1_1x1(self.pre_norm(x))))
        x = self.se(self.act2(self.norm2(self.conv2_kxk(x))))
        return self.conv3_1x1(x) + shortcut


class ConvMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock2d(nn.Module):
    """Pre-norm relative attention + conv MLP on NCHW; a strided block pools (and widens the shortcut) first."""

    def __init__(self, dim: int, dim_out: int, stride: int, grid: tuple[int, int]) -> None:
        super().__init__()
        if stride == 2:
            self.shortcut = Downsample2d(dim, dim_out)
            self.norm1 = nn.Sequential(OrderedDict([("norm", LayerNorm2d(dim)), ("down", Downsample2d(dim, dim))]))
        else:
            self.shortcut = nn.Identity()
            self.norm1 = LayerNorm2d(dim)
        self.attn = RelPosAttention(dim, dim_out, dim_head=32, window_size=grid)
        self.norm2 = LayerNorm2d(dim_out)
        self.mlp = ConvMlp(dim_out, dim_out * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(x) + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Stem(nn.Module):
    def __init__(self, out_chs: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_chs, 3, 2, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act1(self.norm1(self.conv1(x))))


class Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class NormMlpClassifierHead(nn.Module):
    """Average pool → LayerNorm → Linear + tanh (pre-logits) → classifier (timm's head, hidden 768)."""

    def __init__(self, dim: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.pre_logits = nn.Sequential(OrderedDict([("fc", nn.Linear(dim, hidden)), ("act", nn.Tanh())]))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.mean((2, 3), keepdim=True)).flatten(1)
        return self.fc(self.pre_logits(x))


class CoAtNet(nn.Module):
    def __init__(self, embed_dim=(96, 192, 384, 768), depths=(2, 3, 5, 2), block_types=("C", "C", "T", "T"),
                 stem_width: int = 64, img_size: int = 224, num_classes: int = 1000, head_hidden: int = 768) -> None:
        super().__init__()
        self.stem = Stem(stem_width)
        cin, feat = stem_width, img_size // 2
        stages = []
        for dim, depth, kind in zip(embed_dim, depths, block_types):
            feat = (feat - 1) // 2 + 1
            blocks = []
            for i in range(depth):
                stride = 2 if i == 0 else 1
                blocks.append(MbConvBlock(cin, dim, stride) if kind == "C" else TransformerBlock2d(cin, dim, stride, (feat, feat)))
                cin = dim
            stages.append(Stage(blocks))
        self.stages = nn.Sequential(*stages)
        self.head = NormMlpClassifierHead(cin, num_classes, head_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register("coatnet_0", baseline="resnet50", test_shape=(1, 3, 224, 224),
          paper={"params_m": 25.0, "gflops": 4.2, "source": "Dai et al. 2021, Table 4 (CoAtNet-0, 224: 25M params, 4.2 GFLOPs)",
                 "flops_tol": 0.10, "why": "the counter includes the attention score and value MatMuls of S3/S4 "
                 "(0.15 G multiply-adds, 4.39 G without them), which parameter-style FLOP counts leave out"})
def coatnet_0(num_classes: int = 1000) -> CoAtNet:
    """test_shape is 224: the relative position tables fix S3/S4 to 14×14 and 7×7 token grids."""
    return CoAtNet(num_classes=num_classes)
