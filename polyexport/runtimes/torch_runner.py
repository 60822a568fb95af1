"""PyTorch eager: the reference every runtime is compared with, and the latency baseline."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..inputs import to_torch
from ..outputs import flatten_outputs
from .base import Runner, RunnerOptions


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model: nn.Module, input_names: list[str], options: RunnerOptions | None = None):
        super().__init__(options)
        model.eval()  # its return value is not trusted: many codebases' train() returns None
        self.model = model
        self.input_names = input_names
        self._threads = self.options.resolved_threads()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        previous = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            args = to_torch([feeds[n] for n in self.input_names])  # copies: the model may write into its input
            with torch.no_grad():  # not inference_mode: see pipeline._run_reference
                out = self.model(*args)
            return [t.detach().float().numpy() for t in flatten_outputs(out)]
        finally:
            torch.set_num_threads(previous)

    def describe(self) -> dict:
        return {"version": torch.__version__, "device": "cpu", "threads": self._threads, "precision": "fp32", "mode": "eager, no_grad"}
