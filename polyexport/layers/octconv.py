"""Octave Convolution (Chen et al., ICCV 2019), as d-li14/octconv.pytorch (`octconv.py`) computes it.

Channels are split into a high-frequency part (full resolution) and a low-frequency part (half
resolution, `alpha` of the channels). Four convs exchange information between the two:

    y_h = conv_h2h(x_h) + up(conv_l2h(x_l))        up   = nearest ×2 (nn.Upsample)
    y_l = conv_h2l(pool(x_h)) + conv_l2l(x_l)      pool = AvgPool2d(2, 2), flooring odd sizes

with stride 2 pooling x_h (and x_l for conv_l2l) first and then dropping the upsampling of l2h.
Behaviours of the official code kept as they are, because checkpoints and models rely on them:

- the input is a tuple (x_h, x_l) or a single tensor, read as (x, None) (first layer, alpha_in = 0);
  a tuple (x_h, None) is read the same way. A list is not a tuple: it is passed to conv_h2h as is.
- the output is always a 2-tuple; with alpha_out = 0 it is (y_h, None), not a single tensor.
- depthwise (groups == in_channels): no h2l/l2h; y = (h2h(x_h), l2l(x_l)), and (h2h(x), None) for a
  single-tensor input even when alpha_out > 0.
- conv_h2h is absent for alpha_in = 1 or alpha_out = 1, and the forward then fails: such layers
  cannot run (the deploy forms refuse them).
- odd sizes: pooling floors and upsampling doubles, so at stride 1 a tuple input whose x_h has an
  odd side cannot be summed with up(l2h(x_l)): the reference raises there, and so do the deploy forms.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.fx
from torch import nn

OctInput = torch.Tensor | tuple
OctOutput = tuple[torch.Tensor, torch.Tensor | None]


def split_channels(channels: int, alpha: float) -> tuple[int, int]:
    """(high, low) channel counts as the official code computes them: low = int(alpha·channels)."""
    low = int(alpha * channels)
    return channels - low, low


def split_input(x: OctInput) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x_h, x_l) by the official rule: only a tuple is split; anything else is (x, None).

    Under torch.fx symbolic tracing a Proxy may stand for a tensor or a tuple, and the official test
    cannot tell: tracing is refused rather than silently following the single-tensor path (a tracer
    that did would pair bn_h with conv_h2h alone and fold it wrongly).
    """
    if isinstance(x, torch.fx.Proxy):
        raise TypeError("OctConv cannot be traced symbolically: its input may be a tensor or a tuple")
    return x if type(x) is tuple else (x, None)


class OctaveConv(nn.Module):
    """The official OctaveConv: same arguments, submodule names and forward."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, alpha_in: float = 0.5,
                 alpha_out: float = 0.5, stride: int = 1, padding=0, dilation=1, groups: int = 1,
                 bias: bool = False):
        super().__init__()
        assert stride in (1, 2), "Stride should be 1 or 2."
        assert 0 <= alpha_in <= 1 and 0 <= alpha_out <= 1, "Alphas should be in the interval from 0 to 1."
        self.downsample = nn.AvgPool2d(kernel_size=(2, 2), stride=2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.stride = stride
        self.is_dw = groups == in_channels
        self.alpha_in, self.alpha_out = alpha_in, alpha_out
        in_h, in_l = split_channels(in_channels, alpha_in)
        out_h, out_l = split_channels(out_channels, alpha_out)

        def conv(cin: int, cout: int, g: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, kernel_size, 1, padding, dilation, g, bias)

        lo_in, lo_out, hi_in, hi_out = alpha_in == 0, alpha_out == 0, alpha_in == 1, alpha_out == 1
        self.conv_l2l = None if lo_in or lo_out else conv(in_l, out_l, math.ceil(alpha_in * groups))
        self.conv_l2h = None if lo_in or hi_out or self.is_dw else conv(in_l, out_h, groups)
        self.conv_h2l = None if hi_in or lo_out or self.is_dw else conv(in_h, out_l, groups)
        self.conv_h2h = None if hi_in or hi_out else conv(in_h, out_h, math.ceil(groups - alpha_in * groups))

    def forward(self, x: OctInput) -> OctOutput:
        x_h, x_l = split_input(x)
        if self.conv_h2h is None:
            raise TypeError("OctaveConv with alpha_in = 1 or alpha_out = 1 has no conv_h2h; the official "
                            "forward fails here too ('NoneType' object is not callable)")
        if self.stride == 2:
            x_h = self.downsample(x_h)
        y_h = self.conv_h2h(x_h)
        h2l = self.conv_h2l(self.downsample(x_h)) if self.alpha_out > 0 and not self.is_dw else None
        if x_l is None:
            return y_h, h2l
        l2l = None
        if self.alpha_out > 0:
            l2l = self.conv_l2l(self.downsample(x_l) if self.stride == 2 else x_l)
        if self.is_dw:
            return y_h, l2l
        l2h = self.conv_l2h(x_l)
        if self.stride == 1:
            l2h = self.upsample(l2h)
        y_l = h2l + l2l if h2l is not None and l2l is not None else None
        return l2h + y_h, y_l


def _norm(norm_layer: Callable[[int], nn.Module], channels: int, absent: bool) -> nn.Module | None:
    return None if absent else norm_layer(channels)


class Conv_BN(nn.Module):
    """OctaveConv, then one norm layer per output frequency (`bn_h`, `bn_l`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, alpha_in: float = 0.5,
                 alpha_out: float = 0.5, stride: int = 1, padding=0, dilation=1, groups: int = 1,
                 bias: bool = False, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.conv = OctaveConv(in_channels, out_channels, kernel_size, alpha_in, alpha_out, stride, padding,
                               dilation, groups, bias)
        self.bn_h = _norm(norm_layer, int(out_channels * (1 - alpha_out)), alpha_out == 1)
        self.bn_l = _norm(norm_layer, int(out_channels * alpha_out), alpha_out == 0)

    def forward(self, x: OctInput) -> OctOutput:
        x_h, x_l = self.conv(x)
        return self.bn_h(x_h), (None if x_l is None else self.bn_l(x_l))


class Conv_BN_ACT(nn.Module):
    """OctaveConv, norm per frequency, then the same activation module (built in-place) on both."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, alpha_in: float = 0.5,
                 alpha_out: float = 0.5, stride: int = 1, padding=0, dilation=1, groups: int = 1,
                 bias: bool = False, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 activation_layer: Callable[..., nn.Module] = nn.ReLU):
        super().__init__()
        self.conv = OctaveConv(in_channels, out_channels, kernel_size, alpha_in, alpha_out, stride, padding,
                               dilation, groups, bias)
        self.bn_h = _norm(norm_layer, int(out_channels * (1 - alpha_out)), alpha_out == 1)
        self.bn_l = _norm(norm_layer, int(out_channels * alpha_out), alpha_out == 0)
        self.act = activation_layer(inplace=True)

    def forward(self, x: OctInput) -> OctOutput:
        x_h, x_l = self.conv(x)
        return self.act(self.bn_h(x_h)), (None if x_l is None else self.act(self.bn_l(x_l)))
