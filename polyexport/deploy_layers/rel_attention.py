"""RelPosAttention deploy form: the relative position bias folded into one constant.

"folded_bias": the table gathered by the constant index and permuted, computed once from the trained
table into a (1, heads, N, N) constant; the graph keeps qkv, two MatMuls, Add, Softmax and proj, no
Gather of the table. Every reshape keeps the batch as -1: one graph for any batch; TensorRT-friendly.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..convert import Form, register_layer
from ..layers.rel_attention import RelPosAttention


class RelPosAttentionFolded(nn.Module):
    """RelPosAttention with `bias` a constant buffer (the gathered table)."""

    def __init__(self, ref: RelPosAttention) -> None:
        super().__init__()
        self.num_heads, self.dim_head, self.scale = ref.num_heads, ref.dim_head, ref.scale
        self.window_size = ref.rel_pos.window_size
        self.qkv = copy.deepcopy(ref.qkv)
        self.proj = copy.deepcopy(ref.proj)
        with torch.no_grad():
            self.register_buffer("bias", ref.rel_pos.get_bias().detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.window_size  # the reference accepts only this grid; static in the graph
        q, k, v = self.qkv(x).reshape(-1, self.num_heads, self.dim_head * 3, h * w).chunk(3, dim=2)
        attn = ((q * self.scale).transpose(-2, -1) @ k + self.bias).softmax(dim=-1)
        return self.proj((v @ attn.transpose(-2, -1)).reshape(-1, self.num_heads * self.dim_head, h, w))


register_layer(
    RelPosAttention,
    forms=[Form("folded_bias", RelPosAttentionFolded, dynamic_batch=True, constant_weights=True,
                note="relative position table gathered once into a constant (heads, N, N) bias")],
)
