"""Swap every known layer for its deploy form, then fold BatchNorm into the conv before it.

The registry is keyed by the reference layer's type. Each layer file in `deploy_layers/` registers
its forms with `register_layer`; each file in `adapters/` registers recognisers for the same layer
written by other codebases (timm, the papers' repos), which rebuild it as our reference first.
"""
from __future__ import annotations

import copy
import importlib
import pkgutil
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import fx, nn

from .errors import BadInput
from .modules import carry_over, has_hooks, replace_module, set_eval, structural_copy, unwrapped

from .targets import TARGETS  # noqa: E402


@dataclass(frozen=True)
class Form:
    """One exact deploy form of a layer.

    build(ref) -> module equal to ref(x) for every input the reference accepts.
    exact_for(ref) -> None if the form represents this configuration exactly, else the reason not.
    """

    name: str
    build: Callable[[nn.Module], nn.Module]
    dynamic_batch: bool = True  # works from one graph for any batch size
    constant_weights: bool = True  # every Conv weight is an initializer (TensorRT's parser needs it)
    exact_for: Callable[[nn.Module], str | None] = lambda ref: None
    note: str = ""


#: target (or "*") -> form names, best first; or a function of (reference module, target) where the
#: fastest form depends on the layer's configuration (e.g. depthwise vs dense)
Preference = dict[str, list[str]] | Callable[[nn.Module, str | None], list[str]]


@dataclass
class LayerEntry:
    ref_type: type
    forms: dict[str, Form]
    prefer: Preference

    def candidates(self, target: str | None, ref: nn.Module | None = None) -> list[Form]:
        if callable(self.prefer):
            order = self.prefer(ref, target)
        else:
            order = self.prefer.get(target or "*") or self.prefer.get("*") or list(self.forms)
        rest = [n for n in self.forms if n not in order]
        return [self.forms[n] for n in [*order, *rest]]


@dataclass(frozen=True)
class Adapter:
    """Recognises a foreign class by structure and rebuilds it as our reference layer."""

    name: str
    matches: Callable[[nn.Module], bool]
    to_reference: Callable[[nn.Module], nn.Module]


@dataclass
class LayerRecord:
    name: str
    type: str
    form: str  # the deploy form; "reference" where none applied; "folded"/"absorbed" for a module merged into another
    note: str = ""
    into: str = ""  # for folded/absorbed: the module (by name, in the deployed model) that now computes it

    def as_dict(self) -> dict:
        d = {"name": self.name, "type": self.type, "form": self.form}
        if self.note:
            d["note"] = self.note
        if self.into:
            d["into"] = self.into
        return d


def assignment(records: list[LayerRecord]) -> tuple[tuple[str, str], ...]:
    """Which form each converted layer got: two deployments of a model with the same assignment are the same graph
    (what is folded or absorbed follows from the forms, so a plan's records and a conversion's compare equal)."""
    return tuple((r.name, r.form) for r in records if r.form not in ("folded", "absorbed"))


_LAYERS: dict[type, LayerEntry] = {}
_ADAPTERS: list[Adapter] = []
_loaded = False


def register_layer(ref_type: type, forms: Iterable[Form], prefer: Preference | None = None) -> None:
    """Register a reference layer's exact forms. `prefer` orders them per target; a target not
    named uses "*" (so one list serves every runtime where the measured order is the same)."""
    forms = list(forms)
    _LAYERS[ref_type] = LayerEntry(ref_type, {f.name: f for f in forms}, prefer or {"*": [f.name for f in forms]})


def register_adapter(name: str, matches: Callable[[nn.Module], bool], to_reference: Callable[[nn.Module], nn.Module]) -> None:
    _ADAPTERS.append(Adapter(name, matches, to_reference))


_PLUGIN_ERRORS: dict[str, str] = {}


def _load_plugins() -> None:
    """Import every file of deploy_layers/ and adapters/: each registers itself.

    A plugin that fails to import is reported (warning, and `plugin_errors()`) and skipped, so one
    broken layer does not take the others down; the test suite asserts there are none.
    """
    global _loaded
    if _loaded:
        return
    for pkg in ("deploy_layers", "adapters"):
        mod = importlib.import_module(f"{__package__}.{pkg}")
        for info in pkgutil.iter_modules(mod.__path__):
            name = f"{mod.__name__}.{info.name}"
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001
                _PLUGIN_ERRORS[name] = f"{type(e).__name__}: {e}"
                warnings.warn(f"polyexport: layer plugin {name} failed to import ({type(e).__name__}: {e}); its layers stay as they are", stacklevel=2)
    _loaded = True


