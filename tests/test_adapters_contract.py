"""The adapter contract, checked for every registered adapter (issue 17: "adapter round trips").

An adapter (polyexport/adapters/*.py) recognises a layer written by someone else's code (a paper's
official repository, timm, a popular port) and rebuilds it as polyexport's reference layer, whose
deploy forms are proven elsewhere. It recognises the foreign class by *structure* (class name, child
names, parameter layout), never by import, and reads the constructor arguments back from that
structure. Nothing about that is checked by the type system: a wrong stride read back, a transposed
weight, an argument the rebuilt layer defaults differently, would convert silently into a model that
computes something else. So the round trip foreign → reference → deploy is the claim that has to be
proven, and it has to be proven for every adapter, including the next one written. For each adapter,
on one foreign example (EXAMPLES, from the classes in tests/foreign/ and the per-layer tests' helpers):

(a) its `matches` accepts the example and no other adapter's does (an intended overlap is listed in
    ALSO_MATCHED, and then the first registered adapter is the one `convert` uses);
(b) `to_reference(example)` computes what the example computes: bit for bit where the reference runs the
    same operations, else to 1e-6 of the output's scale (see EXACT for which and why);
(c) adapting and converting leave the foreign module as it was: same state_dict keys and tensors, same
    output;
(d) `convert` on a container holding the example swaps it, records the adapter ("recognised by adapter
    NAME") and an exact form (not "reference"), and the deployed model equals the foreign one to 1e-5
    of the output's scale (polyexport.testing.RTOL).

A registered adapter without an example fails `test_every_adapter_has_an_example`, by name.
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from polyexport import convert as registry
from polyexport.convert import convert, forms_of
from polyexport.outputs import flatten_outputs
from polyexport.testing import RTOL, max_rel_err, randomize_
from tests.foreign import condconv as timm_condconv
from tests.foreign import dcd as dcd_official
from tests.foreign import do_conv as do_conv_official
from tests.foreign import drconv as drconv_upstream
from tests.foreign import drconv_megvii as megvii_upstream
from tests.foreign import dynamic_conv as dynamic_conv_upstream
from tests.foreign import hetconv as hetconv_foreign
from tests.foreign import mixconv as timm_mixconv
from tests.foreign import octconv as octconv_official
from tests.foreign import psconv as psconv_official
from tests.foreign import spd_conv as spd_foreign
from tests.foreign.even_conv import Spconv2d
from tests.test_layer_dcd import lively as dcd_lively
from tests.test_layer_drconv import lively as drconv_lively
from tests.test_layer_drconv_megvii import lively as megvii_lively
from tests.test_layer_yolov5_detect import official as official_detect

Shape = tuple[int, ...]
Example = Callable[[], tuple[nn.Module, Shape]]


def _eval(m: nn.Module, seed: int) -> nn.Module:
    return randomize_(m, seed).eval()


def _dynamic_conv() -> nn.Module:
    m = _eval(dynamic_conv_upstream.Dynamic_conv2d(8, 16, 3, stride=2, padding=1, K=4, temperature=4), 3)
    with torch.no_grad():
        m.attention.fc1.weight.mul_(30)  # attention that differs clearly per sample (as test_layer_dynamic_conv)
    return m


#: adapter name -> a factory of (one foreign module, randomised and in eval mode; its input shape).
#: The input is one tensor of that shape, except for the adapters in EXTRA_INPUTS, whose layers take more.
EXAMPLES: dict[str, Example] = {
    "condconv.timm": lambda: (_eval(timm_condconv.CondConv2d(8, 16, 3, stride=2, padding="same", bias=True,
                                                             num_experts=4), 1), (2, 8, 9, 11)),
    "dcd-official": lambda: (dcd_lively(dcd_official.conv_dy(16, 32, 3, 2, 1), seed=2), (2, 16, 9, 7)),
    "do-conv/DOConv2d": lambda: (_eval(do_conv_official.DOConv2d(6, 9, 3, D_mul=12, stride=2, padding=1, groups=3), 4),
                                 (2, 6, 9, 11)),
    "drconv-shallowtoil": lambda: (drconv_lively(drconv_upstream.DRConv2d(6, 8, 3, 4, padding=1, stride=2), seed=3),
                                   (2, 6, 11, 9)),
    "drconv-megvii": lambda: (megvii_lively(megvii_upstream.DRConv(5, 7, 3, 2, 1, bias=True, groups_num=4, num_W=3),
                                            seed=8), (2, 5, 9, 11)),
    "dynamic_conv.kaijieshi7": lambda: (_dynamic_conv(), (2, 8, 9, 11)),
    "elnas_spconv2d": lambda: (_eval(Spconv2d(8, 12, 2, stride=2), 8), (2, 8, 9, 11)),
    "hetconv_gwc_pwc": lambda: (_eval(hetconv_foreign.MFTHetConv(16, 16, kernel_size=3, stride=2, p=4, g=8), 8),
                                (2, 16, 9, 11)),
    "efficient_hetconv2d": lambda: (_eval(hetconv_foreign.Efficient_HetConv2d(8, 12, p=4), 8), (2, 8, 9, 11)),
    "hetconv_filters": lambda: (_eval(hetconv_foreign.YoloHetConv(8, 12, stride=2, p=4), 8), (2, 8, 9, 11)),
    "hetconv2d_v2": lambda: (_eval(hetconv_foreign.HetConv2d_v2(8, 6, p=2), 8), (2, 8, 9, 11)),
    "timm_mixed_conv2d": lambda: (_eval(timm_mixconv.MixedConv2d(20, 20, [3, 5, 7], stride=2, depthwise=True), 5),
                                  (2, 20, 9, 11)),
    # OctConv takes (x_h, x_l): x_h of this shape, x_l at half its size (EXTRA_INPUTS)
    "octconv.pytorch/OctaveConv": lambda: (_eval(octconv_official.OctaveConv(16, 32, 3, stride=2, padding=1), 5),
                                           (2, 8, 9, 11)),
    "octconv.pytorch/Conv_BN": lambda: (_eval(octconv_official.Conv_BN_ACT(16, 16, 3, alpha_in=0.25, alpha_out=0.5,
                                                                           padding=1, bias=True), 5), (2, 12, 10, 14)),
    "d-li14/PSConv": lambda: (_eval(psconv_official.PSGConv2d(32, 32, groups=2, stride=2, bias=True), 8),
                              (2, 32, 9, 11)),
    # space-to-depth: the official slicing needs even sizes, timm's view multiples of 4
    "spd-conv/space_to_depth": lambda: (spd_foreign.space_to_depth().eval(), (2, 3, 10, 14)),
    "timm/SpaceToDepth": lambda: (spd_foreign.SpaceToDepth(4).eval(), (2, 3, 12, 20)),
    "timm/SpaceToDepthModule": lambda: (spd_foreign.SpaceToDepthModule().eval(), (2, 3, 8, 16)),
    # Detect takes a list of three levels: the shape is the image's, the levels are its strides' grids
    "yolov5/Detect": lambda: (official_detect(nc=7, ch=(8, 16, 12)), (2, 3, 88, 120)),
}


def _maps(shape: Shape, g: torch.Generator) -> torch.Tensor:
    """Random maps with a per-sample offset, so that what a dynamic layer pools differs between samples."""
    return torch.randn(shape, generator=g) + 0.5 * torch.randn(*shape[:2], *(1,) * (len(shape) - 2), generator=g)


def _condconv_inputs(m: nn.Module, shape: Shape, g: torch.Generator) -> tuple:
    return _maps(shape, g), torch.sigmoid(3 * torch.randn(shape[0], m.num_experts, generator=g))


def _megvii_inputs(m: nn.Module, shape: Shape, g: torch.Generator) -> tuple:
    """x, the region mask at the input size (upstream resizes it to the output's) and Alpha (softmax over regions)."""
    alpha = torch.softmax(3 * torch.randn(shape[0], m.groups_num, *shape[2:], generator=g), 1)
    return _maps(shape, g), alpha.argmax(1), alpha


def _octave_inputs(m: nn.Module, shape: Shape, g: torch.Generator) -> tuple:
    conv = getattr(m, "conv", m)
    low = conv.conv_l2l or conv.conv_l2h
    n, _, h, w = shape
    return ((_maps(shape, g), _maps((n, low.in_channels, h // 2, w // 2), g)),)


def _detect_inputs(m: nn.Module, shape: Shape, g: torch.Generator) -> tuple:
    n, _, h, w = shape
    return ([_maps((n, conv.in_channels, h // int(s), w // int(s)), g) for conv, s in zip(m.m, m.stride)],)


#: adapters whose layer's forward takes other arguments than one tensor: name -> (module, shape, gen) -> args
EXTRA_INPUTS: dict[str, Callable[[nn.Module, Shape, torch.Generator], tuple]] = {
    "condconv.timm": _condconv_inputs,
    "drconv-megvii": _megvii_inputs,
    "octconv.pytorch/OctaveConv": _octave_inputs,
    "octconv.pytorch/Conv_BN": _octave_inputs,
    "yolov5/Detect": _detect_inputs,
}

#: adapter -> other adapters that are meant to accept its example too (none today)
ALSO_MATCHED: dict[str, set[str]] = {}

#: (b) is asserted bit for bit (rtol = atol = 0) for the adapters whose reference runs the foreign forward's own
#: operations on the same tensors (the reference re-creates the official forward, and the adapter only reloads the
#: state_dict or moves weights unchanged): any difference there is a wrong weight or argument, not rounding.
#: The others compute the same function with other operations, so they agree to float32 rounding only, asserted
#: as rtol = 0, atol = 1e-6 of the output's scale (float32's eps is 1.2e-7; a handful of roundings of short sums):
#:   - drconv-megvii: upstream's per-region loop (boolean-masked matmuls) against our gather + einsum;
#:   - efficient_hetconv2d: conv1x1 − conv1x1_ is folded into one dense 1×1 weight (in float64, rounded once),
#:     where the foreign forward runs two convs and subtracts;
#:   - hetconv_gwc_pwc: a grouped `pwc` becomes a dense 1×1 conv with zero blocks (the backend may sum in
#:     another order or blocking);
#:   - hetconv2d_v2: one conv per output filter becomes one conv per branch (another conv shape, so possibly
#:     another algorithm).
EXACT: set[str] = {
    "condconv.timm", "dcd-official", "do-conv/DOConv2d", "drconv-shallowtoil", "dynamic_conv.kaijieshi7", "elnas_spconv2d",
    "hetconv_filters", "timm_mixed_conv2d", "octconv.pytorch/OctaveConv", "octconv.pytorch/Conv_BN", "d-li14/PSConv",
    "spd-conv/space_to_depth", "timm/SpaceToDepth", "timm/SpaceToDepthModule", "yolov5/Detect",
}


def _registered() -> list[str]:
    registry._load_plugins()
    return [a.name for a in registry._ADAPTERS]


def _adapter(name: str) -> registry.Adapter:
    return next(a for a in registry._ADAPTERS if a.name == name)


def _example(name: str, seed: int = 0) -> tuple[nn.Module, tuple]:
    """The example module and its inputs (args of one call)."""
    if name not in EXAMPLES:
        pytest.fail(f"adapter {name!r} has no example in EXAMPLES")
    module, shape = EXAMPLES[name]()
    g = torch.Generator().manual_seed(seed)
    make = EXTRA_INPUTS.get(name)
    return module, (make(module, shape, g) if make else (_maps(shape, g),))


def _fresh(args: tuple) -> tuple:
    """New lists/tuples around the same tensors: YOLOv5's Detect writes its outputs into the list it is given."""
    return tuple(type(a)(_fresh(tuple(a))) if isinstance(a, (list, tuple)) else a for a in args)


@torch.no_grad()
def _run(module: nn.Module, args: tuple) -> list[torch.Tensor]:
    return flatten_outputs(module(*_fresh(args)))


class Call(nn.Module):
    """A container for a layer whose forward takes several arguments (nn.Sequential passes one)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *args):
        return self.layer(*args)


ADAPTERS = _registered()


def test_every_adapter_has_an_example():
    registered = set(ADAPTERS)
    twice = sorted(n for n in registered if ADAPTERS.count(n) > 1)
    assert not twice, f"adapter names registered twice: {twice}"
    assert not registry.plugin_errors()
    missing, stale = sorted(registered - set(EXAMPLES)), sorted(set(EXAMPLES) - registered)
    assert not missing, f"registered adapters without an example in EXAMPLES: {missing}"
    assert not stale, f"EXAMPLES names adapters that are not registered: {stale}"
    assert set(EXTRA_INPUTS) | set(ALSO_MATCHED) | EXACT <= registered


@pytest.mark.parametrize("name", ADAPTERS)
def test_matches_its_example_only(name):
    """(a) The adapter recognises its example; another adapter does so only where intended, and then `convert`
    takes the first registered one (convert._adapt tries them in registration order)."""
    module, _ = _example(name)
    assert _adapter(name).matches(module) is True
    matching = [a.name for a in registry._ADAPTERS if a.matches(module)]
    assert set(matching) - {name} == ALSO_MATCHED.get(name, set()), f"{type(module).__name__} also matched by {matching}"
    assert registry._adapt(module)[1] == matching[0]


@pytest.mark.parametrize("name", ADAPTERS)
def test_reference_computes_the_foreign_forward(name):
    """(b) The rebuilt reference computes what the foreign module computes."""
    module, args = _example(name)
    ref = _adapter(name).to_reference(module)
    assert type(ref) in registry.registered_layers(), f"{type(ref).__name__} is not a registered reference layer"
    want, got = _run(module, args), _run(ref.eval(), args)
    assert len(got) == len(want) and len(want) > 0
    for w, o in zip(want, got):
        scale = w.abs().max().item()
        assert scale > 0, "the example's output is all zeros: the comparison would prove nothing"
        atol = 0.0 if name in EXACT else 1e-6 * scale
        torch.testing.assert_close(o, w, rtol=0, atol=atol)


@pytest.mark.parametrize("name", ADAPTERS)
def test_adaptation_leaves_the_foreign_module_untouched(name):
    """(c) Adapting and converting read the foreign module: its state_dict and its output stay as they were."""
    module, args = _example(name)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    out_before = _run(module, args)
    ref = _adapter(name).to_reference(module)
    _run(ref.eval(), args)
    container = nn.Sequential(module) if len(args) == 1 else Call(module)
    deployed, _ = convert(container)
    _run(deployed, args)
    after = module.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), f"{k} changed"
    assert not module.training
    assert all(torch.equal(a, b) for a, b in zip(_run(module, args), out_before))


@pytest.mark.parametrize("name", ADAPTERS)
def test_convert_deploys_the_foreign_module(name):
    """(d) In a model, the example is swapped for an exact deploy form through this adapter, and the deployed
    model computes what the foreign one does (polyexport.testing.RTOL of the output's scale)."""
    module, args = _example(name)
    container = nn.Sequential(module) if len(args) == 1 else Call(module)
    child = "0" if len(args) == 1 else "layer"
    deployed, records = convert(container)
    rec = next((r for r in records if r.name == child), None)
    assert rec is not None, [r.as_dict() for r in records]
    assert rec.type == type(module).__name__
    first = next(a for a in registry._ADAPTERS if a.matches(module))  # this one, unless ALSO_MATCHED says otherwise
    assert f"recognised by adapter {first.name}" in rec.note, rec.as_dict()
    ref = first.to_reference(module)
    exact = [f for f, form in forms_of(type(ref)).items() if form.exact_for(ref) is None]
    assert exact, f"no form of {type(ref).__name__} is exact for this example: choose another"
    assert rec.form in exact, rec.as_dict()
    assert not any(type(m) is type(module) for m in deployed.modules())
    want, got = _run(container, args), _run(deployed, args)
    assert len(got) == len(want)
    for i, (w, o) in enumerate(zip(want, got)):
        err = max_rel_err(w, o)
        assert err <= RTOL, f"output {i}: max error / scale = {err:.3g} > {RTOL:g}"
