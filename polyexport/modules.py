"""Module surgery that survives models written elsewhere.

Third-party code breaks naive surgery in known ways, each handled here once:
- `train()` overridden without returning self (mmdet's backbones), so `model = model.eval()` gives None;
- attributes read in `forward` that are not parameters, buffers or submodules (YOLOv5/Ultralytics set
  `f`, `i`, `type`, `np` on every layer and `_forward_once` reads them);
- hooks registered on a layer (feature taps that the forward or the caller relies on);
- one module reachable under several names (shared modules): every name must see the replacement;
- hooks and forwards that close over the original model (a tap writing into a dict the forward reads):
  a deep copy cuts them off from the copy's state, and doubles the weights' memory.
"""
from __future__ import annotations

import copy
import types

from torch import nn

#: what nn.Module.__init__ puts in every instance's __dict__: never carried from one module to another
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
#: hooks that see only a module's inputs and outputs, valid on any module computing the same function
_IO_HOOKS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
             "_forward_hooks_always_called")


#: the per-module containers a structural copy gives each copied module its own shallow copy of
_CONTAINERS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_backward_pre_hooks", "_backward_hooks",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
               *_IO_HOOKS)


def structural_copy(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module tree that shares its tensors and plain state.

    Every module is a new object with its own children, parameter, buffer and hook tables, so swapping
    a layer or registering a hook on the copy leaves the original as it was; the tensors themselves and
    plain attributes (dicts, lists, configs) are shared, so a hook or forward that closes over the
    original model's state still meets the copy's, and no weight is duplicated. Module references in
    plain attributes (one level: a module, or a list/tuple/dict of them) and methods bound to a module
    of the tree (YOLOv5's `m.forward = m.forward_fuse`) are moved over to the copies. The deploy forms
    build new tensors and never write into the ones they read (tests/test_zoo.py checks the original).
    """
    memo: dict[int, nn.Module] = {}

    def copy_tree(m: nn.Module) -> nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        new = memo[id(m)] = copy.copy(m)
        for key in _CONTAINERS:
            if key in vars(new):
                vars(new)[key] = copy.copy(vars(new)[key])
        for name, child in new._modules.items():
            if child is not None:
                new._modules[name] = copy_tree(child)
        return new

    root = copy_tree(model)
    for new in list(memo.values()):
        for key, value in list(vars(new).items()):
            if key not in _MODULE_INTERNALS:
                vars(new)[key] = _moved(value, memo)
    return root


def _moved(value: object, memo: dict[int, nn.Module]) -> object:
    """`value` with references to modules of the copied tree (and methods bound to them) pointing at the copies."""
    if isinstance(value, nn.Module):
        return memo.get(id(value), value)
    if isinstance(value, types.MethodType) and id(value.__self__) in memo:
        return types.MethodType(value.__func__, memo[id(value.__self__)])
    if type(value) in (list, tuple) and any(isinstance(v, nn.Module) for v in value):
        return type(value)(memo.get(id(v), v) if isinstance(v, nn.Module) else v for v in value)
    if type(value) is dict and any(isinstance(v, nn.Module) for v in value.values()):
        return {k: memo.get(id(v), v) if isinstance(v, nn.Module) else v for k, v in value.items()}
    return value


def set_eval(module: nn.Module) -> nn.Module:
    """`module` in eval mode; does not trust `eval()`'s return value (many codebases' `train()` returns None)."""
    module.eval()
    return module


def has_hooks(module: nn.Module) -> bool:
    """Whether anyone observes this module's inputs or outputs (then it must not be merged into another)."""
    return any(getattr(module, h, None) for h in ("_forward_pre_hooks", "_forward_hooks"))


def carry_over(old: nn.Module, new: nn.Module) -> list[str]:
    """Give `new` what the rest of the model may read from `old`: its plain attributes (not parameters,
    buffers, submodules, nor methods bound to `old`) and its input/output hooks. An attribute `new`
    already has is kept as `new`'s; their names are returned (a caller may report them)."""
    clashes = []
    for key, value in vars(old).items():
        if key in _MODULE_INTERNALS or getattr(value, "__self__", None) is old:
            continue
        if key in vars(new) or key in new._modules or key in new._parameters or key in new._buffers:
            if not _same(vars(new).get(key, _MISSING), value):
                clashes.append(key)
            continue
        try:
            object.__setattr__(new, key, value)
        except AttributeError:  # a read-only property of the new class
            clashes.append(key)
    for hooks in _IO_HOOKS:
        if getattr(old, hooks, None):
            getattr(new, hooks).update(getattr(old, hooks))
    return clashes


_MISSING = object()


def _same(a: object, b: object) -> bool:
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - tensors and other values without a plain truth value
        return False


def names_of(root: nn.Module, module: nn.Module) -> list[str]:
    """Every name under which `module` is reachable from `root` (a shared module has several)."""
    return [n for n, m in root.named_modules(remove_duplicate=False) if m is module]


def replace_module(root: nn.Module, name: str, new: nn.Module) -> list[str]:
    """Put `new` where the module `name` is, under every name that module has, carrying its attributes
    and hooks over (carry_over); returns the attribute names `new` kept as its own."""
    old = root.get_submodule(name)
    clashes = carry_over(old, new)
    for alias in names_of(root, old) or [name]:
        parent_name, _, child = alias.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, new)
    return clashes


def _wrapped(module: nn.Module) -> tuple[nn.Module, str] | None:
    """(the module inside, what wrapped it) for a wrapper that only runs its module another way, else None."""
    if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return module.module, type(module).__name__
    if type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module):
        return module._orig_mod, "torch.compile"  # recognised by name: importing torch._dynamo costs seconds
    return None


def unwrapped(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """`model` without DataParallel / DistributedDataParallel (`.module`) and torch.compile's OptimizedModule
    (`._orig_mod`), at its root or inside it (a compiled block): they compute what their module computes, and no
    exporter takes them (TorchScript refuses DataParallel and cannot trace a dynamo-compiled function). Inside, a
    structural copy is changed (the caller's model is not); returns the notes for the report."""
    notes: list[str] = []
    while (inner := _wrapped(model)) is not None:
        model, how = inner
        notes.append(f"the model was wrapped by {how}: the module inside it is what is exported")
    inside: list[str] = []
    for n, m in model.named_modules():
        if n and _wrapped(m) is not None and not any(n.startswith(o + ".") for o in inside):
            inside.append(n)
    if inside:
        model = structural_copy(model)
        while (name := next((n for n, m in model.named_modules() if n and _wrapped(m) is not None), None)) is not None:
            wrapper = model.get_submodule(name)
            while (inner := _wrapped(wrapper)) is not None:
                wrapper = inner[0]
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, wrapper)
        notes.append(f"{len(inside)} submodule(s) wrapped by torch.compile or DataParallel ({', '.join(inside[:3])}"
                     f"{', …' if len(inside) > 3 else ''}): the modules inside them are what is exported")
    return model, notes
