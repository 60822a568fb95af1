"""Benchmark cases for benchmarks/layers.py: one file per layer, each defining `cases()`.

A case is one layer at one realistic shape: the reference module (exported as it is), each deploy
form, and the yardstick (a plain nn.Conv2d with the same input, output and kernel size).
The harness exports each module to ONNX, times it on ONNX Runtime and OpenVINO side by side,
and prints latency ratios to the yardstick with FLOPs ratios beside them.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

from torch import nn


@dataclass
class BenchCase:
    layer: str  # e.g. "PSConv2d"
    config: str  # short description, e.g. "c256 k3 s1 parts4 @14x14"
    input_shape: tuple  # batch 1 (the harness may vary batch for dynamic layers); a list of shapes for several inputs
    reference: nn.Module  # trained-form layer in eval mode (random weights, random BN stats)
    forms: dict[str, nn.Module]  # form name -> deploy module (built with to_deploy)
    yardstick: nn.Module  # plain nn.Conv2d(in, out, k, stride, padding) of the same shape
    notes: dict[str, str] = field(default_factory=dict)  # form -> what it gives (dynamic batch, const weights…)


def all_cases(only: list[str] | None = None) -> list[BenchCase]:
    out: list[BenchCase] = []
    for info in pkgutil.iter_modules(__path__):
        if only and info.name not in only:
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        out.extend(mod.cases())
    return out
