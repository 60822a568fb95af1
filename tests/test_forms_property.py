"""Property tests: every registered deploy form is exact on random valid configurations of its layer.

For each (layer type, form) hypothesis draws configurations (tests/layer_configs.py: odd channel
counts, groups, stride 2, dilation, odd non-square sizes, batch 1–5, bias on/off, random BN statistics,
subclassed norms, 'same'-padded neighbours, edge scales). Where `form.exact_for` accepts one, the
model deployed through `convert` (the form forced, BN folded, next convs absorbed) must equal the
reference in PyTorch within RTOL of the output's scale; every few examples it is also exported and run
on ONNX Runtime: one graph at two batches where the form claims a dynamic batch, and every Conv weight
a constant where it claims constant weights. Fixed seed (derandomize), no deadline.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from polyexport.runtimes import installed
from polyexport.testing import RTOL
from tests.layer_configs import LayerCase, cases_for, check_form, missing_generators, registered_pairs

PAIRS = registered_pairs()
#: examples per (layer, form): ~55 pairs, ~450 examples in all. More where the neighbours vary most
#: (what follows an SPD layer, OctConv's norm layers and paddings, MixConv's padding kinds).
EXAMPLES = {"space_to_depth": 24, "SPDConv": 12, "OctaveConv": 8, "Conv_BN": 10, "Conv_BN_ACT": 10, "MixedConv2d": 10}
DEFAULT_EXAMPLES = 6
#: one example in RUNTIME_EVERY also goes through ONNX Runtime
RUNTIME_EVERY = 2


def property_settings(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_every_layer_has_a_generator():
    assert missing_generators() == [], "registered layer types without a configuration generator"


@pytest.mark.parametrize("layer_type,form", PAIRS, ids=[f"{t.__name__}-{f.name}" for t, f in PAIRS])
def test_form_exact_on_random_configs(layer_type, form):
    runtimes = ["onnxruntime"] if "onnxruntime" in installed() else []
    seen = {"examples": 0, "accepted": 0}
    declined: set[str] = set()
    examples = EXAMPLES.get(layer_type.__name__, DEFAULT_EXAMPLES)

    @property_settings(examples)
    @given(case=cases_for(layer_type))
    def check(case: LayerCase) -> None:
        on_runtime = seen["examples"] % RUNTIME_EVERY == 0
        seen["examples"] += 1
        result = check_form(case, form, runtimes if on_runtime else ())
        if result.declined is None:
            seen["accepted"] += 1
        else:
            declined.add(result.declined)
        problems = result.mismatches(RTOL)
        assert not problems, f"{form.name} on {case.label}: " + "; ".join(problems)

    check()
    assert seen["examples"] >= examples
    if not seen["accepted"]:  # e.g. a 1×1-only form of a layer type that is always 3×3: said, not hidden
        pytest.skip(f"exact_for declined all {seen['examples']} configurations: {'; '.join(sorted(declined))}")
