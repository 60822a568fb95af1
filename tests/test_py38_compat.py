"""The device side runs on the Pythons JetPack ships: 3.8 (JetPack 5) to 3.10 (JetPack 6).

`polyexport verify`, `polyexport check` and the device command lines import only the torch-free modules;
each of those must parse as Python 3.8 and use no 3.9+ runtime API. Which modules: the ones a torch-free
verify/check/device_commands run actually loads (found by running it, torch blocked), and the device-side
modules it may load on other paths (DEVICE_MODULES). Where a Python 3.8 interpreter is found (the
POLYEXPORT_PY38 variable, pyenv, PATH), every one of them is compiled by it; where it also has numpy, onnx,
onnxruntime and rich, a bundle is verified, checked and given its commands under it, torch-free.
"""
from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the device side by design; the run below adds whatever else it actually loads
DEVICE_MODULES = ["__init__", "errors", "bundle", "parity", "precision", "bench", "trtexec", "scopes", "targets", "runs",
                  "exporter/__init__", "exporter/fp16", "runtimes/__init__", "runtimes/base", "runtimes/onnxruntime",
                  "runtimes/openvino", "runtimes/tensorrt", "runtimes/tensorrt_lint", "cli"]
#: functions of device-side files that only the workstation runs (`polyexport MODEL …` needs torch and Python 3.10)
WORKSTATION_ONLY = {"polyexport/cli.py": ("build_parser", "run", "_print_summary", "layers_main")}

# --- the checker -------------------------------------------------------------------------------------
#: (module, name) -> the Python version that added it
NEWER_NAMES = {
    ("typing", "Annotated"): "3.9", ("typing", "ParamSpec"): "3.10", ("typing", "TypeAlias"): "3.10",
    ("typing", "Concatenate"): "3.10", ("typing", "TypeGuard"): "3.10", ("typing", "is_typeddict"): "3.10",
    ("typing", "Self"): "3.11", ("typing", "LiteralString"): "3.11", ("typing", "Never"): "3.11",
    ("typing", "assert_never"): "3.11", ("typing", "reveal_type"): "3.11", ("typing", "Required"): "3.11",
    ("typing", "NotRequired"): "3.11", ("typing", "Unpack"): "3.11", ("typing", "TypeVarTuple"): "3.11",
    ("typing", "override"): "3.12", ("types", "NoneType"): "3.10", ("types", "EllipsisType"): "3.10",
    ("types", "UnionType"): "3.10", ("types", "GenericAlias"): "3.9", ("importlib.resources", "files"): "3.9",
    ("importlib.resources", "as_file"): "3.9", ("functools", "cache"): "3.9", ("datetime", "UTC"): "3.11",
    ("itertools", "pairwise"): "3.10", ("itertools", "batched"): "3.12", ("math", "lcm"): "3.9",
    ("math", "nextafter"): "3.9", ("math", "ulp"): "3.9", ("math", "cbrt"): "3.11", ("math", "exp2"): "3.11",
    ("ast", "unparse"): "3.9", ("argparse", "BooleanOptionalAction"): "3.9", ("contextlib", "chdir"): "3.11",
    ("contextlib", "aclosing"): "3.10", ("enum", "StrEnum"): "3.11", ("hashlib", "file_digest"): "3.11",
    ("random", "randbytes"): "3.9", ("asyncio", "to_thread"): "3.9", ("asyncio", "TaskGroup"): "3.11",
    ("operator", "call"): "3.11", ("dataclasses", "KW_ONLY"): "3.10", ("inspect", "get_annotations"): "3.10",
    ("sys", "stdlib_module_names"): "3.10", ("os", "waitstatus_to_exitcode"): "3.9",
    ("statistics", "correlation"): "3.10", ("statistics", "covariance"): "3.10", ("statistics", "linear_regression"): "3.10",
}
NEWER_MODULES = {"zoneinfo": "3.9", "graphlib": "3.9", "tomllib": "3.11"}
#: methods that exist only from a version on, whatever the object (str, int, Path, exceptions)
NEWER_METHODS = {"removeprefix": "3.9", "removesuffix": "3.9", "bit_count": "3.10", "is_relative_to": "3.9",
                 "with_stem": "3.9", "add_note": "3.11"}
