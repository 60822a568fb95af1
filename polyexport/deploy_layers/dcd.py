"""DCD deploy form: the dynamic part as small batched MatMuls, no per-sample kernels.

"decomposed": out = P·((diag(s2)·Φ(x) + I)·z + t2) + Λ(x) ⊙ (W0 * x), where z = q'(x) is q with bn1
folded, and bn2 (a per-row affine of Φ·z) is folded into the rows of fc_phi (scale) and a constant
bias carried through p; the "+ z" shortcut becomes fc_phi's bias vec(I). Every conv weight is a
constant, every reshape keeps the batch as -1, so one graph serves any batch and TensorRT.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..convert import Form, register_layer
from ..layers.dcd import DCD_TYPES, Hsigmoid, _DCDBase
from .conv_bn import bn_scale_shift, fuse_conv_bn

FORMS = ("decomposed",)


def adaptive_pool_matrix(h: int, w: int, oh: int, ow: int) -> torch.Tensor:
    """(h·w, oh·ow) matrix M with x.flatten(2) @ M == adaptive_avg_pool2d(x, (oh, ow)).flatten(2).

    Uses PyTorch's bins [⌊i·h/oh⌋, ⌈(i+1)·h/oh⌉), so it is exact for sizes that do not divide
    (where ONNX AvgPool cannot express the overlapping bins).
    """
    def bins(n: int, o: int) -> np.ndarray:
        m = np.zeros((n, o))
        for i in range(o):
            a, b = (i * n) // o, -((-(i + 1) * n) // o)
            m[a:b, i] = 1.0 / (b - a)
        return m

    return torch.from_numpy(np.kron(bins(h, oh), bins(w, ow))).float()


def adaptive_avg_pool(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(B, C, oh·ow) pooled features, exported as ReduceMean (1×1) or one MatMul with a constant."""
    oh, ow = (size, size) if isinstance(size, int) else size
    if (oh, ow) == (1, 1):
        return x.mean((2, 3)).unsqueeze(2)
    h, w = int(x.shape[2]), int(x.shape[3])  # spatial sizes are static in the graph; batch is not
    return torch.matmul(x.flatten(2), adaptive_pool_matrix(h, w, oh, ow).to(x.dtype))


class DCDDecomposed(nn.Module):
    """Static conv scaled per channel + (Φ'·z) through p; see the module docstring."""

    def __init__(self, ref: _DCDBase) -> None:
        super().__init__()
        conv, q, p = ref.parts()
        self.dim, self.mul = ref.dim, ref.mul
        self.pool = ref.avg_pool.output_size
        self.conv = copy.deepcopy(conv)
        self.q = fuse_conv_bn(q, ref.bn1)
        self.fc = copy.deepcopy(ref.fc)
        self.fc_scale = copy.deepcopy(ref.fc_scale)
        self.hs = Hsigmoid()
        s2, t2 = bn_scale_shift(ref.bn2)
        w_phi = ref.fc_phi.weight.detach().double() * s2.repeat_interleave(self.dim)[:, None]
        self.fc_phi = nn.Linear(w_phi.shape[1], self.dim**2, bias=True)
        self.p = nn.Conv2d(self.dim, p.out_channels, 1, bias=True)
        with torch.no_grad():
            self.fc_phi.weight.copy_(w_phi)
            self.fc_phi.bias.copy_(torch.eye(self.dim).flatten())
            self.p.weight.copy_(p.weight)
            self.p.bias.copy_(p.weight.detach().double().flatten(1) @ t2)  # p(t2), a constant per channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(adaptive_avg_pool(x, self.pool).flatten(1))
        phi = self.fc_phi(y).reshape(-1, self.dim, self.dim)
        scale = self.hs(self.fc_scale(y)).unsqueeze(2).unsqueeze(3)
        z = self.q(x)
        m = torch.matmul(phi, z.flatten(2)).reshape(z.shape)
        return self.p(m) + scale * self.conv(x)

    def fuse_bn(self, bn: nn.BatchNorm2d) -> nn.Module:
        """bn(out): scale W0 and P per output channel (Λ ⊙ commutes with it), shift p's bias."""
        s, t = bn_scale_shift(bn)
        new = copy.deepcopy(self)
        with torch.no_grad():
            new.conv.weight.copy_(self.conv.weight.double() * s[:, None, None, None])
            new.p.weight.copy_(self.p.weight.double() * s[:, None, None, None])
            new.p.bias.copy_(self.p.bias.double() * s + t)
        return new


def to_deploy(ref: _DCDBase, form: str = "decomposed") -> nn.Module:
    """The deploy form of a trained (eval-mode) DCD layer."""
    if form != "decomposed":
        raise ValueError(f"unknown DCD form '{form}'; forms: {', '.join(FORMS)}")
    return DCDDecomposed(ref.eval()).eval()


for _t in DCD_TYPES:
    register_layer(
        _t,
        forms=[Form("decomposed", to_deploy, dynamic_batch=True, constant_weights=True,
                    note="static conv ⊙ channel scale + batched dim×dim MatMul; BN1d/BN2d folded")],
        prefer={"*": ["decomposed"]},
    )
