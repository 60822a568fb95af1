"""Careless and hostile input (issue 12): no code runs unasked, no data is lost, no traceback, nothing half-written.

One test per class of failure found; the signals, the shadowing module and the shared cache use real processes."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import usernets

import polyexport
from polyexport.cli import main
from polyexport.errors import BadInput
from polyexport.outdir import MARKER, check_out

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--input-shape", "1x3x16x16", "--no-bench", "--form", "preferred"]


def cli(*argv: str) -> int:
    """polyexport's console entry point in-process: its exit code."""
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return done.value.code


def env_with(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OPENBLAS_NUM_THREADS="1")
    env.update(extra)
    return env


# --- 1. no code runs unasked ------------------------------------------------------------------

def test_a_module_in_the_working_directory_never_shadows_a_dependency(tmp_path):
    """`python -m polyexport` puts the working directory first on sys.path: a file there named like a
    dependency must not be imported in its place (here it would exit 99)."""
    (tmp_path / "onnxsim.py").write_text("raise SystemExit(99)\n")
    (tmp_path / "onnxruntime.py").write_text("raise SystemExit(98)\n")
    done = subprocess.run([sys.executable, "-m", "polyexport", "usernets:build", "--out", "o", *SMALL], cwd=tmp_path,
                          env=env_with(PYTHONPATH=str(REPO) + os.pathsep + str(REPO / "tests" / "userpkg")),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "o" / "model.onnx").is_file()


# --- 2 and 8. the output folder ---------------------------------------------------------------

@pytest.mark.parametrize("which", ["cwd", "ancestor", "home", "root", "holds-model"])
def test_protected_output_folders_are_refused_before_any_work(tmp_path, monkeypatch, which, capsys):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    model = work / "m.pt"
    torch.save(usernets.build().state_dict(), model)
    monkeypatch.chdir(work)
    out = {"cwd": ".", "ancestor": str(tmp_path / "a"), "home": "~", "root": "/", "holds-model": str(work)}[which]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert cli(str(model), "--arch", "usernets:build", "--out", out, "--force", *SMALL) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and model.is_file()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_force_replaces_only_a_folder_polyexport_wrote(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    with pytest.raises(BadInput, match="not written by polyexport"):
        check_out(str(theirs), force=True)
    out = tmp_path / "ours"
    polyexport.export(usernets.build(), [torch.randn(1, 3, 16, 16)], out=str(out), bench=False, form_choice="preferred")
    assert (out / MARKER).is_file()
    report = polyexport.export(usernets.build(), [torch.randn(1, 3, 16, 16)], out=str(out), bench=False, force=True, form_choice="preferred")
    assert report.passed and report.out == str(out.resolve()) and not list(tmp_path.glob("ours.*"))


def test_a_folder_that_appears_during_the_run_is_kept_and_the_result_goes_beside_it(tmp_path):
    out = tmp_path / "o"

    class Intruder:
        """Another run (or the user) creates --out while this one exports."""

        def __init__(self, label: str):
            self.label = label

        def __enter__(self):
            if self.label.startswith("export to ONNX") and not out.exists():
                out.mkdir()
                (out / "other-result.txt").write_text("keep me")

        def __exit__(self, *exc):
            return False

    report = polyexport.export(usernets.build(), [torch.randn(1, 3, 16, 16)], out=str(out), bench=False, form_choice="preferred",
                               progress=Intruder)
    assert (out / "other-result.txt").read_text() == "keep me"
    assert report.out == str(tmp_path / "o.1") and (tmp_path / "o.1" / "report.json").is_file()
    assert any("appeared while this run went on" in n for n in report.notes)


def test_output_folder_mode_follows_the_umask_and_a_failed_run_leaves_no_parents(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "o"
        polyexport.export(usernets.build(), [torch.randn(1, 3, 16, 16)], out=str(out), bench=False, form_choice="preferred")
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
    finally:
        os.umask(old)
    deep = tmp_path / "x" / "y" / "z"
    with pytest.raises(BadInput):
        polyexport.export(usernets.build(), [torch.randn(1, 5, 16, 16)], out=str(deep), bench=False)  # wrong channel count
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("case", ["file", "file-parent", "read-only-parent", "too-long", "empty"])
def test_bad_out_values_are_one_line_exit_2(tmp_path, case, capsys):
    (tmp_path / "f").write_text("")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    out = {"file": str(tmp_path / "f"), "file-parent": str(tmp_path / "f" / "o"), "read-only-parent": str(ro / "o"),
           "too-long": str(tmp_path / ("x" * 300)), "empty": ""}[case]
    try:
        if case == "read-only-parent" and os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root without CAP_DAC_OVERRIDE dropped)")
        assert cli("usernets:build", "--out", out, "--force", *SMALL) == 2
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "ro"]


