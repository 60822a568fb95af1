"""DO-Conv (DOConv2d): what the contract tests cannot know. The reference is the official layer (bit for bit, same
initialisation, same state_dict), the adapter takes the official class and declines look-alikes, and the two
official quirks the deploy form has to keep (the padding axes swapped in non-zero modes, the D channel used by
grouped kernels) are pinned by examples."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from polyexport.adapters.do_conv import matches
from polyexport.convert import convert, to_deploy
from polyexport.layers.do_conv import DOConv2d
from polyexport.testing import max_rel_err, randomize_
from tests.foreign.do_conv import DOConv2d as OfficialDOConv2d

#: (in, out, kernel, kwargs): dense, grouped, depthwise with a multiplier, 1×1 (no D), non-square, D_mul below and
#: above M·N, every padding mode with unequal pads, string pads, stride and dilation
CONFIGS = [
    (8, 16, 3, {}),
    (6, 9, 3, dict(groups=3, D_mul=12, stride=2, padding=1)),
    (4, 8, 3, dict(groups=4, padding=(1, 2), dilation=2)),
    (5, 7, 1, dict(bias=False)),
    (6, 4, (3, 2), dict(D_mul=4, padding=(2, 1), stride=(2, 1))),
    (6, 6, 3, dict(padding=(1, 2), padding_mode="reflect")),
    (6, 6, (2, 3), dict(groups=2, padding=(0, 2), padding_mode="replicate", D_mul=9)),
    (4, 6, 3, dict(groups=2, padding=(2, 1), padding_mode="circular", bias=False)),
    (4, 4, 2, dict(padding="same", dilation=1)),
    (4, 4, 3, dict(padding="valid", D_mul=3)),
]
IDS = [f"c{c[0]}-{c[1]} k{c[2]} {c[3]}" for c in CONFIGS]


def _official(cfg, seed: int = 0) -> OfficialDOConv2d:
    cin, cout, k, kw = cfg
    return randomize_(OfficialDOConv2d(cin, cout, k, **kw), seed)


def _reference_of(official: OfficialDOConv2d, cfg) -> DOConv2d:
    cin, cout, k, kw = cfg
    ref = DOConv2d(cin, cout, k, **kw)
    ref.load_state_dict(official.state_dict(), strict=True)
    return ref.eval()


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_reference_is_the_official_layer_bit_for_bit(cfg):
    official = _official(cfg, seed=1)
    ref = _reference_of(official, cfg)
    x = torch.randn(2, cfg[0], 9, 8)
    with torch.no_grad():
        want, got = official(x), ref(x)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_same_seed_same_initialisation_and_state_dict(cfg):
    """A freshly built reference is the official one: D zero, d_diag the identity, W and bias drawn alike."""
    cin, cout, k, kw = cfg
    torch.manual_seed(3)
    official = OfficialDOConv2d(cin, cout, k, **kw)
    torch.manual_seed(3)
    ref = DOConv2d(cin, cout, k, **kw)
    want, got = official.state_dict(), ref.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert [n for n, p in ref.named_parameters() if not p.requires_grad] == [n for n, p in official.named_parameters()
                                                                             if not p.requires_grad]


def test_a_checkpoint_of_another_layout_is_refused_with_its_shapes():
    official = OfficialDOConv2d(8, 16, 3, D_mul=12)
    with pytest.raises(RuntimeError, match=r"size mismatch for W.*\[16, 8, 12\].*\[16, 8, 9\]"):
        DOConv2d(8, 16, 3).load_state_dict(official.state_dict(), strict=True)


@pytest.mark.parametrize("kwargs,match", [
    (dict(padding="same", padding_mode="reflect"), "padding_mode='zeros'"),
    (dict(padding="same", stride=2), "strided"),
    (dict(padding="full"), "'same' or 'valid'"),
    (dict(D_mul=0), "D_mul must be >= 1"),
    (dict(groups=3), "divisible by groups"),
])
def test_configurations_the_official_layer_cannot_run_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DOConv2d(4, 8, 3, **kwargs)


def test_non_zero_padding_modes_pad_width_by_the_first_number():
    """Known-hard: the official F.pad(x, (ph, ph, pw, pw)) pads width by ph and height by pw. The deploy conv keeps
    that (a conv padded the usual way has another output shape), and so does a deployed model."""
    cfg = (6, 6, 3, dict(padding=(1, 2), padding_mode="reflect"))
    ref = _reference_of(_official(cfg, seed=2), cfg)
    x = torch.randn(3, 6, 9, 8)
    with torch.no_grad():
        out = ref(x)
    assert out.shape == (3, 6, 9 + 2 * 2 - 2, 8 + 2 * 1 - 2)
    dep = to_deploy(ref, "conv")
    assert isinstance(dep, nn.Conv2d) and dep.padding == (2, 1) and dep.padding_mode == "reflect"
    with torch.no_grad():
        assert max_rel_err(out, dep(x)) <= 1e-6


def test_grouped_kernels_use_the_official_d_channel():
    """Known-hard: with groups > 1 and out != in, output o's kernel on its group's input i composes D of input
    (o mod groups)·(in/groups) + i, not of the channel it multiplies; the deploy form must compose the same."""
    cfg = (4, 8, 3, dict(groups=2))
    ref = _reference_of(_official(cfg, seed=5), cfg)
    dep = to_deploy(ref, "conv")
    w, d = ref.W.detach().double(), (ref.D + ref.d_diag).detach().double()
    per_in = 4 // 2
    naive = torch.stack([torch.einsum("ims,is->im", d[(o // 4) * per_in:(o // 4 + 1) * per_in], w[o]) for o in range(8)])
    official = torch.stack([torch.einsum("ims,is->im", d[(o % 2) * per_in:(o % 2 + 1) * per_in], w[o]) for o in range(8)])
    got = dep.weight.detach().double().reshape(8, per_in, 9)
    assert torch.allclose(got, official.float().double(), rtol=0, atol=1e-6)
    assert not torch.allclose(got, naive, atol=1e-3), "the example does not tell the two compositions apart"


def test_deploy_reads_the_reference_and_never_writes_it():
    cfg = CONFIGS[1]
    ref = _reference_of(_official(cfg, seed=6), cfg)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    dep = to_deploy(ref, "conv")
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    assert all(p.data_ptr() not in {q.data_ptr() for q in ref.parameters()} for p in dep.parameters())


def test_a_model_of_official_layers_deploys_to_plain_convs_with_bn_folded():
    model = randomize_(nn.Sequential(OfficialDOConv2d(6, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
                                     OfficialDOConv2d(12, 12, 3, stride=2, padding=1, groups=12, bias=False),
                                     nn.BatchNorm2d(12), OfficialDOConv2d(12, 5, 1)), seed=7)
    deployed, records = convert(model)
    assert [(r.name, r.form) for r in records] == [("0", "conv"), ("3", "conv"), ("5", "conv"), ("1", "folded"),
                                                   ("4", "folded")]
    assert all("do-conv/DOConv2d" in r.note for r in records if r.form == "conv")
    assert {type(m) for m in deployed.modules()} == {nn.Sequential, nn.Conv2d, nn.Identity, nn.ReLU}
    x = torch.randn(2, 6, 11, 10)
    with torch.no_grad():
        assert max_rel_err(model(x), deployed(x)) <= 1e-5


class ConvSubclassDOConv2d(nn.Conv2d):
    """A look-alike seen in other repositories: a DOConv2d that is an nn.Conv2d with a plain weight."""


class FlatDOConv2d(nn.Module):
    """Named DOConv2d, official attributes, but W flattened (out, in·D_mul): another layout."""

    def __init__(self):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size, self.groups, self.D_mul = 4, 8, (3, 3), 1, 9
        self.stride, self.padding, self.dilation, self.padding_mode = (1, 1), (1, 1), (1, 1), "zeros"
        self.W = nn.Parameter(torch.zeros(8, 36))
        self.D = nn.Parameter(torch.zeros(4, 9, 9))
        self.d_diag = nn.Parameter(torch.zeros(4, 9, 9), requires_grad=False)


ConvSubclassDOConv2d.__name__ = FlatDOConv2d.__name__ = "DOConv2d"


@pytest.mark.parametrize("module", [
    OfficialDOConv2d(4, 8, 3), OfficialDOConv2d(4, 8, 1), OfficialDOConv2d(6, 6, (3, 2), D_mul=7, groups=6)])
def test_the_adapter_takes_the_official_class(module):
    assert matches(module)


@pytest.mark.parametrize("module", [ConvSubclassDOConv2d(4, 8, 3), FlatDOConv2d(), DOConv2d(4, 8, 3), nn.Conv2d(4, 8, 3)],
                         ids=["conv-subclass", "flat-W", "ours", "conv"])
def test_the_adapter_declines_look_alikes(module):
    assert not matches(module)
