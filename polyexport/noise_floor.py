"""The reference model's own fp32 rounding, measured: its output against the same model in float64.

A deep network accumulates rounding layer by layer; two exact fp32 computations of it (PyTorch's and a
runtime's, with other summation orders) differ by about that much. parity.py judges every stage against
a multiple of this floor as well as the fixed tolerance, so an exact rewrite of a deep net passes while
an error well above the floor still fails.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .exporter import flatten_outputs
from .inputs import to_torch
from .modules import set_eval, structural_copy


@dataclass
class NoiseFloor:
    per_output: list[float]  # max |fp32 − fp64| / max |fp64| for each output; empty when not measured
    note: str = ""  # why it was not measured, if it was not

    def as_dict(self) -> dict:
        return {"per_output": self.per_output, **({"note": self.note} if self.note else {})}


def float64_twin(model: nn.Module) -> nn.Module:
    """The model in float64, sharing nothing it could write into: a structural copy (modules.structural_copy)
    whose float parameters and buffers are replaced by float64 copies in the copy's own tables (`.double()`
    would convert the shared Parameter objects in place, and so the original)."""
    twin = structural_copy(model)
    for m in twin.modules():
        for key, p in m._parameters.items():
            if p is not None and p.is_floating_point():
                m._parameters[key] = nn.Parameter(p.detach().double(), requires_grad=False)
        for key, b in m._buffers.items():
            if b is not None and b.is_floating_point():
                m._buffers[key] = b.double()
    return set_eval(twin)


def measure_noise_floor(model: nn.Module, arrays: list[np.ndarray], first_sample: bool = True) -> NoiseFloor:
    """The noise floor of each output, from the first sample of `arrays` (the relative error does not depend
    on the batch; one sample keeps the float64 forward, slow on CPUs, cheap), or from all of them where axis 0
    is not a batch (`first_sample=False`: a dynamic head's instances). Integer inputs stay integers. A model that cannot run in float64 (a tensor made float32 in its forward meeting a
    float64 weight) gets no floor, and the fixed tolerance alone applies."""
    sample = [a[:1] for a in arrays] if first_sample else arrays
    try:
        with torch.no_grad():  # fresh inputs for each run (to_torch): a model may write into them
            refs = [t.detach().double().numpy() for t in flatten_outputs(model(*to_torch(sample)))]
            exact = flatten_outputs(float64_twin(model)(*(a.double() if a.is_floating_point() else a for a in to_torch(sample))))
    except Exception as e:  # noqa: BLE001 - the model's own limitation; the fixed tolerance still applies
        return NoiseFloor([], f"not measured: the model does not run in float64 ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
    if len(exact) != len(refs):
        return NoiseFloor([], "not measured: the float64 model returns another number of outputs")
    floors = []
    for ref, ex in zip(refs, exact):
        ex = ex.detach().double().numpy()
        if ex.shape != ref.shape or not np.all(np.isfinite(ex)) or not np.all(np.isfinite(ref)):
            floors.append(0.0)
            continue
        scale = float(np.abs(ex).max()) if ex.size else 0.0
        floors.append(float(np.abs(ref - ex).max()) / scale if scale > 0 else 0.0)
    return NoiseFloor(floors)
