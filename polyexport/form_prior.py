"""The forms a cold run does not time: measured far behind the fastest on every layer shape (issue 13).

Timing a form costs an export, a session and a race (about 0.1-0.2 s each, 84 of them for CondConv-EfficientNet-B0),
and some forms never come near winning on a CPU runtime: CondConv's `output_aggregation` (every expert's conv run,
then mixed) was at least 1.5x the fastest form on every signature of every zoo model. form_prior.json lists those,
per runtime and layer type, as measured by `python benchmarks/form_prior.py --write-prior` (its table:
benchmarks/results/form_prior.md). It holds for the CPU devices it was measured on; elsewhere (a GPU provider) every
form is timed, as it is with `--form thorough`. Kernel-bank layers (CondConv, DY-Conv) are keyed by their kind of
conv as well (`CondConv2d/depthwise`): which of their forms lose by far depends on it (a batched MatMul is a fine
1x1 conv and a 4-15x slower depthwise one).
"""
from __future__ import annotations

import functools
import json
import os

from torch import nn

PRIOR_PATH = os.path.join(os.path.dirname(__file__), "form_prior.json")


@functools.lru_cache(maxsize=None)
def _load() -> dict[str, dict[str, list[str]]]:
    with open(PRIOR_PATH) as f:
        return json.load(f)["skip"]


def skip_forms(runtime: str, device: str = "cpu") -> dict[str, list[str]]:
    """Layer key (prior_key) -> the forms not to time on `runtime` (empty off the CPU, where nothing was measured)."""
    if device != "cpu":
        return {}
    return {key: list(forms) for key, forms in _load().get(runtime, {}).items()}


def prior_key(ref: nn.Module) -> str:
    """The layer's type, with its kind of conv for a kernel-bank layer (one with `groups` and an input channel count)."""
    from .deploy_layers._kernel_bank import conv_kind

    name = type(ref).__name__
    if isinstance(getattr(ref, "groups", None), int) and (hasattr(ref, "in_channels") or hasattr(ref, "in_planes")):
        return f"{name}/{conv_kind(ref)}"
    return name
