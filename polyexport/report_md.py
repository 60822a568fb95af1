"""report.md: the report for people, one function per section, from report.json's data (report.Report.as_dict)."""
from __future__ import annotations

from typing import Callable


def render(r: dict) -> str:
    lines: list[str] = []
    for section in SECTIONS:
        lines += section(r)
    return "\n".join(lines)


def _head(r: dict) -> list[str]:
    failed = [k for k, p in r["parity"].items() if not p.get("passed")]
    verdict = "**parity held**" if r["passed"] else f"**parity FAILED** on {', '.join(failed)}"
    shapes = ", ".join(f"`{i['name']}` {'×'.join(map(str, i['shape']))}" for i in r["inputs"])
    ex = r["export"]
    return [f"# polyexport report: {r['model']} → {r['target']}", "",
            f"Result: {verdict}. Deploy forms {'applied' if r['deploy'] else 'not applied (--no-deploy)'}.", "",
            f"Inputs: {shapes}. Export: {ex.get('exporter')} exporter, opset {ex.get('opset')}, {ex.get('simplifier')}, "
            f"{'dynamic' if ex.get('dynamic_batch') else 'static'} batch, {ex.get('nodes')} nodes, {ex.get('seconds', 0):.2f} s"
            + (f" (the graph {ex['source']} exported, checked here)" if ex.get("source", "exported") != "exported" else "") + ".", ""]


def _warnings(r: dict) -> list[str]:
    return ["## Warnings", "", *[f"- {w}" for w in r["warnings"]], ""] if r["warnings"] else []


def _tensorrt(r: dict) -> list[str]:
    lines = []
    if r["stand_in"]:
        s = r["stand_in"]
        lines += ["## TensorRT: not run here", "",
                  f"{s['why']}: parity was proven on **{s['runtime']}** (CPU) as a stand-in, which says the graph computes the "
                  f"model's function, not what TensorRT's kernels will give. Forms: {s['forms']}. Next: {s['next']}.", ""]
    if r["tensorrt_check"]:
        lines += ["## TensorRT parser rules (the written graph)", "", "| version | errors | warnings |", "|---|---|---|"]
        for v, findings in r["tensorrt_check"].items():
            lines.append(f"| {v} | {sum(f['severity'] == 'error' for f in findings)} | {sum(f['severity'] == 'warning' for f in findings)} |")
        warned = [(v, f) for v, fs in r["tensorrt_check"].items() for f in fs if f["severity"] == "warning"]
        lines += ["", *[f"- {v}: {f['message']} (node `{f['node']}`" + (f", module `{f['module']}`)" if f.get("module") else ")")
                        for v, f in warned[:10]], ""]
    if r["device_commands"]:
        lines += ["## On the device", "", "From the output folder, on the device:", ""]
        for v, cmds in r["device_commands"].items():
            lines += [f"TensorRT {v}:", "", "```", cmds["verify"], cmds["trtexec"], "```", ""] + ([cmds["note"], ""] if cmds.get("note") else [])
    return lines


