"""The forms a cold run does not time: measured far behind the fastest on every layer shape (issue 13).

Timing a form costs an export, a session and a race (about 0.1-0.2 s each, 84 of them for CondConv-EfficientNet-B0),
and some forms never come near winning on a CPU runtime: CondConv's `output_aggregation` (every expert's conv run,
then mixed) was at least 1.5x the fastest form on every signature of every zoo model. form_prior.json lists those,
per runtime and layer type, as measured by `python benchmarks/form_prior.py --write-prior` (its table:
benchmarks/results/form_prior.md). It holds for the CPU devices it was measured on; elsewhere (a GPU provider) every
form is timed, as it is with `--form thorough`.
"""
from __future__ import annotations

import functools
import json
import os

PRIOR_PATH = os.path.join(os.path.dirname(__file__), "form_prior.json")


@functools.lru_cache(maxsize=None)
def _load() -> dict[str, dict[str, list[str]]]:
    with open(PRIOR_PATH) as f:
        return json.load(f)["skip"]


def skip_forms(runtime: str, device: str = "cpu") -> dict[str, list[str]]:
    """Layer type -> the forms not to time on `runtime` (empty off the CPU, where nothing was measured)."""
    if device != "cpu":
        return {}
    return {typ: list(forms) for typ, forms in _load().get(runtime, {}).items()}
