"""Errors that map to the CLI's exit codes (DESIGN.md: 1 parity, 2 bad input, 3 runtime missing).

Every error a user can cause is raised as one of these, with a one-line message that says what
was wrong and what to do; the CLI prints it and exits with `exit_code`.
"""
from __future__ import annotations


class PolyexportError(Exception):
    exit_code = 2


class BadInput(PolyexportError):
    """The model, its file, a flag or a shape is wrong: nothing is written."""

    exit_code = 2


class RuntimeMissing(PolyexportError):
    """The asked-for runtime (or device) is not installed here."""

    exit_code = 3

    def __init__(self, runtime: str, extra: str | None = None, detail: str = ""):
        hint = f"install it with: pip install 'polyexport[{extra}]'" if extra else ""
        msg = f"runtime '{runtime}' is not available"
        if detail:
            msg += f" ({detail})"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)
        self.runtime = runtime


class ParityFailed(PolyexportError):
    """A runtime's outputs differ from PyTorch's beyond the tolerance (artifacts are kept)."""

    exit_code = 1


class ExportFailed(BadInput):
    """torch.onnx could not export the model; the message names the module that failed."""
