"""Fuzz every registered deploy form on random valid layer configurations, on ONNX Runtime and OpenVINO.

The same generators as the property tests (tests/layer_configs.py), many more configurations: for each
registered reference layer type, `--configs` drawn configurations (hypothesis, `--seed`), and on each
every form of the layer: declined by its `exact_for` (counted, with the reason), or deployed through
`convert` (BN folded, next convs absorbed) and compared with the reference in PyTorch and, from one
exported graph (two batches where the form claims a dynamic batch), on each runtime. Prints a table per
layer type; a mismatch is any error above RTOL of the output's scale or any exception.

    python benchmarks/fuzz.py --configs 80 --seed 12 --markdown benchmarks/results/fuzz.md --json benchmarks/results/fuzz.json
    python benchmarks/fuzz.py --only space_to_depth Conv_BN --configs 300 --runtimes onnxruntime
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from common import md_table, runtimes_here, write_outputs  # noqa: E402

from polyexport.convert import registered_layers  # noqa: E402
from polyexport.testing import RTOL  # noqa: E402
from tests.layer_configs import LayerCase, cases_for, check_form  # noqa: E402

RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


@dataclass
class LayerTally:
    """What the fuzzer saw for one reference layer type."""

    layer: str
    configs: int = 0
    accepted: int = 0  # (config, form) pairs exact_for accepted
    declined: Counter = field(default_factory=Counter)  # reason -> (config, form) pairs
    torch_checks: int = 0
    runtime_checks: Counter = field(default_factory=Counter)  # runtime -> (config, form) pairs compared there
    unjudged: Counter = field(default_factory=Counter)  # reason -> (config, form, runtime) not comparable there
    folds: int = 0
    worst: float = 0.0
    mismatches: list[dict] = field(default_factory=list)
    #: a runtime wrong on a graph that PyTorch and another runtime get right (tests/layer_configs.FormCheck)
    runtime_defects: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "LayerTally":
        return cls(d["layer"], d["configs"], d["accepted"], Counter(d["declined"]), d["torch_checks"], Counter(d["runtime_checks"]),
                   Counter(d["unjudged"]), d["folds"], d["worst_error"], d["mismatches"], d.get("runtime_defects", []), d["seconds"])

    def as_dict(self) -> dict:
        return {"layer": self.layer, "configs": self.configs, "accepted": self.accepted,
                "declined": dict(self.declined), "torch_checks": self.torch_checks,
                "runtime_checks": dict(self.runtime_checks), "unjudged": dict(self.unjudged),
                "folds": self.folds, "worst_error": self.worst, "mismatches": self.mismatches,
                "runtime_defects": self.runtime_defects,
                "seconds": round(self.seconds, 1)}


def fuzz_layer(layer_type: type, configs: int, seed_value: int, runtimes: list[str]) -> LayerTally:
    """Draw `configs` configurations of `layer_type` and check every form on each."""
    tally = LayerTally(layer_type.__name__)
    forms = list(registered_layers()[layer_type].forms.values())
    start = time.perf_counter()

    @seed(seed_value)
    @settings(max_examples=configs, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases_for(layer_type))
    def run(case: LayerCase) -> None:
        tally.configs += 1
        for i, form in enumerate(forms):
            result = check_form(case, form, runtimes, seed=tally.configs, second_batch=(tally.configs + i) % 5 + 1)
            if result.declined is not None:
                tally.declined[result.declined] += 1
                continue
            tally.accepted += 1
            tally.folds += result.folds
            if result.torch_error is not None:
                tally.torch_checks += 1
            for rt, err in result.runtime_errors.items():
                tally.runtime_checks[rt] += 1
                tally.worst = max(tally.worst, err)
            for rt, why in result.unjudged.items():
                tally.unjudged[f"{rt}: {why}"] += 1
            if result.torch_error is not None:
                tally.worst = max(tally.worst, result.torch_error)
            for rt, what in result.runtime_defects.items():
                tally.runtime_checks[rt] += 1
                tally.runtime_defects.append({"form": form.name, "config": case.label, "runtime": rt, "what": what})
            problems = result.mismatches(RTOL)
            if problems:
                tally.mismatches.append({"form": form.name, "config": case.label, "problems": problems})

    run()
    tally.seconds = time.perf_counter() - start
    return tally


def _reasons_text(reasons: Counter) -> str:
    """'12: 8× reason; 4× other reason' (the three commonest, shortened; all of them are in the JSON)."""
    if not reasons:
        return "0"
    parts = [f"{n}× {reason[:70]}{'…' if len(reason) > 70 else ''}" for reason, n in reasons.most_common(3)]
    rest = sum(reasons.values()) - sum(n for _, n in reasons.most_common(3))
    return f"{sum(reasons.values())}: " + "; ".join(parts) + (f"; {rest} other" if rest else "")


def table(tallies: list[LayerTally], runtimes: list[str]) -> str:
    header = (["layer", "configs drawn", "form checks accepted by exact_for", "declined (reasons)", "PyTorch checks"]
              + [f"{RUNTIME_NAMES.get(rt, rt)} checks" for rt in runtimes]
              + ["not judged on a runtime (why)", "mismatches", "runtime defects", "worst error / scale"])
    rows = []
    for t in tallies:
        rows.append([t.layer, str(t.configs), str(t.accepted), _reasons_text(t.declined), str(t.torch_checks)]
                    + [str(t.runtime_checks[rt]) for rt in runtimes]
                    + [_reasons_text(t.unjudged), str(len(t.mismatches)), str(len(t.runtime_defects)), f"{t.worst:.2g}"])
    total = lambda f: sum(f(t) for t in tallies)  # noqa: E731
    rows.append(["**total**", str(total(lambda t: t.configs)), str(total(lambda t: t.accepted)),
                 str(total(lambda t: sum(t.declined.values()))), str(total(lambda t: t.torch_checks))]
                + [str(total(lambda t, rt=rt: t.runtime_checks[rt])) for rt in runtimes]
                + [str(total(lambda t: sum(t.unjudged.values()))), str(total(lambda t: len(t.mismatches))),
                   str(total(lambda t: len(t.runtime_defects))),
                   f"{max((t.worst for t in tallies), default=0.0):.2g}"])
    return md_table(header, rows)


def defects_text(tallies: list[LayerTally]) -> str:
    """Every runtime defect in full: each is a finding to triage (docs/results.md), never a count alone."""
    found = [(t.layer, d) for t in tallies for d in t.runtime_defects]
    if not found:
        return ""
    lines = ["", "", "Runtime defects (the form exact in PyTorch and the same graph exact on another runtime):", ""]
    lines += [f"- {layer}, form `{d['form']}`, {d['config']}: {d['what']}" for layer, d in found]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=int, default=80, help="configurations drawn per layer type")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runtimes", nargs="*", default=None,
                    help="default: every installed one but TensorRT; the flag alone: PyTorch only")
    ap.add_argument("--only", nargs="*", default=None, help="layer type names (default: every registered one)")
    ap.add_argument("--markdown")
    ap.add_argument("--json")
    ap.add_argument("--merge", help="an earlier run's JSON (same --configs, --seed, runtimes): its layers not rerun here "
                                    "are kept, and the table covers them all")
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny layers: a second thread only adds synchronisation (and the runtimes get 1 too)
    runtimes = [] if args.runtimes == [] else runtimes_here(args.runtimes)
    types = [t for t in registered_layers() if not args.only or t.__name__ in args.only]
    if args.only and len(types) != len(set(args.only)):
        known = ", ".join(sorted(t.__name__ for t in registered_layers()))
        raise SystemExit(f"--only: unknown layer type among {args.only}; known: {known}")
    tallies = []
    start = time.perf_counter()
    for layer_type in types:
        tally = fuzz_layer(layer_type, args.configs, args.seed, runtimes)
        tallies.append(tally)
        checks = ", ".join(f"{rt} {tally.runtime_checks[rt]}" for rt in runtimes)
        print(f"{tally.layer}: {tally.configs} configs, {tally.accepted} accepted, {sum(tally.declined.values())} declined, "
              f"checks: PyTorch {tally.torch_checks}, {checks}; {len(tally.mismatches)} mismatches, worst {tally.worst:.2g} "
              f"({tally.seconds:.0f} s)", flush=True)
        for m in tally.mismatches[:5]:
            print(f"  MISMATCH {m['form']} on {m['config']}: {'; '.join(m['problems'])}", flush=True)
        for d in tally.runtime_defects[:5]:
            print(f"  RUNTIME DEFECT {d['form']} on {d['config']}: {d['what']}", flush=True)
    seconds = time.perf_counter() - start
    if args.merge:
        with open(args.merge) as f:
            earlier = json.load(f)
        same = {k: earlier["settings"][k] for k in ("configs", "seed", "runtimes")}
        if same != {"configs": args.configs, "seed": args.seed, "runtimes": runtimes}:
            raise SystemExit(f"--merge: {args.merge} was run with {same}, not with these settings")
        rerun = {t.layer for t in tallies}
        kept = [LayerTally.from_dict(d) for d in earlier["layers"] if d["layer"] not in rerun]
        seconds += sum(t.seconds for t in kept)
        order = [t.__name__ for t in registered_layers()]
        tallies = sorted(kept + tallies, key=lambda t: order.index(t.layer) if t.layer in order else len(order))
    text = table(tallies, runtimes) + defects_text(tallies)
    print(text)
    runtime_total = sum(t.runtime_checks[rt] for t in tallies for rt in runtimes)
    summary = (f"{sum(t.configs for t in tallies)} configurations of {len(tallies)} layer types (seed {args.seed}, "
               f"{args.configs} per type), {runtime_total} runtime checks "
               f"({', '.join(f'{RUNTIME_NAMES.get(rt, rt)} {sum(t.runtime_checks[rt] for t in tallies)}' for rt in runtimes)}), "
               f"{sum(len(t.mismatches) for t in tallies)} mismatches at rtol {RTOL:g} of the output's scale, "
               f"{sum(len(t.runtime_defects) for t in tallies)} runtime defects; "
               f"{seconds:.0f} s" + (f" (layers {', '.join(sorted(rerun))} rerun; the others from the earlier run merged)" if args.merge else "")
               + ".")
    print(summary)
    try:
        from polyexport.pipeline import versions

        vers = versions()
    except Exception:  # noqa: BLE001 - a record without versions is still a record
        vers = {}
    write_outputs(args, text + "\n\n" + summary,
                  {"settings": {"configs": args.configs, "seed": args.seed, "runtimes": runtimes, "rtol": RTOL},
                   "versions": vers, "layers": [t.as_dict() for t in tallies], "summary": summary})


if __name__ == "__main__":
    main()