def plugin_errors() -> dict[str, str]:
    _load_plugins()
    return dict(_PLUGIN_ERRORS)


def registered_layers() -> dict[type, LayerEntry]:
    _load_plugins()
    return dict(_LAYERS)


def parse_form_overrides(items: Iterable[str] | None) -> dict[str, str]:
    """['PSConv2d=regrouped'] -> {'PSConv2d': 'regrouped'}, checked against the registry."""
    _load_plugins()
    out: dict[str, str] = {}
    by_name = {t.__name__: e for t, e in _LAYERS.items()}
    for item in items or []:
        layer, sep, form = item.partition("=")
        if not sep:
            raise BadInput(f"--form '{item}': expected LAYER_TYPE=FORM")
        if layer not in by_name:
            raise BadInput(f"--form '{item}': unknown layer type '{layer}'; known: {', '.join(sorted(by_name)) or 'none'}")
        if form not in by_name[layer].forms and form != "reference":
            raise BadInput(f"--form '{item}': {layer} has no form '{form}'; it has: {', '.join(by_name[layer].forms)}, reference")
        out[layer] = form
    return out


#: (module name, reference module, usable exact forms in preference order) -> the same forms, best first.
#: The pipeline passes one that times the forms on the target runtime (autoform.FormTimer).
Ranker = Callable[[str, nn.Module, list[Form]], list[Form]]


def _choose(entry: LayerEntry, ref: nn.Module, name: str, target: str | None, dynamic_batch: bool,
            forced: str | None, strict: bool, ranker: Ranker | None = None) -> tuple[Form | None, str]:
    """The form to use for this module, or (None, reason) to keep the reference."""
    label = f"{name} ({type(ref).__name__})"

    def unusable(form: Form) -> str | None:
        if dynamic_batch and not form.dynamic_batch:
            return "needs a static batch, and --dynamic-batch was asked"
        if target == "tensorrt" and not form.constant_weights and forced != form.name:
            return "computes conv weights at run time, which TensorRT's parser rejects"
        return form.exact_for(ref)

    if forced == "reference":
        return None, "kept as reference (--form)"
    if forced is not None:
        form = entry.forms[forced]
        why = unusable(form)
        if why:
            ok = [f.name for f in entry.forms.values() if unusable(f) is None]
            raise BadInput(f"--form {type(ref).__name__}={forced} cannot be used for {label}: {why}; forms that would work: {', '.join(ok) or 'none'}")
        return form, ""
    reasons, usable = [], []
    for form in entry.candidates(target, ref):
        why = unusable(form)
        if why is None:
            usable.append(form)
        else:
            reasons.append(f"{form.name}: {why}")
    if usable:
        return (ranker(name, ref, usable) if ranker and len(usable) > 1 else usable)[0], ""
    msg = f"no exact deploy form for {label}: " + "; ".join(reasons)
    if strict:
        raise BadInput(msg + " (--strict)")
    return None, msg


def is_known_layer(module: nn.Module) -> bool:
    """A registered layer, or one an adapter recognises."""
    _load_plugins()
    if type(module) in _LAYERS:
        return True
    for adapter in _ADAPTERS:
        try:
            if adapter.matches(module):
                return True
        except Exception:  # noqa: BLE001
            continue
    return False


def _adapt(module: nn.Module) -> tuple[nn.Module, str] | None:
    for adapter in _ADAPTERS:
        try:
            if adapter.matches(module):
                return adapter.to_reference(module), adapter.name
        except Exception as e:  # noqa: BLE001 - an adapter that cannot read the module declines it
            warnings.warn(f"adapter {adapter.name} declined {type(module).__name__}: {e}", stacklevel=2)
    return None


