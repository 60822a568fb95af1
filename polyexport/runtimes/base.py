"""The one small interface every runtime sits behind (after Polygraphy's runners).

A runner loads an ONNX file (building whatever artifacts its runtime wants beside it), runs
feeds given as numpy arrays by input name, describes what it actually used (version, threads,
device, precision) and closes. Parity and latency only ever talk to this interface.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class RunnerOptions:
    threads: int | None = None  # None: one per physical core
    device: str = "cpu"
    fp16: bool = False  # reduced precision where the runtime has it (the runner reports what ran)
    keep_fp32: tuple[str, ...] = ()  # modules (PyTorch names) kept in fp32 under fp16, where the runtime allows it
    batch_range: tuple[int, int, int] | None = None  # TensorRT optimization profile (min, opt, max)
    workspace_mb: int = 1024  # TensorRT builder workspace

    def resolved_threads(self) -> int:
        return self.threads or default_threads()


def default_threads() -> int:
    """Physical cores where we can tell, else logical ones: what the runtimes default to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Runner(ABC):
    name: str = "runner"
    keeps_fp32_modules: bool = False  # honours RunnerOptions.keep_fp32 under fp16

    def __init__(self, options: RunnerOptions | None = None):
        self.options = options or RunnerOptions()

    def load(self, onnx_path: str, workdir: str) -> dict[str, str]:
        """Prepare to run `onnx_path`; return the artifacts written into `workdir` by name."""
        return {}

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in graph order, as float32/float64 numpy arrays."""

    @abstractmethod
    def describe(self) -> dict:
        """What was actually used: version, device, threads, precision, providers…"""

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