#: (callable's last name, keyword) -> version
NEWER_KEYWORDS = {("zip", "strict"): "3.10", ("dataclass", "kw_only"): "3.10", ("dataclass", "slots"): "3.10",
                  ("dataclass", "match_args"): "3.10", ("field", "kw_only"): "3.10", ("bisect_left", "key"): "3.10",
                  ("bisect_right", "key"): "3.10", ("insort", "key"): "3.10", ("insort_left", "key"): "3.10",
                  ("insort_right", "key"): "3.10", ("rmtree", "onexc"): "3.12"}
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}  # subscriptable at run time from 3.9
TYPE_NAMES = BUILTIN_GENERICS | {"int", "float", "complex", "str", "bytes", "bool", "object"}
TYPING_GENERICS = {"List", "Dict", "Tuple", "Set", "FrozenSet", "Type", "Optional", "Union", "Callable", "Sequence",
                   "Iterable", "Iterator", "Mapping", "Literal", "Any"}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (arguments, returns, annotated assignments)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        roots = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            roots += [a.annotation for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a is not None]
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
        for r in roots:
            if r is not None:
                out.update(id(n) for n in ast.walk(r))
    return out


def _is_type_expr(node: ast.AST) -> bool:
    """An operand of `|` that makes it a type union: None, a builtin type, a generic, subscripted or not."""
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name) and node.id in TYPE_NAMES | TYPING_GENERICS:
        return True
    if isinstance(node, ast.Subscript):
        name = _dotted(node.value) or ""
        return name.rsplit(".", 1)[-1] in BUILTIN_GENERICS | TYPING_GENERICS
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_type_expr(node.left) or _is_type_expr(node.right)
    return False


def _is_dict_expr(node: ast.AST) -> bool:
    return isinstance(node, (ast.Dict, ast.DictComp)) or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict")


