"""Re-creation of the one PyTorch port of C2sp found: EL-NAS `cnn/module/Spconv2d.py` (jamiejyhu/EL-NAS).

As the real code has it: a conv wrapped in an nn.Sequential (`conv.0.weight`, `conv.0.bias`, bias on
by nn.Conv2d's default), the four channel quarters padded by one toward left-top, right-top,
left-bottom, right-bottom (in that order — not the official TF order), channels must divide by 4.
"""
import torch
from torch import nn


class Spconv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *args, **kwargs):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding))

    def forward(self, x):
        n, c, h, w = x.size()
        assert c % 4 == 0
        x1 = x[:, :c // 4, :, :]
        x2 = x[:, c // 4:c // 2, :, :]
        x3 = x[:, c // 2:c // 4 * 3, :, :]
        x4 = x[:, c // 4 * 3:c, :, :]
        x1 = nn.functional.pad(x1, (1, 0, 1, 0), mode="constant", value=0)  # left top
        x2 = nn.functional.pad(x2, (0, 1, 1, 0), mode="constant", value=0)  # right top
        x3 = nn.functional.pad(x3, (1, 0, 0, 1), mode="constant", value=0)  # left bottom
        x4 = nn.functional.pad(x4, (0, 1, 0, 1), mode="constant", value=0)  # right bottom
        x = torch.cat([x1, x2, x3, x4], dim=1)
        return self.conv(x)