def _parity(r: dict) -> list[str]:
    if not r["parity"]:
        return []
    lines = ["## Parity with PyTorch", "",
             "| stage / runtime | precision | max abs err | max err / scale | allowed err / scale | cosine | top-1 / top-5 agree | comparisons | passed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, p in r["parity"].items():
        topk = f"{p['top1_agreement']:.1%} / {p['top5_agreement']:.1%} of {p['topk_samples']}" if p.get("topk_samples") else "-"
        allowed = f"{p.get('effective_rtol', p['rtol']):.3g} (atol {p['atol']:g})"
        verdict = "yes" if p["passed"] else "**no**: " + "; ".join(p.get("problems") or [p.get("error") or "error too large"])
        lines.append(f"| {k} | {p.get('precision', 'fp32')} | {p['max_abs_err']:.3g} | {p['max_rel_err']:.3g} | {allowed} | {p['cosine']:.9f} | "
                     f"{topk} | {p.get('comparisons', '')} | {verdict} |")
    floor = r["noise_floor"].get("per_output") or []
    noise = (f"the reference model's own fp32 rounding, measured against float64, is {max(floor):.3g} of the output's scale"
             if floor else f"the reference's own rounding was {r['noise_floor'].get('note') or 'not measured'}")
    multiple = next(iter(r["parity"].values())).get("noise_multiple", 0)
    return lines + ["", f"Passes when max abs err ≤ atol + max(rtol, {multiple:g}·noise floor)·max|ref| for every output of every input "
                    f"batch, with nothing NaN/Inf: {noise}. rtol follows the precision the runtime ran (polyexport/precision.py). "
                    "Top-k agreement: rows of (N, C) outputs whose top-1 class / set of top-5 classes equal PyTorch's.", ""]


def _precision(r: dict) -> list[str]:
    if not r["precision"]:
        return []
    lines = ["## Precision", "", "| runtime | asked | ran | modules kept in fp32 |", "|---|---|---|---|"]
    for k, d in r["precision"].items():
        kept = "; ".join(f"`{m['module']}` ({m['type']}: {m['reason']}, error / scale {m['max_rel_err']:.3g})" for m in d.get("kept_fp32", []))
        lines.append(f"| {k} | {d['asked']} | {d['ran']} | {kept or d.get('note', 'none')} |")
    return lines + [""]


def _checked(e: dict) -> list[str]:
    return ["", "| module (execution order) | max error / scale |", "|---|---|", *[f"| `{c['module']}` | {c['max_rel_err']:.3g} |" for c in e["checked"]]]


def _explain(r: dict) -> list[str]:
    e = r["explain"]
    if not e:
        return []
    lines = ["## Where it diverges", ""]
    if e.get("runtime_error"):
        where = f" in module `{e['module']}` ({e.get('type', '?')})" if e.get("module") else ""
        lines += [f"Stage **{e['stage']}** did not run{where}" + (f", at node `{e['node']}`" if e.get("node") else "") + ":", "",
                  f"> {e['runtime_error']}", "", *([e["note"]] if e.get("note") else [])]
        if e.get("frozen_batch"):
            lines += ["", "| node | op | module | constant shape |", "|---|---|---|---|"]
            lines += [f"| `{f['node']}` | {f['op']} | `{f['module']}` | {f['shape']} |" for f in e["frozen_batch"]]
    elif e.get("module"):
        lines += [f"First diverging module at stage **{e['stage']}**: `{e['module']}` ({e['type']}, form {e['form']}), "
                  f"max error / scale {e['max_rel_err']:.3g}.", *_checked(e)]
    else:
        lines.append(f"Stage {e['stage']}: {e.get('note') or e.get('error')}")
        lines += _checked(e) if e.get("checked") else []
    return lines + [""]


def _latency(r: dict) -> list[str]:
    if not r["latency_ms"]:
        return []
    base = r["latency_ms"].get("torch", {}).get("p50")
    lines = ["## Latency (ms)", "", "| runtime | p50 | p90 | p99 | mean | CoV | n | vs PyTorch eager |", "|---|---|---|---|---|---|---|---|"]
    for k, s in r["latency_ms"].items():
        ratio = "baseline" if k == "torch" else f"{base / s['p50']:.2f}× faster" if base else "-"
        lines.append(f"| {k} | {s['p50']:.3f} | {s['p90']:.3f} | {s['p99']:.3f} | {s['mean']:.3f} | {s['cov']:.1%} | {s['n']} | {ratio} |")
    return lines + [""]


def _runtimes(r: dict) -> list[str]:
    if not r["runtimes"]:
        return []
    return ["## Runtimes as configured", "", *[f"- **{k}**: " + ", ".join(f"{a}={b}" for a, b in d.items()) for k, d in r["runtimes"].items()], ""]


def _layers(r: dict) -> list[str]:
    from .report import Report

    listed = [l for l in r["layers"] if l["form"] != "folded" or l["type"] != "BatchNorm2d"]
    lines = ["## Layers", "", Report("", "", layers=r["layers"]).layer_summary() + ".", ""]
    if listed:
        lines += ["| module | type | form | note |", "|---|---|---|---|", *[f"| `{l['name']}` | {l['type']} | {l['form']} | {l.get('note', '')} |" for l in listed], ""]
    return lines


def _choices(r: dict) -> list[str]:
    if not r["form_choices"]:
        return []
    lines = ["## Form choices (timed on the target runtime)", "", "| module | type | input | form latency (ms) | chosen | cached |", "|---|---|---|---|---|---|"]
    for c in r["form_choices"]:
        times = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} rejected (fails or differs here)" for k, v in c["timings_ms"].items())
        times += "".join(f", {k} not timed (measured far behind everywhere: form_prior.json)" for k in c.get("not_timed", ()))
        lines.append(f"| `{c['name']}` | {c['type']} | {'×'.join(map(str, c['input'][0]))} | {times} | **{c['chosen']}** | {'yes' if c['cached'] else 'no'} |")
    return lines + [""]


def _cost(r: dict) -> list[str]:
    if not r["timings"]:
        return []
    lines = ["## Cost of this run", "", "| phase | seconds |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in r["timings"].items()]]
    lines += [f"| **total** | **{sum(r['timings'].values()):.1f}** |", ""]
    return lines + ([f"Peak memory (resident): {r['peak_rss_mb']:.0f} MB.", ""] if r["peak_rss_mb"] else [])


def _tail(r: dict) -> list[str]:
    lines = ["## Artifacts", "", *[f"- {k}: `{v}`" for k, v in r["artifacts"].items()], ""]
    lines += ["## Notes", "", *[f"- {n}" for n in r["notes"]], ""] if r["notes"] else []
    return lines + ["## Versions", "", ", ".join(f"{k} {v}" for k, v in r["versions"].items()), ""]


SECTIONS: list[Callable[[dict], list[str]]] = [_head, _warnings, _tensorrt, _parity, _precision, _explain, _latency, _runtimes,
                                               _layers, _choices, _cost, _tail]
