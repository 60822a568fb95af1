"""Shared by the benchmark scripts: export a module, make runners, count FLOPs, format tables."""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from polyexport.exporter import export_onnx, flatten_outputs  # noqa: E402
from polyexport.runtimes import RunnerOptions, installed, make_runner  # noqa: E402


def flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward (torch.utils.flop_counter: 2 per multiply-add, convs and matmuls)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def n_outputs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """How many tensors the module returns (a detector returns one map per level): what export_onnx's n_outputs wants."""
    with torch.no_grad():
        return len(flatten_outputs(module(*inputs)))


def load_runner(runtime: str, module: nn.Module, example: tuple[torch.Tensor, ...], workdir: str, tag: str,
                threads: int, dynamic_batch: bool = False):
    """Export `module` (as it is) to workdir/tag.onnx and return a loaded runner, or the error text."""
    path = os.path.join(workdir, f"{tag}.onnx")
    names = ["input"] if len(example) == 1 else [f"input_{i}" for i in range(len(example))]
    try:
        if not os.path.exists(path):
            export_onnx(module, example, path, input_names=names, n_outputs=n_outputs(module, *example), dynamic_batch=dynamic_batch)
        runner = make_runner(runtime, RunnerOptions(threads=threads))
        sub = os.path.join(workdir, f"{tag}-{runtime}")
        os.makedirs(sub, exist_ok=True)
        runner.load(path, sub)
        feeds = {n: t.numpy() for n, t in zip(names, example)}
        return runner, feeds
    except Exception as e:  # noqa: BLE001 - a failure is a result too
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"


def replace_rows(saved: list[dict], fresh: list[dict], key) -> list[dict]:
    """A --merge: the saved rows with each one `key` matches in `fresh` replaced in place, the new ones appended."""
    by_key = {key(r): r for r in fresh}
    return [by_key.pop(key(r), r) for r in saved] + list(by_key.values())


def paper_models() -> list[str]:
    """The zoo's paper models: those with a plain baseline to compare with (the tests' own models left out)."""
    from polyexport import zoo

    return [n for n in zoo.names() if zoo.get(n).baseline and not n.startswith("test_")]


def runtimes_here(requested: list[str] | None) -> list[str]:
    have = [r for r in installed() if r != "tensorrt"]
    return [r for r in (requested or have) if r in have]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_outputs(args, markdown: str, record: dict) -> None:
    """The two results every benchmark keeps: --markdown (the table docs/results.md links) and --json."""
    import json

    if getattr(args, "markdown", None):
        with open(args.markdown, "w") as f:
            f.write(markdown.rstrip() + "\n")
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), **record}, f, indent=1)


def machine() -> str:
    import platform

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return f"{cpu or platform.processor()} ({os.cpu_count()} logical cores), {platform.system()}"


__all__ = ["flops", "load_runner", "runtimes_here", "md_table", "machine", "write_outputs", "np"]
