"""DO-Conv (Cao et al., "DO-Conv: Depthwise Over-parameterized Convolutional Layer", IEEE TIP 2022).

Official code: yangyanli/DO-Conv, `do_conv_pytorch.py` (and `do_conv_pytorch_1_10.py`, the same class for newer
PyTorch), class `DOConv2d`. Training learns a depthwise kernel D and a conventional kernel W; every forward
composes them into one ordinary conv kernel DoW and runs F.conv2d with it, so at inference DO-Conv *is* a conv
with that kernel. What the official forward does, which this module reproduces (and the deploy forms rely on):
  - kernel M×N (`_pair(kernel_size)`), `D_mul` defaults to M·N; for M·N == 1 it is forced to 1 and there is no D;
  - parameters: `W` (out, in/groups, D_mul); for M·N > 1 also `D` (in, M·N, D_mul), initialised to zeros, and
    `d_diag` (in, M·N, D_mul): an identity per input channel (zero columns past M·N, all zeros if D_mul < M·N),
    an nn.Parameter with requires_grad=False, so it is in the state_dict; `bias` (out) or None;
  - DoW = reshape(einsum('ims,ois->oim', D + d_diag, reshape(W, (out/groups, in, D_mul))), (out, in/groups, M, N)).
    Both reshapes reinterpret memory: with groups > 1, output channel o's kernel on its group's input i uses
    D of input channel (o mod groups)·(in/groups) + i, not the channel it multiplies (the same one only for
    groups 1 and for depthwise with out == in); that is what the official layer computes, so it is kept;
  - padding_mode 'zeros': F.conv2d(x, DoW, bias, stride, padding, dilation, groups). Any other mode pads with
    F.pad(x, (ph, ph, pw, pw), mode) first, i.e. *width* by ph and *height* by pw (F.pad's order is left, right,
    top, bottom): the official code swaps the axes when ph != pw, and so does this module.
The constructor, attribute names and state_dict keys are the official ones, so an official checkpoint loads
unchanged. We refuse at construction what the official layer cannot run (a string padding with a padding mode
other than zeros, D_mul < 1) instead of failing later in forward.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pair(x: int | Iterable[int] | str) -> tuple[int, int] | str:
    """The official `_pair`: an iterable (a string too) is kept as it is, a number is repeated."""
    if isinstance(x, str):
        return x
    if isinstance(x, Iterable):
        return tuple(x)  # type: ignore[return-value]
    return (x, x)


def composed_kernel(W: torch.Tensor, D: torch.Tensor | None, d_diag: torch.Tensor | None, out_channels: int,
                    in_channels: int, groups: int, kernel_size: tuple[int, int]) -> torch.Tensor:
    """DoW (out, in/groups, M, N) from the trained tensors, as the official forward composes it (in their dtype)."""
    m, n = kernel_size
    shape = (out_channels, in_channels // groups, m, n)
    if D is None:  # M·N == 1: W is the kernel
        return W.reshape(shape)
    d_mul = W.shape[-1]
    w = W.reshape(out_channels // groups, in_channels, d_mul)
    return torch.einsum("ims,ois->oim", D + d_diag, w).reshape(shape)


class DOConv2d(nn.Module):
    """A conv whose kernel is composed from a depthwise kernel D and a conventional kernel W at every forward."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], D_mul: int | None = None,  # noqa: N803 - official name
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros"):
        super().__init__()
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, but got padding_mode='{padding_mode}'")
        if isinstance(padding, str):  # F.conv2d's own strings; the official layer passes them through
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be a number, a pair, 'same' or 'valid', got {padding!r}")
            if padding_mode != "zeros":
                raise ValueError(f"a string padding ({padding!r}) needs padding_mode='zeros': the official layer pads "
                                 "other modes by F.pad with numbers")
            if padding == "same" and _pair(stride) != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions (F.conv2d refuses it)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.padding_mode = groups, padding_mode
        if not isinstance(self.padding, str):
            self._padding_repeated_twice = tuple(x for x in self.padding for _ in range(2))  # the official (ph, ph, pw, pw)
        m, n = self.kernel_size
        self.D_mul = m * n if D_mul is None or m * n <= 1 else D_mul
        if self.D_mul < 1:
            raise ValueError(f"D_mul must be >= 1 (the paper uses D_mul >= M*N = {m * n}), got {D_mul}")
        self.W = nn.Parameter(torch.empty(out_channels, in_channels // groups, self.D_mul))
        init.kaiming_uniform_(self.W, a=math.sqrt(5))
        if m * n > 1:
            self.D = nn.Parameter(torch.zeros(in_channels, m * n, self.D_mul))
            eye = torch.eye(m * n).reshape(1, m * n, m * n)
            diag = eye.repeat(in_channels, 1, self.D_mul // (m * n))
            rest = torch.zeros(in_channels, m * n, self.D_mul % (m * n))
            self.d_diag = nn.Parameter(torch.cat([diag, rest], dim=2), requires_grad=False)
        else:
            self.register_parameter("D", None)
            self.register_parameter("d_diag", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
            bound = 1 / math.sqrt(self.W[0].numel())  # the official fan-in of W: (in/groups)·D_mul
            init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)

    def kernel(self) -> torch.Tensor:
        """DoW: the ordinary conv kernel (out, in/groups, M, N) this layer applies."""
        return composed_kernel(self.W, self.D, self.d_diag, self.out_channels, self.in_channels, self.groups,
                               self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.kernel()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + f", D_mul={self.D_mul}"
