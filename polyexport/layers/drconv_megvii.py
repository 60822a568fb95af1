"""Dynamic Region-Aware Convolution as its authors wrote it (megvii-research/DRConv, CVPR 2021).

Why a second DRConv: `layers/drconv.py` follows shallowtoil/DRConv-PyTorch (`DRConv2d`), the most
copied *unofficial* version. The authors' own code, with the paper's model (DRConv ShuffleNetV2-0.5×,
`zoo:dr_shufflenetv2_0_5x`), is a different layer with different weights:

- kernels: a learned **basis bank** `weight` (out·in·k·k, num_W). `routing_fc` (Linear in →
  groups_num·num_W) on the spatial mean of the input gives, per sample and region g, num_W
  coefficients a[g] = 2·sigmoid(·)/num_W; region g's kernel is Σ_w a[g, w]·bank[:, w]. (shallowtoil
  generates the m kernels with a pooled 1×1 conv → sigmoid → grouped 1×1 conv and has no bank.)
- regions: the guide is **outside the layer**. The caller passes `mask` (n, h, w), the argmax of a
  softmax over a `masknet` 1×1 conv, and `Alpha`, that softmax (n, groups_num, h, w); in the
  ShuffleNetV2 unit one mask/Alpha pair is shared by the unit's two DRConvs, the second running at
  half the mask's resolution in strided units: there the layer resizes mask and Alpha with
  F.interpolate (mode 'nearest'). (shallowtoil computes its own guide with a k×k conv inside.)
- the per-pixel selection is a CUDA op (`Deformable_MatMul3`): out[n, o, p] = Σ_c x[n, c, p]·
  K[n, o, c, mask[n, p]], x being the input (1×1, stride 1) or its im2col (F.unfold). Its CPU
  fallback upstream returns zeros. Here `deformable_matmul` is the same op in PyTorch with the CUDA
  kernel's backward (`DeformableMatMul`), so the layer trains and runs anywhere.
- the unused `groups` argument is kept (stored, ignored) as upstream.

State-dict compatible with upstream (`weight`, `bias`, `routing_fc.weight`, `routing_fc.bias`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair


class DeformableMatMul(torch.autograd.Function):
    """out[n, o, p] = Σ_c x[n, c, p]·w[n, o, c, mask[n, p]], with the backward of upstream's CUDA kernel.

    x: (n, C, h, w); w: (n, O, C, G) per-sample kernels of the G regions; mask: (n, h, w), integer
    region indices (any dtype; upstream casts it to x's dtype and truncates); alpha: (n, G, h, w) or None.
    Backward, as Deformable_MatMul_cuda.cu computes it:
      grad_x[n, c, p]     = Σ_o g[n, o, p]·w[n, o, c, mask[n, p]]           (the selected kernel only)
      grad_w[n, o, c, j]  = Σ_p [mask[n, p] = j]·g[n, o, p]·x[n, c, p]     (use_alpha = False)
                          = Σ_p alpha[n, j, p]·g[n, o, p]·x[n, c, p]        (use_alpha = True)
      grad_alpha[n, j, p] = beta·Σ_o g[n, o, p]·Σ_c w[n, o, c, j]·x[n, c, p] (straight-through: every
                            region's candidate output, as if the output were Σ_j alpha_j·candidate_j)
    The mask gets no gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor | None,
                use_alpha: bool = False, beta: float = 1.0) -> torch.Tensor:
        n, c, h, wd = x.shape
        idx = mask.to(torch.long).reshape(n, h * wd)  # upstream: int(float(mask)), i.e. truncation
        ctx.save_for_backward(x, w, idx, alpha)
        ctx.use_alpha, ctx.beta = bool(use_alpha), float(beta)
        return DeformableMatMul._apply(x, w, idx)

    @staticmethod
    def _apply(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The forward: gather each pixel's kernel, then one multiply-add per (o, c, pixel), as the CUDA kernel
        (so FLOP counters see the layer's true cost; the gathered kernels take n·P·O·C floats of memory)."""
        n, c, h, wd = x.shape
        per_pixel = w.permute(0, 3, 1, 2)[torch.arange(n, device=x.device).unsqueeze(1), idx]  # (n, P, O, C)
        out = torch.einsum("npoc,ncp->nop", per_pixel, x.reshape(n, c, h * wd))
        return out.reshape(n, -1, h, wd)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, w, idx, alpha = ctx.saved_tensors
        n, c, h, wd = x.shape
        groups = w.shape[3]
        g = grad_out.reshape(n, -1, h * wd)
        xf = x.reshape(n, c, h * wd)
        grad_x = grad_w = grad_alpha = None
        onehot = F.one_hot(idx, groups).to(x.dtype).transpose(1, 2)  # (n, G, P)
        if ctx.needs_input_grad[0]:
            per_pixel = w.permute(0, 3, 1, 2)[torch.arange(n, device=x.device).unsqueeze(1), idx]  # (n, P, O, C)
            grad_x = torch.einsum("nop,npoc->ncp", g, per_pixel).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            if ctx.use_alpha:
                if alpha is None:
                    raise ValueError("use_alpha=True needs Alpha")
                weights = alpha.reshape(n, groups, h * wd).to(x.dtype)
            else:
                weights = onehot
            grad_w = torch.einsum("nop,njp,ncp->nocj", g, weights, xf)
        if alpha is not None and ctx.needs_input_grad[3]:
            grad_alpha = (ctx.beta * torch.einsum("nop,nocj,ncp->njp", g, w, xf)).reshape(alpha.shape).to(alpha.dtype)
        return grad_x, grad_w, None, grad_alpha, None, None


def deformable_matmul(x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor | None = None,
                      use_alpha: bool = False, beta: float = 1.0) -> torch.Tensor:
    """Upstream's `deformable_matmul3(mat0, mat1, mask, Alpha, use_alpha, beta)` in PyTorch (any device)."""
    return DeformableMatMul.apply(x, w, mask, alpha, use_alpha, beta)


class DRConv(nn.Module):
    """The authors' DRConv: a basis bank mixed per sample and region, applied per pixel by an external mask."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, groups: int = 1,
                 bias: bool = True, dilation=1, groups_num: int = 8, num_W: int = 8) -> None:  # noqa: N803 - upstream
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.groups = groups  # stored and unused, as upstream
        self.dilation = _pair(dilation)
        self.groups_num = groups_num
        self.num_W = num_W  # noqa: N815 - upstream name
        self.use_unflod = not (self.kernel_size[0] == 1 and self.stride[0] == 1 and self.padding[0] == 0
                               and self.dilation[0] == 1)  # upstream's name and test (first axis only)
        self.weight = nn.Parameter(torch.empty(out_channels * in_channels * self.kernel_size[0] * self.kernel_size[1], num_W))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.routing_fc = nn.Linear(in_channels, groups_num * num_W)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        n = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = math.sqrt(6 / n)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.zero_()
            self.routing_fc.weight.normal_(0, 0.01)
            if self.routing_fc.bias is not None:
                self.routing_fc.bias.zero_()

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
             f", groups_num={self.groups_num}, num_W={self.num_W}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def kernels(self, inputs: torch.Tensor) -> torch.Tensor:
        """(n, out, in·kh·kw, groups_num): each sample's kernel per region, as upstream lays them out."""
        n = inputs.shape[0]
        x_se = inputs.reshape(n, inputs.shape[1], -1).mean(dim=-1)
        x_se = 2.0 * torch.sigmoid(self.routing_fc(x_se)) / self.num_W
        weight = F.linear(x_se.reshape(-1, self.num_W), self.weight)
        kk = self.kernel_size[0] * self.kernel_size[1]
        return weight.reshape(n, self.groups_num, self.out_channels, self.in_channels * kk).permute(0, 2, 3, 1)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, Alpha: torch.Tensor | None = None,  # noqa: N803
                use_alpha: bool = False, beta: float = 1.0) -> torch.Tensor:
        height, width = inputs.shape[-2:]
        self.out_height, self.out_width = self.output_size(height, width)  # upstream keeps them on the module
        weight = self.kernels(inputs)
        if self.use_unflod:
            inputs = F.unfold(inputs, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
            inputs = inputs.reshape(inputs.shape[0], inputs.shape[1], self.out_height, self.out_width)
        if mask.shape[-2:] != torch.Size([self.out_height, self.out_width]):
            mask = F.interpolate(mask.float().unsqueeze(1), (self.out_height, self.out_width)).squeeze(1)
            if Alpha is not None:
                Alpha = F.interpolate(Alpha, (self.out_height, self.out_width))
        out = deformable_matmul(inputs, weight, mask, Alpha, use_alpha, beta)
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1)
        return out