def swap_layers(model: nn.Module, target: str | None = None, forms: dict[str, str] | None = None,
                dynamic_batch: bool = False, strict: bool = False, ranker: Ranker | None = None,
                build: bool = True) -> tuple[nn.Module, list[LayerRecord]]:
    """Replace every registered (or adaptable) layer by its chosen deploy form, in place.

    The deploy module takes the replaced one's plain attributes and hooks, under every name the
    replaced one had (modules.replace_module). Returns the model (a new module where the model itself
    is a known layer) and the records. With build=False only the choice is made (see `plan`).
    """
    _load_plugins()
    forms = forms or {}
    records: list[LayerRecord] = []
    skip_below: list[str] = []
    for name, module in list(model.named_modules()):
        if any(name.startswith(p + ".") for p in skip_below):
            continue
        if isinstance(module, torch.jit.ScriptModule):  # compiled code: nothing in it can be swapped
            records += _compiled_layers(name, module, strict)
            if not name:
                return model, records
            skip_below.append(name)
            continue
        ref, via = module, ""
        entry = _LAYERS.get(type(module))
        if entry is None:
            adapted = _adapt(module)
            if adapted is None:
                continue
            ref, via = adapted
            entry = _LAYERS.get(type(ref))
            if entry is None:
                continue
        skip_below.append(name)
        form, why = _choose(entry, ref, name, target, dynamic_batch, forms.get(type(ref).__name__), strict, ranker)
        note = f"recognised by adapter {via}" if via else ""
        if form is None:
            records.append(LayerRecord(name, type(module).__name__, "reference", "; ".join(x for x in (note, why) if x)))
            if not name:  # the model is itself the layer, kept whole
                return model, records
            continue
        records.append(LayerRecord(name, type(module).__name__, form.name, note))
        if not build:
            if not name:
                return model, records
            continue
        with torch.no_grad():
            new = set_eval(form.build(set_eval(ref)))
        if not name:  # the model is itself the layer
            carry_over(module, new)
            return new, records
        replace_module(model, name, new)  # an attribute both have stays the deploy form's own (its state, not the layer's)
    return model, records


COMPILED = ("compiled by torch.jit (TorchScript): a compiled layer cannot be swapped for its deploy form, and is exported "
            "as written; give the Python model (its state_dict with --arch) to deploy it")


def _compiled_layers(name: str, module: torch.jit.ScriptModule, strict: bool) -> list[LayerRecord]:
    """The registered layer types inside a compiled module, known by the class name it was compiled from (kept as
    reference, so the report says so; with --strict, an error)."""
    known = {t.__name__ for t in _LAYERS}
    found: list[LayerRecord] = []
    for sub, m in module.named_modules():
        kind = getattr(m, "original_name", "")
        full = ".".join(x for x in (name, sub) if x)
        if kind in known and not any(full.startswith(r.name + ".") for r in found if r.name):
            if strict:
                raise BadInput(f"layer '{full or 'the model'}' ({kind}) is {COMPILED} (--strict)")
            found.append(LayerRecord(full, kind, "reference", COMPILED))
    return found


# --- folding into neighbours ----------------------------------------------------------------
# Two folds use one mechanism, the (producer, consumer) pairs where the consumer is the only user
# of the producer's output and each module is called once:
#   - BN after a conv (nn.Conv2d, or any deploy module with `fuse_bn(bn)`), folded into the conv;
#   - a deploy module with `fuse_next_conv(conv)` (e.g. a channel permutation) before an nn.Conv2d,
#     folded into that conv's weights.

