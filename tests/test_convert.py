"""The converter's generic parts: BN folding is exact where it applies and refuses where it would not be."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import polyexport
from polyexport.convert import Form, convert, register_layer, registered_layers
from polyexport.errors import BadInput
from polyexport.testing import assert_equivalent, check_on_runtimes, randomize_
from polyexport.zoo import get


def bn_count(m: nn.Module) -> int:
    return sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 12, 3, 1, 1, bias=False),
    nn.Conv2d(6, 12, 3, 2, 1, bias=True),
    nn.Conv2d(6, 12, 5, 1, 4, dilation=2, groups=3),
    nn.Conv2d(6, 6, 3, 1, 1, groups=6),
])
def test_conv_bn_folds_exactly(conv):
    model = randomize_(nn.Sequential(conv, nn.BatchNorm2d(12 if conv.out_channels == 12 else 6), nn.ReLU()), seed=1)
    deployed, records = convert(model)
    assert bn_count(deployed) == 0 and [r.form for r in records] == ["folded"]
    assert_equivalent(model, deployed, torch.randn(3, 6, 11, 14))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv_bn_folds_whatever_the_padding_mode(mode):
    """bn(conv(pad(x))) = fused(pad(x)): the BN acts after the padding, so a padded conv folds exactly too."""
    model = randomize_(nn.Sequential(nn.Conv2d(5, 7, 3, 2, (1, 2), padding_mode=mode), nn.BatchNorm2d(7)), seed=2)
    deployed, records = convert(model)
    assert bn_count(deployed) == 0 and [r.form for r in records] == ["folded"]
    assert deployed[0].padding_mode == mode
    assert_equivalent(model, deployed, torch.randn(2, 5, 9, 12))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_conv_bn_fold_keeps_the_models_dtype(dtype):
    """The fused conv is built in the conv's dtype (it was built in the default float32: a float64 model's folded
    conv then refused its float64 input)."""
    model = randomize_(nn.Sequential(nn.Conv2d(4, 6, 3, 1, 1), nn.BatchNorm2d(6)), seed=3).to(dtype)
    deployed, _ = convert(model)
    assert bn_count(deployed) == 0 and deployed[0].weight.dtype == deployed[0].bias.dtype == dtype
    x = torch.randn(2, 4, 7, 9, dtype=dtype)
    with torch.no_grad():
        want, got = model(x).double(), deployed(x).double()
    tol = 1e-12 if dtype == torch.float64 else 2e-2  # bfloat16: its 8-bit mantissa, the fold rounds once more
    assert (want - got).abs().max() <= tol * want.abs().max()


class SharedOutput(nn.Module):
    """The conv's output is also used by the residual: folding the BN would change that branch."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, 1, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class ReusedBN(nn.Module):
    """One BN module applied after two different convs."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.bn = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, 1, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.c1(x)) + self.bn(self.c2(x))


class Untraceable(nn.Module):
    """Data-dependent control flow at the top; its children still fold."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(4, 8, 3, 1, 1), nn.BatchNorm2d(8))

    def forward(self, x):
        if x.sum() > 0:
            return self.block(x)
        return self.block(-x)


@pytest.mark.parametrize("cls, folded", [(SharedOutput, 0), (ReusedBN, 0), (Untraceable, 1)])
def test_folding_only_where_exact(cls, folded):
    model = randomize_(cls(), seed=2)
    deployed, records = convert(model)
    assert len(records) == folded
    assert_equivalent(model, deployed, torch.randn(2, 4, 9, 9))


def test_deploy_returns_a_copy_and_keeps_the_original():
    model = randomize_(get("resnet18").build())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = polyexport.deploy(model)
    assert bn_count(model) == 20 and bn_count(deployed) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert_equivalent(model, deployed, torch.randn(2, 3, 64, 64))


