"""Dynamic Convolution (Chen et al., CVPR 2020), as kaijieshi7/Dynamic-convolution-Pytorch writes it.

Class, argument, attribute and parameter names follow that repo's `dynamic_conv.py` (HEAD), so its
state_dicts load unchanged: `attention.fc1.weight`, `attention.fc2.{weight,bias}`, `weight`
(K, out, in/groups, k, k), `bias` (K, out). The per-sample kernel is softmax(z / T) · bank; the
batch is folded into the groups of one conv, exactly as upstream does.

One deliberate generalisation: upstream views the aggregated weight with `in_planes // groups`,
so groups > 1 works there too (an older revision used `in_planes` and failed for groups > 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class attention2d(nn.Module):  # noqa: N801 - upstream's name, kept so checkpoints and adapters match
    """GAP → 1×1 conv (no bias) → ReLU → 1×1 conv (bias) → softmax(z / temperature) over the K kernels."""

    def __init__(self, in_planes: int, ratios: float, K: int, temperature: int, init_weight: bool = True):
        super().__init__()
        assert temperature % 3 == 1, "upstream anneals T by steps of 3 down to 1"
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden_planes = int(in_planes * ratios) + 1 if in_planes != 3 else K
        self.fc1 = nn.Conv2d(in_planes, hidden_planes, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden_planes, K, 1, bias=True)
        self.temperature = temperature
        if init_weight:
            self._initialize_weights()

    def _initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def updata_temperature(self) -> None:  # sic: upstream's spelling, called by Dynamic_conv2d
        """Anneal T by 3 (upstream: 34 → 31 → … → 1), once per epoch during training."""
        if self.temperature != 1:
            self.temperature -= 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(x)
        x = F.relu(self.fc1(x))
        x = self.fc2(x).view(x.size(0), -1)
        return F.softmax(x / self.temperature, 1)


class Dynamic_conv2d(nn.Module):  # noqa: N801 - upstream's name
    """K kernels mixed per sample by `attention`; computed as one conv with the batch folded into groups."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, ratio: float = 0.25, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = True, K: int = 4,
                 temperature: int = 34, init_weight: bool = True):
        super().__init__()
        assert in_planes % groups == 0
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.K = K
        self.attention = attention2d(in_planes, ratio, K, temperature)
        self.weight = nn.Parameter(torch.randn(K, out_planes, in_planes // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(K, out_planes)) if bias else None
        if init_weight:
            for i in range(K):
                nn.init.kaiming_uniform_(self.weight[i])

    def update_temperature(self) -> None:
        self.attention.updata_temperature()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        softmax_attention = self.attention(x)
        batch_size, _, height, width = x.size()
        x = x.view(1, -1, height, width)
        weight = torch.mm(softmax_attention, self.weight.view(self.K, -1)).view(
            batch_size * self.out_planes, self.in_planes // self.groups, self.kernel_size, self.kernel_size)
        bias = torch.mm(softmax_attention, self.bias).view(-1) if self.bias is not None else None
        out = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups * batch_size)
        return out.view(batch_size, self.out_planes, out.size(-2), out.size(-1))