class _LeafTracer(fx.Tracer):
    """Keeps torch.nn layers and deploy modules (anything with a fuse method) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, nn.Identity):  # traced through: what one fold leaves must not hide the next pair
            return False
        # a research layer kept as reference is never traced into: symbolic tracing takes its Python
        # branches one way (e.g. OctConv's `type(x) is tuple`), which would fold a BN into one branch only
        return (hasattr(m, "fuse_bn") or hasattr(m, "fuse_next_conv") or is_known_layer(m)
                or super().is_leaf_module(m, qualname))


def _takes_bn(m: nn.Module) -> bool:
    """Exactly BatchNorm2d: a subclass may add work to its forward (timm's BatchNormAct2d adds the activation)."""
    return type(m) is nn.BatchNorm2d


def _takes_conv(m: nn.Module) -> bool:
    """What can take a next-conv fold (whose pair test then asks for nn.Conv2d's own forward)."""
    return isinstance(m, nn.Conv2d)


def _bn_pair(producer: nn.Module, consumer: nn.Module) -> bool:
    if has_hooks(producer) or has_hooks(consumer):  # someone observes the BN's input or the conv's output
        return False
    # a plain conv is rebuilt by fuse_conv_bn: only one computing nn.Conv2d's own forward (a subclass may pad
    # from the input size, as timm's Conv2dSame does), in any padding mode (the BN acts after the padding);
    # other modules fold through their own fuse_bn
    plain = (isinstance(producer, nn.Conv2d) and type(producer).forward is nn.Conv2d.forward
             and type(producer)._conv_forward is nn.Conv2d._conv_forward)
    conv_like = plain or hasattr(producer, "fuse_bn")
    return conv_like and _takes_bn(consumer) and consumer.track_running_stats and consumer.running_mean is not None


def _next_conv_pair(producer: nn.Module, consumer: nn.Module) -> bool:
    # the producer rebuilds the conv as a plain nn.Conv2d: only one computing nn.Conv2d's own forward (a subclass
    # may pad from the input size, as timm's Conv2dSame and the Conv2dSame MixConv's forms return do)
    plain = (_takes_conv(consumer) and type(consumer).forward is nn.Conv2d.forward
             and type(consumer)._conv_forward is nn.Conv2d._conv_forward)
    return hasattr(producer, "fuse_next_conv") and plain and not (has_hooks(producer) or has_hooks(consumer))


def _traced(model: nn.Module, relevant: Callable[[nn.Module], bool],
            tracer: Callable[[], fx.Tracer]) -> Iterator[tuple[str, nn.Module, fx.Graph, dict[str, int]]]:
    """(prefix, module, its graph, calls per submodule) for the model traced whole, or where a module cannot be traced
    symbolically (data-dependent control flow), for its children one by one. A module with nothing `relevant` below
    it is not traced (a symbolic trace costs milliseconds, and a model that cannot be traced whole is visited module by
    module: 976 traces, 2.5 s of every conversion of OctResNet-50, most of them of single convs). A caller may change
    a yielded module before the next one: what was traced is not visited again."""

    def visit(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module, fx.Graph, dict[str, int]]]:
        if not any(relevant(m) for name, m in module.named_modules() if name):
            return
        try:
            graph = tracer().trace(module)
        except Exception:  # noqa: BLE001 - look one level down
            for child_name, child in module.named_children():
                yield from visit(child, f"{prefix}{child_name}.")
            return
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        yield prefix, module, graph, calls

    yield from visit(model, "")


def _pairs(module: nn.Module, graph: fx.Graph, calls: dict[str, int],
           accept: Callable[[nn.Module, nn.Module], bool]) -> list[tuple[str, str]]:
    """(producer, consumer) submodule names accepted by `accept`, where the consumer alone uses the producer."""
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module" or calls[user.target] != 1 or len(user.args) != 1 or user.kwargs:
            continue
        if accept(module.get_submodule(node.target), module.get_submodule(user.target)):
            pairs.append((node.target, user.target))
    return pairs


def _fold_pairs(model: nn.Module, accept, fuse: Callable[[nn.Module, nn.Module], nn.Module], record,
                consumer: Callable[[nn.Module], bool]) -> list[LayerRecord]:
    """Replace each accepted (producer, consumer) pair by fuse(producer, consumer) and an Identity. `consumer` says
    which modules can end a pair: only what holds one is traced (_traced)."""
    records: list[LayerRecord] = []
    for prefix, module, graph, calls in _traced(model, consumer, _LeafTracer):
        for a_name, b_name in _pairs(module, graph, calls, accept):
            a, b = module.get_submodule(a_name), module.get_submodule(b_name)
            fused = fuse(a, b)
            if fused is None:  # the producer declined (a configuration it cannot fold exactly)
                continue
            replace_module(module, a_name, fused)
            replace_module(module, b_name, nn.Identity())
            records.append(record(prefix + a_name, prefix + b_name, b))
    return records


#: activations a layer's tail may end in, as modules (an activation called as a function gets its module)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.GELU, nn.Tanh, nn.LeakyReLU, nn.Mish,
                nn.ELU)
_ACTIVATION_FUNCTIONS = {torch.relu: nn.ReLU, torch.nn.functional.relu: nn.ReLU, torch.nn.functional.relu6: nn.ReLU6,
                         torch.nn.functional.silu: nn.SiLU, torch.nn.functional.hardswish: nn.Hardswish,
                         torch.nn.functional.hardsigmoid: nn.Hardsigmoid, torch.sigmoid: nn.Sigmoid,
                         torch.nn.functional.gelu: nn.GELU, torch.tanh: nn.Tanh, torch.nn.functional.mish: nn.Mish}
