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
            "timings": self.timings, "peak_rss_mb": self.peak_rss_mb, "tensorrt_check": self.tensorrt_check,
            "stand_in": self.stand_in, "device_commands": self.device_commands,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def to_markdown(self) -> str:
        lines = [f"# polyexport report: {self.model} → {self.target}", ""]
        verdict = "**parity held**" if self.passed else f"**parity FAILED** on {', '.join(self.failed_runtimes())}"
        lines += [f"Result: {verdict}. Deploy forms {'applied' if self.deploy else 'not applied (--no-deploy)'}.", ""]
        shapes = ", ".join(f"`{i['name']}` {'×'.join(map(str, i['shape']))}" for i in self.inputs)
        ex = self.export
        lines += [f"Inputs: {shapes}. Export: {ex.get('exporter')} exporter, opset {ex.get('opset')}, "
                  f"{ex.get('simplifier')}, {'dynamic' if ex.get('dynamic_batch') else 'static'} batch, "
                  f"{ex.get('nodes')} nodes, {ex.get('seconds', 0):.2f} s.", ""]
        if self.warnings:
            lines += ["## Warnings", ""] + [f"- {w}" for w in self.warnings] + [""]
        if self.stand_in:
            lines += ["## TensorRT: not run here", "",
                      f"{self.stand_in['why']}: parity was proven on **{self.stand_in['runtime']}** (CPU) as a stand-in, which says the graph "
                      "computes the model's function, not what TensorRT's kernels will give. Forms: "
                      f"{self.stand_in['forms']}. Next: {self.stand_in['next']}.", ""]
        if self.tensorrt_check:
            lines += ["## TensorRT parser rules (the written graph)", "", "| version | errors | warnings |", "|---|---|---|"]
            for v, findings in self.tensorrt_check.items():
                lines.append(f"| {v} | {sum(f['severity'] == 'error' for f in findings)} | {sum(f['severity'] == 'warning' for f in findings)} |")
            warned = [(v, f) for v, fs in self.tensorrt_check.items() for f in fs if f["severity"] == "warning"]
            lines += [""] + [f"- {v}: {f['message']} (node `{f['node']}`{', module `' + f['module'] + '`' if f.get('module') else ''})"
                             for v, f in warned[:10]] + [""]
        if self.device_commands:
            lines += ["## On the device", "", "From the output folder, on the device:", ""]
            for v, cmds in self.device_commands.items():
                lines += [f"TensorRT {v}:", "", "```", cmds["verify"], cmds["trtexec"], "```", ""]
                if cmds.get("note"):
                    lines += [cmds["note"], ""]
        if self.parity:
            lines += ["## Parity with PyTorch", "",
                      "| stage / runtime | precision | max abs err | max err / scale | allowed err / scale | cosine | top-1 / top-5 agree | comparisons | passed |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for k, p in self.parity.items():
                topk = f"{p['top1_agreement']:.1%} / {p['top5_agreement']:.1%} of {p['topk_samples']}" if p.get("topk_samples") else "-"
                allowed = f"{p.get('effective_rtol', p['rtol']):.3g} (atol {p['atol']:g})"
                verdict = "yes" if p["passed"] else "**no**: " + "; ".join(p.get("problems") or [p.get("error") or "error too large"])
                lines.append(f"| {k} | {p.get('precision', 'fp32')} | {p['max_abs_err']:.3g} | {p['max_rel_err']:.3g} | {allowed} | {p['cosine']:.9f} | "
                             f"{topk} | {p.get('comparisons', '')} | {verdict} |")
            floor = self.noise_floor.get("per_output") or []
            noise = (f"the reference model's own fp32 rounding, measured against float64, is {max(floor):.3g} of the output's scale"
                     if floor else f"the reference's own rounding was {self.noise_floor.get('note') or 'not measured'}")
            multiple = next(iter(self.parity.values())).get("noise_multiple", 0)
            lines += ["", f"Passes when max abs err ≤ atol + max(rtol, {multiple:g}·noise floor)·max|ref| for every output of every input "
                      f"batch, with nothing NaN/Inf: {noise}. rtol follows the precision the runtime ran (polyexport/precision.py). "
                      "Top-k agreement: rows of (N, C) outputs whose top-1 class / set of top-5 classes equal PyTorch's.", ""]
        if self.precision:
            lines += ["## Precision", "", "| runtime | asked | ran | modules kept in fp32 |", "|---|---|---|---|"]
            for k, d in self.precision.items():
                kept = "; ".join(f"`{m['module']}` ({m['type']}: {m['reason']}, error / scale {m['max_rel_err']:.3g})" for m in d.get("kept_fp32", []))
                lines.append(f"| {k} | {d['asked']} | {d['ran']} | {kept or d.get('note', 'none')} |")
            lines.append("")
        if self.explain:
            e = self.explain
            lines += ["## Where it diverges", ""]
            if e.get("runtime_error"):
                where = f" in module `{e['module']}` ({e.get('type', '?')})" if e.get("module") else ""
                lines += [f"Stage **{e['stage']}** did not run{where}" + (f", at node `{e['node']}`" if e.get("node") else "") + ":", "",
                          f"> {e['runtime_error']}", ""]
                if e.get("note"):
                    lines.append(e["note"])
                if e.get("frozen_batch"):
                    lines += ["", "| node | op | module | constant shape |", "|---|---|---|---|"]
                    lines += [f"| `{f['node']}` | {f['op']} | `{f['module']}` | {f['shape']} |" for f in e["frozen_batch"]]
            elif e.get("module"):
                lines += [f"First diverging module at stage **{e['stage']}**: `{e['module']}` ({e['type']}, form {e['form']}), "
                          f"max error / scale {e['max_rel_err']:.3g}.", "",
                          "| module (execution order) | max error / scale |", "|---|---|"]
                lines += [f"| `{c['module']}` | {c['max_rel_err']:.3g} |" for c in e.get("checked", [])]
            else:
                lines.append(f"Stage {e['stage']}: {e.get('note') or e.get('error')}")
                if e.get("checked"):
                    lines += ["", "| module (execution order) | max error / scale |", "|---|---|"]
                    lines += [f"| `{c['module']}` | {c['max_rel_err']:.3g} |" for c in e["checked"]]
            lines.append("")
        if self.latency_ms:
            base = self.latency_ms.get("torch", {}).get("p50")
            lines += ["## Latency (ms)", "", "| runtime | p50 | p90 | p99 | mean | CoV | n | vs PyTorch |", "|---|---|---|---|---|---|---|---|"]
            for k, s in self.latency_ms.items():
                ratio = f"{base / s['p50']:.2f}× faster" if base and k != "torch" else "baseline" if k == "torch" else ""
                lines.append(f"| {k} | {s['p50']:.3f} | {s['p90']:.3f} | {s['p99']:.3f} | {s['mean']:.3f} | {s['cov']:.1%} | {s['n']} | {ratio} |")
            lines.append("")
        if self.runtimes:
            lines += ["## Runtimes as configured", ""]
            for k, d in self.runtimes.items():
                lines.append(f"- **{k}**: " + ", ".join(f"{a}={b}" for a, b in d.items()))
            lines.append("")
        listed = [l for l in self.layers if l["form"] != "folded" or l["type"] != "BatchNorm2d"]
        lines += ["## Layers", "", self.layer_summary() + ".", ""]
        if listed:
            lines += ["| module | type | form | note |", "|---|---|---|---|"]
            lines += [f"| `{l['name']}` | {l['type']} | {l['form']} | {l.get('note', '')} |" for l in listed]
            lines.append("")
        if self.form_choices:
            lines += ["## Form choices (timed on the target runtime)", "", "| module | type | input | form latency (ms) | chosen | cached |", "|---|---|---|---|---|---|"]
            for c in self.form_choices:
                times = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} rejected (fails or differs here)" for k, v in c["timings_ms"].items())
                lines.append(f"| `{c['name']}` | {c['type']} | {'×'.join(map(str, c['input'][0]))} | {times} | **{c['chosen']}** | {'yes' if c['cached'] else 'no'} |")
            lines.append("")
        if self.timings:
            total = sum(self.timings.values())
            lines += ["## Cost of this run", "", "| phase | seconds |", "|---|---|"]
            lines += [f"| {k} | {v:.1f} |" for k, v in self.timings.items()]
            lines += [f"| **total** | **{total:.1f}** |", "", f"Peak memory (resident): {self.peak_rss_mb:.0f} MB." if self.peak_rss_mb else "", ""]
        lines += ["## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in self.artifacts.items()] + [""]
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        return "\n".join(lines)
