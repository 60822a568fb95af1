"""Node names and module names: which PyTorch module an ONNX node came from, and the nodes of a module.

The TorchScript exporter names a node by the scopes of the modules *called* on the way to it, each scope by
its module's unqualified name (torch.onnx's `_unqualified_variable_name`: the dotted name from its last
non-numeric atom on), then the op: `layers.0.inner.conv` called as Sequential -> module -> module -> conv
gives "/layers/layers.0/inner/conv/Conv"; a ModuleList is not called, so `mid.blocks.1.conv` gives
"/mid/blocks.1/conv/Conv". A module's nodes are those whose scopes match the unqualified names of the
module's ancestors in order (skipping those never called) and end at the module's own. Keeping a module
in fp32, naming the module behind a runtime's error or a TensorRT finding all read this, here once.
Torch-free.
"""
from __future__ import annotations

from typing import Iterable

#: where explain.py's diagnostic graph puts the model (its wrapper's attribute)
DIAGNOSTIC_ROOT = "model"


def unqualified(name: str) -> str:
    """torch.onnx's scope name of module `name`: from its last non-numeric atom on ("a.seq.0" -> "seq.0")."""
    atoms = name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return name


def scopes_of_node(node: str) -> list[str]:
    """The scope names in a node's name, outermost first, without the op ("/a/a.0/b/Conv" -> ["a", "a.0", "b"])."""
    if not node.startswith("/"):
        return []
    return node.strip("/").split("/")[:-1]


def _chain(module: str) -> list[str]:
    """The unqualified names of `module` and each of its ancestors, outermost first."""
    atoms = module.split(".")
    return [unqualified(".".join(atoms[: i + 1])) for i in range(len(atoms))]


def _matched_depth(scopes: list[str], chain: list[str]) -> int | None:
    """How many scopes lead into the module of `chain` (a subsequence of it, ending at the module's own), or None."""
    j = 0
    for k, scope in enumerate(scopes):
        while j < len(chain) and chain[j] != scope:
            j += 1
        if j == len(chain):
            return None
        if j == len(chain) - 1:
            return k + 1
        j += 1
    return None


def belongs(node: str, module: str) -> bool:
    """Whether the node was exported from `module` (or a module inside it), in the model's graph or the diagnostic one."""
    scopes = scopes_of_node(node)
    chain = _chain(module)
    return _matched_depth(scopes, chain) is not None or _matched_depth(scopes, [DIAGNOSTIC_ROOT, *chain]) is not None


def nodes_of(node_names: Iterable[str], modules: Iterable[str]) -> list[str]:
    """The names of the nodes that belong to any of `modules`."""
    modules = list(modules)
    return [n for n in node_names if any(belongs(n, m) for m in modules)]


def scope_path(node_names: Iterable[str], module: str) -> str | None:
    """The scope prefix ("/a/a.0/b/") the module's nodes carry in this graph (TensorRT 10's layer wildcards), or None."""
    chain = _chain(module)
    for n in node_names:
        depth = _matched_depth(scopes_of_node(n), chain)
        if depth is not None:
            return "/" + "/".join(scopes_of_node(n)[:depth]) + "/"
    return None


def module_of_node(node: str, modules: Iterable[str] | None = None) -> str | None:
    """The PyTorch module a node came from: the innermost of `modules` (the model's module names) it belongs to;
    without them, its scope path ("a/a.0/b"), which names the module's place as far as the graph tells."""
    scopes = scopes_of_node(node)
    if not scopes:
        return None
    if modules is None:
        return "/".join(scopes)
    owners = [m for m in modules if m and belongs(node, m)]
    return max(owners, key=lambda m: m.count(".") + 1, default=None)