def newer_python_uses(source: str, filename: str = "<source>", skip: tuple[str, ...] = ()) -> list[str]:
    """What in `source` needs a Python newer than 3.8 to parse or to run: one line each, "file:line: what (3.x)".
    The whole file must parse; the top-level functions named in `skip` (never run on the device) are not run-checked."""
    try:
        tree = ast.parse(source, filename, feature_version=(3, 8))
    except SyntaxError as e:
        return [f"{filename}:{e.lineno}: {e.msg}"]
    tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name in skip)]
    found: list[str] = []

    def flag(node: ast.AST, what: str, version: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what} ({version}+)")

    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
                 for n in tree.body)
    in_annotation = _annotation_nodes(tree) if future else set()  # without the future import, annotations run
    aliases: dict[str, str] = {}  # local name -> module
    abc_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name in NEWER_MODULES:
                    flag(node, f"import {a.name}", NEWER_MODULES[a.name])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in NEWER_MODULES:
                flag(node, f"from {node.module} import", NEWER_MODULES[node.module.split(".")[0]])
            for a in node.names:
                if (node.module, a.name) in NEWER_NAMES:
                    flag(node, f"from {node.module} import {a.name}", NEWER_NAMES[(node.module, a.name)])
                if node.module == "collections.abc":
                    abc_names.add(a.asname or a.name)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for d in node.decorator_list:  # 3.9 relaxed decorators: any expression
                target = d.func if isinstance(d, ast.Call) else d
                if _dotted(target) is None:
                    flag(d, "a decorator that is not a dotted name or a call of one", "3.9")
        if id(node) in in_annotation:
            continue
        if isinstance(node, ast.Attribute):
            base = _dotted(node.value)
            head, _, rest = (base or "").partition(".")
            module = ".".join(filter(None, [aliases.get(head, head), rest])) if base else None  # np.x -> numpy.x
            if module and (module, node.attr) in NEWER_NAMES:
                flag(node, f"{module}.{node.attr}", NEWER_NAMES[(module, node.attr)])
            if node.attr in NEWER_METHODS and isinstance(getattr(node, "ctx", None), ast.Load):
                flag(node, f".{node.attr}()", NEWER_METHODS[node.attr])
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1] if name else None
            for kw in node.keywords:
                if (last, kw.arg) in NEWER_KEYWORDS:
                    flag(node, f"{last}({kw.arg}=...)", NEWER_KEYWORDS[(last, kw.arg)])
        elif isinstance(node, ast.Subscript):
            base = _dotted(node.value)
            if base in BUILTIN_GENERICS or base in abc_names or (base or "").startswith("collections.abc."):
                flag(node, f"{base}[...] evaluated at run time", "3.9")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            if _is_type_expr(node.left) or _is_type_expr(node.right):
                flag(node, "X | Y type union evaluated at run time", "3.10")
            elif _is_dict_expr(node.left) or _is_dict_expr(node.right):
                flag(node, "dict | dict", "3.9")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.BitOr) and _is_dict_expr(node.value):
            flag(node, "dict |= dict", "3.9")
    return sorted(set(found), key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


@pytest.mark.parametrize("snippet, expected", [
    ("match x:\n    case 1:\n        pass\n", "Pattern matching"),
    ("with (open('a') as f, open('b') as g):\n    pass\n", "Parenthesized context managers"),
    ("try:\n    pass\nexcept* ValueError:\n    pass\n", "Exception groups"),
    ("s = 'ab'.removeprefix('a')\n", ".removeprefix()"),
    ("s = name.removesuffix('.onnx')\n", ".removesuffix()"),
    ("for a, b in zip(x, y, strict=True):\n    pass\n", "zip(strict=...)"),
    ("from dataclasses import dataclass\n@dataclass(kw_only=True)\nclass A:\n    x: int\n", "dataclass(kw_only=...)"),
    ("ok = isinstance(v, int | float)\n", "X | Y type union"),
    ("def f(x=int | None):\n    pass\n", "X | Y type union"),
    ("Alias = list[int]\n", "list[...] evaluated at run time"),
    ("from typing import Callable\nFn = Callable[[str], dict[str, int]]\n", "dict[...] evaluated at run time"),
    ("def f(x: int | None) -> list[int]:\n    pass\n", "X | Y type union"),  # no future import: annotations run
    ("import argparse\np.add_argument('--x', action=argparse.BooleanOptionalAction)\n", "argparse.BooleanOptionalAction"),
    ("from functools import cache\n", "from functools import cache"),
    ("import tomllib\n", "import tomllib"),
    ("merged = {'a': 1} | other\n", "dict | dict"),
    ("@buttons[0].clicked.connect\ndef f():\n    pass\n", "decorator"),
    ("n = x.bit_count()\n", ".bit_count()"),
])
def test_the_checker_finds_what_needs_a_newer_python(snippet, expected):
    found = newer_python_uses(snippet)
    assert any(expected in f for f in found), found


def test_the_checker_passes_what_python_38_runs():
    ok = ("from __future__ import annotations\nimport argparse\nfrom typing import Callable, Optional, Dict\n"
          "def f(x: int | None = None, y: dict[str, list[int]] | None = None) -> list[int]:\n"
          "    z: tuple[int, ...] = (1,)\n    return [a | b for a, b in zip(x, y)]\n"
          "Fn = Callable[[str], Dict[str, int]]\nflags = READ | WRITE\nv = Optional[int]\n"
          "p.add_argument('--x', action='store_true')\ns = name[len('a'):] if name.startswith('a') else name\n"
          "with open('a') as f, open('b') as g:\n    pass\n@functools.lru_cache(maxsize=None)\ndef g():\n    pass\n")
    assert newer_python_uses(ok) == []


# --- the device side ------------------------------------------------------------------------------
LOADED = """
import json, os, sys
sys.modules['torch'] = None  # any `import torch` now raises ImportError
from polyexport.cli import main
from polyexport.trtexec import device_commands
import importlib.util
has_trt = importlib.util.find_spec("tensorrt") is not None  # without it, verify --target tensorrt is exit 3
bundle, out = sys.argv[1], sys.argv[2]
codes = {}
for name, argv in [("verify", ["verify", bundle, "--target", "onnxruntime", "--iterations", "2", "--json", os.path.join(out, "r.json")]),
                   ("verify_fp16", ["verify", bundle, "--target", "onnxruntime", "--no-bench", "--fp16"]),
                   *([] if has_trt else [("verify_tensorrt", ["verify", bundle, "--target", "tensorrt", "--no-bench"])]),
                   ("check", ["check", os.path.join(bundle, "model.onnx"), "--trt-version", "8.5", "--trt-version", "10.3"])]:
    try:
        main(argv)
    except SystemExit as e:
        codes[name] = e.code
commands = device_commands(bundle, "8.6")
import polyexport.runtimes.openvino, polyexport.runtimes.tensorrt  # what other targets load
mods = sorted(m.__file__ for n, m in list(sys.modules.items()) if n.startswith("polyexport") and m is not None and getattr(m, "__file__", None))
print(json.dumps({"codes": codes, "commands": commands, "modules": mods, "torch": sys.modules.get("torch") is not None, "tensorrt": has_trt}))
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from polyexport.cli import main

    out = str(tmp_path_factory.mktemp("b") / "out")
    with pytest.raises(SystemExit) as e:
        main(["usernets:build", "--input-shape", "2x3x16x16", "--dynamic-batch", "--bundle", "--no-bench", "--out", out])
    assert e.value.code == 0
    return os.path.join(out, "bundle")


def _run_device_side(python: str, bundle: str, out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([python, "-c", LOADED, bundle, out], capture_output=True, text=True, env=env, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    want = {"verify": 0, "verify_fp16": 0, "check": 0, **({} if run["tensorrt"] else {"verify_tensorrt": 3})}
    assert run["codes"] == want and not run["torch"], (run["codes"], done.stdout[-3000:], done.stderr[-3000:])
    return run


@pytest.fixture(scope="module")
def device_side(bundle, tmp_path_factory):
    """The modules a torch-free device run loads (this Python), with DEVICE_MODULES: paths relative to the repo."""
    run = _run_device_side(sys.executable, bundle, str(tmp_path_factory.mktemp("run")))
    loaded = {os.path.relpath(p, ROOT) for p in run["modules"]}
    return sorted(loaded | {f"polyexport/{m}.py" for m in DEVICE_MODULES})


def test_device_side_parses_and_runs_on_python_38(device_side):
    found = [f for path in device_side
             for f in newer_python_uses(open(os.path.join(ROOT, path)).read(), path, WORKSTATION_ONLY.get(path, ()))]
    assert found == [], "needs a Python newer than JetPack 5's 3.8:\n" + "\n".join(found)


def _python38_candidates() -> list[str]:
    found = [os.environ.get("POLYEXPORT_PY38", "")]
    found += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    found += [shutil.which("python3.8") or ""]
    return [p for p in found if p and os.path.isfile(p)]


def _python38(with_deps: bool) -> str | None:
    for python in _python38_candidates():
        probe = "import sys; assert sys.version_info[:2] == (3, 8)" + ("; import numpy, onnx, onnxruntime, rich" if with_deps else "")
        if subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
            return python
    return None


def test_python_38_compiles_the_device_side(device_side):
    python = _python38(with_deps=False)
    if python is None:
        pytest.skip("no Python 3.8 interpreter here (set POLYEXPORT_PY38, or install one with pyenv)")
    code = "import sys\nfor p in sys.argv[1:]:\n    compile(open(p, encoding='utf-8').read(), p, 'exec')\nprint('ok')"
    done = subprocess.run([python, "-c", code, *device_side], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_verify_check_and_commands_run_on_python_38(bundle, tmp_path):
    python = _python38(with_deps=True)
    if python is None:
        pytest.skip("no Python 3.8 with numpy, onnx, onnxruntime and rich here (point POLYEXPORT_PY38 at one)")
    run = _run_device_side(python, bundle, str(tmp_path))
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["passed"] and result["parity"]["onnxruntime"]["comparisons"] == 6
    assert run["commands"]["trtexec"].startswith("trtexec --onnx=")
