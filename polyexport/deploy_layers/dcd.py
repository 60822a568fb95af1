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
import torch.nn.functional as F
from torch import nn

from ..convert import Form, register_layer
from ..layers.dcd import DCD_TYPES, Hsigmoid, _DCDBase
from .conv_bn import bn_scale_shift, fuse_conv_bn


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


def aggregated_exact_for(ref: _DCDBase) -> str | None:
    """The aggregated form multiplies per-sample (out × in) matrices: a 1×1 static conv only (q is 1×1 always)."""
    conv = ref.parts()[0]
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0) or conv.groups != 1:
        return f"'aggregated' needs a 1×1 static conv without padding or groups (this one: {conv.kernel_size[0]}×{conv.kernel_size[1]})"
    return None


class DCDAggregated(nn.Module):
    """W(x) = Λ(x)⊙W0 + P·Φ'(x)·Q' built per sample, applied to x as one batched MatMul: the conv's FLOPs.

    With z = Q'x + c (q, bn1 folded) and Φ' = diag(s2)·Φ + I (bn2 and the shortcut folded, as "decomposed"):
        out = p(Φ'z + t2) + Λ⊙(W0 x) = [Λ⊙W0 + PΦ'Q'] x + P(Φ'c) + (P t2 + p's bias).
    Φ' and Φ'c are affine in the squeezed vector y, so one Gemm from y gives Λ's logits, Φ' and Φ'c; the
    kernel's low-rank part is P(Φ'Q') or (PΦ')Q', whichever multiplies less. Both hard sigmoids,
    relu6(v + 3)/3 = 2·hardsigmoid(v), become ONNX HardSigmoid with their factor 2 folded into the next
    linear map (the heads' weights; W0). No Conv at all: every weight is a constant or a MatMul operand, one
    graph for any batch. Costs the conv's multiply-adds (the decomposed form adds q, Φ and p at every pixel)
    plus about B·dim·(out·in + dim·min(in, out)) for the kernels.
    """

    @torch.no_grad()
    def __init__(self, ref: _DCDBase) -> None:
        super().__init__()
        why = aggregated_exact_for(ref)
        if why:
            raise ValueError(why)
        conv, q, p = ref.parts()
        dim, cout, cin = ref.dim, conv.out_channels, conv.in_channels
        self.dim, self.out_channels, self.pool, self.stride = dim, cout, ref.avg_pool.output_size, conv.stride
        self.q_first = cin < cout  # P·(Φ'·Q') when the input is the narrower side, else (P·Φ')·Q'
        self.fc1 = copy.deepcopy(ref.fc[0])
        self.se = copy.deepcopy(ref.fc[1].fc[0])
        f64 = torch.float64
        qf = fuse_conv_bn(q, ref.bn1)
        q_w, c = qf.weight.detach().to(f64).flatten(1), qf.bias.detach().to(f64)  # (dim, in), (dim,)
        s2, t2 = bn_scale_shift(ref.bn2)
        w_phi = ref.fc_phi.weight.detach().to(f64) * s2.repeat_interleave(dim)[:, None]  # rows (i, j)
        b_phi = torch.eye(dim, dtype=f64).flatten()  # the "+ z" shortcut
        p_w = p.weight.detach().to(f64).flatten(1)  # (out, dim)
        p_b = p.bias.detach().to(f64) if p.bias is not None else torch.zeros(cout, dtype=f64)
        w_phic = torch.einsum("ijs,j->is", w_phi.reshape(dim, dim, -1), c)  # Φ'c from y: rows i
        head_w = torch.cat([ref.fc_scale.weight.detach().to(f64), w_phi, w_phic])
        head_b = torch.cat([torch.zeros(cout, dtype=f64), b_phi, c])  # Φ'c's constant part: I·c
        self.heads = nn.Linear(head_w.shape[1], head_w.shape[0])
        with torch.no_grad():
            self.heads.weight.copy_(2.0 * head_w)  # the SE gate's factor 2 (y = y1·2·hardsigmoid)
            self.heads.bias.copy_(head_b)
        dt = conv.weight.dtype
        self.register_buffer("w0", (2.0 * conv.weight.detach().to(f64).flatten(1)).to(dt))  # Λ's factor 2
        self.register_buffer("q_w", q_w.to(dt))
        self.register_buffer("p_w", p_w.to(dt))
        self.register_buffer("bias", (p_w @ t2 + p_b).to(dt).reshape(1, cout, 1))

    def kernel_and_bias(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's (out, in) kernel and (out, 1) bias."""
        y1 = self.fc1(adaptive_avg_pool(x, self.pool).flatten(1))
        y = y1 * F.hardsigmoid(self.se(y1))
        cout, dim = self.out_channels, self.dim
        logits, phi, phi_c = self.heads(y).split([cout, dim * dim, dim], dim=1)
        phi = phi.reshape(-1, dim, dim)
        low_rank = (torch.matmul(self.p_w, torch.matmul(phi, self.q_w)) if self.q_first
                    else torch.matmul(torch.matmul(self.p_w, phi), self.q_w))
        kernel = F.hardsigmoid(logits).unsqueeze(2) * self.w0 + low_rank  # (B, out, in)
        return kernel, torch.matmul(self.p_w, phi_c.unsqueeze(2)) + self.bias  # (B, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cout = self.out_channels
        kernel, bias = self.kernel_and_bias(x)
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        h, w = int(x.shape[2]), int(x.shape[3])  # static in the graph; the batch is not
        return (torch.matmul(kernel, x.flatten(2)) + bias).reshape(-1, cout, h, w)

    def fuse_bn(self, bn: nn.BatchNorm2d) -> nn.Module:
        """bn(out) = s·out + t: scale W0, P (both terms and the bias pass through it) and the constant bias; add t."""
        s, t = bn_scale_shift(bn)
        new = copy.deepcopy(self)
        with torch.no_grad():
            new.w0.copy_(self.w0.double() * s[:, None])
            new.p_w.copy_(self.p_w.double() * s[:, None])
            new.bias.copy_((self.bias.double().flatten() * s + t).reshape(self.bias.shape))
        return new


for _t in DCD_TYPES:
    register_layer(
        _t,
        forms=[Form("decomposed", DCDDecomposed, dynamic_batch=True, constant_weights=True,
                    note="static conv ⊙ channel scale + batched dim×dim MatMul; BN1d/BN2d folded"),
               Form("aggregated", DCDAggregated, dynamic_batch=True, constant_weights=True,
                    exact_for=aggregated_exact_for,
                    note="per-sample 1×1 kernel Λ⊙W0 + PΦ'Q' from one Gemm, applied by one batched MatMul; no Conv")],
        # measured on dcd_mobilenetv2 whole (1 thread, an early session whose table is not kept): ONNX Runtime aggregated
        # (no per-pixel channel scaling, which its blocked layout cannot fuse), OpenVINO decomposed. The newest fixed-form
        # columns of benchmarks/results/forms.md (2 threads): aggregated 0.73x decomposed on ONNX Runtime, 0.93x on
        # OpenVINO (within that run's noise); the automatic choice times both
        prefer={"*": ["aggregated", "decomposed"], "openvino": ["decomposed", "aggregated"]},
    )