_ACTIVATION_METHODS = {"relu": nn.ReLU, "relu_": nn.ReLU, "sigmoid": nn.Sigmoid, "sigmoid_": nn.Sigmoid, "tanh": nn.Tanh}


def layer_tails(model: nn.Module) -> dict[str, nn.Sequential]:
    """What follows each known layer in `model`, by layer name, where it is a BatchNorm2d (the converter folds it into
    the layer) and/or an activation, or a BatchNorm2d subclass (timm's BatchNormAct2d: kept as it is), each the only
    user of what comes before it: a copy of those modules. A deploy form's speed depends on
    them (on OpenVINO a folded BN's shift and an activation after a MatMul's output cost more than after a conv), so the
    form timer times each form with its tail (autoform.FormTimer). Found by the converter's own symbolic trace; a
    layer in a module that cannot be traced, called more than once, or followed by anything else, has no entry."""
    tails: dict[str, nn.Sequential] = {}
    # asked before tracing: during a trace an adapter's test may meet proxies where it reads a foreign layer's sizes
    known = {id(m) for m in model.modules() if is_known_layer(m)}
    for prefix, module, graph, calls in _traced(model, lambda m: id(m) in known, lambda: _TailTracer(known)):
        for node in graph.nodes:  # a module called twice (shared) has no one tail
            if node.op != "call_module" or calls[node.target] != 1 or id(module.get_submodule(node.target)) not in known:
                continue
            parts = []
            nxt = _only_user(node)
            bn = module.get_submodule(nxt.target) if nxt is not None and nxt.op == "call_module" and calls[nxt.target] == 1 else None
            if isinstance(bn, nn.BatchNorm2d) and not has_hooks(bn):
                parts.append(copy.deepcopy(bn))
                # exactly a BatchNorm2d (folded by the converter) may meet an activation next; a subclass (timm's
                # BatchNormAct2d) stays a module of its own, its activation inside its forward
                nxt = _only_user(nxt) if _takes_bn(bn) else None
            act = _activation(module, nxt)
            if act is not None:
                parts.append(act)
            if parts:
                tails[prefix + node.target] = nn.Sequential(*parts).eval()
    return tails


class _TailTracer(_LeafTracer):
    """The converter's tracer, with the known layers given (by id) and BatchNorm2d subclasses kept whole (traced into,
    timm's BatchNormAct2d is a batch_norm call and its activation: no module to put in a tail)."""

    def __init__(self, known: set[int]):
        super().__init__()
        self.known = known

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.known or isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, qualname)


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _activation(module: nn.Module, node: fx.Node | None) -> nn.Module | None:
    """The activation `node` computes on its one input, as a module of its own (a copy); None for anything else."""
    if node is None or len(node.args) != 1 or set(node.kwargs) - {"inplace"}:
        return None
    if node.op == "call_module":
        m = module.get_submodule(node.target)
        return copy.deepcopy(m) if type(m) in _ACTIVATIONS and not has_hooks(m) else None
    if node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
        return _ACTIVATION_FUNCTIONS[node.target]()
    if node.op == "call_method" and node.target in _ACTIVATION_METHODS:  # x.relu()
        return _ACTIVATION_METHODS[node.target]()
    return None


