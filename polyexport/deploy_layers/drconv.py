"""DRConv deploy forms: candidates without a batch-folded grouped conv, then a one-hot selection.

The upstream layer convolves each sample with its own generated kernels by folding the batch into
the channels of one grouped conv: the exported graph has the batch in its `group` attribute and a
conv whose weights are computed at run time. Three exact forms:

- "unfold": im2col by k² static shifted slices, then one batched MatMul with the generated kernels
  (B, m·out, in·k²) @ (B, in·k², L). Dynamic batch; every Conv weight is a constant (the
  run-time kernels only feed a MatMul). ≈ m × the FLOPs of the plain conv. The fastest measured.
- "basis": the generated kernel is affine in the m² sigmoid features s(x) (k×k each), so each
  candidate is a sum over shifts (u, v) and features j of s[j, u, v] · Y_j shifted, where
  Y = a constant 1×1 conv of x (the generator's weights, plus one channel per candidate for its
  bias). No run-time weights anywhere. ≈ m(m+1)/k² × the conv FLOPs in the 1×1 conv, plus
  k²·m(m+1)·out·L multiply-adds, memory-bound: ≈ 5-10× slower than "unfold" as measured. For a
  runtime that accepts no run-time operand of any MatMul either.
- "grouped_conv": the upstream batch-folded grouped conv, kept for comparison: static batch,
  run-time conv weights.
Selection (all forms): ArgMax over the guide (first index on ties, as torch.argmax and ONNX ArgMax
with select_last_index=0) → Equal with a constant range → Cast → Mul → ReduceSum.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..convert import Form, register_layer
from ..layers.drconv import DRConv2d
from .conv_bn import ScaleThenBias
from .dcd import adaptive_avg_pool

_CONV_KWARGS = {"stride", "padding", "dilation"}


def _geometry(ref: DRConv2d) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    kw = ref.kwargs
    return _pair(kw.get("stride", 1)), _pair(kw.get("padding", 0)), _pair(kw.get("dilation", 1))


def exact_for(ref: DRConv2d) -> str | None:
    """Forms rebuild the shifts from integer stride/padding/dilation; anything else is declined."""
    extra = set(ref.kwargs) - _CONV_KWARGS
    if extra:
        return f"conv arguments {sorted(extra)} are not supported"
    if isinstance(ref.kwargs.get("padding", 0), str):
        return "string padding ('same'/'valid') is not supported"
    return None


def shifted(x: torch.Tensor, k: int, stride: tuple[int, int], padding: tuple[int, int],
            dilation: tuple[int, int]) -> list[torch.Tensor]:
    """The k² views x_pad[..., u·d + i·s, v·d + j·s] (row-major over u, v): a conv's taps as slices."""
    h, w = int(x.shape[-2]), int(x.shape[-1])  # static in the graph; the batch stays dynamic
    ho = (h + 2 * padding[0] - dilation[0] * (k - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (k - 1) - 1) // stride[1] + 1
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    return [xp[..., u * dilation[0]: u * dilation[0] + (ho - 1) * stride[0] + 1: stride[0],
               v * dilation[1]: v * dilation[1] + (wo - 1) * stride[1] + 1: stride[1]]
            for u in range(k) for v in range(k)]


class _DRConvDeploy(ScaleThenBias, nn.Module):
    """Shared parts: the guide, the sigmoid features, the one-hot selection and a folded BN."""

    def __init__(self, ref: DRConv2d) -> None:
        super().__init__()
        pool, conv1, _, conv2 = ref.conv_kernel
        self.m = ref.region_num
        self.k = ref.conv_guide.kernel_size[0]
        self.out_channels = conv2.out_channels // (self.m * conv1.in_channels)
        self.in_channels = conv1.in_channels
        self.stride, self.padding, self.dilation = _geometry(ref)
        self.guide = copy.deepcopy(ref.conv_guide)
        self.conv1 = copy.deepcopy(conv1)
        self.register_buffer("regions", torch.arange(self.m).reshape(1, self.m, 1, 1), persistent=False)
        self.register_buffer("bias", None)  # set by fuse_bn: added after the selection

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """s(x): (B, m², k, k) sigmoid features that generate the kernels."""
        s = torch.sigmoid(self.conv1(adaptive_avg_pool(x, self.k).unflatten(2, (self.k, self.k))))
        return s

    def candidates(self, x: torch.Tensor) -> torch.Tensor:  # (B, m, out, Ho, Wo)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cand = self.candidates(x)
        idx = self.guide(x).argmax(dim=1, keepdim=True)
        onehot = (idx == self.regions).to(cand.dtype).unsqueeze(2)
        out = (cand * onehot).sum(1)
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)

    def _scale_out(self, s: torch.Tensor) -> None:
        """Scale every candidate's output channel o by s[o] (in place, on a copy)."""
        raise NotImplementedError


