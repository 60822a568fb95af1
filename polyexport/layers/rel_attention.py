"""Multi-head self-attention with a learned relative position bias (CoAtNet, Dai et al. 2021): reference.

Written as timm's `Attention2d` with `RelPosBias` (timm/models/maxxvit.py, timm/layers/pos_embed_rel.py),
NCHW, head-first qkv, parameter names kept (`qkv`, `rel_pos.relative_position_bias_table`, `proj`), so
a timm CoAtNet transformer block's `attn` state_dict loads unchanged. The bias is the table gathered by
a constant index over the (H·W)² token pairs: input-independent, and tied to one token grid.
"""
from __future__ import annotations

import torch
from torch import nn


def relative_position_index(size: tuple[int, int]) -> torch.Tensor:
    """(N, N) index into the (2h−1)(2w−1) table for every query/key pair, N = h·w (timm's order)."""
    h, w = size
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N, N, 2
    return (rel[..., 0] + h - 1) * (2 * w - 1) + (rel[..., 1] + w - 1)


class RelPosBias(nn.Module):
    """The learned table (timm's `RelPosBias`, no prefix tokens) and its gather: bias (1, heads, N, N)."""

    def __init__(self, window_size: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        n = self.window_size[0] * self.window_size[1]
        self.bias_shape = (n, n, num_heads)
        num_rel = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_rel, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size).view(-1), persistent=False)

    def get_bias(self) -> torch.Tensor:
        bias = self.relative_position_bias_table[self.relative_position_index].view(self.bias_shape)
        return bias.permute(2, 0, 1).unsqueeze(0).contiguous()

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return attn + self.get_bias()


class RelPosAttention(nn.Module):
    """Global attention over an (h, w) token grid, NCHW in and out; heads = dim_out // dim_head.

    expand_first (timm's default for CoAtNet): qkv already maps dim → dim_out, proj is dim_out → dim_out.
    """

    def __init__(self, dim: int, dim_out: int | None = None, dim_head: int = 32, bias: bool = True,
                 window_size: tuple[int, int] = (14, 14)) -> None:
        super().__init__()
        dim_out = dim_out or dim
        self.num_heads = dim_out // dim_head
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.qkv = nn.Conv2d(dim, dim_out * 3, 1, bias=bias)
        self.rel_pos = RelPosBias(window_size, self.num_heads)
        self.proj = nn.Conv2d(dim_out, dim_out, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if (h, w) != self.rel_pos.window_size:
            raise ValueError(f"RelPosAttention: token grid {(h, w)} != the bias table's {self.rel_pos.window_size}")
        q, k, v = self.qkv(x).view(b, self.num_heads, self.dim_head * 3, -1).chunk(3, dim=2)
        attn = self.rel_pos((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)
        return self.proj((v @ attn.transpose(-2, -1)).view(b, -1, h, w))
