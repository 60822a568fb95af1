"""Built-in architectures (`zoo:NAME`): random init, no downloads.

Each model file registers its builders with `register`; this package imports them all, so adding
a model is adding a file.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import BadInput


@dataclass(frozen=True)
class ZooInput:
    """One input of a model that takes several (a dynamic head: shared features, per-instance tensors).

    shape: the example size; `axes` names the axes that vary from call to call ({0: "instances"}), all
    inputs' axes with one label being one size. dtype "int64" inputs are indices drawn from [0, high).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    high: int | None = None
    axes: dict[int, str] = field(default_factory=dict)
    test_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ZooEntry:
    """A built-in model.

    paper: the paper's own figures, checked by tests/test_zoo.py: {"params_m": M parameters,
    "gflops": G multiply-adds at input_shape, "source": "where the figures come from"}, and where
    our count may differ, "params_tol"/"flops_tol" (relative) with "why" saying why.
    test_shape: a smaller input for the parity tests where the architecture allows one.
    randomize: how to give the model realistic random weights (default polyexport.testing.randomize_):
    a model whose random init is numerically chaotic in fp32 (no export could hold parity with it)
    scales what training keeps small.
    count: how the paper counts (params, multiply-adds) of the built model at an input (default
    `count`: every stored parameter, torch's FLOP counter), for a paper that counts otherwise.
    """

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    baseline: str | None = None  # the plain model a paper's model is compared with
    paper: dict | None = None
    test_shape: tuple[int, ...] | None = None
    randomize: Callable[[nn.Module, int], nn.Module] | None = None
    count: Callable[[nn.Module, torch.Tensor], tuple[int, int]] | None = None
    #: several inputs (input_shape is then the first's shape); None for a one-input model
    inputs: tuple[ZooInput, ...] | None = None
    #: the output's dynamic axes where `inputs` name some ({0: "instances"})
    output_axes: dict[int, str] | None = None


_ZOO: dict[str, ZooEntry] = {}


def register(name: str, input_shape: tuple[int, ...] = (1, 3, 224, 224), baseline: str | None = None,
             paper: dict | None = None, test_shape: tuple[int, ...] | None = None,
             randomize: Callable[[nn.Module, int], nn.Module] | None = None,
             count: Callable[[nn.Module, torch.Tensor], tuple[int, int]] | None = None,
             inputs: tuple[ZooInput, ...] | None = None, output_axes: dict[int, str] | None = None):
    if inputs:
        input_shape = inputs[0].shape

    def deco(fn: Callable[[], nn.Module]):
        _ZOO[name] = ZooEntry(name, fn, input_shape, baseline, paper, test_shape, randomize, count, inputs, output_axes)
        return fn

    return deco


def instantiate(name: str, seed: int = 0) -> nn.Module:
    """The zoo model with seeded random weights and random BN statistics, in eval mode (tests, benchmarks)."""
    from ..modules import set_eval
    from ..testing import randomize_

    entry = get(name)
    return set_eval((entry.randomize or randomize_)(entry.build(), seed))


def dynamic_axes(entry: ZooEntry) -> dict[str, dict[int, str]]:
    """export_onnx's `dynamic_axes` for a multi-input entry (inputs by name, the one output as "output")."""
    axes = {i.name: dict(i.axes) for i in entry.inputs or () if i.axes}
    if entry.output_axes:
        axes["output"] = dict(entry.output_axes)
    return axes


def input_specs(entry: ZooEntry, test: bool = False) -> list | None:
    """The pipeline's InputSpecs of a multi-input entry (None for a one-input model); `test`: the test shapes."""
    from ..inputs import InputSpec

    if not entry.inputs:
        return None
    return [InputSpec(i.name, tuple(i.test_shape if test and i.test_shape else i.shape), i.dtype, i.high, dict(i.axes)) for i in entry.inputs]


def example_inputs(entry: ZooEntry, seed: int = 0, sizes: dict[str, int] | None = None, test: bool = False) -> list[np.ndarray]:
    """Seeded inputs of a multi-input entry: standard normal floats, indices in [0, high).

    `sizes` sets the named axes ({"instances": 0}); `test` takes each input's test_shape where it has one.
    """
    rng = np.random.default_rng(seed)
    out = []
    for spec in entry.inputs or ():
        shape = list(spec.test_shape if test and spec.test_shape else spec.shape)
        for axis, label in spec.axes.items():
            if sizes and label in sizes:
                shape[axis] = sizes[label]
        if spec.dtype == "float32":
            out.append(rng.standard_normal(shape, dtype=np.float32))
        else:
            out.append(rng.integers(0, spec.high, shape).astype(spec.dtype))
    return out


def count(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(parameters, multiply-adds) of one forward at `x`: every stored parameter, and torch's FLOP counter
    (convolutions and matmuls, 2 FLOPs per multiply-add) halved."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def names() -> list[str]:
    _load_all()
    return sorted(_ZOO)


def get(name: str) -> ZooEntry:
    _load_all()
    if name not in _ZOO:
        raise BadInput(f"unknown zoo model '{name}'; known: {', '.join(sorted(_ZOO))}")
    return _ZOO[name]