class DRConvUnfold(_DRConvDeploy):
    """Generated kernels × im2col columns as one batched MatMul (see module docstring)."""

    def __init__(self, ref: DRConv2d) -> None:
        super().__init__(ref)
        self.conv2 = copy.deepcopy(ref.conv_kernel[3])

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m·out, in·k²): row (g, o), column (c, u, v), as upstream's kernel.view orders them."""
        return self.conv2(self.features(x)).reshape(-1, self.m * self.out_channels, self.in_channels * self.k * self.k)

    def candidates(self, x: torch.Tensor) -> torch.Tensor:
        taps = shifted(x, self.k, self.stride, self.padding, self.dilation)
        ho, wo = taps[0].shape[-2:]
        cols = torch.stack(taps, 2).flatten(1, 2).flatten(2)  # (B, in·k², L)
        return torch.matmul(self.kernels(x), cols).reshape(-1, self.m, self.out_channels, ho, wo)

    def _scale_out(self, s: torch.Tensor) -> None:
        rows = s.repeat_interleave(self.in_channels).repeat(self.m)  # conv2 rows are (g, o, c)
        with torch.no_grad():
            self.conv2.weight.copy_(self.conv2.weight.double() * rows[:, None, None, None])
            self.conv2.bias.copy_(self.conv2.bias.double() * rows)


class DRConvGroupedConv(DRConvUnfold):
    """Upstream's batch-folded grouped conv: the batch is baked into the graph's `group`."""

    def candidates(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kernel = self.conv2(self.features(x)).reshape(-1, c, self.k, self.k)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernel, None, self.stride, self.padding, self.dilation, groups=b)
        return out.reshape(b, self.m, self.out_channels, out.shape[2], out.shape[3])


class DRConvBasis(_DRConvDeploy):
    """Candidates from a constant 1×1 conv and per-sample scalar weights on its shifts."""

    def __init__(self, ref: DRConv2d) -> None:
        super().__init__(ref)
        conv2 = ref.conv_kernel[3]
        m, o, c = self.m, self.out_channels, self.in_channels
        w2 = conv2.weight.detach().reshape(m, o, c, m)  # [g, o, c, j]: weight of s[g·m + j]
        b2 = conv2.bias.detach().reshape(m, o, c, 1)  # the bias acts as an extra feature j = m, s ≡ 1
        wb = torch.cat([w2, b2], 3).permute(0, 3, 1, 2)  # (g, j, o, c)
        self.basis = nn.Conv2d(c, m * (m + 1) * o, 1, bias=False)
        with torch.no_grad():
            self.basis.weight.copy_(wb.reshape(-1, c, 1, 1))

    def candidates(self, x: torch.Tensor) -> torch.Tensor:
        m, k = self.m, self.k
        s = self.features(x).reshape(-1, m, m, k * k)
        coef = F.pad(s, (0, 0, 0, 1), value=1.0).unsqueeze(4).unsqueeze(5).unsqueeze(6)  # (B, g, j, uv, 1, 1, 1)
        taps = shifted(self.basis(x), k, self.stride, self.padding, self.dilation)
        acc = None
        for uv, y in enumerate(taps):
            y = y.unflatten(1, (m, m + 1, self.out_channels))  # (B, g, j, o, Ho, Wo)
            term = (y * coef[:, :, :, uv]).sum(2)
            acc = term if acc is None else acc + term
        return acc

    def _scale_out(self, s: torch.Tensor) -> None:
        rows = s.repeat(self.m * (self.m + 1))  # basis rows are (g, j, o)
        with torch.no_grad():
            self.basis.weight.copy_(self.basis.weight.double() * rows[:, None, None, None])


register_layer(
    DRConv2d,
    forms=[
        Form("unfold", DRConvUnfold, dynamic_batch=True, constant_weights=True, exact_for=exact_for,
             note="im2col slices + batched MatMul with the generated kernels; one-hot selection"),
        Form("basis", DRConvBasis, dynamic_batch=True, constant_weights=True, exact_for=exact_for,
             note="constant 1×1 basis conv, per-sample scalars on its k² shifts; no run-time weights at all"),
        Form("grouped_conv", DRConvGroupedConv, dynamic_batch=False, constant_weights=False,
             exact_for=exact_for, note="upstream batch-folded grouped conv: static batch, run-time conv weights"),
    ],
    # measured (benchmarks/layer_cases/drconv.py, indicative): unfold ≈ grouped_conv ≫ basis on ORT and OpenVINO;
    # unfold feeds TensorRT only a MatMul with run-time operands (its parser accepts those), so it leads there too
    prefer={"*": ["unfold", "basis"]},
)
