"""Node names and module names: which PyTorch module an ONNX node came from, and the nodes of a module.

The TorchScript exporter names a node of module `a.b` "/a/a.b/<Op>…" (scopes). Keeping a module in fp32,
naming the module behind a runtime's error and the module a TensorRT lint finding belongs to all read
the same convention, here once. Torch-free.
"""
from __future__ import annotations

from typing import Iterable


def scope_prefixes(module: str) -> tuple[str, ...]:
    """The node-name prefixes of module `a.b`'s nodes: in the model's graph, and in the diagnostic graph
    (explain.py), where the model sits under the attribute `model`."""
    parts = module.split(".")
    own = "/" + "/".join(".".join(parts[: i + 1]) for i in range(len(parts))) + "/"
    return own, "/model" + own


def nodes_of(node_names: Iterable[str], modules: Iterable[str]) -> list[str]:
    """The names of the nodes that belong to any of `modules`."""
    prefixes = tuple(p for m in modules for p in scope_prefixes(m))
    return [n for n in node_names if prefixes and n.startswith(prefixes)]


def module_of_node(node: str) -> str | None:
    """The PyTorch module a TorchScript-exported node belongs to: its name's last scope ("/a/a.b/Op" -> "a.b")."""
    parts = node.strip("/").split("/")
    return parts[-2] if node.startswith("/") and len(parts) >= 2 else None