def _fuse_bn(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module | None:
    from .deploy_layers.conv_bn import fuse_conv_bn

    return conv.fuse_bn(bn) if hasattr(conv, "fuse_bn") else fuse_conv_bn(conv, bn)


class _Then(nn.Module):
    """A layer (any number of inputs) and the modules that follow it."""

    def __init__(self, layer: nn.Module, tail: nn.Module):
        super().__init__()
        self.layer, self.tail = layer, tail

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.tail(self.layer(*args))


def followed_by(form: nn.Module, tail: nn.Sequential) -> nn.Module:
    """A deploy form with what follows its layer (layer_tails), as the converter deploys the two: a leading
    BatchNorm2d folded into the form where fold_batchnorm folds it, the rest after it. `tail` is not changed."""
    rest = [copy.deepcopy(m) for m in tail]
    if rest and _bn_pair(form, rest[0]):
        fused = _fuse_bn(form, rest[0])
        if fused is not None:
            form, rest = fused, rest[1:]
    return _Then(form, nn.Sequential(*rest)).eval()


def fold_batchnorm(model: nn.Module) -> list[LayerRecord]:
    """Fold every BatchNorm2d that directly follows a conv (or a deploy module) into it, in place."""
    return _fold_pairs(
        model, _bn_pair,
        _fuse_bn,
        lambda a, b, bn: LayerRecord(b, "BatchNorm2d", "folded", f"into {a}", into=a),
        consumer=_takes_bn,
    )


def fold_into_next_conv(model: nn.Module) -> list[LayerRecord]:
    """Fold deploy modules that offer it (channel permutations, …) into the nn.Conv2d after them."""
    return _fold_pairs(
        model, _next_conv_pair,
        lambda prev, conv: prev.fuse_next_conv(conv),
        lambda a, b, conv: LayerRecord(b, type(conv).__name__, "absorbed", f"{a} folded into its weights", into=a),
        consumer=_takes_conv,
    )


def convert(model: nn.Module, target: str | None = None, forms: dict[str, str] | None = None,
            dynamic_batch: bool = False, strict: bool = False, fold_bn: bool = True,
            ranker: Ranker | None = None) -> tuple[nn.Module, list[LayerRecord]]:
    """A converted copy of `model` (in eval mode; it shares the original's tensors, see
    modules.structural_copy) and what was done to each layer."""
    if target is not None and target not in TARGETS:
        raise BadInput(f"unknown target '{target}'; choose one of {', '.join(TARGETS)}")
    deployed = set_eval(structural_copy(unwrapped(model)[0]))  # without DataParallel / torch.compile wrappers
    deployed, records = swap_layers(deployed, target, forms, dynamic_batch, strict, ranker)
    records += fold_into_next_conv(deployed)
    if fold_bn:
        records += fold_batchnorm(deployed)
    return deployed, records


def plan(model: nn.Module, target: str | None = None, forms: dict[str, str] | None = None,
         dynamic_batch: bool = False, strict: bool = False, ranker: Ranker | None = None) -> list[LayerRecord]:
    """The forms `convert` would choose, without building anything (the model is not touched): what the
    whole-model check compares before it pays for building the candidates it has to time."""
    return swap_layers(set_eval(structural_copy(model)), target, forms, dynamic_batch, strict, ranker, build=False)[1]


def forms_of(ref_type: type) -> dict[str, Form]:
    """A registered reference layer's exact forms, by name, in registration order."""
    _load_plugins()
    if ref_type not in _LAYERS:
        raise KeyError(f"{ref_type.__name__} is not a registered layer")
    return dict(_LAYERS[ref_type].forms)


def to_deploy(layer: nn.Module, form: str | None = None, target: str | None = None) -> nn.Module:
    """The deploy module of one trained layer (a registered reference layer, or one an adapter recognises), in
    eval mode: the form named, or the first of the preferred order for `target` that is exact for this
    configuration. The one way to build a form outside a model (tests, benchmarks, users' own scripts)."""
    _load_plugins()
    ref = layer
    if type(ref) not in _LAYERS:
        adapted = _adapt(layer)
        if adapted is None or type(adapted[0]) not in _LAYERS:
            raise BadInput(f"{type(layer).__name__} is not a layer polyexport converts (see `polyexport layers`)")
        ref = adapted[0]
    entry = _LAYERS[type(ref)]
    if form is not None and form not in entry.forms:
        raise BadInput(f"{type(ref).__name__} has no form '{form}'; it has: {', '.join(entry.forms)}")
    candidates = [entry.forms[form]] if form else entry.candidates(target, ref)
    for f in candidates:
        why = f.exact_for(ref)
        if why is None:
            with torch.no_grad():
                return set_eval(f.build(set_eval(ref)))
        if form:
            raise BadInput(f"{type(ref).__name__} form '{form}' is not exact for this layer: {why}")
    raise BadInput(f"no form of {type(ref).__name__} is exact for this layer")


def deploy(model: nn.Module, target: str | None = None, **kwargs) -> nn.Module:
    """Public API: a converted copy of `model`, every known layer in its deploy form; original untouched."""
    return convert(model, target, **kwargs)[0]
