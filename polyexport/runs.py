"""Run a graph on a runtime: the one loop every check goes through (after Polygraphy's run/compare split).

`run_graph` loads a graph on a runner and runs each input set, and returns what happened as a typed
`RunResult`: the outputs per input set, or the runtime's own error and what it was doing. It judges
nothing; `parity.judge` compares a RunResult with the reference under a tolerance. The pipeline's
ladder, the automatic form choice, the diagnosis, `polyexport verify`, the tests and the benchmarks
all use this pair. Torch-free: it runs on a device where PyTorch is not installed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Sequence, Tuple

import numpy as np

from .errors import PolyexportError
from .runtimes.base import Runner

#: input set label -> feeds by input name
InputSets = Sequence[Tuple[str, Dict[str, np.ndarray]]]  # typing's generics: JetPack 5's Python 3.8 has no tuple[...] at run time


@dataclass
class RunResult:
    """What one runtime gave for each input set; `error` is set where it could not load or run the graph."""

    runtime: str
    outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    error: str | None = None
    precision: str = "fp32"  # what the runtime ran (precision.normalize of its own report)
    description: dict = field(default_factory=dict)  # runner.describe(): version, threads, device, …
    artifacts: dict[str, str] = field(default_factory=dict)  # files the runner wrote (IR, engine, fp16 graph)
    runner: Runner | None = field(default=None, repr=False)  # still loaded (for timing), unless closed

    @property
    def ok(self) -> bool:
        return self.error is None


def _shapes(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join("x".join(map(str, np.shape(a))) for a in feeds.values())


def run_graph(runtime: str, runner: Runner, graph: str | None, workdir: str, input_sets: InputSets) -> RunResult:
    """Load `graph` on `runner` (None: a runner that needs no graph, e.g. PyTorch itself) and run every input set.

    A runtime that cannot load or run the graph gives a RunResult with its message (one line) and what it
    was doing; polyexport's own errors (a runtime not installed, a bad input) still propagate.
    """
    from .precision import normalize

    result = RunResult(runtime, runner=runner)
    doing = "loading the graph"
    try:
        if graph is not None:
            result.artifacts = runner.load(graph, workdir) or {}
        result.description = runner.describe()
        result.precision = normalize(result.description.get("precision"))
        for label, feeds in input_sets:
            doing = f"running input {label} ({_shapes(feeds)})"
            result.outputs[label] = runner.run(feeds)
    except PolyexportError:
        raise
    except Exception as e:  # noqa: BLE001 - the runtime's failure is the result
        text = " ".join(str(e).split())
        result.error = f"{runtime} failed {doing}: {type(e).__name__}: {text}"
    return result