# --- 3. signals -------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_midway_cleans_up_and_exits_128_plus_signal(tmp_path, sig):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "polyexport", "zoo:resnet18", "--input-shape", "1x3x64x64", "--out", "o",
                             "--no-bench", "--form", "preferred"], cwd=tmp_path, env=env_with(TMPDIR=str(scratch)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(tmp_path.glob(".polyexport-*/out/model.onnx")):  # midway: the staging folder has a graph in it
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timed out"
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 128 + sig
    assert not list(tmp_path.glob(".polyexport-*")) and not (tmp_path / "o").exists()
    leftovers = [p for p in scratch.iterdir() if p.is_dir()]  # polyexport's scratch is folders; OpenVINO's telemetry leaves a .ses file on every run
    assert not leftovers, leftovers


# --- 4. every option validated where it is parsed ---------------------------------------------

@pytest.mark.parametrize("args", [
    ["--runtime", "tflite"], ["--device", "gpu"], ["--atol", "nan"], ["--rtol", "-1"], ["--atol", "inf"], ["--threads", "-2"],
    ["--opset", "5"], ["--iterations", "0"], ["--batch-range", "1,2,4"], ["--input-shape", "1x3x60000x60000"],
    ["--target", "tflite"],
])
def test_bad_options_are_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)
    argv = ["zoo:resnet18", "--out", "o", *args]
    if "--input-shape" not in args:
        argv += ["--input-shape", "1x3x16x16"]
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder"])
def test_model_must_be_a_regular_file(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.chdir(tmp_path)
    path = {"dev-zero": "/dev/zero", "fifo": str(tmp_path / "m.pt"), "folder": str(tmp_path)}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    assert cli(path, "--out", str(tmp_path / "o"), "--trust-pickle") == 2
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "o").exists()


# --- 6. the form cache ------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["[1, 2]", "null", '{"k": {"form": "fast"}}', '{"k": 3}', "\x00\xff garbage", '"text"'])
def test_a_malformed_cache_is_ignored_with_a_note(tmp_path, monkeypatch, content):
    from polyexport.autoform import FormTimer
    from polyexport.runtimes import RunnerOptions

    path = tmp_path / "forms.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content)
    timer = FormTimer("onnxruntime", RunnerOptions(1), {}, cache_path=str(path))
    assert timer.cache == {} and timer.notes
    timer.cache["x"] = {"a": 1.0}
    timer._save()
    assert json.loads(path.read_text()) == {"x": {"a": 1.0}}


def test_an_unwritable_cache_is_a_note_not_a_failure(tmp_path, monkeypatch):
    """Its folder is a file: unwritable for any user, root included (a read-only folder is not, for root)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("POLYEXPORT_CACHE", str(blocker / "forms.json"))
    from polyexport.layers.mixconv import MixedConv2d
    from polyexport.testing import randomize_

    model = randomize_(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), MixedConv2d(8, 8, [3, 5], depthwise=True)))
    report = polyexport.export(model, [torch.randn(1, 3, 12, 12)], out=str(tmp_path / "o"), bench=False, form_choice="auto")
    assert report.passed and any("cannot be written" in n for n in report.notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder", "o"]


def test_two_processes_sharing_the_cache_lose_no_entry(tmp_path):
    path = tmp_path / "forms.json"
    writer = """
import sys
from polyexport.autoform import FormTimer
from polyexport.runtimes import RunnerOptions
me = sys.argv[1]
for i in range(40):
    t = FormTimer("onnxruntime", RunnerOptions(1), {}, cache_path=sys.argv[2])
    t.cache[f"{me}-{i}"] = {"form": float(i)}
    t._save()
"""
    procs = [subprocess.Popen([sys.executable, "-c", writer, tag, str(path)], env=env_with()) for tag in ("a", "b", "c")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    entries = json.loads(path.read_text())
    assert len(entries) == 120 and entries["b-39"] == {"form": 39.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forms.json", "forms.json.lock"]
