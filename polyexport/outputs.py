"""A model's outputs as the flat list of tensors every stage compares, in the order torch.onnx writes them."""
from __future__ import annotations

import torch


def flatten_outputs(out: object) -> list[torch.Tensor]:
    """Tensors of a model's output in the order torch.onnx writes them (tuple/list/dict order)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]
