"""The run's record: report.json (the contract in DESIGN.md; extend, don't rename) and report.md."""
from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class Report:
    model: str
    target: str
    layers: list[dict] = field(default_factory=list)
    parity: dict[str, dict] = field(default_factory=dict)
    latency_ms: dict[str, dict] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    runtimes: dict[str, dict] = field(default_factory=dict)  # what each runner actually used
    inputs: list[dict] = field(default_factory=list)
    export: dict = field(default_factory=dict)
    deploy: bool = True
    notes: list[str] = field(default_factory=list)
    form_choices: list[dict] = field(default_factory=list)  # per layer: each form's measured latency and the choice
    first_failing_stage: str | None = None  # the first rung of the ladder that failed
    explain: dict | None = None  # the first diverging module at that stage (explain.py)
    precision: dict[str, dict] = field(default_factory=dict)  # with --fp16, per runtime: asked, ran, modules kept in fp32
    warnings: list[str] = field(default_factory=list)  # what makes the reference a poor witness (parity.reference_warnings)
    noise_floor: dict = field(default_factory=dict)  # the reference's own fp32 rounding per output (noise_floor.py)
    tensorrt_check: dict[str, list[dict]] = field(default_factory=dict)  # TensorRT version -> parser rule findings
    stand_in: dict | None = None  # the runtime that stood in for the target's own (TensorRT not installed here)
    device_commands: dict[str, dict] = field(default_factory=dict)  # TensorRT version -> the verify and trtexec lines
    parity_sets: list[dict] = field(default_factory=list)  # the input sets every stage was checked on: label, input shapes
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase of the run
    peak_rss_mb: float | None = None  # the process's peak resident memory when the report was made
    out: str = ""  # where the artifacts were written (not in report.json: that is written before they move there)

    @property
    def passed(self) -> bool:
        return all(p.get("passed") for p in self.parity.values())

    def layer_counts(self) -> dict[str, int]:
        """converted (a deploy form), kept (as reference), folded (a BatchNorm merged into the conv before it),
        absorbed (a conv that took a neighbour into its weights, e.g. a channel permutation)."""
        counts = {"converted": 0, "kept": 0, "folded": 0, "absorbed": 0}
        for l in self.layers:
            counts[{"reference": "kept", "folded": "folded", "absorbed": "absorbed"}.get(l["form"], "converted")] += 1
        return counts

    def layer_summary(self) -> str:
        c = self.layer_counts()
        return (f"{c['converted']} layer(s) converted, {c['kept']} kept as reference, {c['folded']} BatchNorm folded, "
                f"{c['absorbed']} conv(s) absorbed a neighbour")

    def failed_runtimes(self) -> list[str]:
        return [k for k, p in self.parity.items() if not p.get("passed")]

    def as_dict(self) -> dict:
        return {
            "model": self.model, "target": self.target, "deploy": self.deploy, "passed": self.passed,
            "layers": self.layers, "parity": self.parity, "latency_ms": self.latency_ms,
            "artifacts": self.artifacts, "versions": self.versions, "runtimes": self.runtimes,
            "inputs": self.inputs, "export": self.export, "notes": self.notes,
            "form_choices": self.form_choices, "first_failing_stage": self.first_failing_stage, "explain": self.explain,
            "precision": self.precision, "warnings": self.warnings, "noise_floor": self.noise_floor,
            "parity_sets": self.parity_sets, "timings": self.timings, "peak_rss_mb": self.peak_rss_mb, "tensorrt_check": self.tensorrt_check,
            "stand_in": self.stand_in, "device_commands": self.device_commands,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def to_markdown(self) -> str:
        from .report_md import render

        return render(self.as_dict())
