"""Re-creations of the common unofficial HetConv layouts (there is no official code), as the real code has them.

- `HetConv`: irvinxav/Efficient-HetConv-Heterogeneous-Kernel-Based-Convolutions `hetconv.py`: grouped
  3×3 `gwc` (groups=p) + dense 1×1 `pwc`, no bias, padding 1, stride 1.
- `Efficient_HetConv2d`: sxpro/HetConvolution2d_pytorch `HetConv.py` (copied into Xianhang/EDSC-pytorch
  with `ks`, `pad` arguments): grouped 3×3 `conv3x3` + dense 1×1 `conv1x1` − grouped 1×1 `conv1x1_`
  (removes the 1×1 term on the 3×3 channels), every conv with nn.Conv2d's default bias.
- `MFTHetConv` (class name `HetConv` in its codebase): the Multimodal-Fusion-Transformer copy
  (srinadh99/Transformer-Models-for-Multimodal-Remote-Sensing-Data): `gwc` groups=g, `pwc` groups=p,
  both with bias, padding kernel_size//3, a stride.
- `YoloHetConv` (class name `HetConv` in its codebase): the per-branch `filters` layout copied into
  many Ultralytics-YOLO plugin files: branch i = [3×3 conv over channels i::p, 1×1 conv over the
  others], no bias, outputs interleaved (channel q·p + i).
- `HetConv2d_v2`: sxpro/HetConvolution2d_pytorch, one branch per filter i: [3×3 conv (bias) over
  channels j with (j − i) % p == 0, 1×1 conv (bias) over the others], stride 1.
"""
import torch
from torch import nn


class HetConv(nn.Module):
    def __init__(self, in_channels, out_channels, p):
        super().__init__()
        self.gwc = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, groups=p, bias=False)
        self.pwc = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x):
        return self.gwc(x) + self.pwc(x)


class Efficient_HetConv2d(nn.Module):
    def __init__(self, in_feats, out_feats, p=4, ks=3, pad=1):
        super().__init__()
        if in_feats % p != 0:
            raise ValueError('in_channels must be divisible by p')
        if out_feats % p != 0:
            raise ValueError('out_channels must be divisible by p')
        self.conv3x3 = nn.Conv2d(in_feats, out_feats, kernel_size=ks, padding=pad, groups=p)
        self.conv1x1_ = nn.Conv2d(in_feats, out_feats, kernel_size=1, groups=p)
        self.conv1x1 = nn.Conv2d(in_feats, out_feats, kernel_size=1)

    def forward(self, x):
        return self.conv3x3(x) + self.conv1x1(x) - self.conv1x1_(x)


class MFTHetConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, bias=None, p=64, g=64):
        super().__init__()
        self.gwc = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, groups=g, padding=kernel_size // 3, stride=stride)
        self.pwc = nn.Conv2d(in_channels, out_channels, kernel_size=1, groups=p, stride=stride)

    def forward(self, x):
        return self.gwc(x) + self.pwc(x)


MFTHetConv.__name__ = MFTHetConv.__qualname__ = "HetConv"  # its name in the MFT code


class YoloHetConv(nn.Module):
    def __init__(self, input_channels, output_channels, stride=1, p=4):
        super().__init__()
        self.p = p
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.filters = nn.ModuleList()
        self.convolution_1x1_index = []
        for i in range(self.p):
            self.convolution_1x1_index.append(self.compute_convolution_1x1_index(i))
        for i in range(self.p):
            self.filters.append(self.build_HetConv_filters(stride, p))

    def compute_convolution_1x1_index(self, i):
        index = [j for j in range(self.input_channels)]
        while i < self.input_channels:
            index.remove(i)
            i += self.p
        return index

    def build_HetConv_filters(self, stride, p):
        temp_filters = nn.ModuleList()
        temp_filters.append(nn.Conv2d(self.input_channels // p, self.output_channels // p, 3, stride, 1, bias=False))
        temp_filters.append(nn.Conv2d(self.input_channels - self.input_channels // p, self.output_channels // p, 1, stride, 0, bias=False))
        return temp_filters

    def forward(self, input_data):
        output_feature_maps = []
        for i in range(self.p):
            output_feature_3x3 = self.filters[i][0](input_data[:, i::self.p, :, :])
            output_feature_1x1 = self.filters[i][1](input_data[:, self.convolution_1x1_index[i], :, :])
            output_feature_map = output_feature_1x1 + output_feature_3x3
            output_feature_maps.append(output_feature_map)
        N, C, H, W = output_feature_maps[0].size()
        C = self.p * C
        return torch.cat(output_feature_maps, 1).view(N, self.p, C // self.p, H, W).permute(0, 2, 1, 3, 4).contiguous().view(N, C, H, W)


YoloHetConv.__name__ = YoloHetConv.__qualname__ = "HetConv"  # its name in the YOLO plugin code


class HetConv2d_v2(nn.Module):
    def __init__(self, in_feats, out_feats, p=4, groups=1):
        super().__init__()
        if in_feats % groups != 0:
            raise ValueError('in_channels must be divisible by groups')
        self.p = p
        self.in_feats = in_feats
        self.out_feats = out_feats
        self.groups = groups
        self.blocks = nn.ModuleList()
        for i in range(out_feats):
            self.blocks.append(self.make_HetConv2d(p))

    def make_HetConv2d(self, p):
        layers = nn.ModuleList()
        layers.append(nn.Conv2d(self.in_feats // p, 1, 3, 1, 1))
        layers.append(nn.Conv2d(self.in_feats - self.in_feats // p, 1, 1, 1, 0))
        return layers

    def forward(self, x):
        out = []
        for i in range(self.out_feats):
            out1x1 = torch.zeros([0])
            out3x3 = torch.zeros([0])
            for j in range(self.in_feats):
                if ((j - i) % (self.p)) == 0:
                    if out3x3.shape[0] == 0:
                        out3x3 = x[:, j:j + 1, :, :]
                    else:
                        out3x3 = torch.cat((out3x3, x[:, j:j + 1, :, :]), 1)
                else:
                    if out1x1.shape[0] == 0:
                        out1x1 = x[:, j:j + 1, :, :]
                    else:
                        out1x1 = torch.cat((out1x1, x[:, j:j + 1, :, :]), 1)
            out3x3 = self.blocks[i][0](out3x3)
            out1x1 = self.blocks[i][1](out1x1)
            out_ = out1x1 + out3x3
            out.append(out_)
        return torch.cat(out, 1)
