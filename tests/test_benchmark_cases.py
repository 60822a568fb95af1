"""Every registered layer is benchmarked: a layer case (benchmarks/layer_cases/, timed by benchmarks/layers.py), or,
for a layer that case harness cannot hold, the script named here that times its forms."""
from __future__ import annotations

import os
import sys

from polyexport.convert import registered_layers

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
#: layer type -> the benchmark that times its forms instead of a layer case (several inputs with named axes)
ELSEWHERE = {"CondInstMaskHead": "heads.py", "DyCo3DMaskHead": "heads.py"}


def test_every_registered_layer_has_a_benchmark():
    sys.path.insert(0, BENCHMARKS)
    try:
        from layer_cases import all_cases
    finally:
        sys.path.remove(BENCHMARKS)
    benchmarked = {case.layer for case in all_cases()}
    ours = {t.__name__ for t in registered_layers() if t.__module__.startswith("polyexport.")}
    missing = sorted(ours - benchmarked - set(ELSEWHERE))
    assert not missing, f"registered layers without a benchmark case: {missing}"
    assert all(os.path.isfile(os.path.join(BENCHMARKS, script)) for script in ELSEWHERE.values())


def test_cases_take_their_notes_from_the_registry():
    """A case's notes are its forms' own (registry), never retyped: they cannot drift."""
    sys.path.insert(0, BENCHMARKS)
    try:
        from layer_cases import all_cases
    finally:
        sys.path.remove(BENCHMARKS)
    notes = {(t.__name__, name): form.note for t, e in registered_layers().items() for name, form in e.forms.items()}
    for case in all_cases():
        for form, note in case.notes.items():
            if (case.layer, form) in notes:
                assert note == notes[(case.layer, form)], (case.layer, form)
