"""Input specifications: parse `--input-shape`, infer a default, make seeded random inputs."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import BadInput

_SHAPE = re.compile(r"^\d+(x\d+)*$")


@dataclass(frozen=True)
class InputSpec:
    """One model input: its example shape and dtype; an integer input (indices) draws from [0, high); `axes` names
    the axes that vary from call to call ({0: "instances"}): every input's axes with one label are one size."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    high: int | None = None
    axes: dict[int, str] = field(default_factory=dict, hash=False)

    def with_batch(self, batch: int) -> "InputSpec":
        return InputSpec(self.name, (batch, *self.shape[1:]), self.dtype, self.high, self.axes)

    def sized(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The shape with its named axes set to `sizes` (by label), the others as in the example."""
        shape = list(self.shape)
        for axis, label in self.axes.items():
            if label in sizes:
                shape[axis] = sizes[label]
        return tuple(shape)

    def as_dict(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.high is not None:
            d["high"] = self.high
        if self.axes:
            d["dynamic_axes"] = {str(k): v for k, v in self.axes.items()}
        return d


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224); anything else is a BadInput with an example."""
    t = text.strip().lower().replace(",", "x").replace("*", "x")
    if not _SHAPE.match(t):
        raise BadInput(f"malformed --input-shape '{text}': expected dimensions joined by 'x', e.g. 1x3x224x224")
    shape = tuple(int(d) for d in t.split("x"))
    if any(d <= 0 for d in shape):
        raise BadInput(f"malformed --input-shape '{text}': every dimension must be positive")
    return shape


def check_input_sizes(shapes: list[tuple[int, ...]]) -> None:
    """Refuse inputs that cannot fit before anything is allocated: the parity inputs are several of each,
    and the model's activations several times more, so no input may take over a quarter of free memory."""
    from .load import available_memory

    free = available_memory()
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        if free and n * 4 > free // 4:
            raise BadInput(f"--input-shape {'x'.join(map(str, shape))} is {n * 4 / 2**30:.1f} GiB as float32, too much for the "
                           f"{free / 2**30:.1f} GiB of memory available (inputs may use a quarter of it)")


def make_specs(shapes: list[tuple[int, ...]]) -> list[InputSpec]:
    if len(shapes) == 1:
        return [InputSpec("input", shapes[0])]
    return [InputSpec(f"input_{i}", s) for i, s in enumerate(shapes)]


def infer_shape(model: nn.Module) -> tuple[tuple[int, ...], str] | None:
    """Guess an input shape from the first layer with weights, and say which layer it came from.

    A guess is only made where the first layer pins the channel count (conv) or feature count
    (linear); the spatial size defaults to ImageNet's 224. Returns None when nothing fits.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return (1, m.in_channels, 224, 224), f"{name} (Conv2d, in_channels={m.in_channels})"
        if isinstance(m, nn.Conv1d):
            return (1, m.in_channels, 224), f"{name} (Conv1d, in_channels={m.in_channels})"
        if isinstance(m, nn.Linear):
            return (1, m.in_features), f"{name} (Linear, in_features={m.in_features})"
        if any(True for _ in m.parameters(recurse=False)):
            return None
    return None


def random_inputs(specs: list[InputSpec], seed: int, batch: int | None = None, sizes: dict[str, int] | None = None) -> list[np.ndarray]:
    """Seeded inputs, reproducible across machines (numpy's PCG64): standard normal floats, integers in [0, high).
    `batch` sets axis 0 of every input; `sizes` sets named axes by label ({"instances": 0})."""
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        shape = s.sized(sizes or {}) if batch is None else (batch, *s.shape[1:])
        if s.dtype.startswith("float"):
            out.append(rng.standard_normal(shape, dtype=np.float32))
        else:
            out.append(rng.integers(0, s.high or 1, shape).astype(s.dtype))
    return out


def to_torch(arrays: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Fresh tensors for one run of a model: copies, not views of the arrays, since a model may write into its
    input (`x.mul_(0.5)`, `x -= mean`) and every run, export and runtime must see the same input."""
    return tuple(torch.from_numpy(np.array(a, order="C", copy=True)) for a in arrays)