class Toy(nn.Module):
    """A test-only 'research layer': y = conv(x) * 2, with a deploy form and a deliberately wrong one."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(x) * 2


def _toy_exact(ref: Toy) -> nn.Module:
    conv = nn.Conv2d(4, 4, 3, 1, 1)
    conv.weight.data, conv.bias.data = ref.conv.weight.data * 2, ref.conv.bias.data * 2
    return conv


register_layer(Toy, [
    Form("doubled", _toy_exact),
    Form("static_only", _toy_exact, dynamic_batch=False),
    Form("runtime_weights", _toy_exact, constant_weights=False),
], prefer={"*": ["static_only", "doubled"], "tensorrt": ["runtime_weights", "doubled"]})


def test_registry_swaps_and_records_then_folds_bn_after_it():
    model = randomize_(nn.Sequential(Toy(), nn.BatchNorm2d(4)), seed=4)
    deployed, records = convert(model)
    assert [(r.name, r.type, r.form) for r in records] == [("0", "Toy", "static_only"), ("1", "BatchNorm2d", "folded")]
    assert_equivalent(model, deployed, torch.randn(2, 4, 8, 8))


def test_form_constraints_dynamic_batch_and_tensorrt():
    model = randomize_(nn.Sequential(Toy()), seed=5)
    _, records = convert(model, dynamic_batch=True)
    assert records[0].form == "doubled"  # the static-batch form is skipped under --dynamic-batch
    _, records = convert(model, target="tensorrt")
    assert records[0].form == "doubled"  # TensorRT never gets computed conv weights unless forced
    _, records = convert(model, target="tensorrt", forms={"Toy": "runtime_weights"})
    assert records[0].form == "runtime_weights"
    with pytest.raises(BadInput, match=r"Toy=static_only cannot be used for 0 \(Toy\): needs a static batch.*would work: doubled, runtime_weights"):
        convert(model, dynamic_batch=True, forms={"Toy": "static_only"})
    _, records = convert(model, forms={"Toy": "reference"})
    assert records[0].form == "reference"


def test_every_layer_plugin_imports_and_registers():
    from polyexport.convert import plugin_errors, registered_layers

    assert plugin_errors() == {}
    for ref_type, entry in registered_layers().items():
        assert entry.forms, f"{ref_type.__name__} registered without forms"
        if not callable(entry.prefer):
            for target, order in entry.prefer.items():
                assert set(order) <= set(entry.forms), f"{ref_type.__name__}: prefer[{target}] names unknown forms"


def test_a_bare_research_layer_is_converted_too():
    """deploy(layer) on the layer itself, not only on a model containing it."""
    layer = randomize_(Toy(), seed=6)
    deployed, records = convert(layer)
    assert isinstance(deployed, nn.Conv2d) and [(r.name, r.form) for r in records] == [("", "static_only")]
    assert_equivalent(layer, deployed, torch.randn(2, 4, 6, 6))
    kept, records = convert(layer, forms={"Toy": "reference"})
    assert isinstance(kept, Toy) and [r.form for r in records] == ["reference"]


def _research_models() -> list[str]:
    """Every zoo model that is not another's plain baseline: those are the ones with research layers (a new zoo
    model is covered without editing a list here)."""
    from polyexport import zoo

    baselines = {zoo.get(n).baseline for n in zoo.names()}
    return [n for n in zoo.names() if n not in baselines]


@pytest.mark.parametrize("name", _research_models())
def test_deploy_shares_the_originals_tensors_and_never_writes_them(name):
    """convert() copies the module tree, not the tensors (modules.structural_copy): a deploy form that wrote
    into a tensor it read would change the user's model. Every zoo model with a research layer, bit for bit."""
    from polyexport.zoo import instantiate

    model = instantiate(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = {k: v.data_ptr() for k, v in model.state_dict().items()}
    deployed, records = convert(model)
    assert any(r.form not in ("reference", "folded", "absorbed") for r in records), "nothing converted"
    after = model.state_dict()
    assert {k: v.data_ptr() for k, v in after.items()} == ids
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])][:3]
    assert all(m is not d for m, d in zip(model.modules(), deployed.modules()))


def _models_with_a_choice() -> list[str]:
    """For each set of layer types found in the research models, where one of them has more than one form, the
    smallest model with that set (a new zoo model, or a new set, is covered without editing a list here)."""
    from polyexport import zoo

    entries = registered_layers()
    smallest: dict[frozenset, tuple[int, str]] = {}
    for name in _research_models():
        if zoo.get(name).inputs:  # dynamic heads take several inputs: their forms are tested in their own files
            continue
        model = zoo.instantiate(name)
        types = frozenset(type(m) for m in model.modules() if type(m) in entries)
        size = sum(p.numel() for p in model.parameters())
        if any(len(entries[t].forms) > 1 for t in types) and size < smallest.get(types, (size + 1, ""))[0]:
            smallest[types] = (size, name)
    return sorted(name for _, name in smallest.values())


class _InTurns:
    """A ranker giving layer i of each type its usable form i mod n: forms sit next to other forms, as a timed mix
    puts them, and every form of the type is used."""

    def __init__(self):
        self.seen: dict[type, int] = {}

    def __call__(self, name, ref, forms):
        i = self.seen.get(type(ref), 0)
        self.seen[type(ref)] = i + 1
        k = i % len(forms)
        return forms[k:] + forms[:k]


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", _models_with_a_choice())
def test_forms_mixed_in_turns_export_and_match(name, dynamic_batch):
    """The form timer mixes forms freely, and each is proven alone; a mix must export too. It did not: after a form
    whose output the exporter could not size (F.pad's Pad), bank_grouped's kernel had an unknown shape and the
    static dy_resnet18, cc_efficientnet_b0 and dy_mobilenetv3_small graphs failed to export."""
    from polyexport import zoo

    model = zoo.instantiate(name)
    entry = zoo.get(name)
    shape = entry.test_shape or entry.input_shape
    deployed, records = convert(model, "onnxruntime", {}, dynamic_batch, False, ranker=_InTurns())
    used = {(r.type, r.form) for r in records}
    assert len({t for t, _ in used}) < len(used), f"no layer type got more than one form: {sorted(used)}"
    check_on_runtimes(model, deployed, [shape], batches=(shape[0], shape[0] + 1), runtimes=["onnxruntime"],
                      dynamic_batch=dynamic_batch)


@pytest.mark.parametrize("name", ["oct_resnet50_a05", "mixnet_s", "ps_resnet50"])
def test_plan_is_what_convert_does_without_building(name):
    """convert.plan gives the forms convert would choose (default order, a forced form) and builds nothing: the
    whole-model check compares assignments before it pays for building any of them."""
    from polyexport.convert import assignment, plan
    from polyexport.zoo import instantiate

    model = instantiate(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_type = next(r.type for r in convert(model, "onnxruntime")[1] if r.form not in ("folded", "absorbed", "reference"))
    for forced in ({}, {layer_type: "reference"}):
        planned = plan(model, "onnxruntime", forced)
        assert planned and assignment(planned) == assignment(convert(model, "onnxruntime", forced)[1])
    assert all(type(m).__module__.startswith(("torch.", "polyexport.layers", "polyexport.zoo")) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
