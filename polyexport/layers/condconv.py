"""CondConv (Yang et al., NeurIPS 2019), as timm writes it (`timm/layers/cond_conv2d.py`,
`CondConvResidual` in `timm/models/_efficientnet_blocks.py`).

`CondConv2d.forward(x, routing_weights)` takes the routing as an argument: in timm one routing vector,
sigmoid(Linear(GAP(x))), is computed per block and shared by its three convs. The experts are stored
flat, `weight` (num_experts, out·in/groups·kh·kw), `bias` (num_experts, out). Names and layouts match
timm, so a timm state_dict loads unchanged. Our `CondConvResidual` keeps BN and activation as separate
modules (`bn1` + `act1`, …): timm's newer `BatchNormAct2d` holds the activation inside `bn1` but has the
same parameters and buffers, so the state_dict is the same.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def get_padding_value(padding: int | str, kernel_size: int, stride: int = 1, dilation: int = 1) -> tuple[int, bool]:
    """timm's rule: '' → symmetric ((s-1) + d(k-1)) // 2; 'same' → that when static, else dynamic; 'valid' → 0."""
    if not isinstance(padding, str):
        return padding, False
    padding = padding.lower()
    symmetric = ((stride - 1) + dilation * (kernel_size - 1)) // 2
    if padding == "same":
        if stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0:
            return symmetric, False
        return 0, True
    if padding == "valid":
        return 0, False
    return symmetric, False


def pad_same(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int]) -> torch.Tensor:
    """TF 'SAME' padding from the input size (asymmetric: the extra pixel goes right/bottom)."""
    pads = []
    for size, k, s, d in zip(x.shape[-2:], kernel_size, stride, dilation):
        pads.append(max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0))
    ph, pw = pads
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class CondConv2d(nn.Module):
    """Per-sample kernel = routing_weights · experts, applied with the batch folded into the groups (as timm)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | str = "", dilation: int = 1, groups: int = 1, bias: bool = False, num_experts: int = 4):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        padding_val, self.dynamic_padding = get_padding_value(padding, kernel_size, stride, dilation)
        self.padding = _pair(padding_val)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.num_experts = num_experts
        self.weight_shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = nn.Parameter(torch.empty(num_experts, math.prod(self.weight_shape)))
        if bias:
            self.bias_shape = (out_channels,)
            self.bias = nn.Parameter(torch.empty(num_experts, out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's init: each expert like an nn.Conv2d (kaiming_uniform a=√5, bias U(±1/√fan_in))."""
        for i in range(self.num_experts):
            nn.init.kaiming_uniform_(self.weight.data[i].view(self.weight_shape), a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(math.prod(self.weight_shape[1:]))
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        weight = torch.matmul(routing_weights, self.weight).view((B * self.out_channels,) + self.weight_shape[1:])
        bias = torch.matmul(routing_weights, self.bias).view(B * self.out_channels) if self.bias is not None else None
        x = x.reshape(1, B * C, H, W)
        if self.dynamic_padding:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        out = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups * B)
        return out.permute([1, 0, 2, 3]).view(B, self.out_channels, out.shape[-2], out.shape[-1])


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """timm's channel rounding (so `mid_chs` matches a timm checkpoint)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


class SqueezeExcite(nn.Module):
    """timm's EfficientNet SE: x · gate(conv_expand(act(conv_reduce(mean(x)))))."""

    def __init__(self, in_chs: int, rd_ratio: float = 0.25, rd_channels: int | None = None,
                 act_layer: Callable[..., nn.Module] = nn.ReLU, gate_layer: Callable[..., nn.Module] = nn.Sigmoid):
        super().__init__()
        rd_channels = rd_channels if rd_channels is not None else round(in_chs * rd_ratio)
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(x_se)


class CondConvResidual(nn.Module):
    """timm's inverted residual with CondConv: one sigmoid routing vector shared by conv_pw, conv_dw, conv_pwl.

    Eval-mode equivalent of timm's block (no anti-aliasing, no space-to-depth; drop-path is the identity
    at inference and is not applied in training here).
    """

    def __init__(self, in_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1, dilation: int = 1,
                 group_size: int = 1, pad_type: str = "", noskip: bool = False, exp_ratio: float = 1.0,
                 exp_kernel_size: int = 1, pw_kernel_size: int = 1, act_layer: Callable[..., nn.Module] = nn.ReLU,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d, se_layer: Callable[..., nn.Module] | None = None,
                 num_experts: int = 0, drop_path_rate: float = 0.0):
        super().__init__()
        self.num_experts = num_experts
        self.has_skip = (in_chs == out_chs and stride == 1) and not noskip
        mid_chs = make_divisible(in_chs * exp_ratio)
        groups = mid_chs // group_size if group_size else 1
        self.conv_pw = CondConv2d(in_chs, mid_chs, exp_kernel_size, padding=pad_type, num_experts=num_experts)
        self.bn1 = norm_layer(mid_chs)
        self.act1 = act_layer(inplace=True)
        self.conv_dw = CondConv2d(mid_chs, mid_chs, dw_kernel_size, stride=stride, dilation=dilation, groups=groups,
                                  padding=pad_type, num_experts=num_experts)
        self.bn2 = norm_layer(mid_chs)
        self.act2 = act_layer(inplace=True)
        self.se = se_layer(mid_chs, act_layer=act_layer) if se_layer else nn.Identity()
        self.conv_pwl = CondConv2d(mid_chs, out_chs, pw_kernel_size, padding=pad_type, num_experts=num_experts)
        self.bn3 = norm_layer(out_chs)
        self.routing_fn = nn.Linear(in_chs, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        routing_weights = torch.sigmoid(self.routing_fn(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        x = self.act1(self.bn1(self.conv_pw(x, routing_weights)))
        x = self.act2(self.bn2(self.conv_dw(x, routing_weights)))
        x = self.se(x)
        x = self.bn3(self.conv_pwl(x, routing_weights))
        if self.has_skip:
            x = x + shortcut
        return x
