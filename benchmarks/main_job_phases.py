"""Where a cold run's form choice spends its time, without a profiler (cProfile inflates the Python-heavy export).

Runs `polyexport ARGS...` in this process with the form timer's calls wrapped by wall clocks: export, load and
first run, race, and the whole-model check, split into single-layer and whole-model work. Use an empty cache:

    POLYEXPORT_CACHE=/tmp/empty.json python benchmarks/main_job_phases.py zoo:cc_efficientnet_b0 --target onnxruntime \
        --threads 2 --out /tmp/o --force --no-bench
"""
from __future__ import annotations

import collections
import functools
import sys
import time

from polyexport import autoform, cli

spent: collections.Counter = collections.Counter()
calls: collections.Counter = collections.Counter()
state = {"whole": False}


def wrap(owner, name: str, label: str) -> None:
    f = getattr(owner, name)

    @functools.wraps(f)
    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            key = ("whole model: " if state["whole"] else "layers: ") + label
            spent[key] += time.perf_counter() - t0
            calls[key] += 1
    setattr(owner, name, timed)


def main() -> None:
    for name, label in [("export_onnx", "export"), ("run_graph", "load and first run"), ("race", "race")]:
        wrap(autoform, name, label)
    whole_models = autoform.FormTimer.whole_models

    def checked(self, *a, **k):
        state["whole"] = True
        t0 = time.perf_counter()
        try:
            return whole_models(self, *a, **k)
        finally:
            spent["whole model: total"] += time.perf_counter() - t0
            state["whole"] = False
    autoform.FormTimer.whole_models = checked
    t0 = time.perf_counter()
    try:
        cli.main(sys.argv[1:])
    except SystemExit:
        pass
    print(f"\nwhole run {time.perf_counter() - t0:.1f} s")
    for k, v in sorted(spent.items()):
        print(f"{k:36s} {v:6.1f} s  ({calls[k]} calls)")


if __name__ == "__main__":
    main()
